"""Shared fixtures. Tests never touch the network: the hub is switched off before timm is imported."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import timm
import torch


def make_vit(name: str, **kwargs) -> torch.nn.Module:
    """A randomly initialised timm model in eval mode, the same weights for the same name and kwargs."""
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


@pytest.fixture(scope="session")
def deit_tiny() -> torch.nn.Module:
    return make_vit("deit_tiny_patch16_224")


@pytest.fixture
def images() -> torch.Tensor:
    """Two normalised 224×224 images."""
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))

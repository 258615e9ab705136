"""Deterministic random weights for deit_tiny_patch16_224 with peaked (non-flat) attention.

Used by the Chefer reference fixture (``tests/fixtures/chefer_deit_tiny.npz``): its generating script
loads the same state dict into the authors' ``ViT_LRP`` / ``ViT_new`` models and the tests load it into
timm. Every tensor comes from one seeded ``torch.Generator`` in sorted-name order, independent of timm's
initialisers; a fingerprint stored in the fixture proves the same weights were rebuilt.
"""

from __future__ import annotations

import torch
from torch import nn

SEED = 0
QK_GAIN = 1.5  # q and k rows of every qkv weight are scaled by this: attention is peaked, not flat


def chefer_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights with ``std = 1/sqrt(fan_in)`` for linear/conv layers (q, k × ``QK_GAIN``), LayerNorm
    ``1 + 0.1·z`` / ``0.1·z``, biases ``0.1·z``, class token and position embedding ``0.5·z``."""
    generator = torch.Generator().manual_seed(SEED)
    state = {}
    for name, tensor in sorted(model.state_dict().items()):
        z = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
        if name.endswith("weight") and tensor.dim() >= 2:
            value = z / tensor[0].numel() ** 0.5
            if name.endswith("attn.qkv.weight"):
                value[: 2 * tensor.shape[1]] *= QK_GAIN
        elif "norm" in name and name.endswith("weight"):
            value = 1.0 + 0.1 * z
        elif name.endswith("bias"):
            value = 0.1 * z
        else:
            value = 0.5 * z
        state[name] = value
    return state


def fingerprint(state: dict[str, torch.Tensor]) -> float:
    """Σ over tensors of Σ|w| (float64), to check a rebuilt state dict against the fixture's."""
    return float(sum(t.double().abs().sum() for t in state.values()))

"""Cascading randomisation: which blocks change, what stays untouched, and which maps fail the check."""

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

import explainers
from explainers.metrics.agreement import spearman
from explainers.metrics.sanity import (
    SANITY_THRESHOLD,
    cascading_randomisation,
    fails_sanity,
    randomised_models,
)

METHODS = ("rollout", "grad_rollout", "raw_attention", "gae")


def small_vit() -> nn.Module:
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=4, num_heads=3, num_classes=6)
    return model.eval()


def images() -> torch.Tensor:
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def all_methods(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    cap = explainers.capture(model, x, targets)
    return {name: explainers.compute(cap, name) for name in METHODS}


def brightness(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """A 'map' that ignores the model: the mean absolute input of each 8×8 patch."""
    return {"brightness": F.avg_pool2d(x.abs().mean(dim=1, keepdim=True), 8)[:, 0]}


def test_blocks_are_randomised_from_the_top_one_more_each_step() -> None:
    model = small_vit()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    depth = len(model.blocks)
    steps = 0
    for k, randomised in enumerate(randomised_models(model, seed=3), start=1):
        steps += 1
        state = randomised.state_dict()
        for block in range(depth):
            changed = any(
                not torch.equal(state[name], original[name])
                for name in original
                if name.startswith(f"blocks.{block}.") and name.endswith("weight")
            )
            assert changed == (block >= depth - k), (k, block)
        kept = [n for n in original if not n.startswith("blocks.")]
        assert all(torch.equal(state[n], original[n]) for n in kept)
        assert randomised is not model
    assert steps == depth
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in original.items())


def test_randomisation_is_seeded_and_leaves_the_global_random_state() -> None:
    model = small_vit()
    before = torch.random.get_rng_state()
    first = [{k: v.clone() for k, v in m.state_dict().items()} for m in randomised_models(model, seed=5)]
    assert torch.equal(before, torch.random.get_rng_state())
    again = [m.state_dict() for m in randomised_models(model, seed=5)][-1]
    assert all(torch.equal(again[k], v) for k, v in first[-1].items())
    other = [m.state_dict() for m in randomised_models(model, seed=6)][-1]
    assert not torch.equal(other["blocks.0.attn.qkv.weight"], first[-1]["blocks.0.attn.qkv.weight"])


def test_a_map_that_ignores_the_weights_fails() -> None:
    model, x = small_vit(), images()
    rho = cascading_randomisation(model, x, torch.zeros(6, dtype=torch.long), brightness)["brightness"]
    assert rho.shape == (6, len(model.blocks) + 1)
    torch.testing.assert_close(rho, torch.ones_like(rho))
    assert fails_sanity(rho[:, -1])


def test_a_map_that_flips_to_its_mirror_image_fails_too() -> None:
    """Trained: the brightness ranking; any randomised block: the reverse ranking (ρ = −1)."""
    model, x = small_vit(), images()
    trained = model.blocks[-1].attn.qkv.weight.clone()

    def flipping(m: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        sign = 1.0 if torch.equal(m.blocks[-1].attn.qkv.weight, trained) else -1.0
        return {"flip": sign * brightness(m, images, targets)["brightness"]}

    rho = cascading_randomisation(model, x, torch.zeros(6, dtype=torch.long), flipping)["flip"]
    torch.testing.assert_close(rho[:, 1:], -torch.ones_like(rho[:, 1:]))
    assert fails_sanity(rho[:, -1])


def test_attention_maps_change_with_the_weights_and_pass() -> None:
    model, x = small_vit(), images()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    targets = torch.tensor([0, 1, 2, 3, 4, 5])
    rho = cascading_randomisation(model, x, targets, all_methods, seed=1)
    original = all_methods(model, x, targets)
    last = all_methods(list(randomised_models(model, seed=1))[-1], x, targets)
    for name in METHODS:
        assert rho[name].shape == (6, len(model.blocks) + 1)
        torch.testing.assert_close(rho[name][:, 0], torch.ones(6, dtype=torch.float64))
        torch.testing.assert_close(rho[name][:, -1], spearman(original[name], last[name]))
        assert rho[name][:, -1].mean() < SANITY_THRESHOLD, name
        assert not fails_sanity(rho[name][:, -1]), name
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_fails_sanity_threshold_and_missing_values() -> None:
    assert fails_sanity([0.9, float("nan"), 0.5])
    assert not fails_sanity([0.2, 0.3, float("nan")])
    assert fails_sanity(torch.tensor([0.4, 0.6]), threshold=0.5)
    assert fails_sanity(np.array([-0.7, -0.6]))
    assert not fails_sanity([0.6, -0.6, 0.1, -0.1])

"""ROAD's noisy linear imputation: the same system as pytorch-grad-cam's port of the authors' code, the
noise, the edge cases, and the ``road`` baseline of the perturbation curves."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam.metrics.road import NoisyLinearImputer

from explainers.evaluate import Evaluation, cluttered_samples
from explainers.metrics.perturbation import perturbation_curves
from explainers.metrics.road import NOISE, road_impute
from tests.test_evaluate import tiny_loaded

# grad-cam's imputer hands numpy a torch tensor the old way.
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")

# Imputed values of images in [0, 1] agree with the direct sparse solve to this (CG tolerance, float32).
ATOL = 5e-4


def patch_masks(size: int, patch: int, count: int, seed: int) -> torch.Tensor:
    """``count`` (size, size) bool masks of removed pixels, whole patches removed at random shares."""
    grid, rng = size // patch, np.random.default_rng(seed)
    masks = []
    for k in range(count):
        removed = np.zeros(grid * grid, bool)
        removed[rng.permutation(grid * grid)[: int((k + 1) / (count + 1) * grid * grid)]] = True
        masks.append(np.kron(removed.reshape(grid, grid), np.ones((patch, patch), bool)))
    return torch.from_numpy(np.stack(masks))


def grad_cam(images: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's ``NoisyLinearImputer`` without noise (its mask: 1 kept, 0 imputed)."""
    imputer = NoisyLinearImputer(noise=0.0)
    return torch.stack([imputer(image, (~mask).float()) for image, mask in zip(images, removed, strict=True)])


@pytest.mark.parametrize(("size", "patch"), [(64, 8), (48, 16)])
def test_without_noise_it_is_grad_cams_imputation(size: int, patch: int) -> None:
    removed = patch_masks(size, patch, 5, seed=size)
    images = torch.rand(5, 3, size, size, generator=torch.Generator().manual_seed(0))
    ours = road_impute(images, removed, noise=0.0)
    torch.testing.assert_close(ours, grad_cam(images, removed), atol=ATOL, rtol=0)
    assert torch.equal(ours[~removed[:, None].expand_as(ours)], images[~removed[:, None].expand_as(images)])


def test_pixel_masks_and_sides_that_are_no_power_of_two() -> None:
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 37, 50, generator=generator)
    removed = torch.rand(3, 37, 50, generator=generator) < torch.tensor([0.2, 0.6, 0.95]).view(3, 1, 1)
    torch.testing.assert_close(road_impute(images, removed, noise=0.0), grad_cam(images, removed),
                               atol=ATOL, rtol=0)


def test_each_imputed_pixel_is_the_weighted_mean_of_its_neighbours() -> None:
    """The defining equation, checked with a convolution: x_i = Σ_j w_ij x_j / Σ_j w_ij over the image."""
    removed = patch_masks(64, 8, 3, seed=3)
    images = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    out = road_impute(images, removed, noise=0.0)
    corner, side = 1 / 12, 1 / 6
    kernel = torch.tensor([[corner, side, corner], [side, 0, side], [corner, side, corner]]).view(1, 1, 3, 3)
    total = F.conv2d(out.flatten(0, 1)[:, None], kernel, padding=1).view_as(out)
    weight = F.conv2d(torch.ones(1, 1, 64, 64), kernel, padding=1)
    mean = total / weight
    inside = removed[:, None].expand_as(out)
    assert (out - mean)[inside].abs().max() < ATOL


def test_affine_changes_of_the_input_commute() -> None:
    removed = patch_masks(32, 8, 2, seed=4)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    scale = torch.tensor([2.0, 0.5, 4.0]).view(1, 3, 1, 1)
    shift = torch.tensor([-1.0, 3.0, 0.2]).view(1, 3, 1, 1)
    torch.testing.assert_close(road_impute(images * scale + shift, removed, noise=0.0),
                               road_impute(images, removed, noise=0.0) * scale + shift, atol=4 * ATOL, rtol=0)


def test_noise_only_on_imputed_pixels_and_reproducible_per_image() -> None:
    removed = patch_masks(64, 8, 4, seed=5)
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    generators = lambda: [torch.Generator().manual_seed(k) for k in range(4)]  # noqa: E731
    noisy = road_impute(images, removed, generators=generators())
    clean = road_impute(images, removed, noise=0.0)
    inside = removed[:, None].expand_as(images)
    assert torch.equal(noisy[~inside], images[~inside])
    difference = (noisy - clean)[inside]
    assert abs(difference.std().item() - NOISE) < 0.05 * NOISE and abs(difference.mean().item()) < 1e-3
    # The same generator gives the same image whatever else is in the batch.
    alone = road_impute(images[2:3], removed[2:3], generators=[torch.Generator().manual_seed(2)])
    torch.testing.assert_close(alone, noisy[2:3], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="one generator per image"):
        road_impute(images, removed, generators=generators()[:2])


def test_an_image_with_nothing_kept_becomes_the_empty_value() -> None:
    images = torch.rand(2, 3, 16, 16)
    removed = torch.zeros(2, 16, 16, dtype=torch.bool)
    removed[0] = True
    removed[1, :8] = True
    out = road_impute(images, removed, noise=0.0, empty=0.25)
    assert torch.equal(out[0], torch.full_like(out[0], 0.25))
    torch.testing.assert_close(out[1:], grad_cam(images[1:], removed[1:]), atol=ATOL, rtol=0)


def test_road_perturbation_curves_do_not_depend_on_the_batch() -> None:
    loaded = tiny_loaded()
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    maps = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(6))
    targets = torch.tensor([1, 2, 3])
    kwargs = {"mean": loaded.data_config["mean"], "std": loaded.data_config["std"], "baseline": "road"}
    together = perturbation_curves(loaded.model, images, maps, targets, chunk_size=7, **kwargs)
    alone = perturbation_curves(loaded.model, images[1:2], maps[1:2], targets[1:2], **kwargs)
    for curve in together.probability:
        torch.testing.assert_close(together.probability[curve][1:2], alone.probability[curve],
                                   atol=1e-5, rtol=0)
    # Nothing removed at 0 %: the deletion curves start at the model's own probability.
    start = loaded.model(images).softmax(-1)[torch.arange(3), targets]
    torch.testing.assert_close(together.probability["positive"][:, 0], start, atol=1e-5, rtol=0)


def test_road_rows_of_an_evaluation_do_not_depend_on_the_batch_size() -> None:
    """What a Ray run relies on: the same rows whichever images share a batch."""
    loaded = tiny_loaded()
    samples = list(cluttered_samples(loaded, 3, seed=4))
    rows = {}
    for batch_size in (1, 3):
        evaluation = Evaluation(loaded, {"rollout": {}, "gae": {}}, metrics=["perturbation"], baseline="road",
                                batch_size=batch_size)
        rows[batch_size] = pd.DataFrame(evaluation.run(samples))
    assert (rows[1]["baseline"] == "road").all() and len(rows[1]) == 6
    pd.testing.assert_frame_equal(rows[1], rows[3], rtol=0, atol=1e-6)

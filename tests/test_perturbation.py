"""Perturbation curves against answers computed independently: a model whose evidence is known exactly."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from explainers.metrics.perturbation import (
    CURVES,
    FRACTIONS,
    baseline_images,
    fractions_every,
    perturbation_curves,
    switched_patches,
)

GRID, PATCH = (4, 4), 8
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.5)
BIAS = 0.1  # the logit of class 1: no exact tie with class 0 when the evidence is 0


class PatchEvidence(nn.Module):
    """Two classes: logit 0 = Σ_p w_p · (mean pixel of patch p, in pixel space), logit 1 = ``BIAS``."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.weights = nn.Parameter(weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
        pooled = F.avg_pool2d(pixels.mean(dim=1), PATCH)  # (B, gh, gw)
        evidence = (pooled * self.weights).flatten(1).sum(dim=1)
        return torch.stack([evidence, torch.full_like(evidence, BIAS)], dim=1)


def white_images(batch: int) -> torch.Tensor:
    """Pixel value 1 everywhere, normalised: a removed (black) patch takes away exactly its weight."""
    white = (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    return white.view(1, 3, 1, 1).expand(batch, 3, GRID[0] * PATCH, GRID[1] * PATCH)


def expected_curves(weights: np.ndarray, ranking: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """p(class 0) and top-1 (class 0) of each curve from the weights alone: evidence = Σ of patches shown."""
    order = np.argsort(-ranking.ravel(), kind="stable")
    w = weights.ravel()[order]
    n = len(w)
    counts = [int(np.floor(round(f * n, 9))) for f in FRACTIONS]
    evidence = {
        "positive": [w[k:].sum() for k in counts],
        "negative": [w[: n - k].sum() for k in counts],
        "insertion": [w[:k].sum() for k in counts],
    }
    margins = {c: np.array(e) - BIAS for c, e in evidence.items()}
    return {c: (1 / (1 + np.exp(-m)), (m > 0).astype(float)) for c, m in margins.items()}


def tiny_vit() -> nn.Module:
    """A random 32×32 ViT with 8×8 patches (a 4×4 grid) and 5 classes."""
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)
    return model.eval()


@pytest.fixture
def weights() -> torch.Tensor:
    return torch.randn(*GRID, generator=torch.Generator().manual_seed(3)) + 0.3


def test_curves_match_the_known_evidence(weights: torch.Tensor) -> None:
    model = PatchEvidence(weights)
    rankings = torch.stack([weights, -weights, torch.rand(*GRID, generator=torch.Generator().manual_seed(4))])
    curves = perturbation_curves(
        model, white_images(3), rankings, torch.zeros(3, dtype=torch.long), mean=MEAN, std=STD
    )
    for b, ranking in enumerate(rankings):
        for name, (probability, top1) in expected_curves(weights.numpy(), ranking.numpy()).items():
            np.testing.assert_allclose(curves.probability[name][b].numpy(), probability, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(curves.top1[name][b].numpy(), top1)


def test_a_perfect_ranking_beats_its_reverse(weights: torch.Tensor) -> None:
    model = PatchEvidence(weights)
    rankings = torch.stack([weights, -weights])
    curves = perturbation_curves(
        model, white_images(2), rankings, torch.zeros(2, dtype=torch.long), mean=MEAN, std=STD
    )
    perfect, reverse = 0, 1
    assert curves.auc("positive")[perfect] < curves.auc("positive")[reverse]
    assert curves.auc("negative")[perfect] > curves.auc("negative")[reverse]
    assert curves.auc("insertion")[perfect] > curves.auc("insertion")[reverse]
    for name, curve in CURVES.items():
        better = curves.auc(name)[perfect] > curves.auc(name)[reverse]
        assert bool(better) == curve.higher_is_better


def test_auc_is_the_trapezoid_rule(weights: torch.Tensor) -> None:
    curves = perturbation_curves(
        PatchEvidence(weights), white_images(2), torch.rand(2, *GRID), torch.zeros(2, dtype=torch.long),
        mean=MEAN, std=STD,
    )
    for name in CURVES:
        for measure, values in (("probability", curves.probability[name]), ("top1", curves.top1[name])):
            expected = np.trapezoid(values.numpy(), x=np.array(FRACTIONS), axis=-1)
            np.testing.assert_allclose(curves.auc(name, measure).numpy(), expected, rtol=1e-6)


def test_steps_are_whole_percentages_up_to_90() -> None:
    np.testing.assert_allclose(FRACTIONS, np.arange(10) / 10)
    assert fractions_every(30) == (0.0, 0.3, 0.6, 0.9)
    assert fractions_every(7)[-1] == 0.84 and len(fractions_every(1)) == 91
    for bad in (0, 91, 2.5, True):
        with pytest.raises(ValueError, match="whole percentage"):
            fractions_every(bad)


def test_switched_patches_are_the_top_k_of_the_ranking() -> None:
    maps = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(5))
    for name, curve in CURVES.items():
        switched = switched_patches(maps, curve, FRACTIONS)
        for b in range(3):
            values = maps[b].flatten().numpy()
            order = np.argsort(-values if curve.most_relevant_first else values)
            for s, f in enumerate(FRACTIONS):
                k = int(np.floor(round(f * 64, 9)))
                assert set(np.flatnonzero(switched[b, s].numpy())) == set(order[:k]), (name, f)


def test_step_zero_is_the_image_or_the_baseline() -> None:
    model = tiny_vit()
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    targets = torch.tensor([0, 1, 2, 3])
    curves = perturbation_curves(model, images, torch.rand(4, 4, 4), targets, mean=MEAN, std=STD)
    with torch.no_grad():
        on_image = model(images).softmax(-1)[torch.arange(4), targets]
        on_black = model(baseline_images(images, "black", MEAN, STD)).softmax(-1)[torch.arange(4), targets]
    torch.testing.assert_close(curves.probability["positive"][:, 0], on_image)
    torch.testing.assert_close(curves.probability["negative"][:, 0], on_image)
    torch.testing.assert_close(curves.probability["insertion"][:, 0], on_black)


def test_stacked_maps_and_small_chunks_give_the_same_curves() -> None:
    model = tiny_vit()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    maps = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(8))
    targets, labels = torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3])
    both = perturbation_curves(
        model, images, maps, targets, labels=labels, mean=MEAN, std=STD, baseline="blur"
    )
    for m in range(2):
        one = perturbation_curves(
            model, images, maps[m], targets, labels=labels, mean=MEAN, std=STD, baseline="blur", chunk_size=7
        )
        for name in CURVES:
            torch.testing.assert_close(both.probability[name][m], one.probability[name], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(both.top1[name][m], one.top1[name])
    assert both.auc("positive").shape == (2, 3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert not model.training


def test_baselines_in_pixel_space() -> None:
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    normalised = (pixels - mean) / std
    black = baseline_images(normalised, "black", MEAN, STD) * std + mean
    torch.testing.assert_close(black, torch.zeros_like(black))
    grey = baseline_images(normalised, "mean", MEAN, STD) * std + mean
    torch.testing.assert_close(grey, mean.expand_as(pixels))
    blurred = baseline_images(normalised, "blur", MEAN, STD, blur_sigma=2.0) * std + mean
    torch.testing.assert_close(blurred, TF.gaussian_blur(pixels, [13, 13], [2.0, 2.0]), rtol=1e-5, atol=1e-5)
    assert blurred.var() < pixels.var()
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_images(normalised, "white", MEAN, STD)


def test_unknown_curve_is_refused(weights: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="unknown curve"):
        perturbation_curves(
            PatchEvidence(weights), white_images(1), weights[None], torch.zeros(1, dtype=torch.long),
            mean=MEAN, std=STD, curves=("deletion",),
        )


def test_matches_quantus_region_perturbation() -> None:
    """Quantus's RegionPerturbation (Samek et al. 2017) removes one 8×8 region at a time in map order and
    reports ``p(x) − p(x perturbed)``; at k removed regions it must equal ``p(x) − p`` of our curve."""
    quantus = pytest.importorskip("quantus")
    model = tiny_vit()
    grey = (0.4,) * 3, (0.2,) * 3  # one mean and std for all channels: black is one number, -2
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(10))
    maps = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(11))
    targets = torch.tensor([0, 3, 4])
    ours = perturbation_curves(model, images, maps, targets, mean=grey[0], std=grey[1])
    attributions = maps.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, None].expand(-1, 3, -1, -1).numpy()
    for curve, order in (("positive", "morf"), ("negative", "lerf")):
        metric = quantus.RegionPerturbation(
            patch_size=8, order=order, regions_evaluation=16, perturb_baseline=-2.0, disable_warnings=True
        )
        drops = np.array(metric(model=model, x_batch=images.numpy(), y_batch=targets.numpy(),
                                a_batch=attributions, softmax=True, device="cpu", channel_first=True))
        start = ours.probability[curve][:, 0].numpy()
        for s, f in enumerate(FRACTIONS[1:], start=1):
            k = int(np.floor(round(f * 16, 9)))
            expected = start - drops[:, k - 1]
            np.testing.assert_allclose(ours.probability[curve][:, s].numpy(), expected, atol=1e-5)

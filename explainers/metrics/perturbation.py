"""Perturbation tests: how fast the model's belief falls (or rises) as patches are removed in map order.

Three curves, for a map ``m`` ``(gh, gw)`` over the model's own patches and a target class ``t``. The
patches are ranked by ``m`` (ties broken by patch index, row-major); at each fraction ``f`` of
``FRACTIONS = 0, 0.1, …, 0.9`` (or finer steps, :func:`fractions_every`) the first ``k = ⌊f · P⌋`` of
``P`` patches in that order are switched:

* ``positive``: remove the most relevant patches first (the *positive perturbation* of Chefer, Gur &
  Wolf, CVPR 2021; the *deletion* metric of Petsiuk, Das & Saenko, BMVC 2018, "RISE"). A faithful map
  destroys the evidence quickly: **lower is better**.
* ``negative``: remove the least relevant patches first (Chefer et al.'s *negative perturbation*). A
  faithful map keeps the evidence to the end: **higher is better**.
* ``insertion``: start from the baseline image and reveal the most relevant patches first (Petsiuk et
  al.'s *insertion*): **higher is better**.

Along each curve two things are recorded: ``p_t``, the softmax probability of the target class, and
top-1, whether ``argmax`` of the logits equals the label (the target when no label is given). Each curve
is summarised by its area ``AUC = Σ_s (f_{s+1} − f_s)(y_s + y_{s+1}) / 2`` (trapezoid rule over
``f ∈ [0, 0.9]``, the 0% point included, so an AUC lies in ``[0, 0.9]``).

A removed pixel takes the value of a baseline image, chosen in pixel space and normalised like the input
(``x̂ = (x − μ) / σ`` with the model's mean ``μ`` and std ``σ``): ``black`` (pixel 0, i.e. ``−μ/σ``),
``mean`` (pixel ``μ``, the mean colour of the model's training data, i.e. 0) or ``blur`` (a Gaussian
blur of the image itself, as in RISE; blurring commutes with the per-channel affine normalisation) or
``road``: ROAD's noisy linear imputation (Rong et al., ICML 2022; :mod:`.road`), where every perturbed
copy is imputed from its own kept pixels, so the baseline depends on the mask. The noise of a copy is
drawn from a generator seeded by the image's content and the mask, so it is the same whatever the batch
(and on every device).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn

from ..names import BASELINES
from .road import road_impute


def fractions_every(percent: int) -> tuple[float, ...]:
    """The fractions ``0, p, 2p, … ≤ 0.9`` for a whole-number step of ``percent`` % (1 … 90)."""
    if isinstance(percent, bool) or not isinstance(percent, int) or not 1 <= percent <= 90:
        raise ValueError(f"the perturbation step must be a whole percentage in 1 … 90, got {percent!r}")
    return tuple(k / 100 for k in range(0, 91, percent))


#: The standard steps: 0%, 10%, …, 90% of the patches.
FRACTIONS: tuple[float, ...] = fractions_every(10)
#: RISE blurs with σ = 5 pixels (Petsiuk et al. 2018, insertion baseline).
BLUR_SIGMA = 5.0


@dataclass(frozen=True)
class Curve:
    """One perturbation curve: where it starts, which patches go first, and which direction is better."""

    name: str
    label: str
    insert: bool  # start from the baseline and reveal patches (else start from the image and remove them)
    most_relevant_first: bool
    higher_is_better: bool


CURVES: dict[str, Curve] = {
    c.name: c
    for c in (
        Curve("positive", "Deletion, most relevant first (positive)", False, True, False),
        Curve("negative", "Deletion, least relevant first (negative)", False, False, True),
        Curve("insertion", "Insertion, most relevant first", True, True, True),
    )
}


@dataclass(frozen=True)
class PerturbationCurves:
    """Curves of a batch: ``probability[curve]`` and ``top1[curve]`` ``(B, S)`` at ``fractions`` ``(S,)``."""

    fractions: torch.Tensor
    probability: dict[str, torch.Tensor]
    top1: dict[str, torch.Tensor]

    def auc(self, curve: str, measure: str = "probability") -> torch.Tensor:
        """``(B,)`` trapezoid area under ``curve`` of ``measure`` (``probability`` or ``top1``)."""
        values = self.probability[curve] if measure == "probability" else self.top1[curve]
        return torch.trapezoid(values, self.fractions.to(values), dim=-1)


def baseline_images(
    images: torch.Tensor,
    baseline: str,
    mean: Sequence[float],
    std: Sequence[float],
    blur_sigma: float = BLUR_SIGMA,
) -> torch.Tensor:
    """The normalised ``(B, C, H, W)`` image whose pixels replace removed ones (see the module docstring);
    ``road`` has none (it depends on the mask): the images themselves stand in for it."""
    if baseline == "road":
        return images
    if baseline == "black":
        mu = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        sigma = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return (-mu / sigma).expand_as(images)
    if baseline == "mean":
        return torch.zeros_like(images)
    if baseline == "blur":
        radius = max(1, int(3 * blur_sigma + 0.5))
        return TF.gaussian_blur(images, [2 * radius + 1] * 2, [blur_sigma] * 2)
    raise ValueError(f"unknown baseline {baseline!r}: choose one of {', '.join(BASELINES)}")


def switched_patches(maps: torch.Tensor, curve: Curve, fractions: Sequence[float]) -> torch.Tensor:
    """``(B, S, P)`` bool: patch ``p`` is switched (removed, or revealed) at step ``s``.

    Patch ``p`` is switched when its position in the ranking is below ``k_s = ⌊f_s · P⌋``; the ranking is
    by decreasing map value for ``most_relevant_first`` curves, increasing otherwise, ties by index.
    """
    flat = maps.flatten(1)
    order = torch.argsort(flat, dim=1, descending=curve.most_relevant_first, stable=True)
    position = torch.argsort(order, dim=1)  # the inverse permutation: rank of every patch
    counts = torch.tensor([math.floor(round(f * flat.shape[1], 9)) for f in fractions], device=maps.device)
    return position[:, None, :] < counts[None, :, None]


@torch.no_grad()
def perturbation_curves(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    labels: torch.Tensor | None = None,
    baseline: str = "black",
    curves: Sequence[str] = tuple(CURVES),
    fractions: Sequence[float] = FRACTIONS,
    blur_sigma: float = BLUR_SIGMA,
    chunk_size: int = 512,
) -> PerturbationCurves:
    """Perturbation ``curves`` of normalised ``images`` ``(B, C, H, W)`` ranked by ``maps`` ``(B, gh, gw)``.

    ``maps`` may also be ``(M, B, gh, gw)``: M maps of the same images (e.g. one per method); the curves
    are then ``(M, B, S)``. Each map cell is one patch of the model (``gh × gw`` is its patch grid),
    upsampled to pixels by nearest neighbour. Identical copies (the unperturbed image at 0% of every
    deletion curve, the baseline at 0% of every insertion curve, equal steps) go through the model once;
    the distinct copies are built on the model's device in no-grad batches of ``chunk_size``, and only one
    chunk of copies is held in memory at a time. The model is only called, never modified.
    """
    unknown = [c for c in curves if c not in CURVES]
    if unknown:
        raise ValueError(f"unknown curve {unknown[0]!r}: choose from {', '.join(CURVES)}")
    param = next(model.parameters())
    device = param.device
    images = images.to(device=device, dtype=param.dtype)
    targets = targets.to(device)
    labels = targets if labels is None else labels.to(device)
    replacement = baseline_images(images, baseline, mean, std, blur_sigma)
    batch, steps, grid = images.shape[0], len(fractions), maps.shape[-2:]
    lead = maps.shape[:-2]
    flat_maps = maps.to(device).reshape(-1, *grid)

    # Every copy is (image, which patches show the image rather than the baseline); run each distinct one.
    switched = torch.cat([switched_patches(flat_maps, CURVES[c], fractions) for c in curves], dim=1)
    reveal = torch.tensor([CURVES[c].insert for c in curves], device=device).repeat_interleave(steps)
    show_image = (switched == reveal[None, :, None]).flatten(0, 1)
    image_index = torch.arange(batch, device=device).repeat(flat_maps.shape[0] // batch)
    image_index = image_index.repeat_interleave(len(curves) * steps)
    copies = torch.cat([image_index[:, None], show_image], dim=1)
    copies, inverse = torch.unique(copies, dim=0, return_inverse=True)

    road = baseline == "road"
    digests = [hashlib.sha256(image.cpu().numpy().tobytes()).digest() for image in images] if road else []
    probability, top1 = [], []
    for start in range(0, copies.shape[0], chunk_size):
        rows = copies[start : start + chunk_size, 0]
        keep = copies[start : start + chunk_size, 1:].view(-1, 1, *grid).to(images.dtype)
        keep = F.interpolate(keep, size=images.shape[-2:], mode="nearest").bool()
        if road:
            shown = copies[start : start + chunk_size, 1:]
            generators = [
                torch.Generator().manual_seed(_road_seed(digests[r], bits))
                for r, bits in zip(rows.tolist(), shown, strict=True)
            ]
            perturbed = road_impute(images[rows], ~keep[:, 0], generators=generators)
        else:
            perturbed = torch.where(keep, images[rows], replacement[rows])
        logits = model(perturbed).float()
        probability.append(logits.softmax(dim=-1).gather(1, targets[rows, None])[:, 0])
        top1.append((logits.argmax(dim=-1) == labels[rows]).float())

    def per_curve(values: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        table = torch.cat(values)[inverse].view(*lead, len(curves), steps)
        return {c: table[..., i, :] for i, c in enumerate(curves)}

    x = torch.tensor(fractions, dtype=torch.float32, device=device)
    return PerturbationCurves(fractions=x, probability=per_curve(probability), top1=per_curve(top1))


def _road_seed(image_digest: bytes, shown: torch.Tensor) -> int:
    """The seed of one ROAD copy's noise: a hash of the image's content and of its shown patches."""
    bits = shown.to(torch.uint8).cpu().numpy().tobytes()
    return int.from_bytes(hashlib.sha256(image_digest + bits).digest()[:8], "little") >> 1

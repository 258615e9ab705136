"""How much two explanations of the same image agree, batched over images.

Both measures compare maps of the same grid patch by patch and are invariant to any strictly
increasing rescaling of either map, so methods whose values live on unrelated scales (attention
probabilities, rollout flows, gradient products) can be compared directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import combinations

import pandas as pd
import torch


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks ``1..N`` along the last dimension, tied values sharing the mean of their ranks.

    For a value ``v`` with ``a`` values strictly below it and ``b`` values at most ``v``, its tie group
    holds ranks ``a+1 .. b``, so its average rank is ``(a + 1 + b) / 2``. (Float64 throughout.)
    """
    values = values.double().contiguous()
    ordered = values.sort(dim=-1).values
    below = torch.searchsorted(ordered, values, side="left")
    at_most = torch.searchsorted(ordered, values, side="right")
    return (below + 1 + at_most).double() / 2.0


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation ρ between paired maps, one value per image.

    ρ = Pearson(r(a), r(b)) = Σ (r_a − r̄)(r_b − r̄) / √(Σ (r_a − r̄)² · Σ (r_b − r̄)²), with average
    ranks r for ties (Spearman 1904; the statistic of ``scipy.stats.spearmanr``). Used to compare
    saliency maps by Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018.

    Args:
        a, b: maps ``(B, ...)`` of the same shape (e.g. ``(B, gh, gw)``); everything after the batch
            dimension is compared as one vector.

    Returns:
        ``(B,)`` float64 in [-1, 1]; NaN where a map is constant (its ranks have no variance).
    """
    ranks_a, ranks_b = (average_ranks(_flat(m, a.shape)) for m in (a, b))
    ranks_a = ranks_a - ranks_a.mean(dim=-1, keepdim=True)
    ranks_b = ranks_b - ranks_b.mean(dim=-1, keepdim=True)
    denominator = (ranks_a.square().sum(-1) * ranks_b.square().sum(-1)).sqrt()
    rho = (ranks_a * ranks_b).sum(-1) / denominator
    return rho.clamp(-1.0, 1.0).where(denominator > 0, torch.nan)


def top_region(relevance: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean mask of the top ``fraction`` of each map: cells at least the ⌈fraction·N⌉-th largest value.

    Cells tied with that value are all included, so the region never depends on the order of ties
    (and may be larger than ⌈fraction·N⌉ cells; a constant map is selected whole).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"the top fraction must be in (0, 1], got {fraction}")
    flat = relevance.reshape(relevance.shape[0], -1).float()
    count = max(1, math.ceil(fraction * flat.shape[-1]))
    threshold = flat.topk(count, dim=-1).values[:, -1:]
    return (flat >= threshold).reshape(relevance.shape)


def top_k_iou(a: torch.Tensor, b: torch.Tensor, fraction: float = 0.1) -> torch.Tensor:
    """Intersection over union of the top ``fraction`` regions of paired maps, one value per image.

    IoU = |T_a ∩ T_b| / |T_a ∪ T_b| with T = :func:`top_region`; 1 when both methods single out the
    same patches, 0 when their most relevant patches are disjoint. The top-k intersection was used to
    compare explanations by Ghorbani, Abid & Zou, "Interpretation of Neural Networks is Fragile",
    AAAI 2019.

    Returns:
        ``(B,)`` float64 in [0, 1].
    """
    region_a, region_b = (top_region(_flat(m, a.shape), fraction) for m in (a, b))
    intersection = (region_a & region_b).sum(-1)
    union = (region_a | region_b).sum(-1)
    return intersection.double() / union.double()


def agreement_table(maps: Mapping[str, torch.Tensor], fraction: float = 0.1) -> pd.DataFrame:
    """Spearman ρ and top-``fraction`` IoU for every pair of methods, averaged over the images.

    Args:
        maps: method name → maps ``(B, gh, gw)`` of the same images.

    Returns:
        One row per pair (in the order of ``maps``), columns ``method A``, ``method B``, ``spearman``
        (the mean over images where it is defined, NaN if it is nowhere) and ``iou``.
    """
    rows = [
        {
            "method A": first,
            "method B": second,
            "spearman": float(spearman(maps[first], maps[second]).nanmean()),
            "iou": float(top_k_iou(maps[first], maps[second], fraction).mean()),
        }
        for first, second in combinations(maps, 2)
    ]
    return pd.DataFrame(rows, columns=["method A", "method B", "spearman", "iou"])


def paired_table(
    first: Mapping[str, torch.Tensor], second: Mapping[str, torch.Tensor], fraction: float = 0.1
) -> pd.DataFrame:
    """Spearman ρ and top-``fraction`` IoU of each method's map in ``first`` with the same method's map in
    ``second`` (e.g. one image explained by two models, on a common grid), averaged over the images.

    Args:
        first, second: method name → maps ``(B, ...)``; methods in ``first`` only are left out.

    Returns:
        One row per common method (in the order of ``first``), columns ``method``, ``spearman``, ``iou``.
    """
    rows = [
        {
            "method": method,
            "spearman": float(spearman(first[method], second[method]).nanmean()),
            "iou": float(top_k_iou(first[method], second[method], fraction).mean()),
        }
        for method in first
        if method in second
    ]
    return pd.DataFrame(rows, columns=["method", "spearman", "iou"])


def _flat(relevance: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if relevance.shape != shape or relevance.dim() < 2:
        raise ValueError(f"maps must be batched (B, ...) and of the same shape, got {shape} and "
                         f"{tuple(relevance.shape)}")
    return relevance.detach().reshape(relevance.shape[0], -1)

"""Statistics of the captured attention, per layer and head, and one-number summaries of a map.

All functions read a :class:`~explainers.capture.Capture` (no forward pass), work layer by layer to
keep memory at one block's attention, and return float32 tensors on the capture's device.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from .capture import Capture


def _cls_index(capture: Capture) -> int:
    if capture.layout.cls_index is None:
        raise ValueError(
            f"this model has no class token (its output reads the {capture.layout.readout} readout): "
            "class-token statistics do not apply"
        )
    return capture.layout.cls_index


def attention_entropy(capture: Capture, *, query: Literal["all", "cls"] = "all") -> torch.Tensor:
    """Shannon entropy (nats) of the attention rows, ``(B, L, H)``.

    ``H(A_i) = −Σ_j A_ij log A_ij`` over all keys j (prefix tokens included), with ``0 log 0 = 0``;
    averaged over every query token i that attends in the block (``query="all"``; CaiT's class token
    in its class-attention blocks only, its patches in its patch blocks only) or of the class token's row only
    (``query="cls"``). 0 means a head looks at a single token, ``log N`` that it attends uniformly.
    """
    if query not in ("all", "cls"):
        raise ValueError(f"query must be 'all' or 'cls', got {query!r}")
    cls = _cls_index(capture) if query == "cls" else 0
    per_layer = []
    for attention in capture.attentions:
        rows = attention.float() if query == "all" else attention[:, :, cls : cls + 1].float()
        present = rows.sum(dim=-1) > 0  # CaiT: tokens that do not attend in a block have zero rows
        entropy = -torch.special.xlogy(rows, rows).sum(dim=-1)
        per_layer.append((entropy * present).sum(dim=-1) / present.sum(dim=-1).clamp_min(1))
    return torch.stack(per_layer, dim=1)


def mean_attention_distance(capture: Capture, patch_size: int | tuple[int, int]) -> torch.Tensor:
    """Mean attention distance in pixels, ``(B, L, H)``, as in Dosovitskiy et al., ICLR 2021, Fig. 7.

    For each query patch i, the distance to every key patch j (Euclidean, between patch centres, in
    input pixels: ``√((Δrow·p_h)² + (Δcol·p_w)²)``) weighted by the attention ``A_ij``; averaged over
    the query patches. Only patch-to-patch attention is used (prefix tokens have no position) and each
    row is renormalised over the patches, so the value is a true weighted mean distance. Small values
    are local heads, large ones global heads ("attention distance ... analogous to receptive field
    size in CNNs").
    """
    patch_h, patch_w = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    grid_h, grid_w = capture.layout.grid
    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    centres = torch.stack([rows.flatten() * patch_h, cols.flatten() * patch_w], dim=-1).float()
    distance = torch.cdist(centres, centres).to(capture.device)  # (P, P)
    start = capture.layout.num_prefix
    per_layer = []
    for attention in capture.attentions:
        patches = attention[:, :, start:, start:].float()
        weights = patches / patches.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        per_layer.append((weights * distance).sum(dim=-1).mean(dim=-1))
    return torch.stack(per_layer, dim=1)


def cls_attention(capture: Capture) -> torch.Tensor:
    """The class token's attention to every patch, ``(B, L, H, gh·gw)`` (row-major patch order)."""
    cls, start = _cls_index(capture), capture.layout.num_prefix
    return torch.stack([a[:, :, cls, start:].float() for a in capture.attentions], dim=1)


def map_entropy(relevance: torch.Tensor) -> torch.Tensor:
    """Normalised entropy ``H(p) / log P`` of each map seen as a distribution ``p = m / Σm``, ``(B,)``.

    1 for a flat map, 0 when all the relevance is on one patch (an all-zero map counts as flat).
    """
    flat = relevance.reshape(relevance.shape[0], -1).float().clamp_min(0)
    total = flat.sum(dim=-1, keepdim=True)
    p = torch.where(total > 0, flat / total.clamp_min(torch.finfo(torch.float32).tiny), 1.0 / flat.shape[-1])
    return -torch.special.xlogy(p, p).sum(dim=-1) / torch.log(torch.tensor(float(flat.shape[-1])))


def top_mass(relevance: torch.Tensor, fraction: float = 0.1) -> torch.Tensor:
    """Share of each map's total relevance held by its top ``fraction`` of patches, ``(B,)`` in [0, 1]."""
    flat = relevance.reshape(relevance.shape[0], -1).float().clamp_min(0)
    count = max(1, round(fraction * flat.shape[-1]))
    total = flat.sum(dim=-1)
    return torch.where(total > 0, flat.topk(count, dim=-1).values.sum(-1) / total, fraction)


def gini(relevance: torch.Tensor) -> torch.Tensor:
    """Gini coefficient of each map's values, ``(B,)``: 0 for a flat map, → 1 when one patch holds all.

    ``G = Σ_i (2i − P − 1) x_(i) / (P Σ x)`` with the values sorted ascending, ``i = 1..P``.
    """
    flat = relevance.reshape(relevance.shape[0], -1).float().clamp_min(0).sort(dim=-1).values
    count = flat.shape[-1]
    weights = 2 * torch.arange(1, count + 1, device=flat.device, dtype=flat.dtype) - count - 1
    total = flat.sum(dim=-1)
    return torch.where(total > 0, (flat * weights).sum(-1) / (count * total), 0.0)


#: One-number summaries of a ``(B, gh, gw)`` map, by name (for parameter sweeps).
MAP_SUMMARIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "entropy": map_entropy,
    "top_mass": top_mass,
    "gini": gini,
}

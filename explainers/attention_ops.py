"""Tensor maths shared by the attention explainers. Everything is batched and stays on the device."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

FUSIONS = {
    "mean": lambda a: a.mean(dim=1),
    "max": lambda a: a.amax(dim=1),
    "min": lambda a: a.amin(dim=1),
}


def fuse_heads(attention: torch.Tensor, how: str) -> torch.Tensor:
    """``(B, H, N, N)`` → ``(B, N, N)`` by the mean, max or min over heads, in float32."""
    return FUSIONS[how](attention.float())


def kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th smallest value (1-based) of each row of ``values`` ``(R, M)``, shape ``(R, 1)``.

    On the CPU NumPy's introselect (``np.partition``) is about eight times faster than ``torch.kthvalue``,
    but twenty times slower when the ``k``-th value falls in a long run of equal values. The run that
    occurs in attention maps is zeros (a ReLU or an earlier discard), so a row of non-negative values
    with at least ``k`` zeros is answered by 0 and only the other rows are partitioned.
    """
    if values.device.type != "cpu":
        return values.kthvalue(k, dim=1, keepdim=True).values
    zero_run = values.amin(dim=1) == 0  # non-negative rows with zeros; count them only there
    with_zeros = _rows(zero_run)
    zero_run[with_zeros] = torch.count_nonzero(values[with_zeros] == 0, dim=1) >= k
    threshold = torch.zeros(values.shape[0], 1, dtype=values.dtype)
    partitioned = _rows(~zero_run)
    if values[partitioned].numel():
        kth = np.partition(values[partitioned].numpy(), k - 1, axis=1)[:, k - 1 : k]
        threshold[partitioned] = torch.from_numpy(kth)
    return threshold


def _rows(selected: torch.Tensor) -> torch.Tensor | slice:
    """Index of the ``True`` rows: a slice when all are (no gather, no copy)."""
    return slice(None) if bool(selected.all()) else selected.nonzero().squeeze(1)


def discard_lowest(fused: torch.Tensor, ratio: float, keep_index: int = 0) -> torch.Tensor:
    """Zero, per image, the ``⌊ratio · (N-1)²⌋`` smallest entries of ``fused`` ``(B, N, N)``.

    Candidates are the entries whose row and column are both other than ``keep_index`` (the CLS token):
    the CLS token's own row and column are never dropped. The selection is exact: ties at the threshold
    are dropped in row-major order until exactly that many entries are zero. (vit-explain ranked the
    whole flattened matrix, spared only entry (0, 0), and applied it to the first image of a batch only.)
    """
    batch, n, _ = fused.shape
    count = int(ratio * (n - 1) ** 2)
    if count == 0:
        return fused
    out = fused.clone()  # ranked with the CLS row and column out of reach, then zeroed in place
    out[:, keep_index, :] = torch.inf
    out[:, :, keep_index] = torch.inf
    ranked = out.view(batch, -1)
    threshold = kth_smallest(ranked, count)
    keep = ranked > threshold
    excess = ranked.shape[1] - keep.sum(dim=1, dtype=torch.int32) - count  # ties at the threshold
    tied_rows = _rows((excess > 0) & (threshold[:, 0] != 0))  # tied zeros are zero whether dropped or not
    if excess[tied_rows].numel():
        tied = ranked[tied_rows] == threshold[tied_rows]
        to_drop = tied.sum(dim=1, keepdim=True) - excess[tied_rows, None]
        keep[tied_rows] |= tied & (tied.cumsum(dim=1) > to_drop)
    ranked.mul_(keep)
    out[:, keep_index, :] = fused[:, keep_index, :]
    out[:, :, keep_index] = fused[:, :, keep_index]
    return out


def cls_row_product(
    matrices: Iterable[torch.Tensor], cls_index: int, num_tokens: int, *, normalise: bool
) -> torch.Tensor:
    """CLS row of ``M_L ⋯ M_1`` with ``M_l = Ā_l + I`` (row-normalised when ``normalise``).

    ``matrices`` yields the fused ``Ā_l`` ``(B, N, N)`` from the **last** block to the first. Only the
    CLS row is needed, so it is computed as a row vector times L matrices (``O(L·N²)`` per image) rather
    than L full matrix products (``O(L·N³)``): ``v ← v · M_l``. With ``D = diag(rowsum(Ā_l) + 1)``,
    ``v · D⁻¹(Ā_l + I) = (v ⊘ d) Ā_l + v ⊘ d``, so ``Ā_l + I`` is never built.
    """
    v: torch.Tensor | None = None
    for fused in matrices:
        if v is None:
            v = torch.zeros(fused.shape[0], 1, num_tokens, device=fused.device, dtype=fused.dtype)
            v[:, 0, cls_index] = 1.0
        if normalise:
            v = v / (fused.sum(dim=-1) + 1.0).unsqueeze(1)
        v = torch.bmm(v, fused) + v
    assert v is not None, "at least one block is needed"
    return v.squeeze(1)

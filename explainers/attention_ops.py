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

    On the CPU NumPy's introselect (``np.partition``) is about ten times faster than ``torch.kthvalue``.
    """
    if values.device.type == "cpu":
        return torch.from_numpy(np.partition(values.numpy(), k - 1, axis=1)[:, k - 1 : k])
    return values.kthvalue(k, dim=1, keepdim=True).values


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
    ranked = fused.clone()
    ranked[:, keep_index, :] = torch.inf
    ranked[:, :, keep_index] = torch.inf
    ranked = ranked.view(batch, -1)
    threshold = kth_smallest(ranked, count)
    below = ranked < threshold
    tied = ranked == threshold
    drop = below | (tied & (tied.cumsum(dim=1) <= count - below.sum(dim=1, keepdim=True)))
    return fused.masked_fill(drop.view_as(fused), 0.0)


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

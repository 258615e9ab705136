"""Tensor maths shared by the attention explainers. Everything is batched and stays on the device."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from .capture import Capture

FUSIONS = {"mean": torch.mean, "max": torch.amax, "min": torch.amin}


def fuse_heads(attention: torch.Tensor, how: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, H, N, N)`` → ``(B, N, N)`` by the mean, max or min over heads, in float32.

    ``out``: a float32 ``(B, N, N)`` workspace to write into (a layer loop can reuse one: fresh tensors of
    this size cost a page fault per 4 KiB on every allocation).
    """
    if out is None:
        out = torch.empty(attention.shape[:1] + attention.shape[2:], device=attention.device)
    return FUSIONS[how](attention.float(), dim=1, out=out)


def kth_smallest(values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k``-th smallest value (1-based) of each row of ``values`` ``(R, M)``, shape ``(R, 1)``, and
    the surplus ``#{entries ≤ it} - k`` per row ``(R,)`` (non-zero only when it is tied).

    On the CPU NumPy's introselect (``np.partition``) is about eight times faster than ``torch.kthvalue``,
    but twenty times slower when the ``k``-th value falls in a long run of equal values. The run that
    occurs in attention maps is zeros (a ReLU or an earlier discard), so a row of non-negative values
    with at least ``k`` zeros is answered by 0 and only the other rows are partitioned.
    """
    if values.device.type != "cpu":
        threshold = values.kthvalue(k, dim=1, keepdim=True).values
        return threshold, (values <= threshold).sum(dim=1) - k
    threshold = torch.zeros(values.shape[0], 1, dtype=values.dtype)
    surplus = torch.zeros(values.shape[0], dtype=torch.long)
    zero_run = values.amin(dim=1) == 0  # non-negative rows with zeros; count them only there
    with_zeros = _rows(zero_run)
    zeros = torch.count_nonzero(values[with_zeros] == 0, dim=1)
    zero_run[with_zeros] = zeros >= k
    surplus[with_zeros] = zeros - k
    partitioned = _rows(~zero_run)
    rows = values[partitioned]
    if rows.numel():
        ordered = np.partition(rows.numpy(), k - 1, axis=1)
        kth = ordered[:, k - 1 : k]
        threshold[partitioned] = torch.from_numpy(kth)
        surplus[partitioned] = torch.from_numpy(np.count_nonzero(ordered[:, k:] == kth, axis=1))
    return threshold, surplus


def _rows(selected: torch.Tensor) -> torch.Tensor | slice:
    """Index of the ``True`` rows: a slice when all are (no gather, no copy)."""
    return slice(None) if bool(selected.all()) else selected.nonzero().squeeze(1)


def _zero_at_or_below(rows: torch.Tensor, threshold: torch.Tensor) -> None:
    """``rows[r, j] = 0`` wherever ``rows[r, j] ≤ threshold[r]``, in place."""
    if rows.device.type == "cpu":  # one pass per row, three times faster than comparing then multiplying
        for row, value in zip(rows, threshold[:, 0].tolist(), strict=True):
            F.threshold_(row, value, 0.0)
    else:
        rows.mul_(rows > threshold)


def discard_lowest_(fused: torch.Tensor, ratio: float, keep_index: int | None = 0) -> torch.Tensor:
    """Zero, per image and in place, the ``⌊ratio · M²⌋`` smallest entries of ``fused`` ``(B, N, N)``.

    Candidates are the entries whose row and column are both other than ``keep_index`` (the class token
    when the output reads it; ``M = N - 1``): its own row and column are never dropped. With
    ``keep_index=None`` (mean or attention-pool readouts, whose readout row is applied outside these
    blocks and never discarded) every entry is a candidate and ``M = N``. The selection is exact: ties at
    the threshold are dropped in row-major order until exactly that many entries are zero.
    (vit-explain ranked the whole flattened matrix, spared only entry (0, 0), and applied it to the
    first image of a batch only.) Returns ``fused``; callers pass a fresh fused matrix, so no copy of it
    is made.
    """
    batch, n, _ = fused.shape
    count = int(ratio * (n if keep_index is None else n - 1) ** 2)
    if count == 0:
        return fused
    if keep_index is None:
        _discard_rows_(fused.view(batch, -1), count)
        return fused
    cls_row, cls_column = fused[:, keep_index, :].clone(), fused[:, :, keep_index].clone()
    fused[:, keep_index, :] = torch.inf  # out of reach of the ranking
    fused[:, :, keep_index] = torch.inf
    _discard_rows_(fused.view(batch, -1), count)
    fused[:, keep_index, :] = cls_row
    fused[:, :, keep_index] = cls_column
    return fused


def _discard_rows_(ranked: torch.Tensor, count: int) -> None:
    """Zero the ``count`` smallest entries of each row of ``ranked`` ``(B, M)`` in place (ties: last stay)."""
    threshold, surplus = kth_smallest(ranked, count)
    tied_rows = _rows((surplus > 0) & (threshold[:, 0] != 0))  # tied zeros are zero whether dropped or not
    spared = None
    if surplus[tied_rows].numel():  # of the entries tied at the threshold, the last `surplus` stay
        tied = ranked[tied_rows] == threshold[tied_rows]  # before any entry is zeroed
        spared = tied & (tied.cumsum(dim=1) > tied.sum(dim=1, keepdim=True) - surplus[tied_rows, None])
    _zero_at_or_below(ranked, threshold)
    if spared is not None:
        ranked[tied_rows] = torch.where(spared, threshold[tied_rows], ranked[tied_rows])


def readout_row(
    capture: Capture,
    fuse: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    *,
    normalise: bool,
) -> torch.Tensor:
    """ρ ``(B, N)``: the row of token weights the model's output reads, where attention products start.

    - class token: ρ = e_cls;
    - mean of the pooled tokens S: ρ = 1_S / |S|;
    - attention pool (SigLIP's latent query q over the last block's tokens): one more attention step,
      weighted like every block by the method's ``fuse(A, ∂y/∂A)`` (e.g. the head mean for rollout):
      ρ = fuse(A_pool, ∂y/∂A_pool)[q], divided by its sum when ``normalise`` (rollout). No identity is
      added: the latent is not one of the tokens and no residual runs from a token to it.
    """
    layout = capture.layout
    if layout.readout != "attention_pool":
        return layout.readout_vector(capture.batch_size, capture.device)
    if capture.pool_attention is None:
        raise ValueError("this capture has no attention-pool map although the layout reads one")
    row = fuse(capture.pool_attention, capture.pool_gradient)[:, 0].float()
    if normalise:
        row = row / row.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(row.dtype).tiny)
    return row


def readout_product(
    matrices: Iterable[torch.Tensor], readout: torch.Tensor, *, normalise: bool
) -> torch.Tensor:
    """ρ · M_L ⋯ M_1 with ``M_l = Ā_l + I`` (row-normalised when ``normalise``), ``(B, N)``.

    ``readout`` is ρ ``(B, N)`` (see :func:`readout_row`; e_cls gives the CLS row of the product) and
    ``matrices`` yields the fused ``Ā_l`` ``(B, N, N)`` from the **last** block to the first. Only this
    row is needed, so it is computed as a row vector times L matrices (``O(L·N²)`` per image) rather
    than L full matrix products (``O(L·N³)``): ``v ← v · M_l``. With ``D = diag(rowsum(Ā_l) + 1)``,
    ``v · D⁻¹(Ā_l + I) = (v ⊘ d) Ā_l + v ⊘ d``, so ``Ā_l + I`` is never built.
    """
    v: torch.Tensor | None = None
    for fused in matrices:
        if v is None:
            v = readout.to(device=fused.device, dtype=fused.dtype).unsqueeze(1)
        if normalise:
            v = v / (fused.sum(dim=-1) + 1.0).unsqueeze(1)
        v = torch.bmm(v, fused) + v
    assert v is not None, "at least one block is needed"
    return v.squeeze(1)

"""Tensor maths shared by the attention explainers. Everything is batched and stays on the device."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from .capture import Capture

FUSIONS = {"mean": torch.mean, "max": torch.amax, "min": torch.amin}
#: Rows shorter than this are partitioned whole; longer ones select from a sample's bracket first.
SAMPLED_SELECT_MIN = 4096


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

    On a GPU ``torch.kthvalue``; on the CPU :func:`_kth_row` for each row (NumPy, exact, several times
    faster).
    """
    if values.device.type != "cpu":
        threshold = values.kthvalue(k, dim=1, keepdim=True).values
        return threshold, (values <= threshold).sum(dim=1) - k
    found = [_kth_row(row, k) for row in values.detach().numpy()]
    threshold = torch.tensor([value for value, _ in found], dtype=values.dtype)[:, None]
    return threshold, torch.tensor([surplus for _, surplus in found], dtype=torch.long)


def _kth_row(row: np.ndarray, k: int) -> tuple[float, int]:
    """``(k-th smallest value, #{entries ≤ it} − k)`` of one row, exactly.

    NumPy's introselect (``np.partition``) is about eight times faster than ``torch.kthvalue`` but twenty
    times slower when the ``k``-th value falls in a long run of equal values. The run that occurs in
    attention maps is zeros (a ReLU or an earlier discard), so a non-negative row with at least ``k``
    zeros is answered by 0 at once. Long rows select from a sample's bracket first (after Floyd & Rivest,
    CACM 1975): with ``p = k/M``, the ranks ``s·p ± (4√(s·p·(1−p)) + 2)`` of an evenly strided sample of
    ``s ≈ M^⅔`` entries bracket the answer with values ``lo ≤ hi``; one pass counts the entries below
    ``lo`` and keeps those in ``[lo, hi]``, and only these are partitioned. If the bracket misses, the
    whole row is partitioned, so the answer is always exact. (A whole-row introselect costs as much as
    about fifteen passes.)
    """
    if row.min() == 0:
        zeros = int(np.count_nonzero(row == 0))
        if zeros >= k:
            return 0.0, zeros - k
    size = row.size
    if size >= SAMPLED_SELECT_MIN:
        sample = row[:: max(1, round(size ** (1 / 3)))]
        fraction = k / size  # the answer's rank in a sample is about s·p, with deviation √(s·p·(1−p))
        position = (k - 0.5) * sample.size / size
        margin = 4.0 * (sample.size * fraction * (1.0 - fraction)) ** 0.5 + 2.0
        low_rank = int(min(max(position - margin, 0), sample.size - 1))
        high_rank = int(min(max(position + margin, 0), sample.size - 1))
        bracket = np.partition(sample, (low_rank, high_rank))
        low, high = bracket[low_rank], bracket[high_rank]
        keep = row >= low  # one comparison serves the count below and the bracket
        below = size - int(np.count_nonzero(keep))
        keep &= row <= high
        inside = np.compress(keep, row)  # (np.compress: faster than boolean indexing)
        rank = k - below  # the answer's rank among the entries inside the bracket (1-based)
        if 1 <= rank <= inside.size:
            value = np.partition(inside, rank - 1)[rank - 1]
            return float(value), below + int(np.count_nonzero(inside <= value)) - k
    ordered = np.partition(row, k - 1)
    return float(ordered[k - 1]), int(np.count_nonzero(ordered[k:] == ordered[k - 1]))


def discard_lowest_(fused: torch.Tensor, ratio: float, keep_index: int | None = 0) -> torch.Tensor:
    """Zero, per image and in place, the ``⌊ratio · M²⌋`` smallest entries of ``fused`` ``(B, N, N)``.

    Candidates are the entries whose row and column are both other than ``keep_index`` (the class token
    when the output reads it; ``M = N - 1``): its own row and column are never dropped. With
    ``keep_index=None`` (mean or attention-pool readouts, whose readout row is applied outside these
    blocks and never discarded) every entry is a candidate and ``M = N``. The selection is exact: ties at
    the threshold are dropped in row-major order until exactly that many entries are zero.
    (vit-explain ranked the whole flattened matrix, spared only entry (0, 0), and applied it to the
    first image of a batch only.) Returns ``fused``; callers pass a fresh fused matrix, so no copy of it
    is made. On the CPU each image is one NumPy selection and one in-place pass (``F.threshold_``): a
    handful of calls, as an image at a time is what the dashboard recomputes.
    """
    n = fused.shape[-1]
    count = int(ratio * (n if keep_index is None else n - 1) ** 2)
    if count == 0:
        return fused
    if fused.device.type == "cpu":
        work = fused.detach().contiguous()  # the same memory unless a strided view was passed
        for matrix in work:
            _discard_image_(matrix, count, keep_index)
        if work.data_ptr() != fused.data_ptr():
            fused.copy_(work)
        return fused
    return _discard_batched_(fused, count, keep_index)


def _discard_batched_(fused: torch.Tensor, count: int, keep_index: int | None) -> torch.Tensor:
    """:func:`discard_lowest_` as whole-batch tensor operations (the GPU's way), in place."""
    batch = fused.shape[0]
    if keep_index is not None:
        cls_row, cls_column = fused[:, keep_index, :].clone(), fused[:, :, keep_index].clone()
        fused[:, keep_index, :] = torch.inf  # out of reach of the ranking
        fused[:, :, keep_index] = torch.inf
    ranked = fused.view(batch, -1)
    threshold, surplus = kth_smallest(ranked, count)
    tied_rows = (surplus > 0) & (threshold[:, 0] != 0)  # tied zeros are zero whether dropped or not
    spared = None
    if bool(tied_rows.any()):  # of the entries tied at the threshold, the last `surplus` stay
        tied = ranked[tied_rows] == threshold[tied_rows]  # before any entry is zeroed
        spared = tied & (tied.cumsum(dim=1) > tied.sum(dim=1, keepdim=True) - surplus[tied_rows, None])
    ranked.mul_(ranked > threshold)
    if spared is not None:
        ranked[tied_rows] = torch.where(spared, threshold[tied_rows], ranked[tied_rows])
    if keep_index is not None:
        fused[:, keep_index, :] = cls_row
        fused[:, :, keep_index] = cls_column
    return fused


def _discard_image_(matrix: torch.Tensor, count: int, keep_index: int | None) -> None:
    """:func:`discard_lowest_` of one CPU matrix ``(N, N)``, in place."""
    array = matrix.numpy()
    if keep_index is not None:
        cls_row, cls_column = array[keep_index].copy(), array[:, keep_index].copy()
        array[keep_index] = np.inf  # out of reach of the ranking
        array[:, keep_index] = np.inf
    flat = array.reshape(-1)
    threshold, surplus = _kth_row(flat, count)
    spared = np.flatnonzero(flat == threshold)[-surplus:] if surplus > 0 and threshold != 0 else None
    F.threshold_(matrix.view(-1), threshold, 0.0)  # x ≤ threshold → 0, one pass
    if spared is not None:  # of the entries tied at the threshold, the last `surplus` stay
        flat[spared] = threshold
    if keep_index is not None:
        array[keep_index] = cls_row
        array[:, keep_index] = cls_column


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

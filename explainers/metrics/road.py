"""ROAD's noisy linear imputation (Rong, Leemann, Borisov, Kasneci & Kasneci, "A Consistent and Efficient
Evaluation Strategy for Attribution Methods", ICML 2022), batched and solved by multigrid-preconditioned CG.

Removing pixels by setting them to a constant lets the *shape* of the removed region tell the class
(the mask leaks information). ROAD fills each removed pixel ``i`` with the weighted mean of its
in-image 8 neighbours ``N(i)``, axial ones weighing 1/6 and diagonal ones 1/12, removed neighbours
included, which is the sparse linear system, per channel::

    d_i x_i − Σ_{j ∈ N(i), removed} w_ij x_j = Σ_{j ∈ N(i), kept} w_ij v_j,   d_i = Σ_{j ∈ N(i)} w_ij,

then adds Gaussian noise ``N(0, noise²)`` to the imputed pixels only (``noise = 0.01``, the authors'
default, applied to the tensor the model takes as pytorch-grad-cam's port of their code does). The
matrix is a weighted graph Laplacian with the kept pixels as boundary: symmetric positive definite
whenever a pixel is kept, so the system has one solution. An image with no pixel kept has none; its
removed pixels become ``empty`` (0: the training mean of a normalised input) plus the noise.

The solution is the same as that of a direct sparse solve (the system of pytorch-grad-cam's
``NoisyLinearImputer``, a copy of the authors' code), to the solver's tolerance. It is computed for a
whole batch of images and masks at once with conjugate gradients on the pixel grid, preconditioned by
one symmetric multigrid V-cycle: damped Jacobi smoothing and coarse operators formed by Galerkin
projection ``Pᵀ A P`` with piecewise-constant 2×2 prolongation ``P`` (aggregation; the coarse correction
is scaled by 1.5, as aggregation wants), down to a grid of at most 8×8, solved densely. Each system stops
at its own relative residual ``tol``. The noise of each image is drawn from its own ``torch.Generator``, so a
result does not depend on which other images share the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: ROAD's neighbour weights w_ij by offset (dy, dx): 1/6 axial, 1/12 diagonal (they sum to 1).
OFFSETS: tuple[tuple[int, int], ...] = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
WEIGHTS: tuple[float, ...] = tuple(
    0.0 if (dy, dx) == (0, 0) else (1 / 6 if dy == 0 or dx == 0 else 1 / 12) for dy, dx in OFFSETS
)
CENTRE = OFFSETS.index((0, 0))
NOISE = 0.01
COARSEST = 8
CHUNK_PIXELS = 2**15


def _apply(stencil: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(A v)(p) = Σ_o S_o(p) v(p + o)``: stencil ``(B, 9, h, w)``, ``v`` ``(B, C, h, w)`` (zero outside)."""
    h, w = v.shape[-2:]
    padded = F.pad(v, (1, 1, 1, 1))
    out = stencil[:, CENTRE, None] * v
    for k, (dy, dx) in enumerate(OFFSETS):
        if k != CENTRE:
            out = out.addcmul_(stencil[:, k, None], padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w])
    return out


def _neighbour_sum(v: torch.Tensor) -> torch.Tensor:
    """``Σ_o w_o v(p + o)`` (zero outside the grid) with ROAD's weights, separably: five shifted sums."""
    padded = F.pad(v, (1, 1, 1, 1))
    vertical = padded[..., :-2, :] + padded[..., 2:, :]  # (h, w + 2): up + down
    axial = vertical[..., 1:-1] + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:]
    return axial.mul_(1 / 6).add_(vertical[..., :-2] + vertical[..., 2:], alpha=1 / 12)


@dataclass
class _Level:
    stencil: torch.Tensor  # (B, 9, h, w); the identity on inactive pixels
    active: torch.Tensor  # (B, 1, h, w) float: 1 where the pixel is an unknown
    step: torch.Tensor  # (B, 1, h, w): ω / diagonal on active pixels, 0 elsewhere (damped Jacobi)
    diagonal: torch.Tensor | None = None  # level 0 only: A v = active ⊙ (d ⊙ v − Σ_o w_o v(p + o))

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """``A v`` for ``v`` zero on the inactive pixels."""
        if self.diagonal is None:
            return _apply(self.stencil, v)
        return (self.diagonal * v).sub_(_neighbour_sum(v)).mul_(self.active)


def _level(stencil: torch.Tensor, active: torch.Tensor, omega: float) -> _Level:
    stencil = stencil.clone()
    stencil[:, CENTRE] += 1 - active[:, 0]
    return _Level(stencil, active, omega * active / stencil[:, CENTRE, None])


def _coarsen(stencil: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Galerkin ``Pᵀ A P`` for ``P`` = 2×2 piecewise-constant prolongation (masked to the active pixels).

    Fine pixel ``2I + (a, b)`` with fine offset ``o`` lands in coarse offset ``⌊((a, b) + o) / 2⌋``.
    """
    h, w = stencil.shape[-2:]
    coarse = stencil.new_zeros(stencil.shape[0], 9, h // 2, w // 2)
    for a in (0, 1):
        for b in (0, 1):
            child = stencil[:, :, a::2, b::2]
            for k, (dy, dx) in enumerate(OFFSETS):
                coarse[:, OFFSETS.index(((a + dy) // 2, (b + dx) // 2))] += child[:, k]
    return coarse, F.max_pool2d(active, 2)


def _dense_solver(level: _Level) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function solving ``A x = r`` exactly on a small grid (Cholesky of the dense matrix)."""
    batch, _, h, w = level.stencil.shape
    n = h * w
    matrix = level.stencil.new_zeros(batch, n, n)
    rows = torch.arange(n).view(h, w)
    for k, (dy, dx) in enumerate(OFFSETS):
        y0, y1, x0, x1 = max(0, -dy), h - max(0, dy), max(0, -dx), w - max(0, dx)
        source = rows[y0:y1, x0:x1].flatten()
        target = rows[y0 + dy : y1 + dy, x0 + dx : x1 + dx].flatten()
        matrix[:, source, target] = level.stencil[:, k, y0:y1, x0:x1].flatten(1)
    factor = torch.linalg.cholesky(0.5 * (matrix + matrix.mT))

    def solve(r: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_solve(r.flatten(2).mT, factor).mT.reshape(r.shape) * level.active

    return solve


class _Multigrid:
    """One symmetric V-cycle (``smooth`` damped-Jacobi sweeps before and after, the coarse correction
    scaled by ``scale``, as aggregation multigrid wants): a symmetric positive definite preconditioner.
    The grid's sides must be multiples of ``2^(levels − 1)``."""

    def __init__(
        self, stencil: torch.Tensor, active: torch.Tensor, *, smooth: int = 1, omega: float = 0.9,
        scale: float = 1.5,
    ) -> None:
        self.levels = [_level(stencil, active, omega)]
        self.levels[0].diagonal = stencil[:, CENTRE, None].contiguous()
        while max(stencil.shape[-2:]) > COARSEST:
            stencil, active = _coarsen(stencil, active)
            self.levels.append(_level(stencil, active, omega))
        self.coarsest = _dense_solver(self.levels[-1])
        self.smooth, self.scale = smooth, scale

    def __call__(self, r: torch.Tensor, depth: int = 0) -> torch.Tensor:
        if depth == len(self.levels) - 1:
            return self.coarsest(r)
        level = self.levels[depth]
        x = level.step * r
        for _ in range(self.smooth - 1):
            x.addcmul_(level.step, r - level.apply(x))
        residual = r - level.apply(x)
        restricted = residual[..., 0::2, 0::2] + residual[..., 1::2, 0::2]
        restricted += residual[..., 0::2, 1::2] + residual[..., 1::2, 1::2]
        coarse = self(restricted, depth + 1).mul_(self.scale)
        b, c, h, w = x.shape
        x.view(b, c, h // 2, 2, w // 2, 2).add_(coarse[:, :, :, None, :, None])
        x.mul_(level.active)
        for _ in range(self.smooth):
            x.addcmul_(level.step, r - level.apply(x))
        return x


def road_impute(
    images: torch.Tensor,
    removed: torch.Tensor,
    *,
    noise: float = NOISE,
    generators: Sequence[torch.Generator] | None = None,
    empty: float = 0.0,
    tol: float = 1e-5,
    max_iter: int = 200,
) -> torch.Tensor:
    """ROAD's noisy linear imputation of ``images`` ``(B, C, H, W)`` where ``removed`` ``(B, H, W)`` is True.

    Args:
        images: the images (any value range; normalised model inputs in the evaluation).
        removed: bool, the pixels to impute.
        noise: standard deviation of the Gaussian noise added to the imputed pixels (0: none).
        generators: one ``torch.Generator`` (on the CPU) per image for the noise; ``None``: torch's own.
        empty: value of the pixels of an image with nothing kept.
        tol: relative residual ``‖b − A x‖ / ‖b‖`` at which the CG iterations stop.
        max_iter: most CG iterations.

    Returns:
        ``(B, C, H, W)``: kept pixels unchanged, removed ones imputed (float32 maths, the images' dtype).
    """
    if images.ndim != 4 or removed.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"images must be (B, C, H, W) and removed (B, H, W); got {tuple(images.shape)} "
                         f"and {tuple(removed.shape)}")
    if generators is not None and len(generators) != images.shape[0]:
        raise ValueError(f"one generator per image: {len(generators)} for {images.shape[0]} images")
    chunk = max(1, CHUNK_PIXELS // (images.shape[-2] * images.shape[-1]))  # the working set stays in cache
    out = torch.cat([
        _solve(images[i : i + chunk].float(), removed[i : i + chunk], empty, tol, max_iter)
        for i in range(0, images.shape[0], chunk)
    ])
    if noise:
        if generators is None:
            draws = torch.randn(out.shape)
        else:
            draws = torch.stack([torch.randn(out.shape[1:], generator=g) for g in generators])
        out = out + noise * draws.to(out.device) * removed[:, None].to(out.device)
    return out.to(images.dtype)


def _solve(x: torch.Tensor, removed: torch.Tensor, empty: float, tol: float, max_iter: int) -> torch.Tensor:
    """The noiseless imputation of a few images ``x`` ``(b, C, H, W)``, float32."""
    mask = removed[:, None].to(device=x.device, dtype=x.dtype)
    # The level-0 stencil: −w_ij between two removed pixels, d_i on the diagonal of removed ones.
    h, w = x.shape[-2:]
    padded = F.pad(mask, (1, 1, 1, 1))
    stencil = torch.cat([
        -WEIGHTS[k] * mask * padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        for k, (dy, dx) in enumerate(OFFSETS)
    ], dim=1)
    stencil[:, CENTRE] = (_neighbour_sum(torch.ones_like(mask)) * mask)[:, 0]
    empty_images = mask.flatten(1).all(dim=1)
    active = mask.clone()
    active[empty_images] = 0.0
    b = _neighbour_sum(x * (1 - mask)) * active
    # Sides padded (with inactive pixels, coupled to nothing) to multiples of 2^levels for the multigrid.
    halvings = max(0, math.ceil(math.log2(max(h, w) / COARSEST)))
    side = 2**halvings
    pad = (0, -w % side, 0, -h % side)
    active = F.pad(active, pad)
    solution = _pcg(F.pad(stencil, pad) * active, active, F.pad(b, pad), tol, max_iter)[..., :h, :w]
    out = torch.where(mask.bool(), solution, x)
    out[empty_images] = empty
    return out

def _pcg(stencil: torch.Tensor, active: torch.Tensor, b: torch.Tensor, tol: float, max_iter: int):
    """Preconditioned conjugate gradients for every (image, channel) system at once, each stopped when its
    own relative residual reaches ``tol``."""
    precondition = _Multigrid(stencil, active)
    level = precondition.levels[0]
    x = torch.zeros_like(b)
    r = b.clone()
    z = precondition(r)
    p = z.clone()
    rz = (r * z).sum((-2, -1), keepdim=True)
    limit = tol * b.flatten(2).norm(dim=-1)[..., None, None]
    for _ in range(max_iter):
        # A system that has converged stops moving, so that its result does not depend on the others.
        running = r.flatten(2).norm(dim=-1)[..., None, None] > limit
        if not running.any():
            break
        q = level.apply(p)
        pq = (p * q).sum((-2, -1), keepdim=True)
        alpha = torch.where(running & (pq > 0), rz / pq.clamp_min(1e-30), 0.0)
        x.addcmul_(alpha, p)
        r.addcmul_(alpha, q, value=-1)
        z = precondition(r)
        rz_next = (r * z).sum((-2, -1), keepdim=True)
        beta = torch.where(rz > 0, rz_next / rz.clamp_min(1e-30), 0.0)
        p = z + beta * p
        rz = rz_next
    return x

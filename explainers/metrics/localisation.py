"""Localisation metrics: does a relevance map sit on the ground-truth object?

Maps live on the patch grid, ``(B, gh, gw)``; regions are pixel masks ``(B, H, W)`` (bool) or boxes
``(B, 4)`` as ``x0, y0, x1, y1`` in pixels with x1 and y1 exclusive (boxes need ``image_size=(H, W)``).
Every metric first upsamples the map to the image with nearest neighbour, so each patch covers exactly
the pixels it was computed from: pixel ``(y, x)`` takes the value of patch
``(floor(y * gh / H), floor(x * gw / W))``. Inputs may be numpy arrays or torch tensors; results are
float64 numpy arrays ``(B,)``.
"""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _as_tensor(values: ArrayLike) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu()
    return torch.as_tensor(np.asarray(values))


def region_masks(regions: ArrayLike, image_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Bool ``(B, H, W)`` masks from masks ``(B, H, W)`` or from boxes ``(B, 4)`` and ``image_size``."""
    regions = _as_tensor(regions)
    if regions.ndim == 3:
        return regions.bool()
    if regions.ndim != 2 or regions.shape[1] != 4:
        raise ValueError(f"regions must be masks (B, H, W) or boxes (B, 4), not {tuple(regions.shape)}")
    if image_size is None:
        raise ValueError("boxes need image_size=(H, W)")
    height, width = image_size
    ys, xs = torch.arange(height).view(1, -1, 1), torch.arange(width).view(1, 1, -1)
    x0, y0, x1, y1 = (regions[:, i].long().view(-1, 1, 1) for i in range(4))
    return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)


def upsample_nearest(maps: ArrayLike, image_size: tuple[int, int]) -> torch.Tensor:
    """``(B, gh, gw)`` → float64 ``(B, H, W)``, each patch value copied onto the pixels it covers."""
    maps = _as_tensor(maps).double()
    if maps.ndim != 3:
        raise ValueError(f"maps must be (B, gh, gw), not {tuple(maps.shape)}")
    (gh, gw), (height, width) = maps.shape[1:], image_size
    rows = torch.arange(height) * gh // height
    cols = torch.arange(width) * gw // width
    return maps[:, rows][:, :, cols]


def _prepare(
    maps: ArrayLike, regions: ArrayLike, image_size: tuple[int, int] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    masks = region_masks(regions, image_size)
    if len(masks) != len(maps):
        raise ValueError(f"{len(maps)} maps but {len(masks)} regions")
    return upsample_nearest(maps, tuple(masks.shape[1:])), masks


def pointing_game(
    maps: ArrayLike, regions: ArrayLike, image_size: tuple[int, int] | None = None
) -> np.ndarray:
    """1.0 where the map's maximum falls inside the region, else 0.0.

    Zhang et al., "Top-down Neural Attention by Excitation Backprop" (ECCV 2016; IJCV 2018). The maximum
    is the arg-max patch (the first one on ties, so a constant map does not score everywhere); it is a
    hit when any pixel that patch covers lies in the region. The hit rate of a random patch is
    ``pointing_chance``.
    """
    maps_t = _as_tensor(maps).double()
    flat = maps_t.flatten(1)
    peak = torch.zeros_like(flat)
    peak[torch.arange(len(flat)), flat.argmax(dim=1)] = 1.0
    upsampled, masks = _prepare(peak.view(maps_t.shape), regions, image_size)
    return ((upsampled > 0) & masks).flatten(1).any(dim=1).double().numpy()


def pointing_chance(
    regions: ArrayLike, grid_size: tuple[int, int], image_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Expected pointing-game hit of a uniformly random patch: the share of patches touching the region."""
    masks = region_masks(regions, image_size)
    (gh, gw), (height, width) = grid_size, masks.shape[1:]
    rows = torch.arange(height) * gh // height
    cols = torch.arange(width) * gw // width
    touched = torch.zeros(len(masks), gh, gw, dtype=torch.bool)
    for i in range(gh):
        for j in range(gw):
            block = masks[:, rows == i][:, :, cols == j]
            touched[:, i, j] = block.flatten(1).any(dim=1)
    return touched.flatten(1).double().mean(dim=1).numpy()


def mass_inside(maps: ArrayLike, regions: ArrayLike, image_size: tuple[int, int] | None = None) -> np.ndarray:
    """Share of the map's total mass inside the region: ``Σ_{p∈R} m(p) / Σ_p m(p)`` over pixels.

    The energy-based pointing game of Wang et al., "Score-CAM" (CVPR Workshops 2020), on non-negative
    maps. A uniform map scores the region's area fraction (``region_masks(...).mean()``); an all-zero map
    gives nan.
    """
    upsampled, masks = _prepare(maps, regions, image_size)
    total = upsampled.flatten(1).sum(dim=1)
    inside = (upsampled * masks).flatten(1).sum(dim=1)
    return (inside / total).numpy()


def topk_iou(maps: ArrayLike, masks: ArrayLike, k: float = 0.2) -> np.ndarray:
    """IoU between the top ``k`` share of the map's pixels and the mask ``(B, H, W)``.

    The ``ceil(k · H · W)`` highest pixels of the upsampled map form the predicted region P (ties, as
    within one patch, broken by pixel order); the score is |P ∩ M| / |P ∪ M|. A fixed-share cut instead of
    the mean-value threshold of the segmentation test of Chefer et al., "Transformer Interpretability
    Beyond Attention Visualization" (CVPR 2021), so that maps of different scales compare alike.
    """
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], not {k}")
    upsampled, region = _prepare(maps, masks, None)
    flat = upsampled.flatten(1)
    count = int(np.ceil(k * flat.shape[1]))
    top = torch.zeros_like(flat, dtype=torch.bool)
    top.scatter_(1, flat.topk(count, dim=1, sorted=False).indices, True)
    region = region.flatten(1)
    return ((top & region).sum(dim=1) / (top | region).sum(dim=1)).double().numpy()

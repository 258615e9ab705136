"""Maps of different models carried onto the image's own pixel grid, and compared there."""

import cv2
import numpy as np
import pytest
import timm.data
import torch
from PIL import Image

from explainers.alignment import common_pixels, difference, image_grid, input_region, to_image_grid
from explainers.metrics.agreement import paired_table

CONFIGS = [  # (input size, crop_pct, crop_mode): the timm eval transforms the models use
    ((3, 224, 224), 0.875, "center"),
    ((3, 64, 64), 1.0, "center"),
    ((3, 224, 224), 0.9, "squash"),
    ((3, 96, 160), 1.0, "center"),
    ((3, 224, 224), 1.0, "border"),
]


def transform(input_size, crop_pct, crop_mode, *, normalise=True):
    mean, std = ((0.0,) * 3, (1.0,) * 3)
    return timm.data.create_transform(input_size=input_size, crop_pct=crop_pct, crop_mode=crop_mode,
                                      interpolation="bilinear", mean=mean, std=std, is_training=False)


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (64, 64), (40, 30)])
@pytest.mark.parametrize("config", CONFIGS)
def test_the_region_is_where_a_marker_lands(config, size):
    """A bright square placed in the image shows up in the model input where the region says."""
    steps = transform(*config)
    x0, y0, x1, y1 = input_region(steps, size)
    in_h, in_w = config[0][1:]
    width, height = size
    for cx, cy in ((0.3, 0.4), (0.55, 0.5), (0.7, 0.65)):
        canvas = Image.new("RGB", size)
        box = (round(cx * width) - 3, round(cy * height) - 3, round(cx * width) + 3, round(cy * height) + 3)
        canvas.paste((255, 255, 255), box)
        seen = steps(canvas)[0].numpy()
        if seen.max() < 0.5:
            continue  # cropped away
        ys, xs = np.nonzero(seen > 0.5 * seen.max())
        weights = seen[ys, xs]
        found = (np.average(xs + 0.5, weights=weights), np.average(ys + 0.5, weights=weights))
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        predicted = ((centre[0] - x0) * in_w / (x1 - x0), (centre[1] - y0) * in_h / (y1 - y0))
        assert found == pytest.approx(predicted, abs=1.0)


def test_a_crop_larger_than_the_image_reaches_outside_it():
    from torchvision import transforms as T

    assert input_region(T.Compose([T.CenterCrop(64)]), (64, 32)) == (0.0, -16.0, 64.0, 48.0)
    x0, y0, x1, y1 = input_region(transform((3, 224, 224), 1.0, "border"), (300, 100))
    assert (x0, x1) == pytest.approx((0.0, 300.0)) and y0 < 0 < 100 < y1


def test_an_unknown_geometric_step_is_refused():
    from torchvision import transforms as T

    with pytest.raises(ValueError, match="RandomRotation"):
        input_region(T.Compose([T.RandomRotation(10)]), (10, 10))


def test_on_the_models_own_region_it_is_the_bilinear_upsampling():
    relevance = np.random.default_rng(0).random((4, 6)).astype(np.float32)
    out = to_image_grid(relevance, (0, 0, 96, 64), (96, 64), grid=(96, 64))
    expected = cv2.resize(relevance, (96, 64), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(out, expected, atol=2e-3)  # OpenCV's 5-bit fixed-point weights in remap


def test_pixels_the_model_did_not_see_are_nan():
    relevance = torch.ones(7, 7)
    # the model saw the middle 100 columns of a 200×100 image
    out = to_image_grid(relevance, (50, 0, 150, 100), (200, 100), grid=(200, 100))
    assert np.isnan(out[:, :50]).all() and np.isnan(out[:, 150:]).all()
    assert np.isfinite(out[:, 50:150]).all() and np.allclose(out[:, 50:150], 1.0)


def test_two_grids_of_the_same_picture_agree_on_the_image_grid():
    """The same smooth relevance seen at 7×7 and at 14×14 (different crops) lines up on the image."""
    size = (320, 240)

    def sampled(region, grid):
        x0, y0, x1, y1 = region
        xs = x0 + (np.arange(grid) + 0.5) * (x1 - x0) / grid
        ys = y0 + (np.arange(grid) + 0.5) * (y1 - y0) / grid
        return np.exp(-((xs[None] - 200) ** 2 + (ys[:, None] - 110) ** 2) / 2000.0).astype(np.float32)

    first = input_region(transform((3, 224, 224), 0.875, "center"), size)
    second = input_region(transform((3, 64, 64), 1.0, "center"), size)
    a = to_image_grid(sampled(first, 7), first, size)
    b = to_image_grid(sampled(second, 14), second, size)
    assert a.shape == b.shape == image_grid(size)[::-1]
    x, y = common_pixels(a, b)
    table = paired_table({"m": x}, {"m": y}, 0.1)
    assert table.loc[0, "spearman"] > 0.95 and table.loc[0, "iou"] > 0.6
    assert np.nanmax(np.abs(difference(a, b))) < 0.3


def test_identical_maps_agree_fully_and_differ_nowhere():
    a = to_image_grid(torch.rand(5, 5), (0, 0, 80, 80), (80, 80))
    x, y = common_pixels(a, a)
    table = paired_table({"rollout": x, "gae": x}, {"rollout": y}, 0.1)
    assert list(table["method"]) == ["rollout"]
    assert table.loc[0, "spearman"] == pytest.approx(1.0) and table.loc[0, "iou"] == 1.0
    assert np.nanmax(np.abs(difference(a, a))) == 0.0


def test_the_comparison_grid_keeps_the_aspect_ratio():
    assert image_grid((4000, 3000)) == (256, 192)
    assert image_grid((64, 64)) == (64, 64)

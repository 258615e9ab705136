"""Localisation metrics on cases whose answer is known in advance."""

import numpy as np

from explainers.metrics.localisation import mass_inside, pointing_chance, pointing_game, topk_iou


def patch_aligned_masks(count: int, grid: int = 8, patch: int = 8, seed: int = 0) -> np.ndarray:
    """Random masks made of whole patches, so that a (grid, grid) map can equal them exactly."""
    rng = np.random.default_rng(seed)
    cells = rng.random((count, grid, grid)) < 0.2
    cells[:, 0, 0] = True  # never empty
    return cells.repeat(patch, axis=1).repeat(patch, axis=2)


def test_a_map_equal_to_the_mask_scores_perfectly():
    masks = patch_aligned_masks(6)
    maps = masks[:, ::8, ::8].astype(np.float64)
    np.testing.assert_array_equal(pointing_game(maps, masks), 1.0)
    np.testing.assert_allclose(mass_inside(maps, masks), 1.0)
    for one_map, mask in zip(maps, masks, strict=True):  # the top share equal to the mask's area
        np.testing.assert_allclose(topk_iou(one_map[None], mask[None], k=float(one_map.mean())), 1.0)


def test_a_map_on_the_complement_scores_nothing():
    masks = patch_aligned_masks(6, seed=1)
    maps = (~masks[:, ::8, ::8]).astype(np.float64)
    np.testing.assert_array_equal(pointing_game(maps, masks), 0.0)
    np.testing.assert_allclose(mass_inside(maps, masks), 0.0)


def test_random_maps_put_about_the_area_fraction_inside():
    masks = patch_aligned_masks(400, seed=2)
    maps = np.random.default_rng(3).random((400, 8, 8))
    area = masks.reshape(400, -1).mean(axis=1)
    inside = mass_inside(maps, masks)
    assert abs(inside.mean() - area.mean()) < 0.01
    hits = pointing_game(maps, masks).mean()
    assert abs(hits - pointing_chance(masks, (8, 8)).mean()) < 0.06

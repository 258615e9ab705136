"""Attention entropy, mean attention distance, CLS attention and map summaries on hand-made captures."""

import math

import pytest
import torch

from explainers.attention_stats import (
    MAP_SUMMARIES,
    attention_entropy,
    cls_attention,
    gini,
    map_entropy,
    mean_attention_distance,
    top_mass,
)
from explainers.capture import Capture
from explainers.layout import TokenLayout


def make_capture(attentions: list[torch.Tensor], grid: tuple[int, int], num_prefix: int = 1) -> Capture:
    batch = attentions[0].shape[0]
    return Capture(
        attentions=tuple(attentions),
        gradients=None,
        logits=torch.zeros(batch, 10),
        targets=torch.zeros(batch, dtype=torch.long),
        layout=TokenLayout(num_prefix=num_prefix, grid=grid),
    )


def test_entropy_of_uniform_and_one_hot_heads():
    n = 5  # CLS + 2×2
    uniform = torch.full((1, 1, n, n), 1.0 / n)
    one_hot = torch.eye(n).expand(1, 1, n, n)
    capture = make_capture([torch.cat([uniform, one_hot], dim=1)], grid=(2, 2))
    entropy = attention_entropy(capture)
    assert entropy.shape == (1, 1, 2)
    assert entropy[0, 0, 0].item() == pytest.approx(math.log(n))
    assert entropy[0, 0, 1].item() == pytest.approx(0.0)
    assert attention_entropy(capture, query="cls")[0, 0, 0].item() == pytest.approx(math.log(n))
    with pytest.raises(ValueError, match="query"):
        attention_entropy(capture, query="patches")


def test_mean_attention_distance_in_pixels():
    # 1×3 grid, patch 16: a head attending to itself is at distance 0; one attending to the patch two
    # columns away from the first patch: rows 0 and 2 → 32 px, row 1 attends to itself.
    n = 4
    local = torch.eye(n).expand(1, 1, n, n)
    far = torch.eye(n).clone()
    far[1] = torch.tensor([0.5, 0.0, 0.0, 0.5])  # CLS weight is ignored and the row renormalised
    far[3] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    capture = make_capture([torch.cat([local, far.expand(1, 1, n, n)], dim=1)], grid=(1, 3))
    distance = mean_attention_distance(capture, patch_size=16)
    assert distance.shape == (1, 1, 2)
    assert distance[0, 0, 0].item() == pytest.approx(0.0)
    assert distance[0, 0, 1].item() == pytest.approx((32 + 0 + 32) / 3)
    tall = mean_attention_distance(capture, patch_size=(8, 16))
    assert tall[0, 0, 1].item() == pytest.approx((32 + 32) / 3)


def test_mean_attention_distance_of_a_real_model_grows_with_uniform_attention(deit_tiny, images):
    from explainers import capture

    cap = capture(deit_tiny, images[:1], gradients=False)
    distance = mean_attention_distance(cap, deit_tiny.patch_embed.patch_size)
    assert distance.shape == (1, 12, 3)
    assert (distance > 0).all() and (distance < 224 * math.sqrt(2)).all()


def test_cls_attention_shape_skips_prefix_tokens():
    attention = torch.rand(2, 3, 6, 6).softmax(-1)
    capture = make_capture([attention, attention], grid=(2, 2), num_prefix=2)
    cls = cls_attention(capture)
    assert cls.shape == (2, 2, 3, 4)
    assert torch.equal(cls[:, 0], attention[:, :, 0, 2:])


def test_map_summaries():
    flat = torch.ones(1, 4, 4)
    peak = torch.zeros(1, 4, 4)
    peak[0, 1, 1] = 1.0
    assert map_entropy(flat).item() == pytest.approx(1.0)
    assert map_entropy(peak).item() == pytest.approx(0.0)
    assert top_mass(flat, 0.25).item() == pytest.approx(0.25)
    assert top_mass(peak).item() == pytest.approx(1.0)
    assert gini(flat).item() == pytest.approx(0.0)
    assert gini(peak).item() == pytest.approx(15 / 16)
    for summary in MAP_SUMMARIES.values():
        assert summary(torch.zeros(2, 3, 3)).shape == (2,)

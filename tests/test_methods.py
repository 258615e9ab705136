"""Each explainer against the reference implementation in ``tests/reference.py``."""

import numpy as np
import pytest
import torch

import explainers
from explainers import Capture, TokenLayout
from explainers.relevance import Relevance
from tests import reference


def synthetic_capture(batch=3, layers=4, heads=3, num_prefix=2, grid=(2, 3), seed=0) -> Capture:
    """Random row-stochastic attention and random gradients on a non-square grid with 2 prefix tokens."""
    g = torch.Generator().manual_seed(seed)
    n = num_prefix + grid[0] * grid[1]
    attentions = tuple(torch.randn(batch, heads, n, n, generator=g).mul(2).softmax(-1) for _ in range(layers))
    gradients = tuple(torch.randn(batch, heads, n, n, generator=g) for _ in range(layers))
    return Capture(
        attentions=attentions,
        gradients=gradients,
        logits=torch.randn(batch, 5, generator=g),
        targets=torch.zeros(batch, dtype=torch.long),
        layout=TokenLayout(num_prefix=num_prefix, grid=grid),
    )


def per_image(cap: Capture, b: int):
    attn = [a[b].numpy() for a in cap.attentions]
    grads = [g[b].numpy() for g in cap.gradients]
    return attn, grads


CASES = [
    ("rollout", {"head_fusion": "mean"}),
    ("rollout", {"head_fusion": "max", "discard_ratio": 0.5}),
    ("rollout", {"head_fusion": "min", "discard_ratio": 0.9, "start_layer": 1}),
    ("grad_rollout", {}),
    ("grad_rollout", {"discard_ratio": 0.7, "start_layer": 2}),
    ("gae", {}),
    ("gae", {"start_layer": 3}),
    ("raw_attention", {}),
    ("raw_attention", {"layer": 1, "head_fusion": "max"}),
    ("raw_attention", {"layer": -2, "head": 2}),
]


def expected_map(cap: Capture, b: int, method: str, params: dict) -> np.ndarray:
    attn, grads = per_image(cap, b)
    p = cap.layout.num_prefix
    if method == "rollout":
        return reference.rollout(
            attn,
            p,
            params.get("head_fusion", "mean"),
            params.get("discard_ratio", 0.0),
            params.get("start_layer", 0),
        )[0]
    if method == "grad_rollout":
        return reference.rollout(
            attn, p, ratio=params.get("discard_ratio", 0.0), start=params.get("start_layer", 0), grads=grads
        )[0]
    if method == "gae":
        return reference.gae(attn, grads, p, params.get("start_layer", 0))
    return reference.raw_attention(
        attn, p, params.get("layer", -1), params.get("head_fusion", "mean"), params.get("head")
    )


@pytest.mark.parametrize(("method", "params"), CASES)
def test_matches_reference_on_synthetic_attention(method, params):
    cap = synthetic_capture()
    maps = explainers.compute(cap, method, **params)
    assert maps.shape == (3, 2, 3)
    for b in range(3):
        np.testing.assert_allclose(
            maps[b].reshape(-1).numpy(), expected_map(cap, b, method, params), rtol=1e-5
        )


@pytest.mark.parametrize(("method", "params"), CASES[::2])
def test_matches_reference_on_a_real_capture(deit_tiny, images, method, params):
    cap = explainers.capture(deit_tiny, images, target=[3, 7])
    maps = explainers.compute(cap, method, **params)
    assert maps.shape == (2, 14, 14)
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    for b in range(2):
        np.testing.assert_allclose(
            maps[b].reshape(-1).numpy(), expected_map(cap, b, method, params), rtol=2e-4, atol=1e-9
        )


def test_rollout_matrices_keep_rows_summing_to_one():
    cap = synthetic_capture(layers=6)
    attn, _ = per_image(cap, 0)
    _, full = reference.rollout(attn, 2, "max", 0.8)
    np.testing.assert_allclose(full.sum(axis=-1), 1.0, rtol=1e-12)
    # the library keeps the whole CLS row internally: its prefix + patch mass sums to one as well
    from explainers.attention_ops import discard_lowest_, fuse_heads, readout_product

    row = readout_product(
        (discard_lowest_(fuse_heads(a, "max"), 0.8) for a in reversed(cap.attentions)),
        cap.layout.readout_vector(3),
        normalise=True,
    )
    torch.testing.assert_close(row.sum(-1), torch.ones(3))


def test_uniform_attention_gives_a_uniform_map():
    n, grid = 1 + 12, (3, 4)
    uniform = torch.full((2, 4, n, n), 1.0 / n)
    cap = Capture(
        (uniform,) * 5,
        (torch.ones_like(uniform),) * 5,
        torch.zeros(2, 3),
        torch.zeros(2, dtype=torch.long),
        TokenLayout(1, grid),
        Relevance((uniform,) * 5, torch.ones(2, n), torch.zeros(2)),  # uniform LRP relevance too
        layer_gradients=(torch.ones_like(uniform),) * 5,
    )
    for method in explainers.list_explainers():
        maps = explainers.compute(cap, method)
        torch.testing.assert_close(maps, torch.full_like(maps, maps[0, 0, 0].item()))
        assert maps[0, 0, 0] > 0


def test_raw_attention_is_the_hand_sliced_cls_row(deit_tiny, images):
    cap = explainers.capture(deit_tiny, images, gradients=False)
    maps = explainers.compute(cap, "raw_attention", layer=5, head=1)
    torch.testing.assert_close(maps, cap.attentions[5][:, 1, 0, 1:].reshape(2, 14, 14))
    fused = explainers.compute(cap, "raw_attention", layer=5, head_fusion="mean")
    torch.testing.assert_close(fused, cap.attentions[5][:, :, 0, 1:].mean(1).reshape(2, 14, 14))


def test_discard_is_exact_per_image_and_spares_the_cls_row_and_column():
    from explainers.attention_ops import discard_lowest_

    fused = torch.rand(4, 10, 10) + 0.01
    out = discard_lowest_(fused.clone(), 0.3)
    for b in range(4):  # every image, not only the first
        assert int((out[b, 1:, 1:] == 0).sum()) == int(0.3 * 81)
        torch.testing.assert_close(out[b, 0], fused[b, 0])
        torch.testing.assert_close(out[b, :, 0], fused[b, :, 0])
        kept = out[b, 1:, 1:][out[b, 1:, 1:] > 0]
        dropped = fused[b, 1:, 1:][out[b, 1:, 1:] == 0]
        assert dropped.max() <= kept.min()


def test_discard_breaks_ties_to_the_exact_count():
    from explainers.attention_ops import discard_lowest_

    fused = torch.full((1, 5, 5), 0.2)
    out = discard_lowest_(fused.clone(), 0.5)
    assert int((out == 0).sum()) == 8  # ⌊0.5·16⌋ of the 16 tied candidates


def test_grad_methods_default_to_the_predicted_class(deit_tiny, images):
    predicted = deit_tiny(images).argmax(-1)
    default = explainers.explain(deit_tiny, images, "gae")
    explicit = explainers.explain(deit_tiny, images, "gae", target=predicted)
    torch.testing.assert_close(default, explicit)


def test_per_image_targets_equal_separate_runs(deit_tiny, images):
    both = explainers.explain(deit_tiny, images, "grad_rollout", target=[3, 7])
    first = explainers.explain(deit_tiny, images[:1], "grad_rollout", target=3)
    second = explainers.explain(deit_tiny, images[1:], "grad_rollout", target=7)
    torch.testing.assert_close(both, torch.cat([first, second]), rtol=1e-4, atol=1e-7)


def test_kth_smallest_agrees_with_torch_kthvalue():
    from explainers.attention_ops import kth_smallest

    values = torch.randn(6, 1000).round(decimals=1)  # many ties
    values[2:4] = values[2:4].clamp_min(0)  # long runs of zeros, as a ReLU leaves them
    values[4, :900] = 0
    for k in (1, 17, 500, 899, 900, 901, 1000):
        threshold, surplus = kth_smallest(values, k)
        torch.testing.assert_close(threshold, values.kthvalue(k, dim=1, keepdim=True).values)
        torch.testing.assert_close(surplus, (values <= threshold).sum(dim=1) - k)


@pytest.mark.parametrize("batched", [False, True], ids=["per image (CPU)", "batched (GPU)"])
@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9, 0.99])
def test_discard_equals_the_reference_with_ties_and_zeros(ratio, batched):
    from explainers.attention_ops import _discard_batched_, discard_lowest_

    generator = torch.Generator().manual_seed(1)
    fused = torch.rand(5, 17, 17, generator=generator, dtype=torch.float64).round(decimals=1)
    fused[1] = fused[1].clamp_min(0.6) - 0.6  # mostly zeros
    fused[2, 1:, 1:] = 0.0  # only zeros among the candidates
    fused[3] = 0.25  # all tied at a non-zero value
    count = int(ratio * 16**2)
    out = _discard_batched_(fused.clone(), count, 0) if batched else discard_lowest_(fused.clone(), ratio)
    out = out.numpy()
    for b in range(5):
        np.testing.assert_array_equal(out[b], reference.discard(fused[b].numpy(), ratio))


@pytest.mark.parametrize("kind", ["random", "ties", "zeros", "sorted", "spike"])
def test_kth_smallest_of_long_rows_is_exact(kind):
    """Rows long enough for the sampled bracket, including data where the strided sample misleads it."""
    from explainers.attention_ops import SAMPLED_SELECT_MIN, kth_smallest

    generator = torch.Generator().manual_seed(3)
    size = 5 * SAMPLED_SELECT_MIN
    values = torch.rand(3, size, generator=generator)
    if kind == "ties":
        values = values.round(decimals=2)
    elif kind == "zeros":
        values = (values - 0.4).clamp_min(0)
    elif kind == "sorted":
        values = values.sort(dim=1).values
    elif kind == "spike":  # every sampled entry is large: the bracket misses, the whole row is partitioned
        stride = round(size ** (1 / 3))
        values[:, ::stride] = 10.0 + values[:, ::stride]
    for k in (1, size // 10, size // 2, int(0.9 * size), size - 1, size):
        threshold, surplus = kth_smallest(values, k)
        torch.testing.assert_close(threshold, values.kthvalue(k, dim=1, keepdim=True).values)
        torch.testing.assert_close(surplus, (values <= threshold).sum(dim=1) - k)


def test_discard_of_a_strided_view_writes_through():
    from explainers.attention_ops import discard_lowest_

    fused = torch.rand(3, 9, 9).transpose(1, 2)  # not contiguous
    expected = discard_lowest_(fused.contiguous(), 0.5)
    torch.testing.assert_close(discard_lowest_(fused, 0.5), expected)
    torch.testing.assert_close(fused, expected)

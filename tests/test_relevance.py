"""LRP methods (attn_gradcam, lrp, partial_lrp, transformer_attribution): the authors' maps, the rules'
conservation, and the invariants every map keeps.

The reference maps in ``tests/fixtures/chefer_deit_tiny.npz`` were made by the authors' own code
(hila-chefer/Transformer-Explainability); ``tests/fixtures/README.md`` gives the procedure.
"""

import threading
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import explainers
from explainers.relevance import add_rule, linear_rule, matmul_rule
from tests.chefer_weights import chefer_state_dict, fingerprint
from tests.conftest import make_vit

FIXTURE = Path(__file__).parent / "fixtures" / "chefer_deit_tiny.npz"
LRP_METHODS = ["attn_gradcam", "lrp", "partial_lrp", "transformer_attribution"]


@pytest.fixture(scope="module")
def chefer():
    """The fixture, the timm model with the same weights, and one capture per (image, target) row."""
    ref = dict(np.load(FIXTURE))
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    state = chefer_state_dict(model)
    assert fingerprint(state) == pytest.approx(float(ref["fingerprint"]), rel=1e-9), "other weights"
    model.load_state_dict(state)
    generator = torch.Generator().manual_seed(int(ref["image_seed"]))
    images = torch.randn(int(ref["num_images"]), 3, 224, 224, generator=generator)
    cap = explainers.capture(model, images[ref["image"]], ref["target"], relevance=True)
    np.testing.assert_allclose(cap.logits.numpy(), ref["logits"][ref["image"]], atol=1e-3)
    return ref, cap


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.float64(a).ravel(), np.float64(b).ravel())[0, 1])


@pytest.mark.parametrize(
    ("method", "params", "key"),
    [
        ("attn_gradcam", {}, "attn_gradcam"),
        ("lrp", {}, "lrp"),
        ("partial_lrp", {}, "partial_lrp"),
        ("transformer_attribution", {"start_layer": 0}, "transformer_attribution_s0"),
        ("transformer_attribution", {}, "transformer_attribution_s1"),
        ("rollout", {}, "rollout"),  # a check of the harness: rollout is matched elsewhere already
    ],
)
def test_maps_match_the_authors_code(chefer, method, params, key):
    ref, cap = chefer
    ours = explainers.compute(cap, method, **params).reshape(len(ref["target"]), -1).numpy()
    theirs = ref[key]
    if method == "lrp":  # ours keeps the positive relevance only
        theirs = np.maximum(theirs, 0)
    for row, (image, target) in enumerate(zip(ref["image"], ref["target"], strict=True)):
        r = pearson(ours[row], theirs[row])
        assert r >= 0.99, f"{method} image {image} class {target}: Pearson {r:.4f} with the authors' map"


def test_signed_input_relevance_matches_the_authors_full_lrp(chefer):
    ref, cap = chefer
    ours = cap.relevance.tokens[:, cap.layout.num_prefix :].numpy()
    assert (ref["lrp"] < 0).any()  # there is negative relevance to compare
    for row in range(len(ref["target"])):
        assert pearson(ours[row], ref["lrp"][row]) >= 0.999
        np.testing.assert_allclose(ours[row], ref["lrp"][row], atol=1e-3 * np.abs(ref["lrp"][row]).max())


def test_relevance_is_conserved_from_the_target_to_the_input(chefer):
    _, cap = chefer
    total = cap.relevance.tokens.double().sum(-1) + cap.relevance.position.double()
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-4)


def test_each_rule_conserves_relevance():
    generator = torch.Generator().manual_seed(3)
    x, w = torch.randn(4, 7, 16, generator=generator), torch.randn(9, 16, generator=generator)
    r = torch.rand(4, 7, 9, generator=generator)
    torch.testing.assert_close(linear_rule(x, w, r).sum(), r.sum())
    a, b = torch.rand(2, 3, 5, 5, generator=generator), torch.randn(2, 3, 5, 4, generator=generator)
    ra, rb = matmul_rule(a, b, torch.rand(2, 3, 5, 4, generator=generator))
    torch.testing.assert_close(ra.sum(), rb.sum())
    y, rr = torch.randn(4, 7, 16, generator=generator), torch.randn(4, 7, 16, generator=generator)
    rx, ry = add_rule(x, y, rr)
    torch.testing.assert_close(rx.sum((1, 2)) + ry.sum((1, 2)), rr.sum((1, 2)))


def test_linear_rule_is_the_positive_contributions_share():
    """α = 1, β = 0 written out for one output: R_i = R · (x_i w_i)⁺ / Σ_k (x_k w_k)⁺."""
    x, w = torch.tensor([[1.0, -2.0, 3.0]]), torch.tensor([[0.5, -1.0, -1.0]])
    contributions = (x * w).clamp(min=0)
    expected = 2.0 * contributions / contributions.sum()
    torch.testing.assert_close(linear_rule(x, w, torch.tensor([[2.0]])), expected)


@pytest.mark.parametrize("model_name", ["embedded", "deit_tiny_patch16_224"])
def test_maps_are_finite_non_negative_and_on_the_grid(model_name):
    if model_name == "embedded":
        loaded = explainers.load_model("embedded")
        model, size = loaded.model, 64
    else:
        model, size = make_vit(model_name), 224
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    cap = explainers.capture(model, images, relevance=True)
    for method in LRP_METHODS:
        maps = explainers.compute(cap, method)
        assert maps.shape == (2, *cap.layout.grid) and maps.dtype == torch.float32
        assert torch.isfinite(maps).all() and (maps >= 0).all() and maps.sum() > 0, method
        torch.testing.assert_close(maps, explainers.explain(model, images, method), rtol=1e-4, atol=1e-6)


def test_per_image_targets_equal_separate_runs(deit_tiny, images):
    both = explainers.capture(deit_tiny, images, [3, 9], relevance=True)
    for i, target in enumerate([3, 9]):
        alone = explainers.capture(deit_tiny, images[i : i + 1], target, relevance=True)
        for method in LRP_METHODS:
            ours, separate = explainers.compute(both.subset(i), method), explainers.compute(alone, method)
            torch.testing.assert_close(ours, separate, rtol=1e-4, atol=1e-7)


def test_the_target_changes_the_relevance(deit_tiny, images):
    one, other = (explainers.explain(deit_tiny, images, "lrp", target=t) for t in (3, 9))
    assert not torch.allclose(one, other)


def test_a_capture_without_relevance_is_refused(deit_tiny, images):
    cap = explainers.capture(deit_tiny, images)
    with pytest.raises(ValueError, match=r"partial_lrp needs LRP relevance .* capture with relevance=True"):
        explainers.compute(cap, "partial_lrp")


def test_fused_and_unfused_attention_give_the_same_relevance(images):
    model = make_vit("deit_tiny_patch16_224")
    maps = {}
    for fused in (True, False):
        for block in model.blocks:
            block.attn.fused_attn = fused
        cap = explainers.capture(model, images, relevance=True)
        maps[fused] = [explainers.compute(cap, m) for m in LRP_METHODS]
    for a, b in zip(maps[True], maps[False], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_threads_on_one_model_give_the_serial_relevance(deit_tiny):
    batches = [torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    method = "transformer_attribution"
    serial = [explainers.explain(deit_tiny, x, method, target=i) for i, x in enumerate(batches)]
    results: dict[int, torch.Tensor] = {}
    barrier = threading.Barrier(4)

    def work(i: int) -> None:
        barrier.wait()
        results[i] = explainers.explain(deit_tiny, batches[i], method, target=i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert torch.equal(results[i], serial[i]), f"thread {i} differs from the serial result"

"""Readouts (class token, mean, attention pool), CaiT's late class token, headless similarity, refusals.

The maps are compared with ``tests/reference.py`` run on attention computed independently: a plain
re-implementation of each model's forward pass (explicit softmax per block and for the pool, gradients
by autograd through it), never through ``explainers.capture``.
"""

import numpy as np
import pytest
import timm
import torch

import explainers
from explainers import Capture, TokenLayout
from tests import manual_models, reference
from tests.conftest import make_vit

TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2}
METHODS = ["rollout", "grad_rollout", "gae", "raw_attention"]
PARAMS = {"rollout": {"discard_ratio": 0.5}, "grad_rollout": {"discard_ratio": 0.3}}


def manual_vit(model, images):
    """Logits, block attentions and pool attention of the hand-written forward (``manual_models``)."""
    logits, blocks, pool, _ = manual_models.vit(model, images)
    return logits, blocks, pool


def manual_cait(model, images):
    """CaiT written out: talking-heads patch blocks, then class attention from the class token."""
    logits, patches, classes, _ = manual_models.cait(model, images)
    return logits, patches, classes


def manual_capture(forward, model, images, target):
    """Attention maps and ∂y/∂A of the hand-written forward, float64 numpy per image; ``y`` is the logit
    of class ``target``, or the cosine similarity to ``target`` when it is an embedding vector."""
    logits, *groups = forward(model, images)
    maps = [a for group in groups for a in group]
    if isinstance(target, torch.Tensor):
        score = torch.nn.functional.cosine_similarity(logits, target[None], dim=-1)
    else:
        score = logits[:, target]
    grads = torch.autograd.grad(score.sum(), maps)
    split = len(groups[0])
    as_np = [[t[i].detach().numpy() for t in ts] for ts in (maps, grads) for i in range(images.shape[0])]
    return logits, split, as_np[: images.shape[0]], as_np[images.shape[0] :]


def fuse(method, attention, gradient, fusion="mean"):
    a = np.asarray(attention, np.float64)
    if method == "rollout":
        return reference.FUSE[fusion](a, axis=0)
    if method == "grad_rollout":
        return np.maximum((a * gradient).mean(axis=0), 0.0)
    return np.clip(a * gradient, 0, None).mean(axis=0)


def expected(method, blocks, grads, rho, num_prefix, protected, params):
    """Reference map from full per-block matrices and an explicit readout row."""
    if method == "raw_attention":
        a = np.asarray(blocks[-1], np.float64)
        return np.mean([rho @ a[h] for h in range(a.shape[0])], axis=0)[num_prefix:]
    steps = [fuse(method, a, g) for a, g in zip(blocks, grads, strict=True)]
    ratio = params.get("discard_ratio", 0.0)
    return reference.readout_map(steps, rho, method != "gae", num_prefix, ratio, protected)


@pytest.mark.parametrize(
    ("name", "kwargs", "readout", "size"),
    [
        ("vit_base_patch16_siglip_224", {"img_size": 48}, "attention_pool", (48, 48)),
        ("vit_little_patch16_reg1_gap_256", {"img_size": 48, "init_values": 1.0}, "mean", (48, 48)),
        ("vit_medium_patch16_gap_256", {"img_size": 48, "class_token": True}, "mean", (48, 48)),
        ("deit_tiny_patch16_224", {"img_size": 48, "global_pool": "map"}, "attention_pool", (48, 48)),
        ("naflexvit_base_patch16_map", {"init_values": 1.0}, "attention_pool", (48, 80)),
        ("naflexvit_base_patch16_gap", {"init_values": 1.0}, "mean", (64, 32)),
    ],
)
@pytest.mark.parametrize("method", METHODS)
def test_readouts_match_an_independent_computation(name, kwargs, readout, size, method):
    model = make_vit(name, **TINY, num_classes=4, **kwargs).double()
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    logits, _, attn, grads = manual_capture(manual_vit, model, images, target=2)
    torch.testing.assert_close(logits, model(images))  # the hand-written forward is the model's
    description = explainers.describe_model(model)
    assert description.readout == readout
    cap = explainers.capture(model, images, target=2)
    layout = cap.layout
    params = PARAMS.get(method, {})
    maps = explainers.compute(cap, method, **params)
    assert maps.shape == (2, size[0] // 16, size[1] // 16)
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    for b in range(2):
        blocks, pool = (attn[b][:-1], attn[b][-1]) if readout == "attention_pool" else (attn[b], None)
        block_grads = grads[b][: len(blocks)]
        n = layout.num_tokens
        if readout == "mean":  # 1_S / |S| over the pooled (patch) tokens, built by hand
            rho = np.array([0.0] * layout.num_prefix + [1.0 / layout.num_patches] * layout.num_patches)
        else:  # the pool covers the patch tokens only; zero weight on the prefix tokens
            row = reference.pool_row(pool, grads[b][-1], method)
            rho = np.concatenate([np.zeros(n - row.shape[0]), row])
        want = expected(method, blocks, block_grads, rho, layout.num_prefix, None, params)
        np.testing.assert_allclose(maps[b].reshape(-1).numpy(), want, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_cait_chains_patch_blocks_and_class_attention(method):
    """CaiT: patch blocks act on the patches only, class-attention blocks update the class token only.

    Reference algebra on the N = 1 + P tokens: a patch block is diag(1, M_p) with M_p = rownorm(Ā_p + I)
    (GAE: I + Ā_p); a class-attention block is the identity except the class token's row, rownorm(ā + e_cls)
    (GAE: e_cls + ā); map = e_cls · M_{K-1} ⋯ M_0 · diag(1, M_p,L-1) ⋯ diag(1, M_p,0), patch columns.
    """
    model = make_vit("cait_xxs24_224", **TINY, img_size=48, init_values=1.0, num_classes=4).double()
    images = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    logits, split, attn, grads = manual_capture(manual_cait, model, images, target=1)
    torch.testing.assert_close(logits, model(images))
    cap = explainers.capture(model, images, target=1)
    assert cap.layout.class_attention_from == split == 2 and cap.num_layers == 4
    params = {"layer": 3} if method == "raw_attention" else PARAMS.get(method, {})
    maps = explainers.compute(cap, method, **params)
    normalise = method in ("rollout", "grad_rollout")
    for b in range(2):
        if method == "raw_attention":
            want = np.asarray(attn[b][3], np.float64)[:, 0, 1:].mean(axis=0)
        else:
            p = attn[b][0].shape[-1]
            r = np.eye(1 + p)
            for step, (a, g) in enumerate(zip(attn[b], grads[b], strict=True)):
                fused = fuse(method, a, g)
                m = np.eye(1 + p)
                if step < split:
                    inner = reference.discard_unprotected(fused, params.get("discard_ratio", 0.0), None)
                    m[1:, 1:] = reference.step_matrix(inner, normalise)
                else:
                    row = fused[0] + np.eye(1 + p)[0]
                    m[0] = row / row.sum() if normalise else row
                r = m @ r
            want = r[0, 1:]
        np.testing.assert_allclose(maps[b].reshape(-1).numpy(), want, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize(
    ("name", "kwargs", "size", "want"),
    [
        ("deit_tiny_distilled_patch16_224", {"img_size": 32}, None, ("cls", 2, 0, (2, 2), 2, True)),
        ("vit_base_patch16_siglip_224", {"img_size": 32}, None, ("attention_pool", 0, None, (2, 2), 2, 0)),
        ("vit_little_patch16_reg1_gap_256", {"img_size": 32}, None, ("mean", 1, None, (2, 2), 2, True)),
        ("cait_xxs24_224", {"img_size": 32}, None, ("cls", 1, 0, (2, 2), 4, True)),
        ("naflexvit_base_patch16_map", {}, (32, 80), ("attention_pool", 1, None, (2, 5), 2, True)),
        (
            "vit_small_patch14_reg4_dinov2",
            {"img_size": 28, "num_classes": 0},
            None,
            ("cls", 5, 0, (2, 2), 2, 0),
        ),
    ],
)
def test_describe_model_reads_everything_from_the_model(name, kwargs, size, want):
    model = make_vit(name, **{**TINY, **kwargs})
    d = explainers.describe_model(model, size)
    layout = d.layout
    got = (layout.readout, layout.num_prefix, layout.cls_index, layout.grid, d.num_layers, d.has_head)
    assert got == want
    assert d.architecture == type(model).__name__ and d.num_heads == 2
    assert explainers.READOUTS[d.readout] in d.summary and f"{layout.grid[0]}×{layout.grid[1]}" in d.summary


def test_cait_raw_attention_refuses_blocks_without_the_class_token():
    model = make_vit("cait_xxs24_224", **TINY, img_size=48, num_classes=4)
    cap = explainers.capture(model, torch.randn(1, 3, 48, 48), gradients=False, logits=False)
    with pytest.raises(ValueError, match="patch-only blocks"):
        explainers.compute(cap, "raw_attention", layer=0)


def test_mean_readout_on_synthetic_attention_protects_nothing():
    """The mean readout with prefix tokens pooled too (pooled_from=0): ρ = 1/N everywhere."""
    g = torch.Generator().manual_seed(0)
    n, layers = 1 + 6, 3
    attentions = tuple(torch.randn(2, 2, n, n, generator=g).softmax(-1) for _ in range(layers))
    layout = TokenLayout(num_prefix=1, grid=(2, 3), cls_index=None, readout="mean", pooled_from=0)
    cap = Capture(attentions, None, None, None, layout)
    maps = explainers.compute(cap, "rollout", discard_ratio=0.6, head_fusion="max")
    for b in range(2):
        steps = [a[b].double().amax(0).numpy() for a in attentions]
        want = reference.readout_map(steps, np.full(n, 1.0 / n), True, 1, 0.6, None)
        np.testing.assert_allclose(maps[b].reshape(-1).numpy(), want, rtol=1e-5)


def test_discard_without_a_protected_token_drops_exactly_that_many():
    from explainers.attention_ops import discard_lowest_

    fused = torch.rand(3, 7, 7) + 0.01
    out = discard_lowest_(fused.clone(), 0.5, None)
    assert ((out == 0).sum(dim=(1, 2)) == int(0.5 * 49)).all()


# --- NaFlexViT, headless backbones, the families of issue 10 ---------------------------------------


def explain_every_method(model, images, target=None):
    """``{method: maps}`` for every registered method: the four attention methods must explain every
    family; a method restricted to class-token models (the LRP family, attention Grad-CAM) may refuse
    with a ValueError instead, never with another error."""
    maps = {}
    for method in explainers.list_explainers():
        try:
            maps[method] = explainers.explain(model, images, method, target=target)
        except ValueError:
            assert method not in METHODS, method
    return maps


@pytest.mark.parametrize("size", [(48, 80), (64, 32)])
def test_naflexvit_explained_at_any_accepted_size(size):
    model = make_vit("naflexvit_base_patch16_map", **TINY, num_classes=3, init_values=1.0)
    images = torch.randn(1, 3, *size)
    for maps in explain_every_method(model, images).values():
        assert maps.shape == (1, size[0] // 16, size[1] // 16)
    with pytest.raises(ValueError, match="multiples of its 16×16 patches"):
        explainers.explain(model, torch.randn(1, 3, 50, 64), "rollout")


def test_similarity_target_is_the_cosine_of_pooled_embeddings():
    model = make_vit("vit_small_patch14_reg4_dinov2", **TINY, img_size=28, num_classes=0)
    images, ref = torch.randn(2, 3, 28, 28), torch.randn(1, 3, 28, 28)
    with pytest.raises(ValueError, match="SimilarityTarget"):
        explainers.explain(model, images, "gae")
    cap = explainers.capture(model, images, explainers.SimilarityTarget(ref))
    with torch.no_grad():
        embeddings, reference_embedding = model(images), model(ref)[0]
    want = torch.nn.functional.cosine_similarity(embeddings, reference_embedding[None])
    torch.testing.assert_close(cap.scores, want)
    by_vector = explainers.capture(model, images, explainers.SimilarityTarget(reference_embedding))
    for mine, theirs in zip(cap.gradients, by_vector.gradients, strict=True):
        torch.testing.assert_close(mine, theirs)
    with pytest.raises(ValueError, match="reference embedding has 7 values"):
        explainers.capture(model, images, explainers.SimilarityTarget(torch.randn(7)))
    with pytest.raises(ValueError, match="image batch"):
        explainers.SimilarityTarget(torch.randn(2, 3, 28, 28))


@pytest.mark.parametrize("method", ["grad_rollout", "gae"])
def test_headless_similarity_matches_an_independent_computation(method):
    """DINOv2-style headless backbone (class token, 4 registers): ∂cos(e(x), e_ref)/∂A by hand."""
    model = make_vit("vit_small_patch14_reg4_dinov2", **TINY, img_size=42, num_classes=0).double()
    generator = torch.Generator().manual_seed(5)
    images = torch.randn(2, 3, 42, 42, generator=generator, dtype=torch.float64)
    ref = torch.randn(1, 3, 42, 42, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        ref_embedding = manual_vit(model, ref)[0][0]
    embeddings, _, attn, grads = manual_capture(manual_vit, model, images, target=ref_embedding)
    cap = explainers.capture(model, images, explainers.SimilarityTarget(ref))
    cosine = torch.nn.functional.cosine_similarity(embeddings, ref_embedding[None])
    torch.testing.assert_close(cap.scores, cosine.detach())
    maps = explainers.compute(cap, method)
    rho = np.eye(cap.layout.num_tokens)[0]
    for b in range(2):
        want = expected(method, attn[b], grads[b], rho, 5, 0, {})
        np.testing.assert_allclose(maps[b].reshape(-1).numpy(), want, rtol=1e-6, atol=1e-12)


FAMILIES = [  # every family issue 10 found refused or failing, built tiny with random weights
    ("vit_base_patch16_siglip_224", {"img_size": 32}, None),
    ("vit_medium_patch16_gap_256", {"img_size": 32, "init_values": 1.0}, None),
    ("vit_little_patch16_reg1_gap_256", {"img_size": 32, "init_values": 1.0}, None),
    ("vit_relpos_base_patch16_224", {"img_size": 32, "init_values": 1.0}, None),
    ("vit_srelpos_small_patch16_224", {"img_size": 32, "init_values": 1.0}, None),
    ("vit_base_patch16_rpn_224", {"img_size": 32, "init_values": 1.0}, None),
    ("cait_xxs24_224", {"img_size": 32, "init_values": 1.0}, None),
    ("naflexvit_base_patch16_gap", {"init_values": 1.0}, (32, 48)),
    ("vit_small_patch14_reg4_dinov2", {"img_size": 28, "num_classes": 0}, None),
    ("eva02_tiny_patch14_224", {"img_size": 28, "num_classes": 0}, None),
    ("vit_base_patch16_clip_224", {"img_size": 64, "num_classes": 0}, None),
]


@pytest.mark.parametrize(("name", "kwargs", "size"), FAMILIES)
def test_every_family_gives_finite_non_negative_non_constant_maps(name, kwargs, size):
    model = make_vit(name, **{**TINY, "num_classes": 3, **kwargs})
    description = explainers.describe_model(model, size)
    images = torch.randn(2, 3, *description.image_size, generator=torch.Generator().manual_seed(0))
    target = None if description.has_head else explainers.SimilarityTarget(images[:1].flip(-1))
    for method, maps in explain_every_method(model, images, target).items():
        assert maps.shape == (2, *description.layout.grid), (name, method)
        assert torch.isfinite(maps).all() and (maps >= 0).all(), (name, method)
        if method in METHODS:  # a ReLU'd single-layer map (attn_gradcam) may vanish on a random model
            assert (maps.flatten(1).std(dim=1) > 0).all(), (name, method)


@pytest.mark.parametrize(
    ("name", "architecture"),
    [
        ("xcit_nano_12_p16_224", "Xcit"),
        ("swin_tiny_patch4_window7_224", "SwinTransformer"),
        ("pit_ti_224", "PoolingVisionTransformer"),
        ("levit_128s", "Levit"),
        ("mvitv2_tiny", "MultiScaleVit"),
        ("twins_svt_small", "Twins"),
        ("efficientvit_b0", "EfficientVit"),
        ("fastvit_t8", "FastVit"),
        ("crossvit_tiny_240", "CrossVit"),
    ],
)
def test_unsupported_architectures_are_refused_with_the_reason(name, architecture):
    with torch.device("meta"):  # the structure is enough: no weights are materialised
        model = timm.create_model(name, pretrained=False)
    with pytest.raises(ValueError, match=f"^{architecture}.* is not supported: "):
        explainers.describe_model(model)
    if name.startswith("xcit"):  # the capture asks the same question before touching the model
        model = make_vit(name, depth=1)
        with pytest.raises(ValueError, match="cross-covariance"):
            explainers.explain(model, torch.randn(1, 3, 224, 224), "rollout")


@pytest.mark.parametrize("pool", ["max", "avgmax", ""])
def test_pools_without_a_token_readout_are_refused(pool):
    model = make_vit("deit_tiny_patch16_224", **TINY, img_size=32, global_pool=pool)
    with pytest.raises(ValueError, match=f"global_pool={pool!r}"):
        explainers.describe_model(model)


def test_attention_entropy_counts_only_the_tokens_that_attend_in_cait():
    from explainers.attention_stats import attention_entropy

    model = make_vit("cait_xxs24_224", **TINY, img_size=32, num_classes=4)
    cap = explainers.capture(model, torch.randn(1, 3, 32, 32), gradients=False, logits=False)
    entropy = attention_entropy(cap)
    patch_rows = cap.attentions[0][0, :, 1:, 1:]
    class_row = cap.attentions[3][0, :, 0]
    torch.testing.assert_close(entropy[0, 0], -(patch_rows * patch_rows.log()).sum(-1).mean(-1))
    torch.testing.assert_close(entropy[0, 3], -(class_row * class_row.log()).sum(-1))


def test_eva_attention_pool_reads_every_token_and_hybrids_take_rgb():
    pe_core = make_vit("vit_pe_core_tiny_patch16_384", **TINY, img_size=32, num_classes=3)
    assert explainers.describe_model(pe_core).layout.pooled_from == 0  # the class token is pooled too
    cap = explainers.capture(pe_core, torch.randn(1, 3, 32, 32))
    torch.testing.assert_close(cap.pool_attention.sum(-1), torch.ones(*cap.pool_attention.shape[:-1]))
    hybrid = make_vit("vit_small_r26_s32_224", depth=1, num_classes=3)  # a ResNet stem before the patches
    assert explainers.explain(hybrid, torch.randn(1, 3, 224, 224), "gae").shape == (1, 7, 7)


def test_differential_attention_is_refused():
    with torch.device("meta"):
        model = timm.create_model("vit_dlittle_patch16_reg1_gap_256", pretrained=False)
    with pytest.raises(ValueError, match="DiffAttention is not supported: its differential attention"):
        explainers.describe_model(model)

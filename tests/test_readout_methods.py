"""attn_gradcam, attention_flow and LeGrad on every readout: class token, mean of the pooled tokens,
attention pool, CaiT's late class token, headless similarity.

Each is compared with an independent computation: the model's forward written out block by block
(explicit softmax per block and for the pool, ``tests/manual_models.py``, keeping every block's
tokens), gradients by autograd through it, the formula as a plain float64
loop, and attention flow by networkx's maximum flow on the super-source graph.
"""

import networkx as nx
import numpy as np
import pytest
import torch
from networkx.algorithms.flow import edmonds_karp

import explainers
from tests import manual_models
from tests.conftest import make_vit

TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2}
NEW = ("attn_gradcam", "attention_flow", "legrad")


def manual_vit(model, images):
    """``(logits, block attentions, block tokens)`` of the hand-written forward (``manual_models``)."""
    logits, attentions, _, tokens = manual_models.vit(model, images)
    return logits, attentions, tokens


def peaked(model):
    """Query and key weights scaled up: peaked attention, so maps have contrast."""
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[: 2 * block.attn.qkv.in_features] *= 4.0
    return model


def readout_row(layout, pool_row=None):
    """ρ ``(N,)`` built by hand: e_cls, 1_S/|S| over the pooled tokens, or the pool's row (zeros before)."""
    n = layout.num_tokens
    if layout.readout == "cls":
        return np.eye(n)[layout.cls_index]
    if layout.readout == "mean":
        pooled = n - layout.pooled_from
        return np.array([0.0] * layout.pooled_from + [1.0 / pooled] * pooled)
    return np.concatenate([np.zeros(n - pool_row.shape[-1]), pool_row])


READOUT_MODELS = [  # (timm name, kwargs, readout)
    ("deit_tiny_patch16_224", {}, "cls"),
    ("deit_tiny_distilled_patch16_224", {}, "cls"),
    ("vit_little_patch16_reg1_gap_256", {"init_values": 1.0}, "mean"),
    ("vit_medium_patch16_gap_256", {"init_values": 1.0}, "mean"),
    ("vit_base_patch16_siglip_224", {}, "attention_pool"),
    ("deit_tiny_patch16_224", {"global_pool": "map", "class_token": False}, "attention_pool"),
]


def build(name, kwargs, **extra):
    model = make_vit(name, **TINY, img_size=32, patch_size=8, num_classes=4, **kwargs, **extra).double()
    return peaked(model)


@pytest.mark.parametrize(("name", "kwargs", "readout"), READOUT_MODELS)
def test_attn_gradcam_matches_a_plain_loop(name, kwargs, readout):
    """w_h = mean_{j ∈ patches} Σ_i ρ_i ∇A[h, i, j]; map_j = ReLU(mean_h w_h Σ_i ρ_i A[h, i, j])."""
    model = build(name, kwargs)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    logits, attentions, _ = manual_vit(model, images)
    torch.testing.assert_close(logits, model(images))
    pool = []
    if readout == "attention_pool":
        _, attentions, tokens = manual_vit(model, images)
        logits = model.head(model.fc_norm(manual_models.attention_pool(model, model.norm(tokens[-1]), pool)))
    target = 1
    last = pool[0] if pool else attentions[-1]  # the pool's attention is the last attention step
    (grad,) = torch.autograd.grad(logits[:, target].sum(), last)
    cap = explainers.capture(model, images, target=target)
    layout = cap.layout
    assert layout.readout == readout
    maps = explainers.compute(cap, "attn_gradcam").reshape(3, -1).numpy()
    n, p = layout.num_tokens, layout.num_prefix
    nonzero = 0
    for b in range(3):
        a, g = last[b].detach().numpy(), grad[b].numpy()
        heads = a.shape[0]
        if pool:  # ρ = e_q on the pool's own (H, 1, N_pooled) attention, laid out on the N tokens
            a = np.concatenate([np.zeros((heads, 1, n - a.shape[-1])), a], axis=-1)
            g = np.concatenate([np.zeros((heads, 1, n - g.shape[-1])), g], axis=-1)
            rho = np.array([1.0])
        else:
            rho = readout_row(layout)
        want = np.zeros(n)
        for h in range(heads):
            row = np.zeros(n)
            grad_row = np.zeros(n)
            for i in range(rho.shape[0]):
                row += rho[i] * a[h, i]
                grad_row += rho[i] * g[h, i]
            want += grad_row[p:].mean() * row / heads
        want = np.maximum(want, 0.0)[p:]
        np.testing.assert_allclose(maps[b], want, rtol=1e-5, atol=1e-10)
        nonzero += int(want.std() > 0)
    assert nonzero > 0  # at least one image with contrast: the comparison is not of zero maps


def networkx_flows(fused, rho):
    """Max flow from a super-source (edges of capacity ρ_k to each top-level token k) to every input token,
    through the graph of Â_l = rownorm(mean_h A_l + I), built edge by edge (networkx, exact floats)."""
    layers, n, _ = fused.shape
    graph = nx.DiGraph()
    for level in range(1, layers + 1):
        residual = fused[level - 1] + np.eye(n)
        residual = residual / residual.sum(axis=-1, keepdims=True)
        for q in range(n):
            for k in range(n):
                graph.add_edge((level, q), (level - 1, k), capacity=residual[q, k])
    for k in range(n):
        graph.add_edge("source", (layers, k), capacity=rho[k])
    flows = np.array(
        [nx.maximum_flow_value(graph, "source", (0, k), flow_func=edmonds_karp) for k in range(n)]
    )
    return flows / flows.sum()


@pytest.mark.parametrize(("name", "kwargs", "readout"), READOUT_MODELS[2:])
def test_attention_flow_from_a_super_source_matches_networkx(name, kwargs, readout):
    model = build(name, kwargs)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with torch.no_grad():
        _, attentions, tokens = manual_vit(model, images)
        pool = []
        if readout == "attention_pool":
            manual_models.attention_pool(model, model.norm(tokens[-1]), pool)
    cap = explainers.capture(model, images, gradients=False, logits=False)
    layout = cap.layout
    maps = explainers.compute(cap, "attention_flow").reshape(2, -1).double().numpy()
    for b in range(2):
        fused = np.stack([a[b].numpy().mean(axis=0) for a in attentions])
        rho = readout_row(layout, pool[0][b, :, 0].numpy().mean(axis=0) if pool else None)
        want = networkx_flows(fused, rho)
        np.testing.assert_allclose(maps[b], want[layout.num_prefix :], rtol=1e-6, atol=1e-9)
        assert want[layout.num_prefix :].std() > 1e-2 * want[layout.num_prefix :].mean()  # contrast
        rollout = explainers.compute(cap.subset(b), "rollout").reshape(-1).numpy()
        assert np.abs(np.corrcoef(rollout, maps[b])[0, 1]) < 0.9999  # not rollout under another name


def test_attention_flow_from_the_class_token_is_the_super_source_flow():
    """For ρ = e_cls the authors' graph (source: the top-level class token) and the super-source agree."""
    from explainers.methods.attention_flow import token_flows

    g = torch.Generator().manual_seed(8)
    attentions = torch.randn(3, 2, 7, 7, generator=g).mul(3).softmax(-1).double()
    fused = attentions.mean(1) + torch.eye(7, dtype=torch.float64)
    fused = (fused / fused.sum(-1, keepdim=True)).numpy()
    np.testing.assert_array_equal(token_flows(fused, 0), token_flows(fused, np.eye(7)[0]))


def legrad_reference(model, images, target, layout, start=0, reference=None):
    """Σ_l mean_{h,q} ReLU(∂s_l/∂A) with s_l read by hand from block l's tokens: the pool on norm(x_l)
    (A: the pool's attention there) or head(fc_norm(norm(mean_n x_l))) (A: block l's attention); s_l a
    logit, or the cosine similarity to ``reference`` (an embedding)."""
    _, attentions, tokens = manual_vit(model, images)
    total = np.zeros((images.shape[0], layout.num_tokens))
    for layer in range(start, len(tokens)):
        x = tokens[layer]
        if layout.readout == "attention_pool":
            kept = []
            embedding = model.fc_norm(manual_models.attention_pool(model, model.norm(x), kept))
            attention = kept[0]
        else:
            embedding = model.fc_norm(model.norm(x.mean(dim=1)))
            attention = attentions[layer]
        if reference is None:
            score = manual_models.classify(model, embedding)[:, target]
        else:
            score = torch.nn.functional.cosine_similarity(embedding, reference[None], dim=-1)
        (grad,) = torch.autograd.grad(score.sum(), attention, retain_graph=True)
        relevance = grad.clamp(min=0).mean(dim=(1, 2)).detach().numpy()
        total[:, layout.num_tokens - relevance.shape[-1] :] += relevance
    return total[:, layout.num_prefix :]


@pytest.mark.parametrize(("name", "kwargs", "readout"), READOUT_MODELS)
def test_legrad_matches_autograd_on_hand_written_readouts(name, kwargs, readout):
    model = build(name, kwargs)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    cap = explainers.capture(model, images, target=3, gradients=False, layer_gradients=True)
    assert cap.layout.readout == readout
    for start in (0, 1):
        maps = explainers.compute(cap, "legrad", start_layer=start).reshape(2, -1).numpy()
        want = legrad_reference(model, images, 3, cap.layout, start)
        np.testing.assert_allclose(maps, want, rtol=1e-5, atol=1e-10)
        assert (want.std(axis=1) > 0).all()


def test_legrad_explains_a_headless_similarity():
    """A headless SigLIP tower and a headless class-token backbone: s_l = cos(e_l, e_ref)."""
    for name, kwargs in (("vit_base_patch16_siglip_224", {}), ("vit_small_patch14_reg4_dinov2", {})):
        model = peaked(make_vit(name, **TINY, img_size=32, patch_size=8, num_classes=0, **kwargs).double())
        generator = torch.Generator().manual_seed(10)
        images = torch.randn(2, 3, 32, 32, generator=generator, dtype=torch.float64)
        ref = torch.randn(1, 3, 32, 32, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            ref_embedding = model(ref)[0]
        cap = explainers.capture(model, images, explainers.SimilarityTarget(ref), gradients=False,
                                 layer_gradients=True)
        maps = explainers.compute(cap, "legrad").reshape(2, -1).numpy()
        want = legrad_reference(model, images, None, cap.layout, reference=ref_embedding)
        np.testing.assert_allclose(maps, want, rtol=1e-5, atol=1e-10)
        assert (want.std(axis=1) > 0).all()


def test_legrad_on_cait_reads_patch_blocks_and_class_attention_steps():
    """Patch blocks: s_l from the mean of the patches, ∂/∂ their P×P attention; class-attention steps: s_l
    from the mean of [class token, patches], ∂/∂ the class token's row."""
    model = make_vit("cait_xxs24_224", **TINY, img_size=32, patch_size=8, init_values=1.0, num_classes=4)
    model = model.double()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    logits, patches, classes, tokens = manual_models.cait(model, images)
    attentions = patches + classes
    torch.testing.assert_close(logits, model(images))
    cap = explainers.capture(model, images, target=2, gradients=False, layer_gradients=True)
    torch.testing.assert_close(cap.logits, logits.detach())  # the step-by-step pass is the model's own
    assert cap.num_layers == 4 and [g.shape[2] for g in cap.layer_gradients] == [16, 16, 1, 1]
    want = np.zeros((2, 17))
    for x, attention in zip(tokens, attentions, strict=True):
        score = model.head(model.norm(x.mean(dim=1)))[:, 2]
        (grad,) = torch.autograd.grad(score.sum(), attention, retain_graph=True)
        want[:, 17 - grad.shape[-1] :] += grad.clamp(min=0).mean(dim=(1, 2)).detach().numpy()
    maps = explainers.compute(cap, "legrad").reshape(2, -1).numpy()
    np.testing.assert_allclose(maps, want[:, 1:], rtol=1e-5, atol=1e-10)
    assert (want[:, 1:].std(axis=1) > 0).all()


FAMILIES = [  # every family issue 10 named, built tiny (random weights, layer scale 1 where it has one)
    ("vit_base_patch16_siglip_224", {}, None),
    ("vit_medium_patch16_gap_256", {"init_values": 1.0}, None),
    ("vit_little_patch16_reg1_gap_256", {"init_values": 1.0}, None),
    ("vit_relpos_base_patch16_224", {"init_values": 1.0}, None),
    ("vit_srelpos_small_patch16_224", {"init_values": 1.0}, None),
    ("vit_base_patch16_rpn_224", {"init_values": 1.0}, None),
    ("cait_xxs24_224", {"init_values": 1.0}, None),
    ("naflexvit_base_patch16_gap", {"init_values": 1.0}, (32, 48)),
    ("naflexvit_base_patch16_map", {"init_values": 1.0}, (48, 32)),
    ("deit_tiny_distilled_patch16_224", {}, None),
    ("vit_pe_core_tiny_patch16_384", {}, None),
    ("vit_small_patch14_reg4_dinov2", {"img_size": 56, "num_classes": 0, "init_values": 1.0}, None),
    ("eva02_tiny_patch14_224", {"img_size": 56, "num_classes": 0}, None),
    ("vit_base_patch16_clip_224", {"img_size": 64, "num_classes": 0}, None),
    ("vit_base_patch16_siglip_224", {"num_classes": 0}, None),
]


def sharpen(model, factor=40.0):
    """Scale every query and key projection: peaked attention as in trained models (timm's random init
    gives nearly uniform attention, where attention flow's max-flows all meet the same bottleneck)."""
    with torch.no_grad():
        for block in [*model.blocks, *(getattr(model, "blocks_token_only", None) or ())]:
            attention = block.attn
            if hasattr(attention, "qkv"):
                attention.qkv.weight[: 2 * attention.qkv.in_features] *= factor
            for name in ("q", "k", "q_proj", "k_proj"):
                if getattr(attention, name, None) is not None:
                    getattr(attention, name).weight.mul_(factor)
        pool = getattr(model, "attn_pool", None)
        if pool is not None:  # the latent's query and the keys (the first half of kv)
            pool.q.weight.mul_(factor)
            pool.kv.weight[: pool.kv.in_features] *= factor
    return model


@pytest.mark.parametrize(("name", "kwargs", "size"), FAMILIES)
def test_every_family_gives_finite_non_negative_non_constant_maps(name, kwargs, size):
    """attn_gradcam is the ReLU of a signed head-weighted sum, so for one target it may vanish on a random
    model: of three targets (classes, or reference images for a headless model) one must have contrast."""
    small = {"img_size": 32, "patch_size": 8} if "patch14" not in name and "naflex" not in name else {}
    model = sharpen(make_vit(name, **{**TINY, "num_heads": 4, "num_classes": 3, **small, **kwargs}))
    description = explainers.describe_model(model, size)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, *description.image_size, generator=generator)
    if description.has_head:
        targets = [0, 1, 2]
    else:
        other = torch.randn(1, 3, *description.image_size, generator=generator)
        refs = [images[:1].flip(-1), -images[1:], other]
        targets = [explainers.SimilarityTarget(ref) for ref in refs]
    for method in NEW:
        contrast = []
        for target in targets:
            maps = explainers.explain(model, images, method, target=target)
            assert maps.shape == (2, *description.layout.grid), (name, method)
            assert torch.isfinite(maps).all() and (maps >= 0).all(), (name, method)
            contrast.append(bool((maps.flatten(1).std(dim=1) > 0).all()))
        assert any(contrast) if method == "attn_gradcam" else all(contrast), (name, method)

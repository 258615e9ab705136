"""LRP (lrp, partial_lrp, transformer_attribution) beyond the class-token ViT: mean and attention-pool
readouts, distilled DeiT, similarity targets, block variants (LayerScale, q/k norm, relative-position
bias, GLU/SwiGLU MLPs), Hugging Face ViTs, and clear refusals for the families not covered.

The maps are checked against ``tests/reference_lrp.py``, a float64 forward pass and LRP written out step
by step from the state dict, and relevance conservation is checked for every family.
"""

import pytest
import timm
import torch

import explainers
from tests import reference_lrp
from tests.chefer_weights import chefer_state_dict

LRP_METHODS = ("lrp", "partial_lrp", "transformer_attribution")
TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2}


def build(name: str, **kwargs) -> torch.nn.Module:
    """A small timm model with peaked (non-flat) random weights (timm's own initialisation gives nearly
    uniform attention, whose relevance is below float32 resolution next to a mean readout's identity)."""
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    model.load_state_dict(chefer_state_dict(model))
    return model


#: family → (timm name, kwargs): one small model per block variant and readout the rules cover.
FAMILIES = {
    "avg": ("vit_tiny_patch16_224", dict(TINY, img_size=32, patch_size=8, global_pool="avg")),
    "avg_fc_norm_reg": (
        "vit_little_patch16_reg1_gap_256", dict(TINY, img_size=32, patch_size=8, fc_norm=True),
    ),
    "avg_with_prefix": (
        "vit_tiny_patch16_224",
        dict(TINY, img_size=32, patch_size=8, global_pool="avg", pool_include_prefix=True),
    ),
    "siglip_map": ("vit_base_patch16_siglip_224", dict(TINY, img_size=32, patch_size=8, num_classes=5)),
    "siglip_map_headless": ("vit_base_patch16_siglip_224", dict(TINY, img_size=32, patch_size=8)),
    "reg4_map": ("vit_so150m_patch16_reg4_map_256", dict(TINY, img_size=32, patch_size=8)),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(TINY, img_size=32, patch_size=8)),
    "deit3_layerscale": ("deit3_small_patch16_224", dict(TINY, img_size=32, patch_size=8)),
    "qk_norm": ("vit_tiny_patch16_224", dict(TINY, img_size=32, patch_size=8, qk_norm=True)),
    "swiglu": (
        "vit_tiny_patch16_224", dict(TINY, img_size=32, patch_size=8, mlp_layer=timm.layers.SwiGLU)
    ),
    "glu": (
        "vit_tiny_patch16_224", dict(TINY, img_size=32, patch_size=8, mlp_layer=timm.layers.SwiGLUPacked)
    ),
    "clip_norm_pre": ("vit_base_patch16_clip_224", dict(TINY, img_size=32, patch_size=8)),
    "dinov2_headless": ("vit_small_patch14_dinov2", dict(TINY, img_size=28, patch_size=7)),
    "relpos_avg": ("vit_relpos_small_patch16_224", dict(TINY, img_size=32, patch_size=8)),
    "relpos_cls": ("vit_relpos_medium_patch16_cls_224", dict(TINY, img_size=32, patch_size=8)),
    "relpos_rpn": ("vit_relpos_small_patch16_rpn_224", dict(TINY, img_size=32, patch_size=8)),
    "beit": ("beit_base_patch16_224", dict(TINY, img_size=32, patch_size=8)),
    "vit_rpn_post_norm": ("vit_base_patch16_rpn_224", dict(TINY, img_size=32, patch_size=8)),
    "eva02_rope_glu_headless": ("eva02_tiny_patch14_224", dict(TINY, img_size=28, patch_size=7)),
    "eva02_clip_swiglu": ("eva02_base_patch16_clip_224", dict(TINY, img_size=32, patch_size=8)),
    "rope_cls": ("vit_small_patch16_rope_224", dict(TINY, img_size=32, patch_size=8)),
    "rope_mixed": ("vit_small_patch16_rope_mixed_224", dict(TINY, img_size=32, patch_size=8)),
    "pe_core_rope_attention_pool": ("vit_pe_core_tiny_patch16_384", dict(TINY, img_size=32, patch_size=8)),
    "dinov3_rope_registers": ("vit_small_patch16_dinov3", dict(TINY, img_size=32, patch_size=8)),
    "naflex_gap_registers": ("naflexvit_base_patch16_gap", dict(TINY, patch_size=8)),
    "naflex_siglip_map": ("naflexvit_base_patch16_siglip", dict(TINY, patch_size=8)),
    "naflex_radio_cls": ("naflexvit_base_patch16_radio_v3", dict(TINY, patch_size=8)),
}


def _capture(model: torch.nn.Module, images: torch.Tensor) -> explainers.Capture:
    target = None if model.num_classes else explainers.SimilarityTarget(images[:1].flip(-1))
    return explainers.capture(model, images, target, relevance=True)


def _images(model: torch.nn.Module, n: int = 2) -> torch.Tensor:
    size = explainers.describe_model(model).image_size
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("family", FAMILIES)
def test_relevance_is_conserved_and_maps_are_valid(family):
    name, kwargs = FAMILIES[family]
    model = build(name, **kwargs)
    images = _images(model)
    cap = _capture(model, images)
    # Σ token relevance + position relevance = the starting relevance: 1 (one-hot) or the cosine
    start = torch.ones(2, dtype=torch.float64) if model.num_classes else cap.scores.double()
    total = cap.relevance.tokens.double().sum(-1) + cap.relevance.position.double()
    torch.testing.assert_close(total, start, rtol=0, atol=1e-4)
    for method in LRP_METHODS:
        maps = explainers.compute(cap, method)
        assert maps.shape == (2, *cap.layout.grid), method
        assert torch.isfinite(maps).all() and (maps >= 0).all(), method
        assert (maps.flatten(1).std(dim=1) > 0).all(), f"{method} is constant on {family}"


@pytest.mark.parametrize("family", ["eva02_rope_glu_headless", "rope_mixed", "dinov3_rope_registers"])
def test_the_rotary_embedding_the_rules_read_is_the_one_the_model_applied(family):
    """softmax(rotate(q) rotate(k)ᵀ / √d), from the recorded q and k and the adapter's rotation, is the
    attention the model computed (recorded independently, at its softmax)."""
    from explainers.lrp_families import model_parts
    from explainers.recorder import ActivationRecorder
    from explainers.relevance import watch_list

    name, kwargs = FAMILIES[family]
    model = build(name, **kwargs)
    images = _images(model)
    recorder = ActivationRecorder(watch_list(model))
    with torch.no_grad(), recorder:
        model(images) if model.num_classes else model.forward_features(images)
    grid = explainers.describe_model(model).layout.grid
    for i, block in enumerate(model_parts(model).blocks):
        qkv = torch.cat([recorder.outputs[f"{i}.qkv{j}"] for j in range(len(block.qkv))], dim=-1)
        q, k, _ = qkv.reshape(*qkv.shape[:2], 3, block.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = recorder.outputs.get(f"{i}.q_norm", q), recorder.outputs.get(f"{i}.k_norm", k)
        q, k = block.rotate(q, grid), block.rotate(k, grid)
        attention = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)
        torch.testing.assert_close(attention, recorder.attentions[i], rtol=1e-4, atol=1e-6)


POSITION_FAMILIES = ["avg_fc_norm_reg", "deit_distilled", "naflex_gap_registers", "siglip_map"]


@pytest.mark.parametrize("family", POSITION_FAMILIES)
def test_the_position_term_is_the_same_for_every_image(family):
    """What the rules take as the position embedding (the first block's input minus the token embeddings
    the adapter rebuilds) does not depend on the image; a wrong token embedding would."""
    from explainers.lrp_families import model_parts
    from explainers.recorder import ActivationRecorder
    from explainers.relevance import watch_list

    name, kwargs = FAMILIES[family]
    model = build(name, **kwargs)
    parts = model_parts(model)
    recorder = ActivationRecorder(watch_list(model))
    images = _images(model)
    with torch.no_grad(), recorder:
        model(images)
    embedded = recorder.inputs.get("embed", recorder.inputs["0.norm1"])
    patches = parts.patch_tokens(recorder.inputs["patches"], recorder.outputs["patches"])
    prefix = [t.expand(2, -1, -1) for t in parts.prefix]
    position = embedded - torch.cat([*prefix, patches], dim=1)
    torch.testing.assert_close(position[0], position[1], rtol=0, atol=1e-5)
    assert position[:, len(prefix):].abs().max() > 0.1  # these models add a position embedding to patches


@pytest.mark.parametrize(
    ("family", "kwargs"),
    [
        ("mean readout, class token and register not pooled", dict(global_pool="avg", reg_tokens=1)),
        ("mean readout, fc_norm, no class token", dict(global_pool="avg", class_token=False, fc_norm=True)),
        ("attention pool", dict(global_pool="map", class_token=False)),
        ("class token", dict()),
    ],
)
def test_relevance_equals_a_float64_step_by_step_reference(family, kwargs):
    """The model runs in float64, so the library's propagation (float64 for a float64 model) and the
    reference differ only by rounding."""
    model = build("vit_tiny_patch16_224", **TINY, img_size=32, patch_size=8, num_classes=4, **kwargs).double()
    images = _images(model).double()
    cap = explainers.capture(model, images, [1, 3], relevance=True)
    for b, target in enumerate([1, 3]):
        reference = reference_lrp.forward_and_relevance(model, images[b], target)
        logits, tokens, position, attention, pool = reference
        torch.testing.assert_close(cap.logits[b], logits, rtol=1e-9, atol=1e-9)  # the same forward
        scale = tokens.abs().max()
        torch.testing.assert_close(cap.relevance.tokens[b].double(), tokens, rtol=0, atol=1e-9 * scale)
        torch.testing.assert_close(cap.relevance.position[b].double(), position, rtol=0, atol=1e-9)
        for ours, theirs in zip(cap.relevance.attention, attention, strict=True):
            torch.testing.assert_close(ours[b].double(), theirs, rtol=0, atol=1e-9 * theirs.abs().max())
        if pool is not None:
            first = cap.layout.pooled_from
            torch.testing.assert_close(cap.relevance.pool[b, :, :, first:].double(), pool, rtol=0,
                                       atol=1e-9 * pool.abs().max())
            assert (cap.relevance.pool[b, :, :, :first] == 0).all()


def test_similarity_relevance_equals_the_reference_and_sums_to_the_cosine():
    model = build("vit_tiny_patch16_224", **TINY, img_size=32, patch_size=8, global_pool="map",
                  class_token=False, num_classes=0).double()
    images = _images(model, 1).double()
    reference = torch.randn(32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    cap = explainers.capture(model, images, explainers.SimilarityTarget(reference), relevance=True)
    embedding, tokens, position, _, _ = reference_lrp.forward_and_relevance(model, images[0], None, reference)
    cosine = torch.nn.functional.cosine_similarity(embedding, reference.double(), dim=0)
    torch.testing.assert_close(cap.scores[0], cosine, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(tokens.sum() + position, cosine)  # the reference itself conserves
    ours = cap.relevance.tokens[0].double()
    torch.testing.assert_close(ours, tokens, rtol=0, atol=1e-9 * tokens.abs().max())


def test_distilled_deit_splits_the_relevance_between_its_two_heads():
    name, kwargs = FAMILIES["deit_distilled"]
    model = build(name, **kwargs)
    cap = _capture(model, _images(model))
    # the last block's attention relevance reaches the head through the class and distillation rows only
    rows = cap.relevance.attention[-1].abs().sum((1, 3))
    assert (rows[:, :2] > 0).all() and (rows[:, 2:] == 0).all()


def test_mean_readout_spreads_the_relevance_over_the_pooled_tokens_only():
    model = build("vit_tiny_patch16_224", **TINY, img_size=32, patch_size=8, global_pool="avg")
    cap = explainers.capture(model, _images(model), relevance=True)
    rows = cap.relevance.attention[-1].abs().sum((1, 3))  # the class token is not pooled: no relevance
    assert (rows[:, 0] == 0).all() and (rows[:, 1:] > 0).all()


def test_threads_on_a_pooled_model_give_the_serial_relevance():
    import threading

    model = build("vit_base_patch16_siglip_224", **TINY, img_size=32, patch_size=8, num_classes=5)
    batches = [_images(model, 1) * (i + 1) for i in range(3)]
    serial = [explainers.explain(model, x, "lrp", target=i) for i, x in enumerate(batches)]
    results: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        results[i] = explainers.explain(model, batches[i], "lrp", target=i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(results[i], serial[i]) for i in range(3))


@pytest.mark.parametrize(
    ("name", "kwargs", "reason"),
    [
        ("cait_xxs24_224", dict(depth=2, img_size=32, patch_size=8), "Cait: its patch blocks mix the heads"),
        ("vit_small_patch16_18x2_224", dict(depth=2, img_size=32), "ParallelThingsBlock is not supported"),
        ("vit_small_patch16_36x1_224", dict(depth=2, img_size=32, global_pool="max"), "global_pool='max'"),
    ],
)
def test_families_not_covered_are_refused_with_the_model_and_the_reason(name, kwargs, reason):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    images = torch.randn(1, 3, 32, 32)
    for method in LRP_METHODS:
        with pytest.raises(ValueError, match=reason):
            explainers.explain(model, images, method)


def _hf_models() -> dict[str, torch.nn.Module]:
    """Tiny random Hugging Face classifiers (and headless DINOv2), wrapped as :func:`load_model` does."""
    transformers = pytest.importorskip("transformers")
    from explainers.sources.hf import HFVisionTransformer

    small = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    vit = dict(small, intermediate_size=64, num_labels=5)
    dino = dict(small, mlp_ratio=2, num_labels=5)
    t = transformers
    built = {
        "vit": t.ViTForImageClassification(t.ViTConfig(**vit)),
        "deit_distilled": t.DeiTForImageClassificationWithTeacher(t.DeiTConfig(**vit)),
        "beit_mean_relpos_layerscale": t.BeitForImageClassification(
            t.BeitConfig(**vit, use_mean_pooling=True, use_relative_position_bias=True)
        ),
        "beit_cls": t.BeitForImageClassification(t.BeitConfig(**vit, use_mean_pooling=False)),
        "ijepa": t.IJepaForImageClassification(t.IJepaConfig(**vit)),
        "dinov2": t.Dinov2ForImageClassification(t.Dinov2Config(**dino)),
        "dinov2_swiglu_registers": t.Dinov2WithRegistersForImageClassification(
            t.Dinov2WithRegistersConfig(**dino, use_swiglu_ffn=True, num_register_tokens=2)
        ),
        "dinov2_headless": t.Dinov2ForImageClassification(t.Dinov2Config(**dict(dino, num_labels=0))),
    }
    out = {}
    for name, model in built.items():
        model.load_state_dict(chefer_state_dict(model))
        out[name] = HFVisionTransformer(model.eval())
    return out


@pytest.fixture(scope="module")
def hf_models() -> dict[str, torch.nn.Module]:
    return _hf_models()


HF_FAMILIES = [
    "vit", "deit_distilled", "beit_mean_relpos_layerscale", "beit_cls", "ijepa", "dinov2",
    "dinov2_swiglu_registers", "dinov2_headless",
]


@pytest.mark.parametrize("family", HF_FAMILIES)
def test_hugging_face_relevance_is_conserved_and_maps_are_valid(hf_models, family):
    model = hf_models[family]
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    cap = _capture(model, images)
    start = torch.ones(2, dtype=torch.float64) if model.num_classes else cap.scores.double()
    total = cap.relevance.tokens.double().sum(-1) + cap.relevance.position.double()
    torch.testing.assert_close(total, start, rtol=0, atol=1e-4)
    for method in LRP_METHODS:
        maps = explainers.compute(cap, method)
        assert maps.shape == (2, 4, 4)
        assert torch.isfinite(maps).all() and (maps >= 0).all(), method
        assert (maps.flatten(1).std(dim=1) > 0).all(), f"{method} is constant on {family}"


def test_hugging_face_vit_relevance_equals_timm_on_the_same_weights(hf_models):
    """A HF ViT and a timm ViT with the same weights (q, k, v stacked into timm's qkv) give the same
    relevance: the two adapters name the same computation."""
    wrapped = hf_models["vit"]
    hf = wrapped.hf
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                              embed_dim=32, num_heads=2, mlp_ratio=2, num_classes=5, qkv_bias=True).eval()
    model.norm = torch.nn.LayerNorm(32, eps=hf.config.layer_norm_eps)  # HF's epsilon, 1e-12
    state = {
        "cls_token": hf.vit.embeddings.cls_token, "pos_embed": hf.vit.embeddings.position_embeddings,
        "patch_embed.proj.weight": hf.vit.embeddings.patch_embeddings.projection.weight,
        "patch_embed.proj.bias": hf.vit.embeddings.patch_embeddings.projection.bias,
        "norm.weight": hf.vit.layernorm.weight, "norm.bias": hf.vit.layernorm.bias,
        "head.weight": hf.classifier.weight, "head.bias": hf.classifier.bias,
    }
    for i, layer in enumerate(wrapped.blocks):
        layer, b = layer.layer, f"blocks.{i}."
        attention = layer.attention
        state |= {
            b + "norm1.weight": layer.layernorm_before.weight, b + "norm1.bias": layer.layernorm_before.bias,
            b + "norm2.weight": layer.layernorm_after.weight, b + "norm2.bias": layer.layernorm_after.bias,
            b + "attn.qkv.weight": torch.cat([attention.q_proj.weight, attention.k_proj.weight,
                                              attention.v_proj.weight]),
            b + "attn.qkv.bias": torch.cat([attention.q_proj.bias, attention.k_proj.bias,
                                            attention.v_proj.bias]),
            b + "attn.proj.weight": attention.o_proj.weight, b + "attn.proj.bias": attention.o_proj.bias,
            b + "mlp.fc1.weight": layer.mlp.fc1.weight, b + "mlp.fc1.bias": layer.mlp.fc1.bias,
            b + "mlp.fc2.weight": layer.mlp.fc2.weight, b + "mlp.fc2.bias": layer.mlp.fc2.bias,
        }
        model.blocks[i].norm1.eps = model.blocks[i].norm2.eps = hf.config.layer_norm_eps
    model.load_state_dict({k: v.detach() for k, v in state.items()})
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    ours, theirs = (explainers.capture(m, images, [1, 4], relevance=True) for m in (wrapped, model))
    torch.testing.assert_close(ours.logits, theirs.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.relevance.tokens, theirs.relevance.tokens, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("family", ["siglip_map", "avg_fc_norm_reg", "eva02_rope_glu_headless", "relpos_cls"])
def test_fused_and_unfused_attention_give_the_same_relevance(family):
    name, kwargs = FAMILIES[family]
    model = build(name, **kwargs)
    images = _images(model)
    maps = {}
    for fused in (True, False):
        for module in model.modules():
            if hasattr(module, "fused_attn"):
                module.fused_attn = fused
        cap = _capture(model, images)
        maps[fused] = [explainers.compute(cap, m) for m in LRP_METHODS]
    for a, b in zip(maps[True], maps[False], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)

"""Hugging Face ``transformers`` ViTs through ``load_model("hf:<folder>")``: tiny random models saved to a
folder with ``save_pretrained`` (no download), explained by every method and checked against the model's
own eager ``output_attentions``."""

import time
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import explainers
from explainers.metrics.sanity import randomised_models
from explainers.models import ModelLoadError, load_model
from explainers.sources.hf import HFVisionTransformer

from . import reference

transformers = pytest.importorskip("transformers")

SMALL = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=4)
LABELS = {0: "cat", 1: "dog", 2: "owl", 3: "fox", 4: "eel"}
SQUASH = dict(size={"height": 32, "width": 32})
CROP = dict(size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32}, do_center_crop=True)
SHORT = dict(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, do_center_crop=True)


def _families():
    t = transformers
    vit_args = dict(**SMALL, intermediate_size=64, id2label=LABELS)
    dino_args = dict(**SMALL, mlp_ratio=2, id2label=LABELS)
    return {
        # name: (model class, config, image processor, prefix tokens); the readout is in READOUT
        "vit": (t.ViTForImageClassification, t.ViTConfig(**vit_args), t.ViTImageProcessor(**SQUASH), 1),
        "deit": (t.DeiTForImageClassification, t.DeiTConfig(**vit_args), t.DeiTImageProcessor(**CROP), 2),
        "deit_distilled": (
            t.DeiTForImageClassificationWithTeacher, t.DeiTConfig(**vit_args), t.DeiTImageProcessor(**CROP), 2
        ),
        "beit_cls": (
            t.BeitForImageClassification,
            t.BeitConfig(**vit_args, use_mean_pooling=False, use_relative_position_bias=True),
            t.BeitImageProcessor(**SQUASH),
            1,
        ),
        "beit_mean": (
            t.BeitForImageClassification,
            t.BeitConfig(**vit_args, use_mean_pooling=True, use_relative_position_bias=True),
            t.BeitImageProcessor(**SQUASH),
            1,
        ),
        "data2vec_vision": (
            t.Data2VecVisionForImageClassification, t.Data2VecVisionConfig(**vit_args),
            t.BeitImageProcessor(**SQUASH), 1,
        ),
        "ijepa": (t.IJepaForImageClassification, t.IJepaConfig(**vit_args), t.ViTImageProcessor(**SQUASH), 0),
        "vit_msn": (
            t.ViTMSNForImageClassification, t.ViTMSNConfig(**vit_args), t.ViTImageProcessor(**SQUASH), 1
        ),
        "dinov2": (
            t.Dinov2ForImageClassification, t.Dinov2Config(**dino_args), t.BitImageProcessor(**SHORT), 1
        ),
        "dinov2_registers": (
            t.Dinov2WithRegistersForImageClassification,
            t.Dinov2WithRegistersConfig(**dino_args, num_register_tokens=2),
            t.BitImageProcessor(**SHORT),
            3,
        ),
    }


FAMILIES = list(_families())
#: What each classifier reads (transformers' own heads): the class token, or the mean of the patch tokens.
READOUT = {name: "mean" if name in ("beit_mean", "data2vec_vision", "ijepa") else "cls" for name in FAMILIES}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    """One folder per family: a tiny random model and its image processor, saved with save_pretrained."""
    out = {}
    for name, (model_class, config, processor, _) in _families().items():
        folder = tmp_path_factory.mktemp(name)
        torch.manual_seed(0)
        model_class(config).eval().save_pretrained(folder)
        processor.save_pretrained(folder)
        out[name] = str(folder)
    return out


@pytest.fixture(scope="module")
def loaded(folders) -> dict[str, explainers.LoadedModel]:
    return {name: load_model(f"hf:{folder}") for name, folder in folders.items()}


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))


def _eager(folder: str) -> torch.nn.Module:
    auto = transformers.AutoModelForImageClassification
    return auto.from_pretrained(folder, attn_implementation="eager").eval()


@pytest.mark.parametrize("name", FAMILIES)
def test_loads_the_saved_model_with_its_labels_and_no_copy(folders, loaded, name):
    model_class, _, _, prefix = _families()[name]
    original = model_class.from_pretrained(folders[name]).eval()
    wrapped = loaded[name].model
    assert isinstance(wrapped, HFVisionTransformer) and type(wrapped.hf) is model_class
    assert not wrapped.training and not wrapped.hf.training
    assert loaded[name].class_names == ("cat", "dog", "owl", "fox", "eel") and wrapped.num_classes == 5
    assert wrapped.num_prefix_tokens == prefix and wrapped.patch_embed.grid_size == (4, 4)
    described = explainers.describe_model(wrapped)
    assert described.readout == READOUT[name] and described.layout.num_prefix == prefix
    assert described.layout.grid == (4, 4) and described.num_layers == 3 and described.num_heads == 4
    # the wrapper adds names, not parameters: its state dict is the model's, under "hf."
    assert sorted(wrapped.state_dict()) == sorted(f"hf.{k}" for k in wrapped.hf.state_dict())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = original(pixel_values=x).logits
        assert torch.allclose(wrapped(x), expected, atol=1e-6)
        # forward_head ∘ forward_features is the model's own forward (the similarity target reads it)
        assert torch.allclose(wrapped.forward_head(wrapped.forward_features(x)), expected, atol=1e-5)


def test_blocks_are_the_models_own_layers(loaded):
    wrapped = loaded["vit"].model
    layers = list(wrapped.hf.base_model.layers)
    assert len(wrapped.blocks) == 3
    assert all(b.layer is layer for b, layer in zip(wrapped.blocks, layers, strict=True))
    assert all(b.attn.num_heads == 4 for b in wrapped.blocks)


@pytest.mark.parametrize("name", ["vit", "deit", "dinov2"])
def test_preprocess_is_the_models_image_processor(folders, loaded, photo, name):
    processor = transformers.AutoImageProcessor.from_pretrained(folders[name])
    expected = processor(images=photo, return_tensors="pt")["pixel_values"][0]
    x = loaded[name].preprocess(photo)
    assert x.shape == (3, 32, 32) and torch.equal(x, expected)
    assert loaded[name].data_config["input_size"] == (3, 32, 32)
    assert loaded[name].data_config["mean"] == pytest.approx(tuple(processor.image_mean))


def test_to_display_undoes_the_processors_normalisation(loaded):
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    model = loaded["vit"]  # squash to 32×32: the pixels are kept as they are
    assert np.array_equal(model.to_display(model.preprocess(Image.fromarray(image))), image)


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("method", explainers.list_explainers())
def test_every_method_gives_finite_nonnegative_maps_of_the_grid(loaded, photo, name, method):
    """Every registered method explains every family."""
    model = loaded[name]
    x = torch.stack([model.preprocess(photo), model.preprocess(photo.rotate(90))])
    maps = explainers.explain(model.model, x, method)
    assert maps.shape == (2, 4, 4)
    assert torch.isfinite(maps).all() and (maps >= 0).all()
    # attention Grad-CAM is the ReLU of a signed head-weighted sum: on a random tiny model it may be all zero;
    # Transformer Attribution read by a mean adds the readout row 1_S/|S| itself, next to which the
    # near-uniform attention of a tiny random model is below float32 resolution (test_relevance_readouts
    # checks it on peaked weights)
    mean_ta = method == "transformer_attribution" and READOUT[name] == "mean"
    flat_allowed = method == "attn_gradcam" or mean_ta
    assert maps.std() > 0 or flat_allowed


def _readout_row(n: int, prefix: int, readout: str) -> torch.Tensor:
    """ρ: the class token's one-hot row, or the uniform mean over the patch tokens."""
    rho = torch.zeros(n, dtype=torch.float64)
    if readout == "cls":
        rho[0] = 1.0
    else:
        rho[prefix:] = 1.0 / (n - prefix)
    return rho


def _plain_rollout(attentions: tuple[torch.Tensor, ...], prefix: int, readout: str) -> torch.Tensor:
    """Abnar & Zuidema 2020, one image at a time, from scratch: R = Π_l rownorm(mean_h A_l + I), read by ρ."""
    rows = []
    for b in range(attentions[0].shape[0]):
        n = attentions[0].shape[-1]
        result = torch.eye(n, dtype=torch.float64)
        for attention in attentions:
            step = attention[b].double().mean(0) + torch.eye(n, dtype=torch.float64)
            step = step / step.sum(-1, keepdim=True)
            result = step @ result
        rows.append((_readout_row(n, prefix, readout) @ result)[prefix:])
    return torch.stack(rows)


@pytest.mark.parametrize("name", FAMILIES)
def test_rollout_equals_rollout_of_the_models_eager_attentions(folders, loaded, name):
    prefix = _families()[name][3]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        attentions = _eager(folders[name])(pixel_values=x, output_attentions=True).attentions
    assert len(attentions) == 3 and attentions[0].shape == (2, 4, 16 + prefix, 16 + prefix)
    expected = _plain_rollout(attentions, prefix, READOUT[name]).reshape(2, 4, 4)
    maps = explainers.explain(loaded[name].model, x, "rollout")
    torch.testing.assert_close(maps.double(), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["vit", "deit_distilled", "dinov2_registers", "beit_mean", "ijepa"])
def test_gradient_methods_equal_references_from_the_eager_attentions(folders, loaded, name):
    """∂y_t/∂A_l taken of the eager model's own returned attention tensors, then the papers' formulas."""
    prefix = _families()[name][3]
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    eager = _eager(folders[name])
    out = eager(pixel_values=x, output_attentions=True)
    target = int(out.logits[0].argmax())
    grads = torch.autograd.grad(out.logits[0, target], out.attentions)
    a = [t[0].detach().numpy() for t in out.attentions]
    g = [t[0].numpy() for t in grads]
    rho = _readout_row(a[0].shape[-1], prefix, READOUT[name]).numpy()
    relevance = np.eye(len(rho))  # Chefer et al. 2021: R ← R + mean_h((∇A ⊙ A)⁺) R
    for attention, gradient in zip(a, g, strict=True):
        relevance = relevance + np.clip(gradient * attention, 0, None).astype(np.float64).mean(0) @ relevance
    model = loaded[name].model
    gae = explainers.explain(model, x, "gae", target=target)[0].flatten().double().numpy()
    np.testing.assert_allclose(gae, (rho @ relevance)[prefix:], rtol=1e-4, atol=1e-6)
    grad_rollout = explainers.explain(model, x, "grad_rollout", target=target)[0].flatten().double().numpy()
    _, product = reference.rollout(a, prefix, grads=g)
    np.testing.assert_allclose(grad_rollout, (rho @ product)[prefix:], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["vit", "deit_distilled", "dinov2_registers", "beit_mean"])
def test_legrad_equals_autograd_through_the_eager_models_hidden_states(folders, loaded, name):
    """s_l = the classifier on layernorm(mean_n h_l), written per family from transformers' own modules,
    differentiated w.r.t. the eager model's returned attention of layer l (LeGrad's CLIP recipe)."""
    prefix = _families()[name][3]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    eager = _eager(folders[name])
    out = eager(pixel_values=x, output_attentions=True, output_hidden_states=True)
    target, want = 2, torch.zeros(2, 16 + prefix, dtype=torch.float64)
    for hidden, attention in zip(out.hidden_states[1:], out.attentions, strict=True):
        mean = hidden.mean(dim=1)
        if name == "deit_distilled":
            features = eager.base_model.layernorm(mean)
            logits = (eager.cls_classifier(features) + eager.distillation_classifier(features)) / 2
        elif name == "beit_mean":  # no final norm: the pooler norms the mean of the patches
            logits = eager.classifier(eager.base_model.pooler.layernorm(mean))
        elif name == "dinov2_registers":  # [class token; mean of the patches], both the mean here
            features = eager.base_model.layernorm(mean)
            logits = eager.classifier(torch.cat([features, features], dim=-1))
        else:
            logits = eager.classifier(eager.base_model.layernorm(mean))
        (grad,) = torch.autograd.grad(logits[:, target].sum(), attention, retain_graph=True)
        want += grad.clamp(min=0).mean(dim=(1, 2)).double()
    maps = explainers.explain(loaded[name].model, x, "legrad", target=target).reshape(2, -1).double()
    torch.testing.assert_close(maps, want[:, prefix:], atol=1e-9, rtol=1e-4)
    assert (want[:, prefix:].std(dim=1) > 0).all()


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_capture_records_eager_and_sdpa_attention_alike(folders, implementation):
    folder = folders["beit_cls"]  # relative position bias: an additive attention mask on both paths
    model = transformers.AutoModelForImageClassification.from_pretrained(
        folder, attn_implementation=implementation
    ).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = _eager(folder)(pixel_values=x, output_attentions=True).attentions
    for gradients in (False, True):
        cap = explainers.capture(HFVisionTransformer(model), x, gradients=gradients)
        for got, want in zip(cap.attentions, expected, strict=True):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_capture_leaves_the_model_as_found(loaded):
    model = loaded["deit_distilled"].model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    explainers.capture(model, torch.randn(1, 3, 32, 32))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and not model.training


def test_sanity_randomisation_works_on_a_copy(loaded):
    model = loaded["vit"].model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    steps = 0
    for randomised in randomised_models(model):
        steps += 1
        last = randomised.blocks[-1].layer
        assert last is list(randomised.hf.base_model.layers)[-1]  # the copy's views are the copy's layers
        assert not torch.equal(last.mlp.fc1.weight, model.blocks[-1].layer.mlp.fc1.weight)
        assert torch.isfinite(explainers.explain(randomised, x, "gae")).all()
    assert steps == 3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_backbone_without_a_classifier_loads_headless_and_explains_similarity(tmp_path, photo):
    torch.manual_seed(0)
    backbone = transformers.Dinov2Model(transformers.Dinov2Config(**SMALL, mlp_ratio=2)).eval()
    backbone.save_pretrained(tmp_path)
    transformers.BitImageProcessor(**SHORT).save_pretrained(tmp_path)
    model = load_model(f"hf:{tmp_path}")
    assert model.model.num_classes == 0 and model.class_names == ()
    assert not explainers.describe_model(model.model).has_head
    x, ref = model.preprocess(photo)[None], model.preprocess(photo.rotate(180))[None]
    assert explainers.explain(model.model, x, "rollout").shape == (1, 4, 4)
    with pytest.raises(ValueError, match="SimilarityTarget"):
        explainers.explain(model.model, x, "gae")
    # the explained score is the cosine similarity of DINOv2's embeddings [class token; patch mean]
    hidden = backbone(pixel_values=torch.cat([x, ref])).last_hidden_state
    embedding = torch.cat([hidden[:, 0], hidden[:, 1:].mean(1)], dim=-1)
    cap = explainers.capture(model.model, x, explainers.SimilarityTarget(ref))
    expected = torch.nn.functional.cosine_similarity(embedding[:1], embedding[1:])
    torch.testing.assert_close(cap.scores, expected.detach(), atol=1e-5, rtol=1e-5)
    for method in ("gae", "grad_rollout"):
        maps = explainers.compute(cap, method)
        assert maps.shape == (1, 4, 4) and torch.isfinite(maps).all() and (maps >= 0).all() and maps.std() > 0


def test_unsupported_architecture_is_refused_by_name(tmp_path):
    config = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1], num_heads=[2])
    transformers.SwinForImageClassification(config).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=r"'swin' is not supported.*vit"):
        load_model(f"hf:{tmp_path}")


def test_missing_image_processor_is_a_clear_error(tmp_path):
    transformers.ViTForImageClassification(transformers.ViTConfig(**SMALL)).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match=f"hf:{tmp_path} could not be loaded"):
        load_model(f"hf:{tmp_path}")


def test_missing_weights_are_refused_not_left_random(tmp_path, folders):
    for file in ("config.json", "preprocessor_config.json"):
        (tmp_path / file).write_bytes((Path(folders["vit"]) / file).read_bytes())
    state = load_file(f"{folders['vit']}/model.safetensors")
    del state["vit.encoder.layer.1.intermediate.dense.weight"]  # as saved: transformers renames on loading
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"1\.(mlp\.fc1|intermediate\.dense)\.weight.*would be random"):
        load_model(f"hf:{tmp_path}")


def test_processor_making_the_wrong_size_is_refused(tmp_path, folders):
    transformers.ViTForImageClassification(transformers.ViTConfig(**SMALL)).save_pretrained(tmp_path)
    transformers.ViTImageProcessor(size={"height": 48, "width": 48}).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="48×48 images but the model takes 32×32"):
        load_model(f"hf:{tmp_path}")


def test_hub_id_offline_and_not_cached_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"not in the local Hugging Face cache.*save_pretrained"):
        load_model("hf:google/vit-base-patch16-224")
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("spec", ["hf:./no/such/folder", "hf:", "hf:a/b/c"])
def test_neither_folder_nor_hub_id(spec):
    with pytest.raises(ModelLoadError, match="neither a folder"):
        load_model(spec)


def test_weights_argument_is_refused_for_hf(folders, tmp_path):
    with pytest.raises(ModelLoadError, match="weights= is only for timm"):
        load_model(f"hf:{folders['vit']}", weights=tmp_path / "w.safetensors")

"""The sidebar's model facts, Hugging Face models, and headless backbones with a reference image."""

import csv

import pytest
import timm
import torch
from safetensors.torch import save_file

from explainers.access import MAX_PARAMS_ENV, WEIGHT_DIRS_ENV
from explainers.models import EMBEDDED
from tests.dashboard_apptest import images, messages, open_app, problems

transformers = pytest.importorskip("transformers")

SMALL = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=4)


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch, tmp_path_factory):
    monkeypatch.setenv("VIT_EXPLAIN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv(WEIGHT_DIRS_ENV, str(tmp_path_factory.getbasetemp()))  # the hf: folders below
    return tmp_path / "data"


@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory) -> str:
    """A tiny random transformers ViT classifier with three named classes, saved with save_pretrained."""
    folder = tmp_path_factory.mktemp("hf_vit")
    torch.manual_seed(0)
    config = transformers.ViTConfig(**SMALL, intermediate_size=64, id2label={0: "cat", 1: "dog", 2: "owl"})
    transformers.ViTForImageClassification(config).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return f"hf:{folder}"


@pytest.fixture(scope="module")
def hf_backbone(tmp_path_factory) -> str:
    """A tiny random DINOv2 backbone without a classifier (headless)."""
    folder = tmp_path_factory.mktemp("hf_dinov2")
    torch.manual_seed(0)
    transformers.Dinov2Model(transformers.Dinov2Config(**SMALL, mlp_ratio=2)).save_pretrained(folder)
    crop = {"height": 32, "width": 32}
    transformers.BitImageProcessor(size={"shortest_edge": 36}, crop_size=crop).save_pretrained(folder)
    return f"hf:{folder}"


def sidebar_text(app) -> str:
    return "\n".join(str(c.value) for c in app.sidebar.caption)


def test_the_sidebar_shows_readout_prefix_tokens_and_grid():
    app = open_app()
    assert not problems(app)
    facts = "Readout: class token · 1 prefix token · 8×8 patches · 5 layers × 4 heads · 10 classes"
    assert facts in sidebar_text(app)


def test_a_hugging_face_folder_is_a_model_spec(hf_vit):
    app = open_app(model=hf_vit)
    assert not problems(app)
    # the methods that need timm's own modules say so; every other one is drawn
    for line in filter(None, messages(app).splitlines()):
        assert "timm" in line, line
    assert app.session_state["_scene"].model.spec == hf_vit and app.query_params["model"] == hf_vit
    assert app.selectbox(key="w.model").value == hf_vit
    assert "class token · 1 prefix token · 4×4 patches · 3 layers × 4 heads · 3 classes" in sidebar_text(app)
    assert {o.split(" · ")[0] for o in app.selectbox(key="w.target").options} == {"cat", "dog", "owl"}
    assert len(images(app)) >= 8  # four explainers: map over the image and raw map each


def test_a_hugging_face_folder_follows_the_visitor_policy(hf_vit, monkeypatch, tmp_path):
    """Like a weights file: outside the allowed folders refused with one answer (existing or not), and
    above VIT_EXPLAIN_MAX_PARAMS refused before it is built."""
    monkeypatch.setenv(WEIGHT_DIRS_ENV, str(tmp_path / "elsewhere"))
    answers = []
    for spec in (hf_vit, f"{hf_vit}-missing", "hf:../" + hf_vit.rsplit("/", 1)[-1]):
        app = open_app(model=spec)
        assert not problems(app) and app.query_params["model"] == EMBEDDED
        answers.append(messages(app).replace(spec[3:], "<folder>"))
    assert "refused" in answers[0] and len(set(answers)) == 1
    monkeypatch.setenv(WEIGHT_DIRS_ENV, hf_vit[3:])
    monkeypatch.setenv(MAX_PARAMS_ENV, "1000")
    app = open_app(model=hf_vit)
    assert not problems(app) and app.query_params["model"] == EMBEDDED
    assert "more than the 0.0 M" in messages(app)


def test_a_headless_model_asks_for_a_reference_image(hf_backbone):
    app = open_app(model=hf_backbone)
    assert not problems(app)
    assert "headless" in sidebar_text(app)
    assert not [s for s in app.sidebar.selectbox if s.key == "w.target"]
    assert app.selectbox(key="w.reference").value is None
    assert "Choose a reference image in the sidebar" in app.info[0].value
    # attention-only maps are shown; the gradient methods say what they need
    assert "choose a reference image in the sidebar" in messages(app)
    shown = len(images(app))

    app.selectbox(key="w.reference").select_index(2).run()
    assert not problems(app)
    for line in filter(None, messages(app).splitlines()):  # only the methods needing timm's own modules
        assert "timm" in line or "not a similarity" in line, line
    reference = app.query_params["reference"]
    assert reference.startswith("gallery:")
    scene = app.session_state["_scene"]
    assert scene.reference.ref == reference and scene.capture.gradients is not None
    assert "Cosine similarity of the embeddings" in sidebar_text(app)
    assert f"{scene.analysis.similarity:.3f}" in app.markdown[0].value
    assert len(images(app)) > shown  # the gradient methods' maps too

    app.button(key="w.reference_digit").click().run()
    assert not problems(app) and app.query_params["reference"].startswith("digit:")


def test_a_reference_from_a_link_is_kept_for_headless_models_only(hf_backbone):
    app = open_app(model=hf_backbone, reference="digit:7")
    assert not problems(app) and app.session_state["_scene"].reference.ref == "digit:7"
    app = open_app(model=EMBEDDED, reference="digit:7")
    assert not problems(app) and "reference" not in app.query_params


def test_evaluate_page_says_a_headless_model_has_nothing_to_evaluate(hf_backbone):
    app = open_app(model=hf_backbone, page="evaluate")
    assert not problems(app)
    assert "no classifier (headless)" in app.info[0].value


def test_supported_timm_models_come_from_the_compatibility_table(tmp_path):
    from dashboard.state import supported_timm_models
    from explainers import list_explainers

    methods = list_explainers()
    rows = [
        ("vit", "class token · 1 prefix token · 14×14 patches · 2 layers × 2 heads", ["✓"] * len(methods),
         "vit_tiny_patch16_224 vit_base_patch16_224"),
        ("vit_siglip", "attention pool · 0 prefix tokens · 14×14 patches · 2 layers × 2 heads",
         ["✓ flat", *["✓"] * (len(methods) - 1)], "vit_base_patch16_siglip_224"),
        ("xcit", "refused: Xcit is not supported", ["—"] * len(methods), "xcit_tiny_12_p16_224"),
        ("odd", "class token · 1 prefix token · 14×14 patches · 2 layers × 2 heads",
         ["✓", *["error: AttributeError: x"] * (len(methods) - 1)], "odd_model"),
        ("cait", "class token (joins at step 24) · 1 prefix token · 14×14 patches · 26 layers × 2 heads",
         ["refused: relevance propagation does not cover CaiT", *["✓"] * (len(methods) - 1)], "cait_s24_224"),
        ("flat", "class token · 1 prefix token · 14×14 patches · 2 layers × 2 heads",
         ["✓", "invalid map", *["✓"] * (len(methods) - 2)], "flat_model"),
    ]
    path = tmp_path / "compatibility.csv"
    with path.open("w", newline="") as handle:  # the columns scripts/compatibility.py writes
        writer = csv.writer(handle)
        writer.writerow(["family", "module", "example", "summary", *methods, "models"])
        writer.writerows([family, "m", "e", summary, *cells, names] for family, summary, cells, names in rows)
    assert supported_timm_models(path) == {
        "cait_s24_224": "class token (joins at step 24)",
        "vit_base_patch16_224": "class token",
        "vit_base_patch16_siglip_224": "attention pool",
        "vit_tiny_patch16_224": "class token",
    }
    assert supported_timm_models(tmp_path / "absent.csv") == {}


def test_the_model_picker_offers_the_supported_timm_names_and_keeps_a_typed_spec(hf_vit):
    from dashboard.state import supported_timm_models

    app = open_app(model=hf_vit)
    picker = app.selectbox(key="w.model")
    supported = supported_timm_models()
    assert picker.options == [EMBEDDED, *(f"{n} · {r}" for n, r in supported.items()), hf_vit]
    assert "hf:<folder>" in picker.help


def test_a_model_the_explainers_cannot_read_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "convnext.safetensors"
    save_file(timm.create_model("test_convnext", pretrained=False).state_dict(), path)
    app = open_app(model="test_convnext", weights=str(path))
    assert not problems(app)
    assert "ConvNeXt is not a Vision Transformer" in messages(app)
    assert "Showing the embedded model instead" in messages(app)
    assert app.session_state["_scene"].model.spec == EMBEDDED


def test_an_uploaded_reference_image(hf_backbone):
    from tests.test_dashboard_bad_inputs import PNG

    app = open_app(model=hf_backbone)
    app.file_uploader(key="w.reference_upload").upload("ref.png", PNG, "image/png").run()
    assert not problems(app)
    assert app.query_params["reference"].startswith("upload:")
    assert app.session_state["_scene"].analysis.similarity is not None

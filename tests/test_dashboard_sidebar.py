"""The shared sidebar: model, weights, device, image sources and the target class."""

from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from dashboard import state
from dashboard.byte_cache import nbytes
from explainers.models import EMBEDDED
from tests.dashboard_apptest import count_captures, images, messages, open_app, problems


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VIT_EXPLAIN_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_sidebar_offers_models_devices_images_and_top_classes():
    app = open_app()
    assert not problems(app)
    assert app.selectbox(key="w.model").value == EMBEDDED
    assert "cpu" in app.selectbox(key="w.device").options
    assert app.selectbox(key="w.image").value.startswith("gallery:")
    scene = app.session_state["_scene"]
    target = app.selectbox(key="w.target")
    top = scene.top(5)
    assert target.value == top[0][0]
    assert target.options[:5] == [f"{scene.class_name(c)} · {p:.1%}" for c, p in top]
    assert len(target.options) == len(scene.model.class_names)  # any class can be chosen


def test_choosing_another_class_explains_it():
    app = open_app()
    scene = app.session_state["_scene"]
    other = scene.top(5)[1][0]
    before = images(app)
    app.selectbox(key="w.target").set_value(other).run()
    assert not problems(app)
    assert app.session_state["_scene"].target == other
    assert app.query_params["target"] == str(other)
    assert images(app) != before
    app.selectbox(key="w.target").set_value(scene.top(5)[0][0]).run()
    assert "target" not in app.query_params  # the top prediction is the default


def test_gallery_choice_and_random_digit():
    app = open_app()
    second = app.selectbox(key="w.image").options[1]
    app.selectbox(key="w.image").select_index(1).run()
    assert app.query_params["image"] == "gallery:" + second.split(" ")[0]
    app.button(key="w.random_digit").click().run()
    assert not problems(app)
    assert app.query_params["image"].startswith("digit:")
    assert app.session_state["_scene"].image.box is not None
    assert app.selectbox(key="w.image").value == app.query_params["image"]


def test_a_timm_model_whose_weights_cannot_be_downloaded_falls_back(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    app = open_app(model="vit_base_patch16_224")
    assert not problems(app)
    assert "cannot be reached" in messages(app) and "Showing the embedded model instead" in messages(app)
    assert app.session_state["_scene"].model.spec == EMBEDDED
    assert app.query_params["model"] == EMBEDDED
    assert app.selectbox(key="w.model").value == EMBEDDED


def test_weights_that_do_not_fit_the_architecture(data_dir):
    wrong = data_dir / "weights" / "wrong.safetensors"
    wrong.parent.mkdir(parents=True)
    save_file({"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, wrong)
    app = open_app(weights=str(wrong))
    assert not problems(app)
    assert "do not fit embedded" in messages(app)
    assert "weights" not in app.query_params
    assert app.session_state["_scene"].model.weights is None


def test_uploaded_weights_are_kept_and_checked(data_dir):
    app = open_app()
    app.file_uploader(key="w.weights_upload").upload("wrong.pt", b"not a state dict").run()
    assert not problems(app)
    assert "cannot be loaded safely" in messages(app)
    assert app.session_state["_scene"].model.weights is None
    assert len(list((data_dir / "weights").glob("*.pt"))) == 1


def test_a_missing_weights_file_from_a_link():
    app = open_app(weights="weights/nonexistent.safetensors")
    assert "no weights file 'weights/nonexistent.safetensors'" in messages(app)
    assert app.session_state["_scene"].model.spec == EMBEDDED


def test_reruns_reuse_the_model_and_capture_and_leave_nothing_behind(monkeypatch):
    app = open_app()
    scene = app.session_state["_scene"]
    captures = count_captures(monkeypatch)
    for opacity in (0.1, 0.9, 0.3):
        app.slider(key="o.opacity").set_value(opacity).run()
    assert not problems(app) and captures == []
    again = app.session_state["_scene"]
    assert again.model is scene.model and again.capture is scene.capture
    assert open_app().session_state["_scene"].model is scene.model  # one model for every session
    modules = list(scene.model.model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in modules)


def test_the_capture_cache_is_bounded_by_bytes(monkeypatch):
    first = 5_000_000  # seeds no other test (nor the random-digit button, below 10⁶) uses
    app = open_app(image=f"digit:{first}")
    cache = state.caches().analyses
    size = nbytes(app.session_state["_scene"].analysis)
    monkeypatch.setattr(cache, "budget", 3 * size)  # three captures of this model fit
    captures = count_captures(monkeypatch)
    for seed in range(first + 1, first + 5):
        app.session_state["_view"] = replace(app.session_state["_view"], image=f"digit:{seed}")
        app.run()
        assert cache.total <= cache.budget and len(cache) <= 3
    assert len(captures) == 4
    app.session_state["_view"] = replace(app.session_state["_view"], image=f"digit:{first}")
    app.run()
    assert len(captures) == 5  # the oldest capture was evicted
    assert not problems(app)


def test_a_device_that_is_not_here_falls_back_to_the_cpu(monkeypatch):
    monkeypatch.setattr("dashboard.sidebar.available_devices", lambda: ["cpu"])
    app = open_app(device="cuda")
    assert "Device 'cuda' is not available" in messages(app)
    assert app.query_params["device"] == "cpu" and not problems(app)

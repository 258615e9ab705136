"""Two models side by side: the second model slot in the sidebar, the URL, Compare, Distributions, reviews."""

import json

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from dashboard.state import ModelSlot, ViewState
from explainers import list_explainers
from explainers.access import WEIGHT_DIRS_ENV
from explainers.models import EMBEDDED_DIR
from tests.dashboard_apptest import images, messages, open_app, plotly_specs, problems

TOP = 2  # the input image and the colour bar come first on Compare


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch, tmp_path_factory):
    """A data folder per test; the module's weight files are in a folder the operator allows."""
    monkeypatch.setenv("VIT_EXPLAIN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv(WEIGHT_DIRS_ENV, str(tmp_path_factory.getbasetemp()))
    return tmp_path / "data"


@pytest.fixture(scope="module")
def retrained(tmp_path_factory) -> str:
    """The embedded digit model with its weights perturbed: the same classes, other maps."""
    state = load_file(str(EMBEDDED_DIR / "model.safetensors"))
    generator = torch.Generator().manual_seed(0)
    state = {k: v + 0.05 * v.std().nan_to_num() * torch.randn(v.shape, generator=generator)
             for k, v in state.items()}
    path = tmp_path_factory.mktemp("weights") / "retrained.safetensors"
    save_file(state, str(path))
    return str(path)


@pytest.fixture(scope="module")
def deit_tiny_file(tmp_path_factory) -> str:
    """Random DeiT-Ti weights: 224×224 input, a 14×14 grid and the ImageNet classes."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "deit_tiny.safetensors"
    save_file(timm.create_model("deit_tiny_patch16_224", pretrained=False).state_dict(), str(path))
    return str(path)


def test_the_second_slot_round_trips_through_the_url():
    view = ViewState(second=ModelSlot("deit_tiny_patch16_224", "w/deit.safetensors", "cpu"))
    query = view.to_query()
    assert (query["model2"], query["weights2"], query["device2"]) == ("deit_tiny_patch16_224",
                                                                        "w/deit.safetensors", "cpu")
    assert ViewState.from_query(query) == (view, [])
    assert "model2" not in ViewState().to_query()
    parsed, problems_ = ViewState.from_query({"weights2": "x.pt"})
    assert parsed.second is None and "needs model2" in problems_[0]


def test_the_same_model_twice_agrees_fully():
    app = open_app(model2="embedded")
    assert not problems(app) and not messages(app)
    second = app.session_state["_second_scene"]
    assert second is not None and second.target == app.session_state["_scene"].target
    methods = list_explainers()
    # input, colour bar, then per method: A's map, B's map and the difference
    assert len(images(app)) == TOP + 3 * len(methods)
    table = app.main.dataframe[0].value
    assert len(table) == len(methods)
    np.testing.assert_allclose(table["spearman"], 1.0)
    np.testing.assert_allclose(table["iou"], 1.0)
    assert any("Both models explain the class" in str(info.value) for info in app.main.info)


def test_a_retrained_model_explains_the_same_class_with_other_maps(retrained):
    app = open_app()
    app.toggle(key="w2.on").set_value(True).run()
    app.text_input(key="w2.weights").input(retrained).run()
    assert not problems(app) and not messages(app)
    assert app.query_params["model2"] == "embedded" and app.query_params["weights2"] == retrained
    first, second = app.session_state["_scene"], app.session_state["_second_scene"]
    assert second.model.weights == retrained
    assert second.class_name(second.target) == first.class_name(first.target)
    table = app.main.dataframe[0].value
    assert (table["spearman"] < 1.0).any() and table["spearman"].between(-1, 1).all()
    app.toggle(key="w2.on").set_value(False).run()
    assert "model2" not in app.query_params and app.session_state["_second_scene"] is None
    assert len(images(app)) == TOP + 2 * len(list_explainers())


def test_models_with_other_grids_and_classes_compare_on_the_image_grid(deit_tiny_file):
    app = open_app(model2="deit_tiny_patch16_224", weights2=deit_tiny_file, methods="rollout,gae")
    assert not problems(app)
    first, second = app.session_state["_scene"], app.session_state["_second_scene"]
    assert first.capture.layout.grid == (8, 8) and second.capture.layout.grid == (14, 14)
    warning = messages(app)
    assert f"Model B has no class “{first.class_name(first.target)}”" in warning
    assert "each model explains its own prediction" in warning
    assert second.target == second.top(1)[0][0]
    captions = [c for image in app.main.image for c in image.captions]
    assert any("8×8 map" in c for c in captions) and any("14×14 map" in c for c in captions)
    table = app.main.dataframe[0].value
    assert list(table["Method"]) == ["Attention rollout", "Gradient × attention (GAE)"]
    assert table["iou"].between(0, 1).all()


def test_a_second_model_that_cannot_be_loaded_is_closed_with_a_message():
    app = open_app(model2="embedded", weights2="/nonexistent/weights.safetensors")
    assert not problems(app)
    assert "The second model is closed" in messages(app)
    assert "model2" not in app.query_params and "weights2" not in app.query_params


def test_distributions_overlay_both_models():
    app = open_app(page="distributions", model2="embedded")
    assert not problems(app)
    entropy, distance = (json.loads(spec)["data"] for spec in plotly_specs(app)[:2])
    for traces in (entropy, distance):
        assert [t["name"] for t in traces] == ["A: embedded", "B: embedded"]  # one colour per model


def test_a_two_model_review_reopens_with_both(retrained):
    app = open_app(model2="embedded", weights2=retrained, methods="rollout,gae")
    app.text_input(key="review.author").input("ann")
    app.text_area(key="review.notes").input("before and after")
    app.main.get("form_submit_button")[0].click().run()
    assert not problems(app) and "Saved as review #1" in app.success[0].value
    board = open_app(page="reviews")
    assert not problems(board)
    assert any("Compared with model B\\: embedded" in c.value for c in board.main.caption)  # escaped Markdown
    board.button(key="r.reopen").click().run()
    assert not problems(board)
    assert board.query_params["page"] == "compare" and board.query_params["weights2"] == retrained
    assert board.session_state["_second_scene"].model.weights == retrained
    assert len(board.main.dataframe[0].value) == 2  # the two models' agreement for rollout and gae

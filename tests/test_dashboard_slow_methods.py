"""Costs next to every method; a method slower than about a second runs when asked, with progress."""

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from explainers import get_explainer, list_explainers
from explainers.access import WEIGHT_DIRS_ENV
from tests.dashboard_apptest import images, open_app, problems


@pytest.fixture(autouse=True)
def weight_dirs(monkeypatch, tmp_path_factory):
    """The visitor policy allows the weight files these tests write (pytest's base temporary folder)."""
    monkeypatch.setenv(WEIGHT_DIRS_ENV, str(tmp_path_factory.getbasetemp()))


def costs(app) -> list[str]:
    return [c.value for c in app.main.caption if c.value.startswith("Cost: ")]


def test_every_method_shows_its_cost_and_cheap_ones_run_at_once():
    app = open_app()  # the embedded model: 65 tokens, 5 blocks; attention flow takes milliseconds
    assert not problems(app)
    shown = costs(app)
    assert len(shown) == len(list_explainers())
    assert any("65 max-flows on 5·65² edges" in c for c in shown)
    assert any("5 partial backwards (one per block)" in c for c in shown)
    assert not [b for b in app.main.button if b.key and b.key.startswith("run.")]
    assert len(images(app)) == 2 + 2 * len(list_explainers())


@pytest.fixture(scope="module")
def deit_weights(tmp_path_factory) -> str:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "deit_tiny.safetensors"
    save_file(timm.create_model("deit_tiny_patch16_224", pretrained=False).state_dict(), str(path))
    return str(path)


def test_a_slow_method_waits_for_its_button_then_stays(deit_weights, monkeypatch):
    monkeypatch.setenv(WEIGHT_DIRS_ENV, str(Path(deit_weights).parent))  # the operator allows its folder
    query = {"model": "deit_tiny_patch16_224", "weights": deit_weights, "methods": "rollout,attention_flow"}
    app = open_app(**query)
    assert not problems(app)
    assert [b.key for b in app.main.button if b.key and b.key.startswith("run.")] == ["run.attention_flow"]
    assert len(images(app)) == 2 + 2  # rollout's two maps only
    assert "runs when you ask" in app.main.info[0].value
    app.button(key="run.attention_flow").click().run()
    assert not problems(app)
    assert len(images(app)) == 2 + 2 * 2 and not app.main.info  # the request box is gone
    app.run()  # computed once: shown at once from now on, no button
    assert len(images(app)) == 2 + 2 * 2 and not [b for b in app.main.button if b.key == "run.attention_flow"]
    cost = get_explainer("attention_flow").cost
    assert cost.max_flows and any("197 max-flows on 12·197² edges" in c for c in costs(app))

"""What-if page: every parameter of one explainer on a control; maps from the cached capture only."""

from explainers import get_explainer
from tests.dashboard_apptest import count_captures, images, open_app, problems


def test_every_parameter_has_a_control_and_the_timing_is_shown():
    app = open_app(page="what_if", explore="rollout")
    assert not problems(app)
    assert app.main.header[0].value == "What-if explorer"
    keys = {w.key for kind in ("slider", "selectbox") for w in app.main.get(kind)}
    assert {f"p.rollout.{p.name}" for p in get_explainer("rollout").params} <= keys
    assert len(images(app)) == 2
    assert "Updated in" in app.main.success[0].value and "without a forward pass" in app.main.success[0].value


def test_a_parameter_change_reuses_the_capture_and_never_runs_the_model(monkeypatch):
    app = open_app(page="what_if", explore="rollout")
    scene = app.session_state["_scene"]
    calls = count_captures(monkeypatch)
    forwards = []
    handle = scene.model.model.register_forward_hook(lambda *_: forwards.append(1))
    try:
        before = images(app)
        app.slider(key="p.rollout.discard_ratio").set_value(0.9).run()
        app.selectbox(key="p.rollout.head_fusion").set_value("max").run()
    finally:
        handle.remove()
    assert not problems(app)
    assert calls == [] and forwards == []
    assert app.session_state["_scene"].capture is scene.capture
    assert images(app) != before
    assert app.query_params["rollout.discard_ratio"] == "0.9"
    assert app.query_params["rollout.head_fusion"] == "max"


def test_switching_the_explainer_shows_its_parameters():
    app = open_app(page="what_if")
    app.selectbox(key="o.explore").set_value("raw_attention").run()
    assert not problems(app)
    assert app.query_params["explore"] == "raw_attention"
    assert app.selectbox(key="p.raw_attention.head").value is None  # optional: "none" fuses the heads
    app.selectbox(key="p.raw_attention.head").set_value(1).run()
    assert app.query_params["raw_attention.head"] == "1"
    app.slider(key="p.raw_attention.layer").set_value(0).run()
    assert app.query_params["raw_attention.layer"] == "0"
    assert not problems(app)

"""The capture holds what the methods on screen read: relevance and per-layer gradients only for them, one
capture with more parts serves every request for fewer, and no session recomputes what another computed."""

import threading

import explainers
from dashboard import state
from tests.dashboard_apptest import count_captures, open_app, problems


def captured(calls: list, monkeypatch) -> list[dict]:
    """From now on, the optional parts asked of every capture the dashboard makes."""
    parts: list[dict] = []
    original = explainers.capture

    def recording(*args, **kwargs):
        parts.append({flag for flag in state.CAPTURE_FLAGS if kwargs.get(flag)})
        return original(*args, **kwargs)

    monkeypatch.setattr(explainers, "capture", recording)
    return parts


def test_the_capture_follows_the_methods_on_screen(monkeypatch):
    image = "digit:5100000"  # a seed no other test uses: nothing cached
    parts = captured([], monkeypatch)
    app = open_app(image=image, methods="rollout,gae")
    assert not problems(app) and parts == [set()]  # neither LRP nor LeGrad: a plain forward and backward
    app.multiselect(key="c.methods").set_value(["rollout", "gae", "raw_attention"]).run()
    assert parts == [set()]  # a cheap method: no new capture
    app.multiselect(key="c.methods").set_value(["rollout", "gae", "lrp", "legrad"]).run()
    assert not problems(app) and parts == [set(), {"relevance", "layer_gradients"}]
    assert len(app.main.image) >= 2 + 2 * 4
    app.multiselect(key="c.methods").set_value(["rollout"]).run()
    other = open_app(image=image, page="what_if", explore="gae")  # another session, fewer parts
    assert not problems(app) and not problems(other) and len(parts) == 2
    held = [key for key in state.caches().analyses.held_keys() if key[0][4] == other.session_state["_scene"]
            .image.sha]
    assert [flags for _, flags in held] == [frozenset({"relevance", "layer_gradients"})]  # the smaller went


def test_a_crowd_asking_for_the_same_new_capture_computes_it_once(monkeypatch):
    calls = count_captures(monkeypatch)
    model = state.get_model("embedded", "cpu", None)
    record = state.get_image("digit:5100001")
    start, results = threading.Barrier(6), []

    def session():
        start.wait()
        results.append(state.analyse(model, record, None, methods=["lrp", "rollout"]))

    threads = [threading.Thread(target=session) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(calls) == 1 and len(results) == 6 and all(r is results[0] for r in results)
    assert results[0].flags == {"relevance"} and results[0].capture.relevance is not None

"""Attention-distributions page: five Plotly charts, each with its controls."""

import base64
import json

import numpy as np

from tests.dashboard_apptest import open_app, plotly_specs, problems


def trace_types(spec: str) -> set[str]:
    return {trace["type"] for trace in json.loads(spec)["data"]}


def array(values: list | dict) -> np.ndarray:
    """A Plotly data array: a list, or NumPy data sent as base64 (``{"dtype": ..., "bdata": ...}``)."""
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"])
    return np.asarray(values)


def test_all_charts_are_drawn():
    app = open_app(page="distributions")
    assert not problems(app)
    specs = plotly_specs(app)
    assert len(specs) == 5
    entropy, distance, cls, rollout, sweep = specs  # in page order
    assert trace_types(entropy) == {"heatmap"}
    assert trace_types(cls) == {"violin"}
    assert trace_types(distance) == {"scatter"}
    assert trace_types(rollout) == {"image"}
    assert trace_types(sweep) == {"scatter"}
    layers = app.session_state["_scene"].capture.num_layers
    assert len(json.loads(rollout)["data"]) == layers  # one panel per block, start_layer 0
    ratios = array(json.loads(sweep)["data"][0]["x"])
    assert len(ratios) == 20 and ratios[0] == 0.0 and ratios[-1] == 0.95


def test_controls_change_the_charts_and_the_url():
    app = open_app(page="distributions")
    before = plotly_specs(app)
    app.selectbox(key="o.chart").set_value("histogram").run()
    assert trace_types(plotly_specs(app)[2]) == {"histogram"}
    app.selectbox(key="o.entropy").set_value("cls").run()
    assert plotly_specs(app)[0] != before[0]
    app.selectbox(key="o.summary").set_value("gini").run()
    assert plotly_specs(app)[4] != before[4]
    app.selectbox(key="o.sweep").set_value("grad_rollout").run()
    assert not problems(app)
    assert {k: app.query_params[k] for k in ("chart", "entropy", "summary", "sweep")} == {
        "chart": "histogram", "entropy": "cls", "summary": "gini", "sweep": "grad_rollout"}


def test_rollout_panels_follow_start_layer():
    app = open_app(page="distributions", **{"rollout.start_layer": "3"})
    assert not problems(app)
    layers = app.session_state["_scene"].capture.num_layers
    assert len(json.loads(plotly_specs(app)[3])["data"]) == layers - 3

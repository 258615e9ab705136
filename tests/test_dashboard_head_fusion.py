"""Head-fusion page: fusing explainers × (mean, max, min), then every head of a chosen layer."""

import json

from explainers.params import HEAD_FUSION
from tests.dashboard_apptest import images, link, messages, open_app, plotly_specs, problems


def test_fusion_grid_and_every_head():
    app = open_app(page="head_fusion")
    assert not problems(app)
    assert app.main.header[0].value == "Head fusion"
    heads = app.session_state["_scene"].dims["num_heads"]
    fusing = 2  # rollout and raw attention declare head_fusion
    rollout_rows = 2  # the patch view: the patch's and the class token's
    assert len(images(app)) == fusing * len(HEAD_FUSION.choices) + heads + rollout_rows
    captions = [c for image in app.main.image for c in image.captions]
    assert {f"rollout · {f}" for f in HEAD_FUSION.choices} <= set(captions)
    assert {f"head {h}" for h in range(heads)} <= set(captions)
    assert "page=head_fusion" in link(app)


def test_choosing_a_layer_changes_only_the_heads():
    app = open_app(page="head_fusion")
    before = images(app)
    app.slider(key="o.layer").set_value(0).run()
    after = images(app)
    assert not problems(app)
    fused, heads = 2 * len(HEAD_FUSION.choices), app.session_state["_scene"].dims["num_heads"]
    assert before[:fused] == after[:fused] and before[fused + heads :] == after[fused + heads :]
    shown = slice(fused, fused + heads)
    assert all(a != b for a, b in zip(before[shown], after[shown], strict=True))
    assert app.query_params["layer"] == "0"


def test_the_patch_view_shows_the_patch_in_the_url_next_to_the_class_token():
    app = open_app(page="head_fusion", patch="10")
    assert not problems(app)
    scene = app.session_state["_scene"]
    grid_h, grid_w = scene.capture.layout.grid
    row, column = divmod(10, grid_w)
    captions = [c.value for c in app.main.caption]
    tokens = scene.capture.layout.num_tokens
    assert f"Click a patch. Shown: patch ({row}, {column}), token {1 + 10} of {tokens}." in captions
    shown = [c for image in app.main.image for c in image.captions]
    assert {f"rollout row of the patch ({row}, {column})", "rollout row of the class token"} <= set(shown)
    picker, patch_rows, cls_rows = (json.loads(spec) for spec in plotly_specs(app))
    assert picker["data"][1]["customdata"]["shape"] == f"{grid_h * grid_w}, 2"  # a point per patch
    layers, heads = scene.capture.num_layers, scene.capture.num_heads
    assert len(patch_rows["data"]) == len(cls_rows["data"]) == layers * heads
    assert "page=head_fusion" in link(app) and "patch=10" in link(app)


def test_a_patch_outside_the_grid_shows_the_centre_with_a_message():
    app = open_app(page="head_fusion", patch="5000")
    assert not problems(app)
    assert "Patch 5000 is not in this model's 8×8 grid" in messages(app)
    assert any("Shown: patch (4, 4)" in c.value for c in app.main.caption)


def test_a_clicked_patch_becomes_the_views_patch():
    """The picker's selection (as the browser sends it) sets the patch; the browser test clicks for real."""
    app = open_app(page="head_fusion")
    # As Chromium sends it: a row of the NumPy customdata is a typed array, serialised as an object.
    point = {"curve_number": 1, "point_number": 21, "point_index": 21, "x": 44.0, "y": 20.0,
             "customdata": {"0": 2, "1": 5}}
    selection = {"selection": {"points": [point], "point_indices": [21], "box": [], "lasso": []}}
    app.session_state["h.patch_picker"] = selection
    app.run()
    assert not problems(app)
    assert app.query_params["patch"] == "21"


def test_charts_carry_no_colour_that_streamlit_rewrites():
    """Streamlit's frontend replaces #000001–#000010 in every Plotly figure (its theme's placeholders):
    Inferno's first stop #000004 turned zero attention lavender in the browser."""
    app = open_app(page="head_fusion")
    specs = plotly_specs(app)
    assert specs
    placeholders = [f"#0000{i:02d}" for i in range(1, 11)]
    for spec in map(json.loads, specs):
        spec["layout"].pop("template", None)  # the theme's own placeholders, there to be replaced
        text = json.dumps(spec).lower()
        assert not [c for c in placeholders if c in text]
    cls_rows = json.loads(specs[-1])
    assert cls_rows["layout"]["coloraxis"]["colorscale"][0][1] == "rgb(0, 0, 4)"  # Inferno's black, as rgb

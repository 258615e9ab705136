"""Head-fusion page: fusing explainers × (mean, max, min), then every head of a chosen layer."""

from explainers.params import HEAD_FUSION
from tests.dashboard_apptest import images, link, open_app, problems


def test_fusion_grid_and_every_head():
    app = open_app(page="head_fusion")
    assert not problems(app)
    assert app.main.header[0].value == "Head fusion"
    heads = app.session_state["_scene"].dims["num_heads"]
    fusing = 2  # rollout and raw attention declare head_fusion
    assert len(images(app)) == fusing * len(HEAD_FUSION.choices) + heads
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
    fused = 2 * len(HEAD_FUSION.choices)
    assert before[:fused] == after[:fused]
    assert all(a != b for a, b in zip(before[fused:], after[fused:], strict=True))
    assert app.query_params["layer"] == "0"

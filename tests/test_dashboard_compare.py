"""Compare page: every explainer side by side, controls from the registry, agreement table."""

from itertools import combinations

from explainers import get_explainer, list_explainers
from tests.dashboard_apptest import images, link, open_app, problems

TOP = 2  # the input image and the colour bar come first
COLUMNS = 4  # methods per row of the page (dashboard/views/compare.py runs as a page, so not imported)


def test_opens_on_compare_with_every_explainer():
    app = open_app()
    assert not problems(app)
    assert app.main.header[0].value == "Compare explainers"
    labels = {m.value for m in app.main.markdown}
    assert {f"**{get_explainer(m).label}**" for m in list_explainers()} <= labels
    # input image, colour bar, then (overlay, raw grid map) per explainer
    assert len(images(app)) == TOP + 2 * len(list_explainers())
    table = app.main.dataframe[0].value
    assert len(table) == len(list(combinations(list_explainers(), 2)))
    assert {"spearman", "iou"} <= set(table.columns)
    assert table["iou"].between(0, 1).all()
    assert "page=compare" in link(app)
    assert app.session_state["_scene"].analysis.box is not None  # gallery digits know their box


def test_controls_come_from_the_parameter_declarations():
    app = open_app()
    for method in list_explainers():
        for param in get_explainer(method).params:
            widget = app.main.get("slider" if param.kind is not str and not param.optional else "selectbox")
            assert any(w.key == f"p.{method}.{param.name}" for w in widget), (method, param.name)


def test_a_parameter_changes_only_its_own_map_and_the_url():
    app = open_app()
    before = images(app)
    app.slider(key="p.rollout.discard_ratio").set_value(0.5).run()
    after = images(app)
    assert not problems(app)
    changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    # rows of COLUMNS methods, each row: its overlays, then its raw maps
    row, column = divmod(list_explainers().index("rollout"), COLUMNS)
    in_row = min(COLUMNS, len(list_explainers()) - row * COLUMNS)
    start = TOP + 2 * COLUMNS * row
    assert changed == [start + column, start + in_row + column]
    assert app.query_params["rollout.discard_ratio"] == "0.5"


def test_fewer_methods_and_display_options():
    app = open_app()
    app.multiselect(key="c.methods").set_value(["rollout", "gae"]).run()
    assert len(images(app)) == TOP + 2 * 2
    assert len(app.main.dataframe[0].value) == 1
    assert app.query_params["methods"] == "rollout,gae"
    before = images(app)
    app.selectbox(key="o.colormap").set_value("jet").run()
    assert app.query_params["colormap"] == "jet"
    after = images(app)
    assert after[0] == before[0]  # the input image
    assert all(a != b for a, b in zip(before[1:], after[1:], strict=True))
    app.slider(key="o.top_percent").set_value(25).run()
    assert app.query_params["top_percent"] == "25"
    assert "top 25%" in str(app.main.dataframe[0].proto)
    assert not problems(app)

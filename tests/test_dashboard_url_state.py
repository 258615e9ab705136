"""The view lives in the URL: round trips, validation from the Param declarations, shared links."""

from urllib.parse import parse_qsl, urlsplit

import pytest

from dashboard.state import OPTIONS, ViewState, parse_image_ref
from tests.dashboard_apptest import images, link, messages, open_app, problems

DIMS = {"num_layers": 6, "num_heads": 4, "num_classes": 10}
HEADERS = {"head_fusion": "Head fusion", "distributions": "Attention distributions",
           "what_if": "What-if explorer", "evaluate": "Evaluate explainers", "reviews": "Review board"}


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VIT_EXPLAIN_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_view_state_round_trips_through_the_query():
    view = ViewState(
        page="what_if", model="deit_tiny_patch16_224", weights="w/deit.safetensors", device="cpu",
        image="digit:42", target=7, methods=("rollout", "gae"),
        params={"rollout": {"discard_ratio": 0.9, "head_fusion": "max"}, "raw_attention": {"head": None}},
        options={"opacity": 0.25, "colormap": "jet", "layer": -2, "explore": "gae"},
    )
    query = view.to_query()
    assert query["rollout.discard_ratio"] == "0.9" and query["raw_attention.head"] == "none"
    parsed, problems = ViewState.from_query(query)
    assert problems == []
    assert parsed == view


def test_defaults_are_left_out_of_the_query():
    view = ViewState(image="gallery:digit-03")
    dims = DIMS
    view = view.with_param("rollout", "discard_ratio", 0.0, dims).with_option("opacity", 0.5, dims)
    view = view.with_param("raw_attention", "layer", 5, dims)  # the last layer, i.e. the default -1
    assert view.to_query() == {"page": "compare", "model": "embedded", "device": "cpu",
                               "image": "gallery:digit-03"}
    assert view.with_param("rollout", "discard_ratio", 0.5, dims).to_query()["rollout.discard_ratio"] == "0.5"


@pytest.mark.parametrize(
    ("key", "text", "message"),
    [
        ("rollout.discard_ratio", "1.5", "discard_ratio must be in [0.0, 1.0)"),
        ("rollout.discard_ratio", "lots", "must be a number"),
        ("rollout.head_fusion", "median", "head_fusion must be one of"),
        ("rollout.colour", "red", "rollout has no parameter 'colour'"),
        ("nonsense.layer", "1", "unknown method 'nonsense'"),
        ("opacity", "2", "opacity must be in [0.0, 1.0]"),
        ("colormap", "rainbow", "colormap must be one of"),
        ("page", "admin", "no such page"),
        ("image", "upload:../../etc/passwd", "an image is gallery:<id>"),
        ("target", "-1", "class number"),
        ("methods", "rollout,bogus", "unknown method 'bogus'"),
        ("utm_source", "mail", "unknown parameter"),
    ],
)
def test_bad_link_values_give_a_message_and_the_default(key, text, message):
    view, problems = ViewState.from_query({"page": "compare", key: text})
    assert len(problems) == 1 and message in problems[0] and key in problems[0]
    assert view == ViewState()


def test_values_that_depend_on_the_model_are_checked_against_it():
    view, problems = ViewState.from_query({"layer": "-7", "raw_attention.head": "4", "gae.start_layer": "5",
                                           "target": "10"})
    assert problems == []
    checked, problems = view.validated(DIMS)
    assert len(problems) == 3  # start_layer 5 is valid for 6 layers
    assert checked.option("layer") == OPTIONS["layer"].default
    assert checked.params == {"gae": {"start_layer": 5}}
    assert checked.target is None


def test_image_references():
    assert parse_image_ref("gallery:digit-01") == ("gallery", "digit-01")
    assert parse_image_ref("digit:123") == ("digit", "123")
    assert parse_image_ref("upload:0123456789abcdef") == ("upload", "0123456789abcdef")
    for bad in ("digit:-1", "upload:xyz", "upload:", "file:/etc/passwd", ""):
        with pytest.raises(ValueError):
            parse_image_ref(bad)


def test_a_link_opens_the_same_view_in_a_new_session():
    first = open_app(page="what_if", explore="gae", colormap="viridis", opacity="0.3",
                     image="digit:7", **{"gae.start_layer": "2"})
    assert not problems(first) and not messages(first)
    assert first.main.header[0].value == "What-if explorer"
    assert first.slider(key="p.gae.start_layer").value == 2
    assert first.slider(key="o.opacity").value == 0.3
    first.slider(key="p.gae.start_layer").set_value(3).run()
    shared = link(first)
    assert urlsplit(shared).path == "/"
    query = dict(parse_qsl(urlsplit(shared).query))
    assert query["gae.start_layer"] == "3" and query["page"] == "what_if"
    second = open_app(**query)
    assert not problems(second) and not messages(second)
    assert second.main.header[0].value == "What-if explorer"
    assert images(second) == images(first)
    assert link(second) == shared


def test_every_page_has_a_link_to_itself():
    for page in ("compare", "head_fusion", "distributions", "what_if"):
        app = open_app(page=page)
        assert dict(parse_qsl(urlsplit(link(app)).query))["page"] == page


def test_a_link_to_an_image_that_is_not_here_falls_back():
    app = open_app(image="upload:0123456789abcdef", **{"rollout.discard_ratio": "0.5"})
    assert not problems(app)
    assert "is not on this server" in messages(app) and "first gallery image" in messages(app)
    assert app.query_params["image"].startswith("gallery:")
    assert app.query_params["rollout.discard_ratio"] == "0.5"  # the rest of the view is kept
    app = open_app(image="gallery:nope")
    assert "no image 'nope'" in messages(app)


def test_an_uploaded_image_is_shared_by_its_content_hash(data_dir):
    png = (data_dir.parent / "x.png")
    from PIL import Image

    Image.new("RGB", (32, 32), (0, 128, 255)).save(png)
    app = open_app()
    app.file_uploader(key="w.upload").upload("x.png", png.read_bytes()).run()
    ref = app.query_params["image"]
    again = open_app(image=ref)
    assert not messages(again)
    assert again.session_state["_scene"].image.sha == app.session_state["_scene"].image.sha


def test_bad_link_values_are_reported_on_the_page():
    app = open_app(**{"rollout.discard_ratio": "7", "layer": "99", "page": "compare"})
    assert not problems(app)
    text = messages(app)
    assert "discard_ratio must be in [0.0, 1.0)" in text and "layer must be in" in text
    assert "rollout.discard_ratio" not in app.query_params and "layer" not in app.query_params


@pytest.mark.parametrize("page", ["head_fusion", "distributions", "what_if", "evaluate", "reviews"])
def test_a_page_opened_by_its_own_path_stays_on_that_page(page):
    """``/what_if`` without ``?page=`` (typed or bookmarked) is that page, not Compare."""
    from streamlit.testing.v1 import AppTest

    from tests.dashboard_apptest import APP, TIMEOUT_S

    app = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    app.switch_page(f"views/{page}.py")  # what the browser's path selects
    app.run()
    assert not problems(app)
    assert app.main.header[0].value == HEADERS[page]
    assert app.query_params["page"] == page


def test_a_link_naming_another_page_than_the_path_opens_the_links_page():
    from streamlit.testing.v1 import AppTest

    from tests.dashboard_apptest import APP, TIMEOUT_S

    app = AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)
    app.query_params.update({"page": "what_if"})
    app.switch_page("views/head_fusion.py")
    app.run()
    assert not problems(app) and app.main.header[0].value == "What-if explorer"

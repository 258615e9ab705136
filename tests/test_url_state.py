"""Shareable links under AppTest: every page keeps its whole state in the URL, a copied link opened in
another session reproduces the view, and sessions share the model but never their state."""

from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest

from dashboard import state
from explainers.access import WEIGHT_DIRS_ENV
from explainers.reviews import ReviewStore
from tests.conftest import make_vit
from tests.dashboard_apptest import link, messages, open_app, problems
from tests.test_review_store import snapshot

MODEL = "deit_tiny_patch16_224"
#: Non-default values of every page's own options, so that each must survive the round trip.
PAGE_OPTIONS: dict[str, dict[str, str]] = {
    "compare": {"top_percent": "20"},
    "head_fusion": {"layer": "3", "patch": "37"},
    "distributions": {"chart": "histogram", "entropy": "cls", "sweep": "grad_rollout", "summary": "gini"},
    "what_if": {"explore": "gae"},
    "reviews": {"review": "1"},
}


@pytest.fixture(autouse=True)
def data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Each test has its own server data directory (uploads, review board); the weight files written by
    :func:`full_view` are in a folder the operator allows."""
    monkeypatch.setenv("VIT_EXPLAIN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv(WEIGHT_DIRS_ENV, str(tmp_path_factory.getbasetemp()))
    return tmp_path / "data"


def url(app: AppTest) -> dict[str, str]:
    return {key: str(value) for key, value in app.query_params.items()}


def full_view(folder: Path) -> dict[str, str]:
    """A URL query setting everything but the page: a timm ViT with weights from a local file (written in
    ``folder``), device, image, a class that is not the top prediction (the URL leaves that one out), the
    methods, parameters of each, and the display settings."""
    weights = folder / f"{MODEL}.safetensors"
    save_file(make_vit(MODEL).state_dict(), str(weights))
    base = {"model": MODEL, "weights": str(weights), "device": "cpu", "image": "gallery:digit-03"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VIT_EXPLAIN_DATA_DIR", str(folder / "probe"))
        patch.setenv(WEIGHT_DIRS_ENV, str(folder))
        top = open_app(page="compare", **base).session_state["_scene"].target
    return {
        **base,
        "target": str((top + 1) % 1000),
        "methods": "gae,raw_attention,rollout",  # in registry order, as the page writes them
        "rollout.discard_ratio": "0.5",
        "rollout.head_fusion": "max",
        "gae.start_layer": "2",
        "raw_attention.head": "1",
        "opacity": "0.7",
        "colormap": "viridis",
    }


@pytest.fixture(scope="module")
def view_query(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return full_view(tmp_path_factory.mktemp("model"))


@pytest.mark.parametrize("page", list(state.PAGES))
def test_every_page_keeps_its_state_in_the_url(page: str, view_query: dict[str, str], data_dir: Path) -> None:
    if page == "reviews":
        ReviewStore(data_dir / "reviews.sqlite3").save(snapshot())
    query = {"page": page, **view_query, **PAGE_OPTIONS.get(page, {})}
    first = open_app(**query)
    assert not problems(first) and not messages(first)
    assert url(first) == query, "the URL must hold exactly the view it was opened with"
    view = first.session_state["_view"]
    assert view.page == page and view.option("opacity") == 0.7 and view.option("colormap") == "viridis"

    # the "copy link" control shows the link; another browser opening it gets the same view
    copied = dict(parse_qsl(urlsplit(link(first)).query))
    assert copied == query
    second = open_app(**copied)
    assert second.session_state["_view"] == view
    assert url(second) == query


def test_every_option_is_in_some_round_trip(view_query: dict[str, str]) -> None:
    exercised = set(view_query).union(*PAGE_OPTIONS.values())
    assert set(state.OPTIONS) <= exercised, "give new options a non-default value in PAGE_OPTIONS"


def test_controls_show_the_view_of_the_link(view_query: dict[str, str]) -> None:
    app = open_app(**{**view_query, "page": "compare"})
    assert app.slider(key="o.opacity").value == 0.7
    assert app.selectbox(key="o.colormap").value == "viridis"
    assert app.selectbox(key="w.image").value == "gallery:digit-03"
    assert app.selectbox(key="w.target").value == int(view_query["target"])
    assert app.multiselect(key="c.methods").value == ["gae", "raw_attention", "rollout"]
    assert app.selectbox(key="p.rollout.head_fusion").value == "max"
    assert app.slider(key="p.rollout.discard_ratio").value == 0.5
    assert app.slider(key="p.gae.start_layer").value == 2


def test_sessions_share_the_model_but_never_their_state(view_query: dict[str, str]) -> None:
    first, second = (open_app(**{**view_query, "page": "compare"}) for _ in range(2))
    first.slider(key="o.opacity").set_value(0.3).run()
    assert first.query_params["opacity"] == "0.3"
    second.run()
    assert second.query_params["opacity"] == "0.7" and second.session_state["_view"].option("opacity") == 0.7
    assert first.session_state["_scene"].model is second.session_state["_scene"].model

"""The review board under AppTest: save then reopen gives the same view and maps; filters, comments,
deletion with confirmation."""

import io

import numpy as np
import plotly.io as pio
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

import explainers
from explainers.reviews import ReviewStore, default_path
from tests.dashboard_apptest import messages, open_app, problems
from tests.test_review_store import snapshot
from tests.test_url_state import data_dir, full_view, url  # noqa: F401  (data_dir: a fixture used here)


@pytest.fixture(scope="module")
def view_query(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return full_view(tmp_path_factory.mktemp("model"))


def save(app: AppTest, author: str, notes: str) -> AppTest:
    app.text_input(key="review.author").input(author)
    app.text_area(key="review.notes").input(notes)
    next(b for b in app.button if b.label == "Save to review board").click()
    return app.run()


def test_save_then_reopen_gives_the_same_view_and_maps(view_query: dict[str, str]) -> None:
    compare = open_app(**{**view_query, "page": "compare"})
    save(compare, "ann", "rollout ignores the digit")
    assert not problems(compare) and [s.value for s in compare.success] == ["Saved as review #1."]
    board = ReviewStore(default_path())
    saved = board.get(1).snapshot
    assert (saved.author, saved.notes) == ("ann", "rollout ignores the digit")
    assert saved.state == url(compare) and saved.model == view_query["model"]
    assert saved.image_id == view_query["image"] and saved.target == int(view_query["target"])
    assert saved.methods == ("gae", "raw_attention", "rollout")
    assert saved.params["rollout"] == {"head_fusion": "max", "discard_ratio": 0.5, "start_layer": 0}
    scene = compare.session_state["_scene"]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(saved.image))), scene.analysis.display)
    for method in saved.methods:  # the maps shown: the method with the view's parameters, on this capture
        expected = explainers.compute(scene.capture, method, **saved.params[method])[0].numpy()
        np.testing.assert_array_equal(saved.maps[method], expected)
    assert {row["method"] for row in saved.scores["map summaries"]} == set(saved.methods)
    assert len(saved.scores["agreement"]) == 3
    rho = np.array(pio.from_json(saved.charts["Agreement"]).data[0].z, dtype=float)
    np.testing.assert_array_equal(rho, rho.T)
    np.testing.assert_array_equal(np.diag(rho), 1.0)
    assert sorted(rho[np.triu_indices(3, 1)]) == sorted(r["spearman"] for r in saved.scores["agreement"])

    # another browser opens the review from the board and reopens its view
    other = open_app(**{**view_query, "page": "reviews", "review": "1", "opacity": "0.2", "target": "0"})
    next(b for b in other.button if b.label == "Reopen this view").click()
    other.run()
    assert not problems(other) and not messages(other)
    assert url(other) == saved.state
    assert other.session_state["_view"] == compare.session_state["_view"]
    save(other, "bob", "same view, saved again")
    again = board.get(2).snapshot
    assert again.state == saved.state and again.params == saved.params
    for method in saved.methods:
        np.testing.assert_array_equal(again.maps[method], saved.maps[method])


def test_saving_needs_an_author(view_query: dict[str, str]) -> None:
    app = save(open_app(**{**view_query, "page": "compare"}), "  ", "no name")
    assert "Enter your name" in messages(app) and ReviewStore(default_path()).find() == []


def test_board_filters_comments_and_deletes_with_confirmation(view_query: dict[str, str]) -> None:
    board = ReviewStore(default_path())
    first = board.save(snapshot(author="ann", methods=("rollout",)))
    second = board.save(snapshot(author="bob", image_id="digit:7"))
    third = board.save(snapshot(author="bob", model="vit_small_patch16_224", methods=("gae",)))
    app = open_app(**{**view_query, "page": "reviews"})
    assert not problems(app)
    assert list(app.main.dataframe[0].value["#"]) == [third, second, first]
    assert app.query_params["review"] == str(third)  # the newest is open, and in the link

    app.selectbox(key="r.filter.author").select("bob").run()
    app.selectbox(key="r.filter.method").select("rollout").run()
    assert list(app.main.dataframe[0].value["#"]) == [second]
    assert app.query_params["review"] == str(second)

    app.text_input(key="r.comment.author").input("carol")
    app.text_area(key="r.comment.text").input("the clutter wins here")
    next(b for b in app.button if b.label == "Add comment").click()
    app.run()
    assert [(c.author, c.text) for c in board.get(second).comments] == [("carol", "the clutter wins here")]
    assert "Comments (1)" in [s.value for s in app.main.subheader]

    assert app.button(key="r.delete").disabled  # nothing is deleted without the confirmation
    app.checkbox(key="r.delete.sure").check().run()
    app.button(key="r.delete").click().run()
    assert not problems(app)
    assert [r.id for r in board.find()] == [third, first]
    assert "review" not in app.query_params


def test_link_to_a_missing_review_says_so(view_query: dict[str, str]) -> None:
    ReviewStore(default_path()).save(snapshot())
    app = open_app(**{**view_query, "page": "reviews", "review": "42"})
    assert "Review #42 is not on this board" in messages(app)
    assert app.query_params["review"] == "1"

"""What a hostile or careless visitor sends (issue 14, findings 2, 5, 6, 7, 8 and 10).

Huge mostly-blank images are reduced on arrival (the original file stays on disk), repeated methods in a
link are collapsed with a message, user text never becomes Markdown that loads a remote resource,
uploads over the limit are refused by the server's configuration and by the app, text lengths are
limited with a message, and CSV cells cannot start a spreadsheet formula.
"""

import csv
import io
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from markdown_it import MarkdownIt
from PIL import Image

from dashboard import state
from explainers.images import REDUCED_PIXELS, REDUCED_SIDE, reduce
from explainers.reviews import Review, ReviewStore, default_path
from explainers.reviews.export import neutralise_cells, scores_csv
from explainers.reviews.store import MAX_AUTHOR_CHARS, MAX_COMMENT_CHARS, MAX_NOTES_CHARS
from tests.dashboard_apptest import messages, open_app, problems
from tests.test_review_store import snapshot

ROOT = Path(__file__).resolve().parents[1]
REMOTE_IMAGE = "![t](http://127.0.0.1:9/p.png)"


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VIT_EXPLAIN_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


# ----------------------------------------------------------------------- finding 2: images reduced on arrival


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def test_a_huge_blank_image_is_reduced_on_arrival_and_its_file_kept(data_dir):
    blank = Image.new("RGB", (6400, 6250), "white")
    blank.paste((0, 0, 0), (3000, 3000, 3400, 3400))
    data = png(blank)
    assert len(data) < 200_000  # about 130 KB on the wire, 120 MB as pixels
    app = open_app()
    app.file_uploader(key="w.upload").upload("blank.png", data, "image/png").run()
    assert not problems(app) and not app.error
    record = app.session_state["_scene"].image
    width, height = record.image.size
    assert width * height <= REDUCED_PIXELS and min(width, height) <= REDUCED_SIDE
    assert abs(width / height - 6400 / 6250) < 0.01
    kept = data_dir / "uploads" / record.ref.split(":")[1]
    assert kept.read_bytes() == data  # the original, for exports


@pytest.mark.parametrize("size", [(64, 64), (1024, 768), (6400, 6250), (40_000, 1_000), (300, 9_000)])
def test_reduce_keeps_what_the_models_need(size):
    image = reduce(Image.new("RGB", size))
    width, height = image.size
    assert width * height <= max(REDUCED_PIXELS, 1)
    assert min(width, height) == min(*size, REDUCED_SIDE) or width * height > 0.99 * REDUCED_PIXELS
    assert abs(width / height - size[0] / size[1]) / (size[0] / size[1]) < 0.02
    if size == (64, 64):
        assert image.size == size  # small images are left as they are


# ------------------------------------------------------------------- finding 5: repeated methods in a link


@pytest.mark.parametrize("page", ["compare", "evaluate", "head_fusion", "distributions", "what_if"])
def test_repeated_methods_in_a_link_are_collapsed_with_a_message(page):
    app = open_app(page=page, methods="rollout,gae,rollout,rollout")
    assert not problems(app)
    assert "rollout" in messages(app) and "once" in messages(app)
    assert app.query_params["methods"] == "rollout,gae"


# ---------------------------------------------------------------- finding 6: no Markdown from user text


def remote_resources(text: str) -> list[str]:
    """Addresses a Markdown renderer would fetch for ``text`` (images), by CommonMark's own parser."""
    tokens = MarkdownIt("commonmark").parse(text)
    children = [child for token in tokens for child in (token.children or [])]
    return [child.attrGet("src") for child in children if child.type == "image"]


def html_of(text: str) -> str:
    return MarkdownIt("commonmark").render(text)


def rendered_markdown(app) -> list[str]:
    """The Markdown source of every element that renders Markdown, main area and sidebar."""
    kinds = ("markdown", "caption", "title", "header", "subheader", "error", "warning", "info", "success")
    return [str(element.value) for kind in kinds for element in getattr(app, kind)]


def test_user_text_on_the_board_loads_nothing_remote(data_dir):
    store = ReviewStore(default_path())
    review_id = store.save(snapshot(author=REMOTE_IMAGE, notes=REMOTE_IMAGE))
    store.add_comment(review_id, REMOTE_IMAGE, REMOTE_IMAGE)
    app = open_app(page="reviews")
    assert not problems(app)
    texts = rendered_markdown(app)
    assert any(REMOTE_IMAGE in html_of(text) for text in texts)  # the author is shown, as typed...
    assert [src for text in texts for src in remote_resources(text)] == []  # ...as text, not as an image


def test_link_text_in_messages_loads_nothing_remote():
    app = open_app(**{"page": "compare", "x": REMOTE_IMAGE, "image": REMOTE_IMAGE, "weights": REMOTE_IMAGE})
    assert not problems(app)
    texts = rendered_markdown(app)
    assert sum(REMOTE_IMAGE in html_of(text) for text in texts) >= 2
    assert [src for text in texts for src in remote_resources(text)] == []


# ---------------------------------------------------------------------- finding 7: the upload limit


def test_the_server_refuses_uploads_over_the_limit_by_configuration():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == state.MAX_UPLOAD_MB == 25


@pytest.mark.parametrize(("uploader", "name"),
                         [("w.upload", "big.png"), ("w.weights_upload", "big.safetensors")])
def test_the_app_refuses_uploads_over_the_limit_whatever_the_server_accepted(data_dir, uploader, name):
    blank = png(Image.new("RGB", (64, 64)))
    data = blank + bytes(state.MAX_UPLOAD_MB * 2**20 + 1 - len(blank))
    app = open_app()
    app.file_uploader(key=uploader).upload(name, data).run()
    assert not problems(app)
    assert "limited to 25 MB" in messages(app)
    assert not data_dir.exists() or not [p for p in data_dir.rglob("*") if p.is_file()]


# ----------------------------------------------------------------------- finding 8: length limits


def test_text_lengths_are_limited_by_the_store(tmp_path):
    store = ReviewStore(tmp_path / "reviews.sqlite3")
    with pytest.raises(ValueError, match=f"limit is {MAX_NOTES_CHARS:,}"):
        store.save(snapshot(notes="x" * 1_000_000))
    with pytest.raises(ValueError, match=f"limit is {MAX_AUTHOR_CHARS:,}"):
        store.save(snapshot(author="a" * (MAX_AUTHOR_CHARS + 1)))
    review_id = store.save(snapshot(notes="x" * MAX_NOTES_CHARS))
    with pytest.raises(ValueError, match=f"limit is {MAX_COMMENT_CHARS:,}"):
        store.add_comment(review_id, "bob", "y" * (MAX_COMMENT_CHARS + 1))
    assert store.get(review_id).comments == ()


def test_a_huge_note_from_a_modified_client_is_cut_at_the_limit_the_page_states(data_dir):
    app = open_app()
    notes = app.text_area(key="review.notes")
    assert f"{MAX_NOTES_CHARS:,} characters" in notes.help and notes.max_chars == MAX_NOTES_CHARS
    app.text_input(key="review.author").input("ann")
    notes.set_value("x" * 1_000_000)  # past the widget's max_chars, as a modified client would send it
    next(b for b in app.button if b.label == "Save to review board").click()
    app.run()
    assert not problems(app)
    assert [len(ReviewStore().get(s.id).snapshot.notes) for s in ReviewStore().find()] == [MAX_NOTES_CHARS]


# ------------------------------------------------------------------- finding 10: CSV formula injection

FORMULAS = ["=HYPERLINK(\"http://x\",\"y\")", "+1+2", "-2+3", "@SUM(A1)", "\tx", "\rx", "=1"]


def test_csv_cells_cannot_start_a_formula():
    scores = {"hostile": [{"method": text, "note": text, "value": -0.5} for text in FORMULAS]}
    review = Review(1, "2025-01-01T00:00:00.000+00:00", replace(snapshot(), scores=scores), ())
    rows = list(csv.DictReader(io.StringIO(scores_csv(review), newline="")))
    cells = [row[column] for row in rows for column in ("method", "note")]
    assert cells == [f"'{text}" for text in FORMULAS for _ in range(2)]
    assert [float(row["value"]) for row in rows] == [-0.5] * len(FORMULAS)  # numbers stay numbers


def test_neutralise_leaves_harmless_cells_alone():
    frame = pd.DataFrame({"a": ["rollout", "a=b", "", None], "b": [1, -2, 3.5, np.nan]})
    assert neutralise_cells(frame).equals(frame)

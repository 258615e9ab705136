"""Exports of a saved review: the PNG grid decodes, the CSV parses, the HTML holds every map and chart."""

import base64
import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
from PIL import Image

import explainers
from explainers import cli
from explainers.render import overlay
from explainers.reviews import Review, ReviewStore, Snapshot
from explainers.reviews.export import (
    GRID_COLUMNS,
    TILE,
    export_files,
    grid_png,
    html_report,
    overlays,
    png_bytes,
    scores_csv,
    write_exports,
)

METHODS = ("rollout", "grad_rollout", "raw_attention", "gae")
NAN = float("nan")


@pytest.fixture(scope="module")
def review(deit_tiny: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Review:
    """A review of four real maps of one image, with scores, two charts and a comment, read back from disk."""
    pixels = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    images = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    cap = explainers.capture(deit_tiny, images, target=3)
    params = {"rollout": {"discard_ratio": 0.9}, "grad_rollout": {}, "raw_attention": {"layer": 5}, "gae": {}}
    maps = {m: explainers.compute(cap, m, **params[m])[0].numpy() for m in METHODS}
    deletion = go.Figure([go.Scatter(y=[1.0, 0.6, 0.2], name=m) for m in METHODS], {"title": "Deletion"})
    agreement = go.Figure(go.Heatmap(z=np.eye(4), x=list(METHODS), y=list(METHODS)), {"title": "Agreement"})
    store = ReviewStore(tmp_path_factory.mktemp("board") / "reviews.sqlite3")
    review_id = store.save(
        Snapshot(
            author="ann",
            notes="Rollout <script>alert('x')</script> & GAE disagree\non the background.",
            model="deit_tiny_patch16_224",
            device="cpu",
            image_id="upload:0123456789abcdef",
            image=png_bytes(pixels),
            state={"page": "compare", "opacity": "0.6", "colormap": "viridis"},
            target=3,
            target_name="tiger shark",
            methods=METHODS,
            params=params,
            maps=maps,
            scores={
                "faithfulness": [
                    {"method": m, "deletion AUC": i / 10, "insertion AUC": 0.5} for i, m in enumerate(METHODS)
                ],
                "agreement": [{"method A": "rollout", "method B": "gae", "spearman": 0.25, "iou": NAN}],
            },
            charts={"Deletion curves": deletion.to_json(), "Agreement": agreement.to_json()},
        )
    )
    store.add_comment(review_id, "bob", "Agreed <b>not bold</b>")
    return store.get(review_id)


def test_png_grid_decodes_with_a_labelled_tile_per_map(review: Review) -> None:
    grid = Image.open(io.BytesIO(grid_png(review)))
    grid.load()
    assert grid.format == "PNG" and grid.mode == "RGB"
    tiles = 1 + len(METHODS)  # the image, then one overlay per method
    columns, rows = min(tiles, GRID_COLUMNS), -(-tiles // GRID_COLUMNS)
    assert grid.width > columns * TILE and grid.height > rows * TILE
    pixels = np.asarray(grid)
    for name, picture in overlays(review).items():  # every overlay is pasted somewhere in the grid
        tile = np.asarray(Image.fromarray(picture).resize((TILE, TILE), Image.Resampling.BILINEAR))
        assert _contains(pixels, tile), name


def _contains(haystack: np.ndarray, tile: np.ndarray) -> bool:
    corner = tile[0, 0]
    for y, x in zip(*np.nonzero((haystack == corner).all(axis=-1)), strict=True):
        window = haystack[y : y + tile.shape[0], x : x + tile.shape[1]]
        if window.shape == tile.shape and np.array_equal(window, tile):
            return True
    return False


def test_overlays_use_the_saved_display_settings(review: Review) -> None:
    image = np.asarray(Image.open(io.BytesIO(review.snapshot.image)))
    expected = overlay(image, review.snapshot.maps["gae"], opacity=0.6, colormap="viridis")
    np.testing.assert_array_equal(overlays(review)["gae"], expected)


def test_scores_csv_parses_back_to_the_saved_scores(review: Review) -> None:
    table = pd.read_csv(io.StringIO(scores_csv(review)))
    assert list(table.columns[:1]) == ["table"]
    faithfulness = table[table["table"] == "faithfulness"]
    assert list(faithfulness["method"]) == list(METHODS)
    np.testing.assert_allclose(faithfulness["deletion AUC"], [0.0, 0.1, 0.2, 0.3])
    [agreement] = table[table["table"] == "agreement"].to_dict("records")
    assert (agreement["method A"], agreement["method B"], agreement["spearman"]) == ("rollout", "gae", 0.25)
    assert np.isnan(agreement["iou"])


def test_html_report_is_self_contained_with_every_map_and_chart(review: Review) -> None:
    page = html_report(review)
    for picture in [review.snapshot.image, *map(png_bytes, overlays(review).values())]:
        assert base64.b64encode(picture).decode() in page
    for method in METHODS:
        assert explainers.get_explainer(method).label in page
    assert "discard_ratio" in page and "0.9" in page  # parameters
    assert page.count('class="plotly-graph-div"') == len(review.snapshot.charts)
    for title in ("Deletion curves", "Agreement"):
        assert f"<h3>{title}</h3>" in page
    assert len(re.findall(r"\* plotly\.js v", page)) == 1  # the library inlined once, not fetched
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)=["']?(https?:)?//""", page)
    # user text is escaped, never markup
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "Agreed &lt;b&gt;not bold&lt;/b&gt;" in page and "bob" in page


def test_zip_holds_the_three_exports(review: Review) -> None:
    files = export_files(review)
    assert sorted(files) == [f"review-{review.id}.{kind}" for kind in ("csv", "html", "png", "zip")]
    with zipfile.ZipFile(io.BytesIO(files[f"review-{review.id}.zip"])) as archive:
        assert archive.testzip() is None
        assert {name: archive.read(name) for name in archive.namelist()} == {
            name: data for name, data in files.items() if not name.endswith(".zip")
        }


def test_write_exports_writes_only_the_formats_asked(review: Review, tmp_path: Path) -> None:
    written = write_exports(review, tmp_path / "out", ["csv", "png"])
    assert sorted(p.name for p in written) == [f"review-{review.id}.csv", f"review-{review.id}.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in written)
    with pytest.raises(ValueError, match="unknown export format 'pdf'"):
        export_files(review, ["pdf"])


def test_cli_exports_a_saved_review(
    review: Review, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    db = tmp_path / "data" / "reviews.sqlite3"
    (tmp_path / "data").mkdir()
    review_id = ReviewStore(db).save(review.snapshot)
    monkeypatch.setenv("VIT_EXPLAIN_DATA_DIR", str(tmp_path / "data"))  # the default board
    assert cli.main(["export", str(review_id), "--out", str(tmp_path / "out"), "--format", "png,html"]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == [f"review-{review_id}.html", f"review-{review_id}.png"]
    assert capsys.readouterr().out.split() == [str(tmp_path / "out" / name) for name in reversed(written)]
    saved = ReviewStore(db).get(review_id)
    assert (tmp_path / "out" / f"review-{review_id}.png").read_bytes() == grid_png(saved)

    assert cli.main(["export", "999", "--db", str(db), "--out", str(tmp_path / "none")]) == 2
    assert "no review #999" in capsys.readouterr().err
    assert cli.main(["export", "1", "--db", str(tmp_path / "missing.sqlite3"), "--out", str(tmp_path)]) == 2
    assert "no review board at" in capsys.readouterr().err
    assert not (tmp_path / "none").exists() and not (tmp_path / "missing.sqlite3").exists()


def test_a_two_model_review_exports_both_models(review: Review, tmp_path: Path) -> None:
    from dataclasses import replace

    from explainers.reviews import SecondModel

    second_image = np.full((64, 64, 3), 200, dtype=np.uint8)
    second = SecondModel(model="embedded", device="cpu", target=7, target_name="7",
                         image=png_bytes(second_image), maps={"rollout": np.eye(8, dtype=np.float32)})
    store = ReviewStore(tmp_path / "reviews.sqlite3")
    both = store.get(store.save(replace(review.snapshot, second=second)))
    one_model = np.asarray(Image.open(io.BytesIO(grid_png(review))).convert("RGB"))
    two_models = np.asarray(Image.open(io.BytesIO(grid_png(both))).convert("RGB"))
    painted = [int((grid != 255).any(-1).sum()) for grid in (one_model, two_models)]
    assert painted[1] > painted[0] + TILE * TILE  # 2 more tiles: B's image and its rollout map
    page = html_report(both)
    assert "Model B" in page and "embedded on cpu" in page and "Attention rollout · B" in page
    assert page.count("<figure>") == html_report(review).count("<figure>") + 2

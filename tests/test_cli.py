"""The command line on a few images: a valid CSV written row by row, resume, clear errors, explain's files."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from explainers import cli, commands, models
from explainers.evaluate import Evaluation
from explainers.names import declared_method_names, method_names
from explainers.registry import list_explainers
from tests.test_evaluate import tiny_loaded

METHODS = "rollout,gae"
FAST = ["--methods", METHODS, "--metrics", "perturbation,localisation,agreement", "--batch-size", "2"]


@pytest.fixture(autouse=True)
def tiny_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every --model loads the same small random ViT (the loader itself is tested in test_models)."""
    monkeypatch.setattr(commands, "load_model", lambda spec, device, weights: tiny_loaded())


def evaluate(out: Path, images: str, *extra: str) -> int:
    return cli.main(["evaluate", "--images", images, "--out", str(out), *FAST, *extra])


def test_evaluate_writes_a_valid_csv(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "deep" / "results.csv"
    assert evaluate(out, "cluttered:3") == 0
    frame = pd.read_csv(out)
    expected = Evaluation(tiny_loaded(), {"rollout": {}, "gae": {}}, metrics=FAST[3].split(",")).columns
    assert list(frame.columns) == expected
    assert len(frame) == 6 and not frame.duplicated(["image_id", "method"]).any()
    assert frame["positive_auc"].between(0, 0.9).all() and frame["mass_inside"].notna().all()
    captured = capsys.readouterr()
    assert "Pointing game" in captured.out and "6 rows (3 images)" in captured.out
    assert "| 3/3 [" in captured.err.rsplit("\r", 1)[-1]  # the bar's last state: every image done


def test_a_rerun_resumes_and_an_interrupted_row_is_redone(tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    assert evaluate(out, "cluttered:2") == 0
    first = pd.read_csv(out)
    assert evaluate(out, "cluttered:4") == 0  # the same first two images, then two more
    grown = pd.read_csv(out)
    assert len(grown) == 8 and not grown.duplicated(["image_id", "method"]).any()
    pd.testing.assert_frame_equal(grown.iloc[:4], first)
    text = out.read_text()
    out.write_text(text[: len(text) - 40])  # killed while writing the last row
    assert evaluate(out, "cluttered:4") == 0
    again = pd.read_csv(out)
    assert len(again) == 8 and not again.duplicated(["image_id", "method"]).any()
    with out.open(newline="") as handle:
        assert {len(row) for row in csv.reader(handle)} == {len(again.columns)}
    pd.testing.assert_frame_equal(again.sort_values(["image_id", "method"]).reset_index(drop=True),
                                  grown.sort_values(["image_id", "method"]).reset_index(drop=True), rtol=1e-5)


def test_resuming_with_other_settings_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "results.csv"
    assert evaluate(out, "cluttered:1") == 0
    capsys.readouterr()
    assert evaluate(out, "cluttered:1", "--baseline", "blur") == 2
    assert "other settings" in capsys.readouterr().err
    assert cli.main(["evaluate", "--images", "cluttered:1", "--out", str(out), "--methods", "rollout"]) == 2
    assert "other columns" in capsys.readouterr().err


def test_unreadable_images_are_skipped_and_listed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for name, value in (("a.png", 0), ("b.png", 255)):
        Image.fromarray(np.full((64, 64, 3), value, np.uint8)).save(folder / name)
    (folder / "c.jpg").write_bytes(b"\xff\xd8\xff truncated")
    out = tmp_path / "results.csv"
    assert evaluate(out, str(folder)) == 0
    assert sorted(pd.read_csv(out)["image_id"].unique()) == ["a.png", "b.png"]
    err = capsys.readouterr().err
    assert "skipped 1 unreadable file(s)" in err and "c.jpg" in err
    assert "| 3/3 [" in err  # the skipped file counts as handled: the bar ends full


def test_a_resumed_folder_run_reads_only_the_images_not_done(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for name, value in (("a.png", 0), ("b.png", 255)):
        Image.fromarray(np.full((64, 64, 3), value, np.uint8)).save(folder / name)
    out = tmp_path / "results.parquet"
    assert evaluate(out, str(folder)) == 0
    (folder / "a.png").write_bytes(b"not an image any more")  # skipped and listed, were it read again
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(folder / "c.png")
    capsys.readouterr()
    assert evaluate(out, str(folder)) == 0
    err = capsys.readouterr().err
    assert "skipped" not in err and "| 3/3 [" in err
    frame = pd.read_parquet(out)
    assert sorted(frame["image_id"]) == ["a.png", "a.png", "b.png", "b.png", "c.png", "c.png"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--images", "no/such/folder"], "does not exist"),
        (["--images", "cluttered:0"], "cluttered:N"),
        (["--methods", "rollout,magic"], "unknown method 'magic'"),
        (["--param", "rollout.discard_ratio=lots"], "discard_ratio must be float"),
        (["--param", "rollout.colour=red"], "no parameter 'colour'"),
        (["--param", "gae.start_layer=1"], "not among --methods"),
        (["--param", "rollout.discard_ratio=1.5"], "discard_ratio must be in"),
        (["--metrics", "speed"], "unknown metric"),
    ],
)
def test_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture, arguments: list[str], message: str
) -> None:
    base = {"--images": "cluttered:1", "--methods": "rollout"}
    args = ["evaluate", "--out", str(tmp_path / "r.csv")]
    for flag, value in base.items():
        if flag not in arguments:
            args += [flag, value]
    assert cli.main(args + arguments) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "r.csv").exists()


def test_a_bad_model_spec_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.undo()  # the real loader
    out = tmp_path / "r.csv"
    arguments = ["evaluate", "--model", "vit_no_such_model", "--images", "cluttered:1", "--out", str(out)]
    assert cli.main(arguments) == 2
    assert "neither 'embedded' nor a timm model name" in capsys.readouterr().err


def test_explain_writes_overlays_and_raw_maps(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    Image.fromarray(np.full((80, 80, 3), 90, np.uint8)).save(folder / "nested" / "grey.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(folder / "black.png")
    (folder / "bad.png").write_bytes(b"nothing")
    out = tmp_path / "maps"
    assert cli.main(["explain", "--images", str(folder), "--methods", METHODS, "--out", str(out)]) == 0
    index = pd.read_csv(out / "index.csv")
    assert sorted(index["image_id"].unique()) == ["black.png", "nested/grey.png"]
    for row in index.itertuples():
        relevance = np.load(out / row.npy)
        assert relevance.shape == (8, 8) and np.isfinite(relevance).all()
        with Image.open(out / row.png) as picture:
            assert picture.size == (64, 64) and picture.mode == "RGB"
    assert (out / "nested" / "grey" / "gae.npy").exists()
    assert "bad.png" in capsys.readouterr().err


def test_image_folder_labels_the_label_target_and_chefers_table(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for name, value in (("3/a.png", 0), ("3/b.png", 90), ("7/c.png", 255)):
        (tmp_path / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((64, 64, 3), value, np.uint8)).save(tmp_path / "images" / name)
    out = tmp_path / "results.csv"
    assert evaluate(out, str(tmp_path / "images"), "--target", "label", "--readers", "2") == 0
    frame = pd.read_csv(out)
    labels = dict(zip(frame["image_id"], frame["label"], strict=True))
    assert labels == {"3/a.png": 3, "3/b.png": 3, "7/c.png": 7}
    assert (frame["target"] == frame["label"]).all() and (frame["target_mode"] == "label").all()
    captured = capsys.readouterr()
    assert "labels from the 2 class folders" in captured.err
    assert "Chefer et al. 2021 Table 1" in captured.out and "Paired differences" in captured.out
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("3/a.png", "7/c.png"):
        (flat / name[2:]).write_bytes((tmp_path / "images" / name).read_bytes())
    (tmp_path / "labels.csv").write_text("path,label\na.png,3\nc.png,7\n")
    csv_out = tmp_path / "from_csv.csv"
    assert evaluate(csv_out, str(flat), "--labels", str(tmp_path / "labels.csv"), "--target", "label") == 0
    assert pd.read_csv(csv_out)["label"].tolist() == [3, 3, 7, 7]
    assert evaluate(tmp_path / "x.csv", "cluttered:2", "--labels", str(tmp_path / "labels.csv")) == 2
    assert "--labels goes with a folder" in capsys.readouterr().err


def test_evaluate_help_names_the_methods_and_the_defaults(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"({', '.join(list_explainers())})" in text and "rollout" in list_explainers()
    assert "(default: black)" in text and "(default: predicted)" in text and "road" in text


def test_the_method_files_declare_the_registered_names() -> None:
    """``--help`` in a fresh process reads the method names from the method files: the registry's, in its
    order; in a process that has the registry (plugins registered in it included), the registry's."""
    assert declared_method_names() == list_explainers()
    assert method_names() == list_explainers()


HEAVY = ("torch", "timm", "pandas", "numpy", "PIL", "transformers")


@pytest.mark.parametrize(
    ("arguments", "status"),
    [
        (["--help"], 0),
        (["evaluate", "--help"], 0),
        (["explain", "--help"], 0),
        ([], 2),
        (["evaluate", "--images", "cluttered:1"], 2),  # --out missing
        (["evaluate", "--images", "x", "--out", "y.csv", "--baseline", "grey"], 2),
        (["export", "twelve", "--out", "x"], 2),
    ],
)
def test_help_and_usage_errors_import_nothing_heavy(arguments: list[str], status: int) -> None:
    """``python -m explainers`` parses before it imports torch & co. (seconds): ``-X importtime`` lists
    every module the process imported."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "explainers", *arguments], cwd=root,
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == status, run.stderr[-2000:]
    if arguments[1:] == ["--help"]:  # evaluate --help, explain --help
        assert f"({', '.join(list_explainers())})" in " ".join(run.stdout.split())  # every method, in order
    imported = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines()
                if line.startswith("import time:")}
    assert {"explainers", "explainers.cli", "explainers.names", "argparse"} <= imported
    assert sorted(name for name in imported if name.split(".")[0] in HEAVY) == []
    assert "explainers.commands" not in imported


def test_an_offline_hub_model_suggests_the_weights_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.undo()  # the real loader
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    arguments = ["explain", "--model", "deit_tiny_patch16_224", "--images", "cluttered:1", "--out",
                 str(tmp_path / "maps")]
    assert cli.main(arguments) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: The pretrained weights of 'deit_tiny_patch16_224' are not in the local")
    assert "--weights FILE" in err and "load_model(" not in err and "weights=" not in err


def test_an_hf_model_with_weights_is_told_to_leave_the_flag_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.undo()
    arguments = ["explain", "--model", "hf:some/folder", "--weights", "w.safetensors", "--images",
                 "cluttered:1", "--out", str(tmp_path / "maps")]
    assert cli.main(arguments) == 2
    err = capsys.readouterr().err
    assert "--weights is only for timm models" in err and "weights=" not in err


def test_every_remedy_of_the_loader_has_command_line_words() -> None:
    assert set(cli.REMEDIES) == set(models.REMEDIES)


@pytest.mark.parametrize(
    ("db", "message"),
    [
        ("missing.sqlite3", "--db '{tmp}/missing.sqlite3': there is no such file"),
        ("", "--db '{tmp}' is a folder: name the review board's file in it, e.g. {tmp}/reviews.sqlite3"),
    ],
)
def test_export_says_what_is_wrong_with_the_db_it_was_given(
    tmp_path: Path, capsys: pytest.CaptureFixture, db: str, message: str
) -> None:
    path = tmp_path / db if db else tmp_path
    assert cli.main(["export", "1", "--db", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and "pass --db" not in err
    assert not (tmp_path / "out").exists()


def test_export_without_db_names_the_data_folder_and_both_fixes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("VIT_EXPLAIN_DATA_DIR", str(tmp_path / "data"))
    assert cli.main(["export", "1", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"no review board at {tmp_path / 'data' / 'reviews.sqlite3'}" in err
    assert f"$VIT_EXPLAIN_DATA_DIR is '{tmp_path / 'data'}'" in err and "pass --db FILE" in err

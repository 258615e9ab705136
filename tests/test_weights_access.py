"""Weight files on a shared server (issue 14, findings 1, 3 and 9).

Every loading failure is a message (library: ``ModelLoadError``; page: an error and the embedded model),
the file's tensor shapes are checked from its header before any model is built, architectures above the
configured size are refused for visitors, and a visitor learns nothing about files outside the folders
the operator allows.
"""

import json
import shutil
import struct
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from explainers.access import MAX_PARAMS_ENV, WEIGHT_DIRS_ENV, VisitorPolicy
from explainers.models import EMBEDDED, EMBEDDED_DIR, ModelLoadError, load_model, weight_shapes
from tests.dashboard_apptest import messages, open_app, problems

DEIT = "deit_tiny_patch16_224"
EMBEDDED_WEIGHTS = EMBEDDED_DIR / "model.safetensors"


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VIT_EXPLAIN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv(WEIGHT_DIRS_ENV, raising=False)
    monkeypatch.delenv(MAX_PARAMS_ENV, raising=False)
    (tmp_path / "data" / "weights").mkdir(parents=True)
    return tmp_path / "data"


def header(entries: dict) -> bytes:
    text = json.dumps(entries).encode()
    return struct.pack("<Q", len(text)) + text


#: Broken safetensors files: each must be a ModelLoadError, never SafetensorError or a crash.
CORRUPT = {
    "garbage": b"\x00\xff this is not a weight file at all" * 10,
    "short": b"\x01\x02",
    "huge header length": struct.pack("<Q", 2**62) + b"{}",
    "header not json": struct.pack("<Q", 8) + b"{{{{{{{{",
    "data cut off": header({"w": {"dtype": "F32", "shape": [64, 64], "data_offsets": [0, 16384]}})
    + bytes(100),
    "offsets overlap": header({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                               "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}) + bytes(24),
    "unknown dtype": header({"w": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}) + bytes(8),
}


@pytest.mark.parametrize("name", list(CORRUPT))
def test_a_corrupt_safetensors_file_is_a_clear_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(CORRUPT[name])
    with pytest.raises(ModelLoadError, match=r"bad\.safetensors"):
        load_model(DEIT, weights=path)
    with pytest.raises(ModelLoadError):
        load_model(EMBEDDED, weights=path)


def test_weight_shapes_come_from_the_header_alone(tmp_path: Path) -> None:
    state = {"a.weight": torch.zeros(3, 5), "b": torch.zeros(7, dtype=torch.float16)}
    save_file(state, tmp_path / "w.safetensors")
    torch.save(state, tmp_path / "w.pth")
    expected = {"a.weight": (3, 5), "b": (7,)}
    assert weight_shapes(tmp_path / "w.safetensors") == expected
    assert weight_shapes(tmp_path / "w.pth") == expected


def real_params_built(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, the number of real (not shape-only ``meta``) parameters of every timm model built."""
    built: list[int] = []
    create = timm.create_model

    def spy(*args, **kwargs):
        model = create(*args, **kwargs)
        built.append(sum(p.numel() for p in model.parameters() if not p.is_meta))
        return model

    monkeypatch.setattr(timm, "create_model", spy)
    return built


def test_weights_are_checked_against_the_architecture_before_it_is_built(monkeypatch: pytest.MonkeyPatch):
    built = real_params_built(monkeypatch)
    with pytest.raises(ModelLoadError, match="do not fit vit_huge_patch14_224"):
        load_model("vit_huge_patch14_224", weights=EMBEDDED_WEIGHTS)
    assert built == [0] * len(built)  # no parameter of the 632 M was allocated


def test_a_link_to_a_huge_architecture_with_any_weights_builds_nothing(data_dir, monkeypatch):
    shutil.copy(EMBEDDED_WEIGHTS, data_dir / "weights" / "small.safetensors")
    built = real_params_built(monkeypatch)
    app = open_app(model="vit_huge_patch14_224", weights="weights/small.safetensors")
    assert not problems(app)
    assert "vit_huge_patch14_224" in messages(app) and "embedded model instead" in messages(app)
    assert max(built, default=0) < 10_000_000
    assert app.session_state["_scene"].model.spec == EMBEDDED


def test_architectures_above_the_configured_size_are_refused_for_visitors(monkeypatch):
    built = real_params_built(monkeypatch)
    app = open_app(model="vit_large_patch16_224")
    assert not problems(app)
    assert "304.3 M parameters" in messages(app) and "100.0 M" in messages(app)
    assert max(built, default=0) == 0
    monkeypatch.setenv(MAX_PARAMS_ENV, "1000000")
    app = open_app(model=DEIT)
    assert "5.7 M parameters" in messages(app) and "1.0 M" in messages(app)
    assert app.session_state["_scene"].model.spec == EMBEDDED


def test_a_corrupt_weight_file_from_a_link_is_a_message_also_on_reload(data_dir):
    bad = data_dir / "weights" / "bad.safetensors"
    bad.write_bytes(CORRUPT["garbage"])
    for _ in range(2):  # the same link opened again: the same message, no crash
        app = open_app(model=DEIT, weights=str(bad))
        assert not problems(app)
        assert "bad.safetensors" in messages(app) and "cannot be read" in messages(app)
        assert app.session_state["_scene"].model.spec == EMBEDDED
        assert str(data_dir) not in messages(app)  # no server paths


def test_a_corrupt_uploaded_weight_file_is_a_message(data_dir):
    app = open_app()
    app.file_uploader(key="w.weights_upload").upload("mine.safetensors", CORRUPT["data cut off"]).run()
    assert not problems(app)
    assert "cannot be read" in messages(app)
    assert app.session_state["_scene"].model.weights is None


def test_files_outside_the_allowed_folders_are_refused_without_saying_whether_they_exist(tmp_path, data_dir):
    outside = tmp_path / "private" / "secret.safetensors"
    outside.parent.mkdir()
    save_file({"secret_tensor_name": torch.zeros(3, 4)}, outside)
    (data_dir / "weights" / "escape.safetensors").symlink_to(outside)
    texts = {}
    absent = str(tmp_path / "private" / "absent.safetensors")
    for weights in (str(outside), absent, "../private/secret.safetensors", "weights/escape.safetensors",
                    "/etc/passwd"):
        app = open_app(model=DEIT, weights=weights)
        assert not problems(app)
        text = messages(app)
        assert "secret_tensor_name" not in text and "(3, 4)" not in text and "exist" not in text
        texts[weights] = text.replace(weights, "<path>")
    assert len(set(texts.values())) == 1, texts  # one and the same answer whatever the file


def test_the_operator_can_allow_more_folders(tmp_path, monkeypatch):
    extra = tmp_path / "models"
    extra.mkdir()
    shutil.copy(EMBEDDED_WEIGHTS, extra / "digits.safetensors")
    monkeypatch.setenv(WEIGHT_DIRS_ENV, str(extra))
    app = open_app(weights=str(extra / "digits.safetensors"))
    assert not problems(app) and not app.error
    assert app.session_state["_scene"].model.weights == str((extra / "digits.safetensors").resolve())


def test_uploaded_weights_load_through_the_data_folder(data_dir):
    app = open_app()
    upload = app.file_uploader(key="w.weights_upload")
    upload.upload("digits.safetensors", EMBEDDED_WEIGHTS.read_bytes()).run()
    assert not problems(app) and not app.error
    assert app.query_params["weights"].startswith("weights/")  # relative to the data folder: no server path
    assert Path(app.session_state["_scene"].model.weights).parent == (data_dir / "weights").resolve()


def test_policy_resolves_relative_names_in_the_data_folder(data_dir):
    policy = VisitorPolicy.from_env()
    (data_dir / "weights" / "a.safetensors").write_bytes(b"x")
    assert policy.weights_path("weights/a.safetensors") == (data_dir / "weights" / "a.safetensors").resolve()
    with pytest.raises(ModelLoadError, match="no weights file"):
        policy.weights_path("weights/b.safetensors")
    with pytest.raises(ModelLoadError, match=r"must be a \.safetensors"):
        policy.weights_path("weights/a.txt")

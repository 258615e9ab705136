"""Image sets: flat folders, ImageFolder labels by class name and by WordNet id, CSV labels, the reader."""

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import timm.data
import torch
from PIL import Image
from timm.models.vision_transformer import VisionTransformer

from explainers.inputs import class_index, class_lookup, image_items, load_samples
from explainers.models import LoadedModel
from tests.test_evaluate import tiny_loaded


def save(path: Path, value: int = 0, size: tuple[int, int] = (64, 64)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)


@pytest.fixture(scope="module")
def digits() -> LoadedModel:
    return tiny_loaded()


@pytest.fixture(scope="module")
def imagenet() -> LoadedModel:
    """A tiny random ViT with 1000 classes: timm takes it for ImageNet-1k (its names and WordNet ids)."""
    model = VisionTransformer(img_size=32, patch_size=16, embed_dim=16, depth=1, num_heads=1,
                              num_classes=1000)
    base = tiny_loaded()
    names = tuple(timm.data.ImageNetInfo("imagenet-1k").label_descriptions())
    return replace(base, spec="tiny-imagenet", model=model.eval(), class_names=names)


def test_flat_folders_have_no_labels_and_skip_unreadable_files(digits: LoadedModel, tmp_path: Path) -> None:
    save(tmp_path / "sub" / "black.png")
    buffer = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(buffer, format="JPEG")
    (tmp_path / "grey.jpg").write_bytes(buffer.getvalue())
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "notes.txt").write_text("not an image")
    items, how = image_items(digits, tmp_path)
    assert [i.id for i in items] == ["broken.png", "grey.jpg", "sub/black.png"] and "no labels" in how
    skipped: list[tuple[str, str]] = []
    found = list(load_samples(digits, items, skipped, workers=0))
    assert [s.id for s in found] == ["grey.jpg", "sub/black.png"]
    assert all(s.image.shape == (3, 64, 64) and s.label is None and s.mask is None for s in found)
    assert [name for name, _ in skipped] == ["broken.png"] and "not an image" in skipped[0][1]
    with pytest.raises(ValueError, match="does not exist"):
        image_items(digits, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        image_items(digits, tmp_path / "empty")


def test_image_folder_labels_from_class_names(digits: LoadedModel, tmp_path: Path) -> None:
    for name in ("3/a.png", "3/b.png", "7/c.png"):
        save(tmp_path / name)
    items, how = image_items(digits, tmp_path)
    assert [(i.id, i.label) for i in items] == [("3/a.png", 3), ("3/b.png", 3), ("7/c.png", 7)]
    assert "2 class folders" in how
    save(tmp_path / "cats" / "d.png")
    with pytest.raises(ValueError, match=r"'cats' name no class of tiny .*--labels"):
        image_items(digits, tmp_path)


def test_folders_naming_no_class_are_plain_sub_folders(digits: LoadedModel, tmp_path: Path) -> None:
    save(tmp_path / "2024" / "a.png")
    save(tmp_path / "2025" / "b.png")
    items, how = image_items(digits, tmp_path)
    assert [(i.id, i.label) for i in items] == [("2024/a.png", None), ("2025/b.png", None)]
    assert "no sub-folder" in how


def test_image_folder_by_wordnet_id_name_and_synonym(imagenet: LoadedModel, tmp_path: Path) -> None:
    info = timm.data.ImageNetInfo("imagenet-1k")
    wnids = info.label_names()
    # By WordNet id, by full description, by an unambiguous synonym, case and underscores aside.
    for folder in (wnids[0], "goldfish,_Carassius_auratus", "Great_White_Shark", wnids[999]):
        save(tmp_path / folder / "x.png", size=(32, 32))
    items, _ = image_items(imagenet, tmp_path)
    by_folder = {i.id.split("/")[0]: i.label for i in items}
    assert by_folder == {
        wnids[0]: 0, "goldfish,_Carassius_auratus": 1, "Great_White_Shark": 2, wnids[999]: 999
    }
    assert all(info.index_to_label_name(i.label) == wnids[i.label] for i in items)
    lookup = class_lookup(imagenet)
    assert class_index("crane", lookup, 1000) is None  # two ImageNet classes are called crane
    assert class_index("n02012849", lookup, 1000) == wnids.index("n02012849")


def test_wordnet_ids_only_for_imagenet_models(digits: LoadedModel) -> None:
    assert not any(k.startswith("n0") for k in class_lookup(digits))


def test_csv_labels_for_a_flat_folder(digits: LoadedModel, tmp_path: Path) -> None:
    save(tmp_path / "img" / "a.png", 10)
    save(tmp_path / "img" / "b.png", 20)
    (tmp_path / "labels.csv").write_text("path,label\nb.png,4\na.png,9\nmissing.png,1\n")
    items, how = image_items(digits, tmp_path / "img", tmp_path / "labels.csv")
    assert "labels of 3 images" in how
    assert [(i.id, i.label) for i in items] == [("b.png", 4), ("a.png", 9), ("missing.png", 1)]
    skipped: list[tuple[str, str]] = []
    found = list(load_samples(digits, items, skipped, workers=2))
    assert [(s.id, s.label) for s in found] == [("b.png", 4), ("a.png", 9)]
    assert skipped == [("missing.png", "file not found")]
    expected = digits.preprocess(Image.open(tmp_path / "img" / "a.png"))
    torch.testing.assert_close(found[1].image, expected)
    (tmp_path / "bad.csv").write_text("path,label\na.png,seven\n")
    with pytest.raises(ValueError, match="'seven' name no class"):
        image_items(digits, tmp_path / "img", tmp_path / "bad.csv")
    (tmp_path / "cols.csv").write_text("file,class\na.png,1\n")
    with pytest.raises(ValueError, match="columns path,label"):
        image_items(digits, tmp_path / "img", tmp_path / "cols.csv")
    (tmp_path / "twice.csv").write_text("path,label\na.png,1\na.png,2\n")
    with pytest.raises(ValueError, match="twice"):
        image_items(digits, tmp_path / "img", tmp_path / "twice.csv")


def test_workers_read_in_order_like_the_main_process(digits: LoadedModel, tmp_path: Path) -> None:
    for k in range(7):
        save(tmp_path / f"{k}.png", 30 * k)
    (tmp_path / "5.png").write_bytes(b"")
    items, _ = image_items(digits, tmp_path)
    inline: list[tuple[str, str]] = []
    threaded: list[tuple[str, str]] = []
    first = list(load_samples(digits, items, inline, workers=0))
    second = list(load_samples(digits, items, threaded, workers=2))
    assert [s.id for s in first] == [s.id for s in second] == [f"{k}.png" for k in (0, 1, 2, 3, 4, 6)]
    assert inline == threaded == [("5.png", "The file is empty.")]
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.image, b.image)

"""Image sets to evaluate: which files, with which labels, and reading them off the model's loop.

An image set is a list of :class:`ImageItem` (an id, a file, a class index or ``None``), made by
:func:`image_items` from one of three layouts:

* a **flat folder** (images anywhere below it): no labels;
* an **ImageFolder** (every image in a first-level sub-folder, none at the top, the convention of
  torchvision's ``ImageFolder``): the label of ``DIR/<class>/x.jpg`` is the model's class named by the
  folder, matched by :func:`class_index`: the class name, one of its comma-separated synonyms when that
  one names a single class (``"tench"`` for ImageNet's ``"tench, Tinca tinca"``), or, for ImageNet models,
  the WordNet id (``n01440764``, from timm's ``ImageNetInfo``). Case, ``_`` and ``-`` do not matter. If no
  folder names a class, the folders are taken as plain sub-folders (no labels); if some do and some do not,
  it is an error naming the others;
* a **label file** (``--labels FILE.csv``, columns ``path,label``): paths relative to the folder, labels
  written as the folder names above or as class indices.

:func:`load_samples` reads, decodes and preprocesses the files in the workers of a
``torch.utils.data.DataLoader`` (``workers`` processes; 0 reads in the calling process), so the model's
loop only receives finished tensors. Unreadable files are appended to ``skipped`` as ``(id, reason)``
and the iteration goes on; samples come in the order of the items.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import timm.data
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .evaluate import Sample
from .images import EXTENSIONS, read_image
from .models import LoadedModel

WORDNET_ID = re.compile(r"n\d{8}")


@dataclass(frozen=True)
class ImageItem:
    """One image file to evaluate: its id (path relative to the image folder), path and class index."""

    id: str
    path: Path
    label: int | None = None


def image_files(folder: str | Path) -> list[Path]:
    """The image files (by extension: png, jpg, jpeg, webp, bmp) under ``folder``, sorted; errors if none."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"image folder {str(folder)!r} does not exist or is not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in EXTENSIONS)
    if not files:
        raise ValueError(f"no images ({', '.join(EXTENSIONS)}) in folder {str(folder)!r}")
    return files


def _key(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def class_lookup(loaded: LoadedModel) -> dict[str, int]:
    """Normalised name → class index: unambiguous class names and synonyms, and (ImageNet) WordNet ids."""
    names: dict[str, set[int]] = {}
    synonyms: dict[str, set[int]] = {}
    for index, name in enumerate(loaded.class_names):
        names.setdefault(_key(name), set()).add(index)
        for synonym in name.split(","):
            synonyms.setdefault(_key(synonym), set()).add(index)
    lookup: dict[str, int] = {}
    for table in (synonyms, names):  # a full name wins over another class's synonym; ambiguous ones go
        lookup |= {key: min(found) for key, found in table.items() if len(found) == 1 and key}
    try:
        subset = timm.data.infer_imagenet_subset(loaded.model)
    except (AttributeError, TypeError, ValueError):
        subset = None
    if subset is not None:
        wnids = timm.data.ImageNetInfo(subset).label_names()
        if len(wnids) == len(loaded.class_names):
            lookup |= {wnid: index for index, wnid in enumerate(wnids)}
    return lookup


def class_index(name: str, lookup: dict[str, int], num_classes: int) -> int | None:
    """The class a folder name or label names (see the module docstring), or ``None``."""
    key = _key(name)
    if key in lookup:
        return lookup[key]
    if key.isdigit() and int(key) < num_classes:
        return int(key)
    return None


def _unmatched_error(names: Sequence[str], loaded: LoadedModel, where: str) -> ValueError:
    examples = ", ".join(repr(n) for n in loaded.class_names[:3])
    wnid = " or WordNet ids (n01440764)" if any(WORDNET_ID.fullmatch(k) for k in class_lookup(loaded)) else ""
    return ValueError(
        f"{where} {', '.join(repr(n) for n in names[:5])}{' …' if len(names) > 5 else ''} name no class of "
        f"{loaded.spec} ({len(loaded.class_names)} classes, e.g. {examples}): use its class names{wnid}, "
        "or a --labels FILE.csv with columns path,label"
    )


def image_items(
    loaded: LoadedModel, folder: str | Path, labels: str | Path | None = None
) -> tuple[list[ImageItem], str]:
    """The images of ``folder`` with their labels, and how the labels were found (a line for the user).

    Args:
        loaded: the model whose classes the labels are matched to.
        folder: a flat folder, or an ImageFolder (one sub-folder per class).
        labels: a CSV with columns ``path,label`` (paths relative to ``folder``); then only its images.
    """
    root = Path(folder)
    if labels is not None:
        return _csv_items(loaded, root, Path(labels))
    files = image_files(root)
    ids = [p.relative_to(root) for p in files]
    if any(len(i.parts) != 2 for i in ids):
        items = [ImageItem(i.as_posix(), p) for i, p in zip(ids, files, strict=True)]
        return items, "no labels (flat folder)"
    lookup, classes = class_lookup(loaded), len(loaded.class_names)
    folders = sorted({i.parts[0] for i in ids})
    found = {name: class_index(name, lookup, classes) for name in folders}
    unmatched = [name for name, index in found.items() if index is None]
    if len(unmatched) == len(folders):
        items = [ImageItem(i.as_posix(), p) for i, p in zip(ids, files, strict=True)]
        return items, f"no labels: no sub-folder of {root} names a class of {loaded.spec}"
    if unmatched:
        raise _unmatched_error(unmatched, loaded, f"the sub-folders of {root}:")
    items = [ImageItem(i.as_posix(), p, found[i.parts[0]]) for i, p in zip(ids, files, strict=True)]
    return items, f"labels from the {len(folders)} class folders of {root}"


def _csv_items(loaded: LoadedModel, root: Path, labels: Path) -> tuple[list[ImageItem], str]:
    if not root.is_dir():
        raise ValueError(f"image folder {str(root)!r} does not exist or is not a folder")
    if not labels.is_file():
        raise ValueError(f"label file {str(labels)!r} does not exist")
    with labels.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not {"path", "label"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{labels} must have the columns path,label (found: {reader.fieldnames})")
        rows = [(row["path"].strip(), row["label"].strip()) for row in reader]
    if not rows:
        raise ValueError(f"{labels} lists no images")
    lookup, classes = class_lookup(loaded), len(loaded.class_names)
    indices = {label: class_index(label, lookup, classes) for _, label in rows}
    unmatched = sorted(label for label, index in indices.items() if index is None)
    if unmatched:
        raise _unmatched_error(unmatched, loaded, f"the labels in {labels}:")
    seen: set[str] = set()
    items = []
    for path, label in rows:
        id = Path(path).as_posix()
        if id in seen:
            raise ValueError(f"{labels} lists {path!r} twice")
        seen.add(id)
        items.append(ImageItem(id, root / path, indices[label]))
    return items, f"labels of {len(items)} images from {labels}"


class _Reader(Dataset):
    """Item ``i`` → ``(i, Sample | None, reason)``: the file read, decoded and preprocessed (in a worker)."""

    def __init__(self, items: Sequence[ImageItem], preprocess: Callable[[Image.Image], torch.Tensor]) -> None:
        self.items, self.preprocess = items, preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, Sample | None, str]:
        item = self.items[index]
        try:
            image = read_image(item.path.read_bytes())
        except FileNotFoundError:
            return index, None, "file not found"
        except (OSError, ValueError) as error:
            return index, None, str(error)
        return index, Sample(item.id, self.preprocess(image), item.label), ""


def _as_is(item: tuple[int, Sample | None, str]) -> tuple[int, Sample | None, str]:
    return item


def load_samples(
    loaded: LoadedModel,
    items: Sequence[ImageItem],
    skipped: list[tuple[str, str]],
    *,
    workers: int = 2,
    prefetch: int = 16,
) -> Iterator[Sample]:
    """The :class:`Sample` of every item, in order, read by ``workers`` DataLoader processes.

    Each worker keeps up to ``prefetch`` images ready, so decoding overlaps the model's work; unreadable
    files are appended to ``skipped`` as ``(id, reason)``. The worker processes start (fork) when this is
    called, not at the first sample, so a caller can start threaded machinery (Ray, a server) afterwards.
    """
    if workers < 0:
        raise ValueError(f"the number of reading workers must be 0 or more, got {workers}")
    loader = DataLoader(
        _Reader(items, loaded.preprocess), batch_size=None, shuffle=False, num_workers=workers,
        collate_fn=_as_is, prefetch_factor=prefetch if workers else None,
        persistent_workers=False,
    )
    return _samples(iter(loader), items, skipped)


def _samples(
    loader: Iterator[tuple[int, Sample | None, str]],
    items: Sequence[ImageItem],
    skipped: list[tuple[str, str]],
) -> Iterator[Sample]:
    for index, sample, reason in loader:
        if sample is None:
            skipped.append((items[index].id, reason))
        else:
            yield sample


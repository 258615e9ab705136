"""The sample gallery shipped in the repository: held-out cluttered digits with ground truth, and photos.

The digits are ``cluttered_digits(DIGITS, seed=DIGIT_SEED, split="test")`` stored as PNG files, with their
masks as PNG and their labels and boxes in ``gallery/gallery.json``; ``write_digit_gallery()`` rebuilds
them. The photographs and their credits are listed in the same JSON and in ``gallery/CREDITS.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from explainers.datasets.cluttered_digits import cluttered_digits

GALLERY_DIR = Path(__file__).with_name("gallery")
INDEX_FILE = "gallery.json"
# 2113 is the first seed from 2024 up whose 24 labels hold every class at least twice (chosen on labels only).
DIGITS, DIGIT_SEED = 24, 2113


@dataclass(frozen=True, eq=False)
class GalleryItem:
    """One gallery image; the digit fields (label, box, mask) are None for photographs.

    box is ``(x0, y0, x1, y1)`` in pixels with x1 and y1 exclusive; mask is bool ``(H, W)``.
    """

    id: str
    kind: Literal["digit", "photo"]
    image: Image.Image
    label: int | None = None
    box: tuple[int, int, int, int] | None = None
    mask: np.ndarray | None = None
    credit: str | None = None


def _read_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L")) > 127


def load_gallery(folder: Path = GALLERY_DIR) -> list[GalleryItem]:
    """All gallery items, digits first, in the order of the index file."""
    entries = json.loads((folder / INDEX_FILE).read_text())
    items = []
    for entry in entries:
        if entry["kind"] == "digit":
            item = GalleryItem(
                id=entry["id"],
                kind="digit",
                image=_read_rgb(folder / entry["file"]),
                label=int(entry["label"]),
                box=tuple(int(v) for v in entry["box"]),
                mask=_read_mask(folder / entry["mask"]),
            )
        else:
            item = GalleryItem(
                id=entry["id"], kind="photo", image=_read_rgb(folder / entry["file"]), credit=entry["credit"]
            )
        items.append(item)
    return items


def write_digit_gallery(folder: Path = GALLERY_DIR) -> None:
    """(Re)write the digit images, masks and index entries; photo entries of the index are kept."""
    folder.mkdir(parents=True, exist_ok=True)
    index = folder / INDEX_FILE
    photos = [e for e in json.loads(index.read_text()) if e["kind"] == "photo"] if index.exists() else []
    data = cluttered_digits(DIGITS, seed=DIGIT_SEED, split="test")
    entries = []
    for i in range(DIGITS):
        name = f"digit-{i:02d}"
        Image.fromarray(data.images[i]).save(folder / f"{name}.png", optimize=True)
        Image.fromarray(data.masks[i]).save(folder / f"{name}-mask.png", optimize=True)
        entries.append(
            {
                "id": name,
                "kind": "digit",
                "file": f"{name}.png",
                "mask": f"{name}-mask.png",
                "label": int(data.labels[i]),
                "box": [int(v) for v in data.boxes[i]],
            }
        )
    index.write_text(json.dumps(entries + photos, indent=1) + "\n")

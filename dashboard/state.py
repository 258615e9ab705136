"""Dashboard state: the view kept in the URL, and the cached model, image, capture and maps behind it.

Three layers, each usable on its own by any page (including pages added later):

- :class:`ViewState`: everything that defines what is shown (page, one or two model slots, image,
  target class, explainers and all their parameters, display options). It round-trips through the URL
  query (:meth:`ViewState.to_query` / :meth:`ViewState.from_query`) and is validated against the model with
  the registry's :class:`~explainers.Param` declarations: a bad value becomes a message and a default.
- Cached resources (:class:`~dashboard.byte_cache.ByteCache`, shared by all sessions, each bounded by bytes
  and computing a missing value once however many sessions ask at once): models per slot (spec, device,
  weights), images per reference, analyses (the capture of one image) per (spec, device, weights, image
  content hash, target) and the parts of the capture the methods on screen read (:func:`capture_flags`),
  and maps. Explainer parameters never reach the analysis keys: changing one is tensor maths on a cached
  capture.
- The session: :func:`view` / :func:`commit` (the current view, mirrored into ``st.query_params``),
  :func:`scene` and :func:`second_scene` (model, image and capture of each slot, resolved by the sidebar
  for this run), :func:`explainer_params` and :func:`compute_maps`, and :func:`notify` for messages shown
  at the top of the page.

Typical use in a page::

    from dashboard import state
    scene, view = state.scene(), state.view()
    maps = state.compute_maps(view.shown_methods())       # name → (gh, gw) tensor
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import streamlit as st
import torch
from PIL import Image

import explainers
from dashboard.byte_cache import ByteCache
from explainers import Capture, Param, get_explainer, list_explainers
from explainers.access import WEIGHT_SUFFIXES, VisitorPolicy
from explainers.alignment import image_grid, input_region, to_image_grid
from explainers.attention_stats import MAP_SUMMARIES
from explainers.capture import model_dims
from explainers.datasets.cluttered_digits import cluttered_digits
from explainers.datasets.gallery import GalleryItem, load_gallery
from explainers.images import content_hash, read_image, reduce
from explainers.layer_readout import check_layer_readout
from explainers.models import EMBEDDED, LoadedModel, load_model
from explainers.params import LAYER
from explainers.relevance import check_supported as check_relevance
from explainers.relevance import supports as supports_relevance
from explainers.render import COLORMAPS, DEFAULT_COLORMAP, DEFAULT_OPACITY
from explainers.reviews import data_dir

#: Page key (as in the URL) → title.
PAGES: dict[str, str] = {
    "compare": "Compare",
    "head_fusion": "Head fusion",
    "distributions": "Attention distributions",
    "what_if": "What-if explorer",
    "evaluate": "Evaluate",
    "reviews": "Review board",
}
#: Bytes of each cache shared by all sessions (see :func:`caches`; the README's server section states the
#: worst case). Models: three ViT-B/16 (346 MB of float32 weights each); images: after
#: :func:`~explainers.images.reduce`, at most 12 MB each; captures: a ViT-B/16 capture with every part is
#: 85 MB; maps: a (gh, gw) float map is under a kB (14×14) to a few kB; pictures: encoded overlays and
#: grids, kB to tens of kB.
MODEL_CACHE_BYTES = 1200 * 2**20
IMAGE_CACHE_BYTES = 256 * 2**20
CAPTURE_CACHE_BYTES = 1024 * 2**20
MAP_CACHE_BYTES = 32 * 2**20
PICTURE_CACHE_BYTES = 64 * 2**20
#: Results files opened on the Evaluate page (a 200,000-row file is a few hundred MB in memory).
RESULTS_CACHE_BYTES = 1024 * 2**20
#: What a small entry costs beyond its data (a key tuple, a tensor's or a bytes object's Python and C++
#: parts, the dictionary slot), counted against the map and picture budgets.
SMALL_ENTRY_BYTES = 1024
#: Largest upload (MB), images and weight files alike; larger weight files are put in the data folder's
#: ``weights/`` by the operator. ``server.maxUploadSize`` in ``.streamlit/config.toml`` must match.
MAX_UPLOAD_MB = 25
#: Largest seed of a generated digit.
MAX_DIGIT_SEED = 2**31 - 1
#: The compatibility table of timm families written by ``scripts/compatibility.py`` (one row per family).
COMPATIBILITY_CSV = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "compatibility.csv"
#: A method expected to take longer than this (seconds per image, on the current model) runs only when
#: the user asks; the others are computed at once.
SLOW_SECONDS = 1.0

_VIEW_KEY, _SCENE_KEY, _NOTICES_KEY, _STARTED_KEY = "_view", "_scene", "_notices", "_started"
_SECOND_SCENE_KEY = "_second_scene"
_UPLOAD_HASH = re.compile(r"[0-9a-f]{16}")


def _discard_methods() -> tuple[str, ...]:
    return tuple(m for m in list_explainers() if "discard_ratio" in {p.name for p in get_explainer(m).params})


def _preferred(choices: tuple[str, ...], name: str = "rollout") -> str:
    """``name`` if it is among ``choices`` (the classic method is the natural first view), else the first."""
    return name if name in choices else choices[0]


#: Display and page options, declared like explainer parameters (validated the same way, same widgets).
OPTIONS: dict[str, Param] = {
    p.name: p
    for p in (
        Param("opacity", float, DEFAULT_OPACITY, "Opacity of the map over the image.", low=0.0, high=1.0),
        Param("colormap", str, DEFAULT_COLORMAP, "Colour scale of every map.", choices=tuple(COLORMAPS)),
        Param("top_percent", int, 10, "Share of the patches compared by the IoU of the top regions.",
              low=1, high=100),
        replace(LAYER, help="Layer whose heads are shown one by one."),
        Param("explore", str, _preferred(tuple(list_explainers())), "Explainer shown on the what-if page.",
              choices=tuple(list_explainers())),
        Param("chart", str, "violin", "How the CLS attention distributions are drawn.",
              choices=("violin", "histogram")),
        Param("entropy", str, "all", "Entropy of every query token's row, or of the CLS row only.",
              choices=("all", "cls")),
        Param("sweep", str, _preferred(_discard_methods()), "Explainer whose discard ratio is swept.",
              choices=_discard_methods()),
        Param("summary", str, next(iter(MAP_SUMMARIES)), "Summary of the map plotted against the ratio.",
              choices=tuple(MAP_SUMMARIES)),
        Param("review", int, None, "Review open on the review board.", low=1, optional=True),
        Param("patch", int, None, "Patch whose attention is shown (row-major index in the patch grid).",
              low=0, optional=True),
    )
}
#: URL keys of the second model slot → ModelSlot field.
SECOND_SLOT_KEYS = {"model2": "model", "weights2": "weights", "device2": "device"}


@dataclass(frozen=True)
class ModelSlot:
    """One model of a view, as a value: equal slots share the cached model and every capture.

    Attributes:
        model: ``"embedded"`` or a timm model name (the architecture of ``weights`` when given).
        weights: path of a local weight file on the server, or None for the model's own weights.
        device: "cpu", "cuda" or "mps".
    """

    model: str = EMBEDDED
    weights: str | None = None
    device: str = "cpu"

    @property
    def label(self) -> str:
        """The model as people name it: its spec, and the weight file's name when there is one."""
        return self.model if self.weights is None else f"{self.model} ({Path(self.weights).name})"


@dataclass(frozen=True)
class ViewState:
    """Everything that defines a view; the URL holds exactly this.

    Attributes:
        page: key of :data:`PAGES`.
        model: ``"embedded"`` or a timm model name (the architecture of ``weights`` when given).
        weights: path of a local weight file on the server, or None for the model's own weights.
        device: "cpu", "cuda" or "mps".
        image: ``"gallery:<id>"``, ``"digit:<seed>"`` (a generated cluttered digit) or
            ``"upload:<hash>"`` (an uploaded file kept under its content hash); None: the first gallery image.
        target: class explained; None: the top prediction.
        reference: headless models only (no classifier): the image, as an image reference, whose
            embedding's cosine similarity the gradient methods explain; None: attention-only methods.
        methods: explainers shown side by side; None: all registered ones.
        params: explainer → parameter → value, only values that differ from the declared defaults.
        options: :data:`OPTIONS` name → value, only values that differ from the defaults.
        second: the second model compared with the first (same image, parameters and class by name), or
            None. ``model``, ``weights`` and ``device`` are the first slot's.
    """

    page: str = "compare"
    model: str = EMBEDDED
    weights: str | None = None
    device: str = "cpu"
    image: str | None = None
    target: int | None = None
    reference: str | None = None
    methods: tuple[str, ...] | None = None
    params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    second: ModelSlot | None = None

    @property
    def first(self) -> ModelSlot:
        return ModelSlot(self.model, self.weights, self.device)

    def with_slot(self, index: int, slot: ModelSlot | None) -> ViewState:
        """This view with model slot ``index`` (0 or 1) set; the second slot may be None (one model)."""
        if index == 0:
            assert slot is not None, "the first model slot is always filled"
            return replace(self, model=slot.model, weights=slot.weights, device=slot.device)
        return replace(self, second=slot)

    def option(self, name: str) -> Any:
        """The value of a display or page option (its default unless set)."""
        return self.options.get(name, OPTIONS[name].default)

    def explainer_params(self, method: str) -> dict[str, Any]:
        """All parameters of ``method`` as stored (defaults filled in; negative indices not resolved)."""
        return {**get_explainer(method).defaults(), **self.params.get(method, {})}

    def shown_methods(self) -> list[str]:
        """The explainers shown side by side, in the order chosen (registry order by default)."""
        return list_explainers() if self.methods is None else list(self.methods)

    def with_param(self, method: str, name: str, value: Any, dims: Mapping[str, int]) -> ViewState:
        """This view with one explainer parameter set (dropped from the URL when it equals the default)."""
        param = {p.name: p for p in get_explainer(method).params}[name]
        return replace(self, params=_set(self.params, method, _set(self.params.get(method, {}), name,
                                                                    _differs(param, value, dims))))

    def with_option(self, name: str, value: Any, dims: Mapping[str, int]) -> ViewState:
        """This view with one option set (dropped from the URL when it equals the default)."""
        return replace(self, options=_set(self.options, name, _differs(OPTIONS[name], value, dims)))

    def to_query(self) -> dict[str, str]:
        """URL query parameters; defaults are left out except the page, model, device and image."""
        query = {"page": self.page, "model": self.model, "device": self.device}
        if self.weights:
            query["weights"] = self.weights
        if self.image:
            query["image"] = self.image
        if self.target is not None:
            query["target"] = str(self.target)
        if self.reference:
            query["reference"] = self.reference
        if self.methods is not None:
            query["methods"] = ",".join(self.methods)
        if self.second is not None:
            slot = {key: getattr(self.second, name) for key, name in SECOND_SLOT_KEYS.items()}
            query.update({key: value for key, value in slot.items() if value})
        query.update({name: _format(value) for name, value in self.options.items()})
        for method, values in self.params.items():
            query.update({f"{method}.{name}": _format(value) for name, value in values.items()})
        return query

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> tuple[ViewState, list[str]]:
        """The view a URL describes, and a message for every value that was ignored (and why).

        Values are parsed and checked against everything known without a model; checks that need the
        model (layer and head ranges, class count) are done by :meth:`validated`.
        """
        problems: list[str] = []
        fields: dict[str, Any] = {}
        params: dict[str, dict[str, Any]] = {}
        options: dict[str, Any] = {}
        second: dict[str, str] = {}
        for key, text in query.items():
            try:
                if key in SECOND_SLOT_KEYS:
                    second[SECOND_SLOT_KEYS[key]] = _parse_field(SECOND_SLOT_KEYS[key], text)
                elif "." in key:
                    method, name = key.split(".", 1)
                    params.setdefault(method, {})[name] = _parse_param(method, name, text)
                elif key in OPTIONS:
                    options[key] = _parse_value(OPTIONS[key], text)
                else:
                    fields[key] = _parse_field(key, text)
                    if key == "methods" and len(set(fields[key])) < len(fields[key]):
                        fields[key] = tuple(dict.fromkeys(fields[key]))
                        problems.append(f"Link parameter methods={text!r}: each explainer is shown once, "
                                        f"as {','.join(fields[key])}.")
            except ValueError as error:
                problems.append(f"Link parameter {key}={text!r} ignored: {error}.")
        if second and "model" not in second:
            problems.append("Link parameters weights2/device2 ignored: the second model needs model2.")
            second = {}
        slot = ModelSlot(**second) if second else None
        return cls(**fields, params=params, options=options, second=slot), problems

    def validated(self, dims: Mapping[str, int]) -> tuple[ViewState, list[str]]:
        """This view with every value checked against a model's ``dims`` (``num_layers``, ``num_heads``,
        ``num_classes``); invalid values are dropped (so their defaults apply), each with a message. A
        reference image is kept for headless models only (``num_classes == 0``)."""
        problems: list[str] = []
        target = self.target
        if target is not None and target >= dims["num_classes"]:
            problems.append(f"Target class {target} does not exist in this model (classes 0.."
                            f"{dims['num_classes'] - 1}); the top prediction is shown instead.")
            target = None
        params = {}
        for method, values in self.params.items():
            declared = {p.name: p for p in get_explainer(method).params}
            kept = {name: v for name, v in values.items() if _valid(declared[name], v, dims, problems)}
            if kept:
                params[method] = kept
        options = {name: v for name, v in self.options.items() if _valid(OPTIONS[name], v, dims, problems)}
        reference = self.reference if dims["num_classes"] == 0 else None  # only headless models use one
        return replace(self, target=target, reference=reference, params=params, options=options), problems


_DEFAULT = object()


def _set(mapping: Mapping[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of ``mapping`` with ``key`` set, or removed when ``value`` is ``_DEFAULT`` or empty."""
    out = {k: v for k, v in mapping.items() if k != key}
    if value is not _DEFAULT and value != {}:
        out[key] = value
    return out


def _differs(param: Param, value: Any, dims: Mapping[str, int]) -> Any:
    """``value`` if it is valid and means something else than the default, else ``_DEFAULT``."""
    if param.validate(value, dims) == param.validate(param.default, dims):
        return _DEFAULT
    return value


def _valid(param: Param, value: Any, dims: Mapping[str, int], problems: list[str]) -> bool:
    try:
        param.validate(value, dims)
    except ValueError as error:
        problems.append(f"Link parameter ignored, the default is used: {error}.")
        return False
    return True


def _format(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, float):
        return format(round(value, 6), "g")
    return str(value)


def _parse_value(param: Param, text: str) -> Any:
    """A URL value as the parameter's type, checked against all its dims-free constraints."""
    if text.lower() == "none" and param.optional:
        return None
    if param.kind is str:
        value: Any = text
    else:
        try:
            value = param.kind(float(text)) if param.kind is float else int(text)
        except ValueError:
            kind = "an integer" if param.kind is int else "a number"
            raise ValueError(f"{param.name} must be {kind}") from None
    if param.kind is str or not isinstance(param.high, str):
        param.validate(value, {})
    elif param.low is not None and value < param.low and not param.negative_index:
        raise ValueError(f"{param.name} must be at least {param.low}")
    return value


def _parse_param(method: str, name: str, text: str) -> Any:
    declared = {p.name: p for p in get_explainer(method).params}
    if name not in declared:
        raise ValueError(f"{method} has no parameter {name!r}; its parameters are: {', '.join(declared)}")
    return _parse_value(declared[name], text)


def _parse_field(key: str, text: str) -> Any:
    """The value of one of the view's own fields (page, model, image, ...) from its URL text."""
    if key == "page":
        if text not in PAGES:
            raise ValueError(f"no such page; pages are {', '.join(PAGES)}")
        return text
    if key in ("model", "device", "weights"):
        if not text.strip():
            raise ValueError(f"{key} is empty")
        return text.strip()
    if key in ("image", "reference"):
        parse_image_ref(text)
        return text
    if key == "target":
        if not (text.isascii() and text.isdigit()):
            raise ValueError("target must be a class number (0, 1, 2, …)")
        return int(text)
    if key == "methods":
        methods = tuple(m for m in text.split(",") if m)
        for method in methods:
            get_explainer(method)
        return methods
    raise ValueError("unknown parameter")


def parse_image_ref(ref: str) -> tuple[Literal["gallery", "digit", "upload"], str]:
    """``(kind, value)`` of an image reference, or a ``ValueError`` saying what a valid one looks like."""
    kind, _, value = ref.partition(":")
    valid = (
        (kind == "gallery" and bool(value))
        or (kind == "digit" and value.isascii() and value.isdigit() and int(value) <= MAX_DIGIT_SEED)
        or (kind == "upload" and _UPLOAD_HASH.fullmatch(value) is not None)
    )
    if not valid:
        raise ValueError("an image is gallery:<id>, digit:<seed> or upload:<16 hex digits>")
    return kind, value  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------- resources


def uploads_dir() -> Path:
    """Folder of uploaded images, by content hash, inside the server's data folder."""
    return data_dir() / "uploads"


def _file_stamp(weights: str | None) -> tuple[float, int] | None:
    """Modification time and size of a weight file, so that a changed file is loaded again."""
    if weights is None:
        return None
    try:
        stat = Path(weights).stat()
    except OSError:
        return None
    return stat.st_mtime, stat.st_size


@dataclass(frozen=True)
class Caches:
    """The caches every session shares, each bounded by bytes (:data:`MODEL_CACHE_BYTES`, ...)."""

    models: ByteCache[LoadedModel]
    images: ByteCache[ImageRecord]
    analyses: ByteCache[Analysis]
    maps: ByteCache[torch.Tensor]
    pictures: ByteCache[bytes]
    results: ByteCache[pd.DataFrame]


@st.cache_resource(show_spinner=False)
def caches() -> Caches:
    """The server's caches (one set per server process)."""
    return Caches(ByteCache(MODEL_CACHE_BYTES), ByteCache(IMAGE_CACHE_BYTES), ByteCache(CAPTURE_CACHE_BYTES),
                  ByteCache(MAP_CACHE_BYTES, per_entry=SMALL_ENTRY_BYTES),
                  ByteCache(PICTURE_CACHE_BYTES, per_entry=SMALL_ENTRY_BYTES),
                  ByteCache(RESULTS_CACHE_BYTES, lambda frame: int(frame.memory_usage(deep=True).sum())))


@st.cache_resource(show_spinner=False)
def supported_timm_models(path: Path = COMPATIBILITY_CSV) -> dict[str, str]:
    """timm model name → its family's readout label, for every family the compatibility table
    (``scripts/compatibility.py``: the same :func:`explainers.describe_model` check) explained: every
    explainer gave valid maps ("✓") or refused this readout with its reason ("refused: …", a
    ``ValueError`` the app shows next to that method); none crashed or gave invalid maps. Empty when the
    table has not been written."""
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return {}
    methods = list_explainers()
    names = {}
    for row in rows:
        cells = [str(row.get(m) or "") for m in methods]
        if any(c.startswith("✓") for c in cells) and all(c.startswith(("✓", "refused: ")) for c in cells):
            readout = row["summary"].split(" · ")[0]
            names.update({name: readout for name in row["models"].split()})
    return dict(sorted(names.items()))


def get_model(spec: str, device: str, weights: str | None) -> LoadedModel:
    """The model, loaded once per (spec, device, weights file and its version); ``ValueError`` if it fails.

    What a visitor may load is the server's :class:`~explainers.access.VisitorPolicy`: weights from the
    allowed folders only (``weights`` relative to the data folder, or absolute), architectures up to its
    size; the file is checked against the architecture before anything is built.
    """
    policy = VisitorPolicy.from_env()
    path = None if weights is None else str(policy.weights_path(weights))
    spec = policy.model_spec(spec)
    key = (spec, device, path, _file_stamp(path), policy.max_params)
    return caches().models.get_or_compute(
        key, lambda: load_model(spec, device, path, max_params=policy.max_params))


def load_slot(slot: ModelSlot) -> LoadedModel:
    """The (cached) model of a slot; ``ValueError`` if it cannot be loaded."""
    return get_model(slot.model, slot.device, slot.weights)


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """An image to explain and what is known about it.

    Attributes:
        ref: its reference (see :attr:`ViewState.image`).
        image: RGB image as read (original size).
        sha: content hash of its pixels (the key of its captures).
        title: a short description for captions.
        label, box, mask: ground truth where known (box ``x0, y0, x1, y1`` exclusive; mask bool ``(H, W)``).
    """

    ref: str
    image: Image.Image
    sha: str
    title: str
    label: int | None = None
    box: tuple[int, int, int, int] | None = None
    mask: np.ndarray | None = None


@st.cache_resource(show_spinner=False)
def gallery() -> dict[str, GalleryItem]:
    """The sample gallery by id, read once per server."""
    return {item.id: item for item in load_gallery()}


@st.cache_resource(show_spinner=False)
def gallery_thumbnails(size: int = 64) -> dict[str, bytes]:
    """PNG thumbnails (at most ``size`` pixels a side) of the gallery images by id, made once per server."""
    thumbnails = {}
    for item_id, item in gallery().items():
        thumbnail = item.image.copy()
        thumbnail.thumbnail((size, size))
        buffer = io.BytesIO()
        thumbnail.save(buffer, "PNG")
        thumbnails[item_id] = buffer.getvalue()
    return thumbnails


def default_image() -> str:
    return f"gallery:{next(iter(gallery()))}"


def _record(ref: str, image: Image.Image, title: str, **truth: Any) -> ImageRecord:
    pixels = np.asarray(image)
    sha = content_hash(repr(pixels.shape).encode() + pixels.tobytes())
    return ImageRecord(ref=ref, image=image, sha=sha, title=title, **truth)


def get_image(ref: str) -> ImageRecord:
    """The image a reference names (cached), or a ``ValueError`` saying why it is not available here."""
    return caches().images.get_or_compute(ref, lambda: _read_image(ref))


def _read_image(ref: str) -> ImageRecord:
    kind, value = parse_image_ref(ref)
    if kind == "gallery":
        item = gallery().get(value)
        if item is None:
            raise ValueError(f"The gallery has no image {value!r}.")
        title = f"{item.id} (digit {item.label})" if item.label is not None else item.id
        return _record(ref, item.image, title, label=item.label, box=item.box, mask=item.mask)
    if kind == "digit":
        digits = cluttered_digits(1, seed=int(value), split="test")
        label = int(digits.labels[0])
        return _record(ref, Image.fromarray(digits.images[0]), f"random digit {label} (seed {value})",
                       label=label, box=tuple(int(v) for v in digits.boxes[0]), mask=digits.masks[0])
    path = uploads_dir() / value
    if not path.is_file():
        raise ValueError(f"The uploaded image {value} is not on this server (uploads are kept in "
                         f"{uploads_dir()}).")
    return _record(ref, reduce(read_image(path.read_bytes())), f"uploaded image {value}")  # file kept as is


def _check_upload_size(data: bytes, what: str) -> None:
    """The app's own check of :data:`MAX_UPLOAD_MB` (the server refuses larger requests first, with
    ``server.maxUploadSize`` in ``.streamlit/config.toml``; this holds whatever the server is set to)."""
    if len(data) > MAX_UPLOAD_MB * 2**20:
        size = len(data) / 2**20
        raise ValueError(f"The {what} is {size:.1f} MB; uploads are limited to {MAX_UPLOAD_MB} MB.")


def store_upload(data: bytes) -> str:
    """Check an uploaded image, keep its bytes under their content hash and return its reference."""
    _check_upload_size(data, "image")
    read_image(data)
    sha = content_hash(data)
    _keep(uploads_dir() / sha, data)
    return f"upload:{sha}"


def store_weights(data: bytes, filename: str) -> str:
    """Keep an uploaded weight file under its content hash (with its suffix) and return its path in the
    data folder (``weights/<hash>.safetensors``: links name no server path)."""
    _check_upload_size(data, "weight file")
    suffix = Path(filename).suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"{filename}: weights must be a {', '.join(WEIGHT_SUFFIXES)} file.")
    name = f"weights/{content_hash(data)}{suffix}"
    _keep(data_dir() / name, data)
    return name


def _keep(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` once, atomically (another session may be reading the same file)."""
    if path.exists():
        return
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(data)
        os.replace(partial, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise ValueError(f"The upload cannot be kept in {path.parent}: {error.strerror or error}.") from None


@dataclass(frozen=True, eq=False)
class Analysis:
    """The capture of one image for one target, and the image as the model saw it.

    Attributes:
        key: what identifies it: spec, device, weights, image content hash, target (a cache key for anything
            computed from the capture: the same whatever ``flags``).
        capture: forward and backward pass (batch of one), with gradients; for a headless model without a
            reference, the attention only.
        display: ``uint8 (H, W, 3)``, the preprocessed input, the pixels the maps refer to.
        box: the ground-truth box carried into ``display`` coordinates, where known.
        probabilities: softmax of the logits, ``(num_classes,)``; None for a headless model.
        seconds: how long the capture took.
        similarity: headless model with a reference: the explained cosine similarity, else None.
        flags: the optional parts of the capture it holds (:data:`CAPTURE_FLAGS`).
    """

    key: tuple
    capture: Capture
    display: np.ndarray
    box: tuple[int, int, int, int] | None
    probabilities: np.ndarray | None
    seconds: float
    similarity: float | None = None
    flags: frozenset[str] = frozenset()


def _box_in_view(model: LoadedModel, size: tuple[int, int], box: tuple[int, int, int, int]) -> tuple | None:
    """The box after the model's preprocessing (resize, crop): a filled box is sent through it."""
    canvas = Image.new("RGB", size)
    canvas.paste((255, 255, 255), box)
    inside = model.to_display(model.preprocess(canvas))[..., 0] > 127
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


#: Optional parts of a capture (keyword arguments of :func:`explainers.capture`), made only when a method on
#: screen reads them: LRP relevance and LeGrad's per-layer gradients (together 2.4 times a plain forward
#: and backward on deit_tiny).
CAPTURE_FLAGS = ("relevance", "layer_gradients")


def _analyse(
    key: tuple, flags: frozenset[str], model: LoadedModel, record: ImageRecord, reference: ImageRecord | None
) -> Analysis:
    start = time.perf_counter()
    target = key[5]
    tensor = model.preprocess(record.image)
    images = tensor[None].to(model.device)
    parts = {flag: flag in flags for flag in CAPTURE_FLAGS}
    if has_head(model):
        capture = explainers.capture(model.model, images, target, **parts)
    elif reference is None:
        capture = explainers.capture(model.model, images, gradients=False, logits=False)
    else:
        similar_to = explainers.SimilarityTarget(model.preprocess(reference.image)[None].to(model.device))
        capture = explainers.capture(model.model, images, similar_to, **parts)
    seconds = time.perf_counter() - start
    box = None if record.box is None else _box_in_view(model, record.image.size, record.box)
    probabilities = None if capture.logits is None else capture.logits[0].float().softmax(-1).cpu().numpy()
    similarity = None if reference is None or capture.scores is None else float(capture.scores[0])
    return Analysis(key, capture, model.to_display(tensor), box, probabilities, seconds, similarity, flags)


def capture_flags(model: LoadedModel, methods: Iterable[str]) -> frozenset[str]:
    """The optional parts of the capture (:data:`CAPTURE_FLAGS`) that ``methods`` read and ``model`` gives:
    relevance where the model supports LRP, per-layer gradients where it has a per-layer readout (a
    headless model's are those of its similarity to the reference image). A method whose part the model
    cannot give gets the model's own reason from :func:`compute_maps`."""
    read = [get_explainer(m) for m in methods]
    flags = set()
    if any(e.needs_relevance for e in read) and supports_relevance(model.model):
        flags.add("relevance")
    if any(e.cost.layer_backwards for e in read):
        try:
            check_layer_readout(model.model)
            flags.add("layer_gradients")
        except ValueError:
            pass
    return frozenset(flags)


def _analysis(
    model: LoadedModel, record: ImageRecord, target: int | None, reference: ImageRecord | None,
    flags: frozenset[str],
) -> Analysis:
    """The cached analysis with at least ``flags``: one with more serves a request for fewer; a new one
    replaces those it holds every part of."""
    reference = None if has_head(model) else reference
    if not has_head(model) and reference is None:
        flags = frozenset()  # attention only
    key = (model.spec, model.device, model.weights, _file_stamp(model.weights), record.sha, target,
           None if reference is None else reference.sha)
    cache = caches().analyses
    for held in cache.held_keys():
        if held[0] == key and held[1] >= flags and (analysis := cache.get(held)) is not None:
            return analysis
    analysis = cache.get_or_compute((key, flags), lambda: _analyse(key, flags, model, record, reference))
    for held in cache.held_keys():
        if held[0] == key and held[1] < flags:
            cache.discard(held)
    return analysis


def has_head(model: LoadedModel) -> bool:
    """Whether the model has a classifier; headless backbones explain the similarity to a reference."""
    return describe(model).has_head


def describe(model: LoadedModel) -> explainers.ModelDescription:
    """What the explainers read from the model: readout, prefix tokens, grid, layers, heads, head or not."""
    return explainers.describe_model(model.model)


def dims_of(model: LoadedModel) -> dict[str, int]:
    """``num_layers``, ``num_heads`` and ``num_classes`` of a model: the bounds of every parameter."""
    return {**model_dims(model.model), "num_classes": len(model.class_names)}


def analyse(
    model: LoadedModel, record: ImageRecord, target: int | None, reference: ImageRecord | None = None,
    methods: Iterable[str] | None = None,
) -> Analysis:
    """The (cached) analysis of ``record`` by ``model`` for ``target`` (None: the top prediction); for a
    headless model, of its similarity to ``reference`` (None: attention only). Its capture holds what
    ``methods`` read (None: the methods the current view's page draws at once, :func:`on_screen`);
    :func:`compute_maps` completes it if a method needs more."""
    flags = capture_flags(model, on_screen(view()) if methods is None else methods)
    return _analysis(model, record, target, reference, flags)


def on_screen(state: ViewState) -> list[str]:
    """The explainers whose maps a view's page draws as it opens: the capture is made for these."""
    if state.page == "compare":
        return state.shown_methods()
    if state.page == "what_if":
        return [state.option("explore")]
    return []


# ----------------------------------------------------------------------------------------------- session


def view() -> ViewState:
    """The current view: the session's, or on a session's first run the one its URL describes."""
    if _VIEW_KEY not in st.session_state:
        state, problems = ViewState.from_query(st.query_params.to_dict())
        for problem in problems:
            notify(problem)
        commit(state)
    return st.session_state[_VIEW_KEY]


def commit(new: ViewState) -> None:
    """Make ``new`` the current view and write it into the URL (only if something changed)."""
    st.session_state[_VIEW_KEY] = new
    query = new.to_query()
    if st.query_params.to_dict() != query:
        st.query_params.from_dict(query)


def first_run() -> bool:
    """True once per session: on the run that opened it (the one that reads the URL's page)."""
    if _STARTED_KEY in st.session_state:
        return False
    st.session_state[_STARTED_KEY] = True
    return True


def link() -> str:
    """A URL that opens the current view: the app's root with the view as query (the page included).

    Relative (``/?…``) when the browser's URL is unknown, as in tests.
    """
    url, page = st.context.url or "", f"/{view().page}"
    root = url[: -len(page)] if url.endswith(page) else url.rstrip("/")
    return f"{root}/?{urlencode(view().to_query())}"


def notify(message: str, kind: Literal["warning", "error"] = "warning") -> None:
    """Queue a message for the top of the page (shown once, on this run or the next one)."""
    st.session_state.setdefault(_NOTICES_KEY, []).append((kind, message))


def take_notices() -> list[tuple[str, str]]:
    """The queued messages, removed from the queue."""
    return st.session_state.pop(_NOTICES_KEY, [])


@dataclass(frozen=True, eq=False)
class Scene:
    """What this run explains: the loaded model, the image and its analysis for the current target (or, for
    a headless model, for its similarity to the reference image, when one is chosen)."""

    model: LoadedModel
    image: ImageRecord
    analysis: Analysis
    reference: ImageRecord | None = None

    @property
    def capture(self) -> Capture:
        return self.analysis.capture

    @property
    def dims(self) -> dict[str, int]:
        return dims_of(self.model)

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.model.model.patch_embed.patch_size)

    @property
    def target(self) -> int | None:
        """The class explained; None for a headless model."""
        targets = self.capture.targets
        return None if targets is None else int(targets[0])

    @property
    def headless(self) -> bool:
        return self.analysis.probabilities is None

    def top(self, k: int = 5) -> list[tuple[int, float]]:
        """The ``k`` most probable classes with their probabilities (none for a headless model)."""
        if self.analysis.probabilities is None:
            return []
        order = np.argsort(-self.analysis.probabilities)[:k]
        return [(int(c), float(self.analysis.probabilities[c])) for c in order]

    def class_name(self, index: int) -> str:
        return self.model.class_names[index]

    @property
    def label(self) -> str:
        return ModelSlot(self.model.spec, self.model.weights, self.model.device).label

    @property
    def region(self) -> tuple[float, float, float, float]:
        """The part of the image (its pixels) the model sees: :func:`~explainers.alignment.input_region`."""
        return input_region(self.model.preprocess, self.image.image.size)

    def on_image_grid(self, relevance: torch.Tensor) -> np.ndarray:
        """A map of this model on the image's own pixel grid, NaN where the model saw nothing."""
        return to_image_grid(relevance, self.region, self.image.image.size)


def matching_target(first: Scene, model: LoadedModel) -> int | None:
    """The class of ``model`` with the name of the class ``first`` explains, or None (its own prediction)."""
    if first.target is None:  # a headless first model explains no class
        return None
    name = first.class_name(first.target)
    return model.class_names.index(name) if name in model.class_names else None


def image_on_grid(record: ImageRecord) -> np.ndarray:
    """The image resized to its comparison grid (:func:`explainers.alignment.image_grid`), uint8 RGB."""
    return np.asarray(record.image.resize(image_grid(record.image.size), Image.Resampling.BILINEAR))


def set_scene(scene: Scene, second: Scene | None = None) -> None:
    """Keep this run's scene of each model slot (``second``: None with one model)."""
    st.session_state[_SCENE_KEY] = scene
    st.session_state[_SECOND_SCENE_KEY] = second


def scene() -> Scene:
    """The scene the sidebar resolved on this run (or the last full run, inside a fragment)."""
    return st.session_state[_SCENE_KEY]


def second_scene() -> Scene | None:
    """The second model's scene of this run (same image; same class by name where it knows it), or None."""
    return st.session_state.get(_SECOND_SCENE_KEY)


def explainer_params(method: str, *, for_scene: Scene | None = None, **overrides: Any) -> dict[str, Any]:
    """Validated parameters of ``method`` for the current view and the model of ``for_scene`` (default:
    the first model's scene), with ``overrides`` applied."""
    values = {**view().explainer_params(method), **overrides}
    return get_explainer(method).validate(values, (for_scene or scene()).dims)


class _Timings:
    """The last measured time per image of every method on each model, shared by all sessions: a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seconds: dict[tuple, float] = {}

    def measured(self, model_key: tuple) -> float | None:
        with self.lock:
            return self.seconds.get(model_key)

    def put(self, model_key: tuple, seconds: float) -> None:
        with self.lock:
            self.seconds[model_key] = seconds


@st.cache_resource(show_spinner=False)
def _timings() -> _Timings:
    return _Timings()


def _map_key(method: str, params: Mapping[str, Any], at: Scene) -> tuple:
    return at.analysis.key, method, tuple(sorted(params.items()))


def expected_seconds(method: str, for_scene: Scene | None = None) -> float:
    """Time per image of ``method`` on the current model beyond the capture: as last measured here, else
    the estimate its declared :class:`~explainers.registry.Cost` gives."""
    at = for_scene or scene()
    analysis = at.analysis
    measured = _timings().measured((analysis.key[:4], method))
    if measured is not None:
        return measured
    dims = {**at.dims, "num_tokens": analysis.capture.layout.num_tokens}
    return get_explainer(method).cost.estimate_seconds(dims)


def waits_for_request(method: str, *, for_scene: Scene | None = None, **overrides: Any) -> bool:
    """True for a slow method (over :data:`SLOW_SECONDS`) whose map for this view is not computed yet."""
    at = for_scene or scene()
    if expected_seconds(method, at) <= SLOW_SECONDS:
        return False
    return caches().maps.get(_map_key(method, _params(method, overrides, at), at)) is None


def _params(method: str, overrides: Mapping[str, Any], at: Scene) -> dict[str, Any]:
    declared = {p.name for p in get_explainer(method).params}
    return explainer_params(method, for_scene=at, **{k: v for k, v in overrides.items() if k in declared})


def compute_maps(
    methods: list[str], *, for_scene: Scene | None = None, **overrides: Any
) -> dict[str, torch.Tensor]:
    """``(gh, gw)`` map of each method for a scene (default: the first model's) and the current view:
    tensor maths on the cached capture (completed with the parts these methods read, if it lacks them).

    Every map is kept (:data:`MAP_CACHE_BYTES`, for this capture and these parameters, shared by all
    sessions), and so is the time it took.

    ``overrides`` apply to the methods that declare them (e.g. ``head_fusion="max"``).
    """
    at = for_scene or scene()
    analysis = at.analysis
    if not capture_flags(at.model, methods) <= analysis.flags:  # completed for every method on screen at once
        flags = capture_flags(at.model, [*methods, *on_screen(view())])
        analysis = _analysis(at.model, at.image, analysis.key[5], at.reference, flags | analysis.flags)
    maps = {}
    for method in methods:
        explainer = get_explainer(method)
        if explainer.needs_gradients and analysis.capture.gradients is None:
            raise ValueError(f"{explainer.label} explains a score: this model has no classifier, so choose a "
                             "reference image in the sidebar and it explains the similarity to it.")
        if explainer.needs_relevance and analysis.capture.relevance is None:
            check_relevance(at.model.model)  # the model's own reason, when it has one
        if explainer.cost.layer_backwards and analysis.capture.layer_gradients is None:
            check_layer_readout(at.model.model)
            if at.headless:
                raise ValueError(f"{explainer.label} explains a score: this model has no classifier, so "
                                 "choose a reference image in the sidebar: it explains the similarity to it.")
        params = _params(method, overrides, at)

        def compute(method: str = method, params: dict = params) -> torch.Tensor:
            start = time.perf_counter()
            relevance = explainers.compute(analysis.capture, method, **params)[0]
            _timings().put((analysis.key[:4], method), time.perf_counter() - start)
            return relevance

        maps[method] = caches().maps.get_or_compute(_map_key(method, params, at), compute)
    return maps

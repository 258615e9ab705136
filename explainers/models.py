"""One loader for the embedded model, timm hub models, timm models with weights from a local file and
Hugging Face ``transformers`` classifiers (``"hf:<folder or hub id>"``, :mod:`explainers.sources.hf`).

Every model comes back with timm's own data config (``timm.data.resolve_model_data_config``) and eval
transform, so input size, interpolation, mean and std always come from the model's ``pretrained_cfg``.
Weight files are read without executing code: safetensors, or ``torch.load(..., weights_only=True)``.
Their tensor names and shapes (the safetensors header, or a memory-mapped state dict) are checked
against a shape-only copy of the architecture on the ``meta`` device before the model is built, so a
file that does not fit, or an architecture above ``max_params``, costs no memory and no time.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import struct
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import timm.data
import torch
from PIL import Image
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

EMBEDDED = "embedded"
HF_PREFIX = "hf:"
EMBEDDED_DIR = Path(__file__).with_name("embedded")
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
HUB_PROBE_TIMEOUT_S = 3.0
#: Largest safetensors header read (the safetensors library's own limit).
MAX_HEADER_BYTES = 100_000_000
#: Bytes per element of each safetensors dtype.
SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
                      "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


class ModelLoadError(ValueError):
    """A model could not be loaded; the message names the problem and the fix.

    Where the fix is said in the library's terms (``load_model(..., weights=...)``), ``remedy`` names
    it (one of :data:`REMEDIES`) and ``problem`` is the message without it, so that a front end can say
    it in its own terms (the command line: ``--weights FILE``).
    """

    def __init__(self, problem: str, fix: str = "", *, remedy: str | None = None) -> None:
        super().__init__(f"{problem} {fix}".strip())
        self.problem, self.remedy = problem, remedy


#: The fixes :class:`ModelLoadError` names by ``remedy``: a local weights file for a timm model; an
#: ``hf:`` folder saved on a connected machine; leave ``weights`` out (an ``hf:`` model has its own).
REMEDIES: tuple[str, ...] = ("weights_file", "hf_folder", "no_weights")


class Preprocess:
    """PIL image in any mode → normalised ``(3, H, W)`` tensor via timm's eval transform."""

    def __init__(self, data_config: Mapping[str, Any]) -> None:
        self.transform = timm.data.create_transform(**data_config, is_training=False)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image.convert("RGB"))

    def __repr__(self) -> str:
        return f"Preprocess({self.transform})"


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready for explanation; two loads are always two distinct models."""

    spec: str
    device: str
    weights: str | None
    model: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    class_names: tuple[str, ...]
    data_config: dict[str, Any]

    def to_display(self, tensor: torch.Tensor) -> np.ndarray:
        """Undo the normalisation of one ``(3, H, W)`` input: uint8 ``(H, W, 3)``, what the model saw."""
        mean = torch.tensor(self.data_config["mean"]).view(3, 1, 1)
        std = torch.tensor(self.data_config["std"]).view(3, 1, 1)
        pixels = (tensor.detach().float().cpu() * std + mean).clamp(0, 1)
        return (pixels * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def available_devices() -> list[str]:
    """The devices models can be loaded on: always "cpu", then "cuda" and "mps" when present."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def load_model(
    spec: str = EMBEDDED,
    device: str = "cpu",
    weights: str | os.PathLike | None = None,
    *,
    max_params: int | None = None,
) -> LoadedModel:
    """Load a model in eval mode on ``device``; no caching, every call builds a new model.

    spec: "embedded" (the project's cluttered-digit ViT), any timm model name, optionally with a
        pretrained tag ("vit_base_patch16_224.augreg_in21k_ft_in1k"), or "hf:<folder or hub id>" for a
        Hugging Face ``transformers`` image classifier (see :mod:`explainers.sources.hf`).
    weights: a local ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` state dict (possibly nested under
        "model" or "state_dict"); the classifier size follows the file. For a timm name, None means the
        pretrained weights from the hub or its cache; offline and not cached fails within seconds.
    max_params: refuse architectures with more parameters than this (checked before anything is built
        or downloaded); None: no limit.

    Every failure, of any kind, is a :class:`ModelLoadError` whose message names the problem.
    """
    try:
        kind = torch.device(device).type
    except RuntimeError:
        kind = device
    if kind not in available_devices():
        raise ModelLoadError(f"Device {device!r} is not available here; choose one of {available_devices()}.")
    try:
        if spec.startswith(HF_PREFIX):
            return _hugging_face(spec, device, weights, max_params)
        if spec == EMBEDDED:
            model, class_names = _embedded(weights, max_params)
        elif weights is not None:
            model = _timm_from_file(spec, Path(weights), max_params)
            class_names = _class_names(model)
        else:
            _timm_cfg(spec)
            if max_params is not None:
                params = _meta_state(lambda: timm.create_model(spec, pretrained=False))[1]
                _check_size(spec, params, max_params)
            model = _timm_from_hub(spec)
            class_names = _class_names(model)
        data_config = timm.data.resolve_model_data_config(model)
        model = model.eval().to(device)
    except ModelLoadError:
        raise
    except Exception as error:  # anything else a model, a file or a device can raise: still a message
        raise ModelLoadError(f"{spec} cannot be loaded on {device}: {_first_line(error)}.") from error
    return LoadedModel(
        spec=spec,
        device=device,
        weights=None if weights is None else str(weights),
        model=model,
        preprocess=Preprocess(data_config),
        class_names=class_names,
        data_config=data_config,
    )


def _hugging_face(
    spec: str, device: str, weights: str | os.PathLike | None, max_params: int | None
) -> LoadedModel:
    from .sources import hf

    if weights is not None:
        raise ModelLoadError(f"{spec} takes its weights from its folder or hub repository.",
                             "weights= is only for timm models.", remedy="no_weights")
    model, preprocess, data_config = hf.load(spec[len(HF_PREFIX) :], max_params)
    return LoadedModel(
        spec=spec,
        device=device,
        weights=None,
        model=model.eval().to(device),
        preprocess=preprocess,
        class_names=model.class_names,
        data_config=data_config,
    )


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"


def _embedded(
    weights: str | os.PathLike | None, max_params: int | None
) -> tuple[torch.nn.Module, tuple[str, ...]]:
    config = json.loads((EMBEDDED_DIR / "config.json").read_text())
    path = Path(weights) if weights is not None else EMBEDDED_DIR / "model.safetensors"
    model = _build_checked(EMBEDDED, lambda: VisionTransformer(**config["model_args"]), path, max_params)
    cfg = dict(config["pretrained_cfg"])
    cfg["input_size"] = tuple(cfg["input_size"])
    cfg["mean"], cfg["std"] = tuple(cfg["mean"]), tuple(cfg["std"])
    model.pretrained_cfg = cfg
    return model, tuple(config["class_names"])


def _class_names(model: torch.nn.Module) -> tuple[str, ...]:
    """ImageNet class descriptions from timm when the classifier size matches a subset, else "class i"."""
    subset = timm.data.infer_imagenet_subset(model)
    if subset is not None:
        return tuple(timm.data.ImageNetInfo(subset).label_descriptions())
    return tuple(f"class {i}" for i in range(getattr(model, "num_classes", 0)))


def _unreadable(path: Path, reason: str) -> ModelLoadError:
    return ModelLoadError(
        f"{path.name} cannot be read as a weight file ({reason}): it is corrupt, truncated or not a "
        "safetensors file. Save it again with safetensors.torch.save_file(model.state_dict(), path)."
    )


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape from a safetensors header, checked for consistency with the file's size.

    The format: an 8-byte little-endian header length n, n bytes of JSON ``{name: {dtype, shape,
    data_offsets: [begin, end]}}`` (plus an optional ``__metadata__``), then the tensors' bytes, which the
    offsets must tile exactly.
    """
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) < 8:
            raise _unreadable(path, "shorter than a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise _unreadable(path, "its header length does not fit the file")
        try:
            entries = json.loads(file.read(length))
        except (UnicodeDecodeError, ValueError):
            raise _unreadable(path, "its header is not valid JSON") from None
    if not isinstance(entries, dict):
        raise _unreadable(path, "its header is not a table of tensors")
    entries.pop("__metadata__", None)
    shapes, spans = {}, []
    for name, entry in entries.items():
        try:
            shape = tuple(entry["shape"])
            begin, end = entry["data_offsets"]
            valid = (
                all(isinstance(d, int) and d >= 0 for d in (*shape, begin, end))
                and end - begin == math.prod(shape) * SAFETENSORS_DTYPES[entry["dtype"]]
            )
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            raise _unreadable(path, f"the header entry of tensor {name!r} is malformed")
        shapes[name] = shape
        spans.append((begin, end))
    covered = 0
    for begin, end in sorted(spans):
        if begin != covered:
            raise _unreadable(path, "its tensors overlap or leave gaps")
        covered = end
    if covered != size - 8 - length:
        raise _unreadable(path, f"its tensors need {covered:,} bytes, the file holds {size - 8 - length:,}")
    return shapes


def weight_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape of a weight file, without reading the tensors (safetensors header; a PyTorch
    file is memory-mapped)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors" and path.is_file():
        return _safetensors_shapes(path)
    return {name: tuple(tensor.shape) for name, tensor in read_state_dict(path).items()}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weight file, never executing code from it; nested "model"/"state_dict" unwrapped.

    A PyTorch zip file is memory-mapped: its tensors are read when they are used.
    """
    if not path.is_file():
        raise ModelLoadError(f"Weight file {str(path)!r} does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        _safetensors_shapes(path)
        try:
            state = load_file(path)
        except Exception as error:  # safetensors' own checks (SafetensorError), or the disk
            raise _unreadable(path, _first_line(error)) from error
    elif suffix in TORCH_SUFFIXES:
        try:
            state = _torch_load(path)
        except Exception as error:
            raise ModelLoadError(
                f"{path.name} cannot be loaded safely: it is not a plain PyTorch state dict, and reading it "
                "would need to run code stored in the file (pickle), which is refused. Save the weights with "
                "torch.save(model.state_dict(), path) or, better, safetensors.torch.save_file."
                f" ({_first_line(error)})"
            ) from error
    else:
        raise ModelLoadError(
            f"Unsupported weight file type {suffix or '(none)'!r} for {path.name}: expected a .safetensors "
            "file (preferred) or a PyTorch state dict saved as .pth, .pt or .bin."
        )
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path.name} holds no state dict of tensors (a name → tensor mapping).")
    return state


def _torch_load(path: Path) -> Any:
    """``torch.load`` with ``weights_only``; memory-mapped unless the file has the legacy (non-zip) format."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "zip" not in str(error).lower():
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def _meta_state(build: Callable[[], torch.nn.Module]) -> tuple[dict[str, tuple[int, ...]], int]:
    """State-dict shapes and parameter count of the model ``build`` makes, built on the ``meta`` device
    (shapes only: no memory, no initialisation)."""
    with torch.device("meta"):
        model = build()
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    return shapes, sum(p.numel() for p in model.parameters())


def _check_size(spec: str, params: int, max_params: int | None) -> None:
    if max_params is not None and params > max_params:
        raise ModelLoadError(
            f"{spec} has {params / 1e6:.1f} M parameters, more than the {max_params / 1e6:.1f} M this "
            "server allows; choose a smaller model."
        )


def _check_fit(own: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], spec: str) -> None:
    """Any missing, unexpected or misshapen key of a file (``found``) for a model (``own``): a clear error."""
    missing = sorted(set(own) - set(found))
    unexpected = sorted(set(found) - set(own))
    misshapen = sorted(k for k in set(own) & set(found) if tuple(own[k]) != tuple(found[k]))
    if missing or unexpected or misshapen:
        problems = []
        for name, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                problems.append(f"{len(keys)} {name} (e.g. {', '.join(keys[:4])})")
        if misshapen:
            k = misshapen[0]
            problems.append(
                f"{len(misshapen)} with another shape (e.g. {k}: file {tuple(found[k])}, "
                f"model {tuple(own[k])})"
            )
        raise ModelLoadError(
            f"The weights do not fit {spec}: {'; '.join(problems)} keys. Check that the file was saved from "
            f"this architecture (model.state_dict() of timm's {spec})."
        )


def _build_checked(
    spec: str, build: Callable[[], torch.nn.Module], path: Path, max_params: int | None
) -> torch.nn.Module:
    """The model ``build`` makes with the weights of ``path``, once the file's header and the architecture's
    shapes (and size) are known to fit: a file that does not fit builds nothing."""
    own, params = _meta_state(build)
    _check_size(spec, params, max_params)
    _check_fit(own, weight_shapes(path), spec)
    model = build()
    model.load_state_dict(read_state_dict(path))
    return model


def _timm_cfg(spec: str) -> timm.models.PretrainedCfg | None:
    """timm's pretrained cfg for a model name (with or without tag); a clear error for unknown names."""
    if not timm.is_model(spec):
        close = difflib.get_close_matches(spec.split(".")[0], timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else " See timm.list_models() for the names."
        raise ModelLoadError(f"{spec!r} is neither 'embedded' nor a timm model name.{hint}")
    try:
        return timm.models.get_pretrained_cfg(spec)
    except RuntimeError as error:
        tags = timm.list_pretrained(spec.split(".")[0] + ".*")[:8]
        known = ", ".join(tags)
        raise ModelLoadError(f"{spec!r} has an unknown pretrained tag; known ones: {known}.") from error


def _classifier_size(
    cfg: timm.models.PretrainedCfg | None, shapes: Mapping[str, tuple[int, ...]]
) -> int | None:
    """Number of classes of the file's classifier; 0 when it has none, None if unknown."""
    classifier = getattr(cfg, "classifier", None) or "head"
    if isinstance(classifier, (list, tuple)):
        classifier = classifier[0]
    weight = shapes.get(f"{classifier}.weight")
    if weight:
        return int(weight[0])
    return 0 if not any(k.startswith(f"{classifier}.") for k in shapes) else None


def _timm_from_file(spec: str, path: Path, max_params: int | None) -> torch.nn.Module:
    cfg = _timm_cfg(spec)
    num_classes = _classifier_size(cfg, weight_shapes(path))
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    return _build_checked(spec, lambda: timm.create_model(spec, pretrained=False, **kwargs), path, max_params)


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(constants.HF_HUB_OFFLINE) or flag


def _hub_reachable() -> bool:
    """Whether the hub answers within a few seconds (any HTTP answer counts, errors included)."""
    from huggingface_hub import constants

    try:
        probe = urllib.request.Request(constants.ENDPOINT, method="HEAD")
        with urllib.request.urlopen(probe, timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def _cached_hub_file(hub_id: str, filename: str | None) -> str | None:
    """The path of already-downloaded weights for ``hub_id`` in the hub cache, if any."""
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = hub_id.partition("@")
    names = [filename] if filename else ["model.safetensors", "pytorch_model.bin"]
    if filename and filename.endswith(".bin"):
        names.insert(0, filename[: -len(".bin")] + ".safetensors")
    for name in names:
        found = try_to_load_from_cache(repo, name, revision=revision or None)
        if isinstance(found, str):
            return found
    return None


def _no_hub_weights(spec: str, problem: str) -> ModelLoadError:
    """Hub weights cannot be had: the error, with the fix of a local weights file."""
    fix = (f"Load a local file instead with load_model({spec!r}, weights='path/to/weights.safetensors') "
           "(a .pth or .pt state dict works too).")
    return ModelLoadError(problem, fix, remedy="weights_file")


def _timm_from_hub(spec: str) -> torch.nn.Module:
    cfg = _timm_cfg(spec)
    hub_id = cfg.hf_hub_id if cfg is not None else None
    if cfg is None or not (hub_id or cfg.url):
        raise _no_hub_weights(spec, f"timm has no pretrained weights for {spec!r}: choose one that has some.")
    overlay: dict[str, Any] = {}
    if _hub_offline() or not _hub_reachable():
        cached = _cached_hub_file(hub_id, cfg.hf_hub_filename) if hub_id else None
        if cached is None:
            raise _no_hub_weights(
                spec, f"The pretrained weights of {spec!r} are not in the local cache and the Hugging Face "
                "hub cannot be reached (offline): download them once on a connected machine."
            )
        overlay = {"file": cached}
    try:
        return timm.create_model(spec, pretrained=True, pretrained_cfg_overlay=overlay or None)
    except (OSError, RuntimeError) as error:
        raise _no_hub_weights(
            spec, f"The pretrained weights of {spec!r} could not be loaded ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]})."
        ) from error

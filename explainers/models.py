"""One loader for the embedded model, timm hub models, timm models with weights from a local file and
Hugging Face ``transformers`` classifiers (``"hf:<folder or hub id>"``, :mod:`explainers.sources.hf`).

Every model comes back with timm's own data config (``timm.data.resolve_model_data_config``) and eval
transform, so input size, interpolation, mean and std always come from the model's ``pretrained_cfg``.
Weight files are read without executing code: safetensors, or ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import difflib
import json
import os
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


class ModelLoadError(ValueError):
    """A model could not be loaded; the message names the problem and the fix."""


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
    spec: str = EMBEDDED, device: str = "cpu", weights: str | os.PathLike | None = None
) -> LoadedModel:
    """Load a model in eval mode on ``device``; no caching, every call builds a new model.

    spec: "embedded" (the project's cluttered-digit ViT), any timm model name, optionally with a
        pretrained tag ("vit_base_patch16_224.augreg_in21k_ft_in1k"), or "hf:<folder or hub id>" for a
        Hugging Face ``transformers`` image classifier (see :mod:`explainers.sources.hf`).
    weights: a local ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` state dict (possibly nested under
        "model" or "state_dict"); the classifier size follows the file. For a timm name, None means the
        pretrained weights from the hub or its cache; offline and not cached fails within seconds.
    """
    try:
        kind = torch.device(device).type
    except RuntimeError:
        kind = device
    if kind not in available_devices():
        raise ModelLoadError(f"Device {device!r} is not available here; choose one of {available_devices()}.")
    if spec.startswith(HF_PREFIX):
        return _hugging_face(spec, device, weights)
    if spec == EMBEDDED:
        model, class_names = _embedded(weights)
    elif weights is not None:
        model = _timm_from_file(spec, Path(weights))
        class_names = _class_names(model)
    else:
        model = _timm_from_hub(spec)
        class_names = _class_names(model)
    data_config = timm.data.resolve_model_data_config(model)
    return LoadedModel(
        spec=spec,
        device=device,
        weights=None if weights is None else str(weights),
        model=model.eval().to(device),
        preprocess=Preprocess(data_config),
        class_names=class_names,
        data_config=data_config,
    )


def _hugging_face(spec: str, device: str, weights: str | os.PathLike | None) -> LoadedModel:
    from .sources import hf

    if weights is not None:
        raise ModelLoadError(
            f"{spec} takes its weights from its folder or hub repository; weights= is only for timm models."
        )
    model, preprocess, data_config = hf.load(spec[len(HF_PREFIX) :])
    return LoadedModel(
        spec=spec,
        device=device,
        weights=None,
        model=model.eval().to(device),
        preprocess=preprocess,
        class_names=model.class_names,
        data_config=data_config,
    )


def _embedded(weights: str | os.PathLike | None) -> tuple[torch.nn.Module, tuple[str, ...]]:
    config = json.loads((EMBEDDED_DIR / "config.json").read_text())
    model = VisionTransformer(**config["model_args"])
    cfg = dict(config["pretrained_cfg"])
    cfg["input_size"] = tuple(cfg["input_size"])
    cfg["mean"], cfg["std"] = tuple(cfg["mean"]), tuple(cfg["std"])
    model.pretrained_cfg = cfg
    path = Path(weights) if weights is not None else EMBEDDED_DIR / "model.safetensors"
    _load_strict(model, read_state_dict(path), EMBEDDED)
    return model, tuple(config["class_names"])


def _class_names(model: torch.nn.Module) -> tuple[str, ...]:
    """ImageNet class descriptions from timm when the classifier size matches a subset, else "class i"."""
    subset = timm.data.infer_imagenet_subset(model)
    if subset is not None:
        return tuple(timm.data.ImageNetInfo(subset).label_descriptions())
    return tuple(f"class {i}" for i in range(getattr(model, "num_classes", 0)))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weight file, never executing code from it; nested "model"/"state_dict" unwrapped."""
    if not path.is_file():
        raise ModelLoadError(f"Weight file {str(path)!r} does not exist.")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        state = load_file(path)
    elif suffix in TORCH_SUFFIXES:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ModelLoadError(
                f"{path.name} cannot be loaded safely: it is not a plain PyTorch state dict, and reading it "
                "would need to run code stored in the file (pickle), which is refused. Save the weights with "
                "torch.save(model.state_dict(), path) or, better, safetensors.torch.save_file."
                f" ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
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


def _load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], spec: str) -> None:
    """Load ``state`` into ``model``; any missing, unexpected or misshapen key is a clear error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshapen = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or misshapen:
        problems = []
        for name, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                problems.append(f"{len(keys)} {name} (e.g. {', '.join(keys[:4])})")
        if misshapen:
            k = misshapen[0]
            problems.append(
                f"{len(misshapen)} with another shape (e.g. {k}: file {tuple(state[k].shape)}, "
                f"model {tuple(own[k].shape)})"
            )
        raise ModelLoadError(
            f"The weights do not fit {spec}: {'; '.join(problems)} keys. Check that the file was saved from "
            f"this architecture (model.state_dict() of timm's {spec})."
        )
    model.load_state_dict(state)


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


def _classifier_size(cfg: timm.models.PretrainedCfg | None, state: Mapping[str, torch.Tensor]) -> int | None:
    """Number of classes of the file's classifier; 0 when it has none, None if unknown."""
    classifier = getattr(cfg, "classifier", None) or "head"
    if isinstance(classifier, (list, tuple)):
        classifier = classifier[0]
    weight = state.get(f"{classifier}.weight")
    if weight is not None:
        return int(weight.shape[0])
    return 0 if not any(k.startswith(f"{classifier}.") for k in state) else None


def _timm_from_file(spec: str, path: Path) -> torch.nn.Module:
    cfg = _timm_cfg(spec)
    state = read_state_dict(path)
    num_classes = _classifier_size(cfg, state)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    model = timm.create_model(spec, pretrained=False, **kwargs)
    _load_strict(model, state, spec)
    return model


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


def _local_file_hint(spec: str) -> str:
    return (
        f"Load a local file instead with load_model({spec!r}, weights='path/to/weights.safetensors') "
        "(a .pth or .pt state dict works too)."
    )


def _timm_from_hub(spec: str) -> torch.nn.Module:
    cfg = _timm_cfg(spec)
    hub_id = cfg.hf_hub_id if cfg is not None else None
    if cfg is None or not (hub_id or cfg.url):
        raise ModelLoadError(
            f"timm has no pretrained weights for {spec!r}: choose a model that has some. "
            + _local_file_hint(spec)
        )
    overlay: dict[str, Any] = {}
    if _hub_offline() or not _hub_reachable():
        cached = _cached_hub_file(hub_id, cfg.hf_hub_filename) if hub_id else None
        if cached is None:
            raise ModelLoadError(
                f"The pretrained weights of {spec!r} are not in the local cache and the Hugging Face hub "
                "cannot be reached (offline): download them once on a connected machine. "
                + _local_file_hint(spec)
            )
        overlay = {"file": cached}
    try:
        return timm.create_model(spec, pretrained=True, pretrained_cfg_overlay=overlay or None)
    except (OSError, RuntimeError) as error:
        raise ModelLoadError(
            f"The pretrained weights of {spec!r} could not be loaded ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200]}). {_local_file_hint(spec)}"
        ) from error

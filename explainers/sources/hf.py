"""Hugging Face ``transformers`` image classifiers, presented to the capture like a timm ViT.

``load_model("hf:<folder or hub id>")`` comes here. The model is ``AutoModelForImageClassification``
(ViT, DeiT with or without distillation, BEiT, Data2Vec-Vision, DINOv2 with or without registers,
ViT-MSN, I-JEPA: the families whose every block is global self-attention over all tokens) and the
preprocessing is the model's own image processor, read from its ``preprocessor_config.json``.

:class:`HFVisionTransformer` wraps the model without copying anything: it shares the model's modules
and parameters and only adds the names the capture and the token layout read from a timm ViT (``blocks``
with ``attn.num_heads``, ``patch_embed``, ``num_prefix_tokens``, ``cls_token``, ``num_classes``,
``global_pool``). The attention itself is recorded by the same mechanism as for timm
(:mod:`explainers.recorder`): transformers' ``eager`` attention calls ``softmax(q kᵀ·scale + bias)``
and its ``sdpa`` attention calls ``F.scaled_dot_product_attention``, and the recorder sees both.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from PIL import Image
from torch import nn

from ..models import HF_PREFIX, ModelLoadError, _check_size, _hub_offline, _hub_reachable


def _class_token(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    return hidden[:, 0]


def _pooler(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """BEiT / Data2Vec-Vision: ``LayerNorm(mean of the patch tokens)``, or the class token."""
    return model.base_model.pooler(hidden)


def _class_and_mean(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """DINOv2's linear head input: ``[class token; mean of the patch tokens]`` (registers left out)."""
    prefix = 1 + int(getattr(model.config, "num_register_tokens", 0))
    return torch.cat([hidden[:, 0], hidden[:, prefix:].mean(1)], dim=-1)


def _mean(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """I-JEPA: the mean of all tokens (it has no prefix token)."""
    return hidden.mean(1)


@dataclass(frozen=True)
class _Family:
    """How a model type's classifier reads the last hidden states.

    pool: ``(model, last hidden states (B, N, D)) → pooled embedding``, transformers' own pooling.
    global_pool: that readout in timm's words for the token layout: "token" (the class token) or "avg"
        (the mean of the patch tokens). DINOv2's head reads both; its attention products start from the
        class token, as DINO's attention maps do, and the gradient methods' ``∂y/∂A`` carry the mean too.
    any_size: the position embeddings are interpolated on every call, so any input size works.
    """

    pool: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    global_pool: Callable[[Any], str]
    any_size: bool = False


def _pooling(config: Any) -> str:
    return "avg" if config.use_mean_pooling else "token"


_FAMILIES: dict[str, _Family] = {
    "vit": _Family(_class_token, lambda config: "token"),
    "deit": _Family(_class_token, lambda config: "token"),
    "vit_msn": _Family(_class_token, lambda config: "token"),
    "beit": _Family(_pooler, _pooling),
    "data2vec-vision": _Family(_pooler, _pooling),
    "dinov2": _Family(_class_and_mean, lambda config: "token", any_size=True),
    "dinov2_with_registers": _Family(_class_and_mean, lambda config: "token", any_size=True),
    "ijepa": _Family(_mean, lambda config: "avg"),
}
#: The prefix-token parameters of the embeddings, in token order after the class token.
_PREFIX_PARAMS = ("cls_token", "distillation_token", "register_tokens")
_PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


class PatchGrid(nn.Module):
    """The patch embedding facts the token layout reads, under timm's ``patch_embed`` names.

    A convolution with kernel = stride = patch size and no padding: an ``H × W`` image gives a
    ``⌊H/p_h⌋ × ⌊W/p_w⌋`` grid of tokens, in row-major order after the prefix tokens. ``proj`` is the
    model's own convolution.
    """

    def __init__(
        self, proj: nn.Conv2d, img_size: tuple[int, int], patch_size: tuple[int, int], strict_img_size: bool
    ) -> None:
        super().__init__()
        self.proj = proj
        self.img_size, self.patch_size, self.strict_img_size = img_size, patch_size, strict_img_size

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.dynamic_feat_size(self.img_size)

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        return img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1]


class _Block(nn.Module):
    """One transformers encoder layer seen as a timm block: the layer itself and ``attn.num_heads``."""

    def __init__(self, layer: nn.Module, num_heads: int) -> None:
        super().__init__()
        self.layer = layer
        self.attn = SimpleNamespace(num_heads=num_heads)


class HFVisionTransformer(nn.Module):
    """A transformers image classifier under the names the capture reads from a timm ViT; no copy.

    ``forward(images)`` returns the model's logits ``(B, C)`` (the pooled embedding for a headless model,
    ``num_labels=0``). ``blocks`` holds views of the model's own encoder layers (not registered a second
    time, so ``state_dict`` and ``parameters`` are the model's: ``hf.*``). Token order: class token,
    distillation token (DeiT), register tokens (DINOv2 with registers), then the patches row by row.

    Args:
        model: a ``*ForImageClassification`` model of a family this module knows (see ``_FAMILIES``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        config = model.config
        if config.model_type not in _FAMILIES:
            raise ModelLoadError(_unsupported(config.model_type))
        family = _FAMILIES[config.model_type]
        self.hf = model
        self._pool = family.pool
        embeddings = model.base_model.embeddings
        heads = int(config.num_attention_heads)
        blocks = nn.ModuleList(_Block(layer, heads) for layer in _layers(model.base_model))
        object.__setattr__(self, "blocks", blocks)  # views of the model's layers: not registered twice
        patches = embeddings.patch_embeddings
        patch_embed = PatchGrid(
            patches.projection, _pair(patches.image_size), _pair(patches.patch_size), not family.any_size
        )
        object.__setattr__(self, "patch_embed", patch_embed)  # a view of the model's own convolution
        prefix = (getattr(embeddings, name, None) for name in _PREFIX_PARAMS)
        self.num_prefix_tokens = sum(tokens.shape[1] for tokens in prefix if tokens is not None)
        self.num_classes = int(config.num_labels)
        self.global_pool = family.global_pool(config)
        self.dynamic_img_size = not self.patch_embed.strict_img_size

    @property
    def cls_token(self) -> nn.Parameter | None:
        """The class token's embedding, ``None`` for families without one (I-JEPA)."""
        return getattr(self.hf.base_model.embeddings, "cls_token", None)

    @property
    def class_names(self) -> tuple[str, ...]:
        """``config.id2label`` in class order."""
        labels = self.hf.config.id2label
        return tuple(str(labels.get(i, labels.get(str(i), f"class {i}"))) for i in range(self.num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The model's own forward pass: its logits ``(B, C)``, or its pooled embedding when headless."""
        return self.hf(pixel_values=images).logits

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The last hidden states ``(B, N, D)`` (after the final norm), as the classifier reads them."""
        return self.hf.base_model(pixel_values=images).last_hidden_state

    def forward_head(self, hidden: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The pooled embedding (``pre_logits=True``) or the logits of ``forward_features``' output.

        DeiT with a distillation head averages its two heads' logits; its embedding is the mean of the class
        and distillation tokens, as in timm.
        """
        model = self.hf
        if hasattr(model, "distillation_classifier"):
            if pre_logits:
                return (hidden[:, 0] + hidden[:, 1]) / 2
            return (model.cls_classifier(hidden[:, 0]) + model.distillation_classifier(hidden[:, 1])) / 2
        pooled = self._pool(model, hidden)
        return pooled if pre_logits else model.classifier(pooled)


def _layers(base: nn.Module) -> nn.ModuleList:
    """The encoder layers: ``base.layers`` (ViT, DeiT, BEiT, ...) or ``base.encoder.layer`` (DINOv2, ...)."""
    for owner in (base, getattr(base, "encoder", None)):
        for name in ("layers", "layer"):
            layers = getattr(owner, name, None)
            if isinstance(layers, nn.ModuleList) and len(layers):
                return layers
    raise ModelLoadError(f"{type(base).__name__} has no list of encoder layers the explainers can read.")


class HFPreprocess:
    """PIL image in any mode → the normalised ``(3, H, W)`` tensor the model's own image processor makes."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0].float()

    def __repr__(self) -> str:
        return f"HFPreprocess({type(self.processor).__name__})"


def _unsupported(model_type: str) -> str:
    return (
        f"Hugging Face model type {model_type!r} is not supported: the explainers need every block to be "
        "global self-attention over all tokens and a patch grid they can read. Supported types: "
        f"{', '.join(sorted(_FAMILIES))}. Windowed or pooled attention (Swin, PVT, LeViT, ...) and "
        "convolutional models cannot be explained by attention rollout."
    )


def data_config(processor: Any, input_size: tuple[int, int]) -> dict[str, Any]:
    """timm-style ``input_size``, ``interpolation``, ``mean``, ``std`` of an image processor.

    The processor computes ``x = (v · r − m) / s`` from pixel values ``v ∈ [0, 255]`` (``r`` the rescale
    factor, 1 without rescaling; ``m = 0, s = 1`` without normalisation); written as timm's
    ``(v / 255 − mean) / std`` that is ``mean = m / (255 r)``, ``std = s / (255 r)``.
    """
    rescale = float(processor.rescale_factor) if getattr(processor, "do_rescale", False) else 1.0
    normalise = getattr(processor, "do_normalize", False)
    mean = processor.image_mean if normalise else (0.0, 0.0, 0.0)
    std = processor.image_std if normalise else (1.0, 1.0, 1.0)
    return {
        "input_size": (3, *input_size),
        "interpolation": _PIL_FILTERS.get(int(getattr(processor, "resample", 2) or 2), "bilinear"),
        "mean": tuple(float(m) / (255 * rescale) for m in mean),
        "std": tuple(float(s) / (255 * rescale) for s in std),
    }


def load(
    source: str, max_params: int | None = None
) -> tuple[HFVisionTransformer, HFPreprocess, dict[str, Any]]:
    """``AutoModelForImageClassification`` and its image processor from a local folder or a hub id.

    A folder made by ``save_pretrained`` (model and image processor) loads offline. A hub id uses the hub,
    or its cache when offline; offline and not cached fails at once. A checkpoint saved without a
    classifier (e.g. ``Dinov2Model``) loads headless (``num_labels=0``: the output is the pooled
    embedding). Weights missing from the checkpoint are an error, never silently random. No remote code
    is ever run. ``max_params``: refuse a larger architecture (counted on the ``meta`` device from its
    config, before any weight is read).
    """
    try:
        import transformers
    except ImportError as error:
        raise ModelLoadError(
            "Hugging Face models need the optional extra: pip install -e '.[hf]' (transformers)."
        ) from error
    location, local_only = _locate(source)
    hub = {"local_files_only": local_only, "trust_remote_code": False}
    with _hf_errors(source):
        config = transformers.AutoConfig.from_pretrained(location, **hub)
    if config.model_type not in _FAMILIES:
        raise ModelLoadError(_unsupported(config.model_type))
    headless = not set(config.architectures or ()) & _image_classification_classes()
    if max_params is not None:
        shape_config = copy.deepcopy(config)
        if headless:
            shape_config.num_labels = 0
        with _hf_errors(source), torch.device("meta"):
            shape_only = transformers.AutoModelForImageClassification.from_config(shape_config)
        _check_size(f"{HF_PREFIX}{source}", sum(p.numel() for p in shape_only.parameters()), max_params)
    with _hf_errors(source):
        model, info = transformers.AutoModelForImageClassification.from_pretrained(
            location, **hub, dtype=torch.float32, output_loading_info=True,
            **({"num_labels": 0} if headless else {}),
        )
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(k) for k in info.get("mismatched_keys") or ())
    if missing or mismatched:
        keys = ", ".join((missing + mismatched)[:4])
        raise ModelLoadError(
            f"The checkpoint in {source!r} does not hold all weights of {type(model).__name__} "
            f"(e.g. {keys}): they would be random. Save the model with save_pretrained after training."
        )
    wrapped = HFVisionTransformer(model)
    with _hf_errors(source):
        processor = transformers.AutoImageProcessor.from_pretrained(location, **hub)
    probe = _pair(config.image_size)
    size = tuple(HFPreprocess(processor)(Image.new("RGB", probe[::-1])).shape[-2:])
    if wrapped.patch_embed.strict_img_size and size != wrapped.patch_embed.img_size:
        raise ModelLoadError(
            f"The image processor of {source!r} makes {size[0]}×{size[1]} images but the model takes "
            f"{probe[0]}×{probe[1]}: fix size/crop_size in preprocessor_config.json."
        )
    return wrapped, HFPreprocess(processor), data_config(processor, size)


def _image_classification_classes() -> set[str]:
    """The classes transformers maps image classification to (e.g. DeiTForImageClassificationWithTeacher)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    names: set[str] = set()
    for value in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES.values():
        names.update((value,) if isinstance(value, str) else value)
    return names


def _locate(source: str) -> tuple[str, bool]:
    """(what to pass to ``from_pretrained``, whether to stay offline) for a folder or a hub id."""
    path = Path(source).expanduser()
    if source.strip() and path.is_dir():
        return str(path), True
    looks_like_hub_id = source.count("/") <= 1 and not source.startswith((".", "/", "~")) and source.strip()
    if not looks_like_hub_id or path.exists():
        raise ModelLoadError(
            f"{HF_PREFIX}{source} is neither a folder (made by model.save_pretrained(folder) and "
            "image_processor.save_pretrained(folder)) nor a Hugging Face hub id such as "
            "'google/vit-base-patch16-224'."
        )
    if _hub_offline() or not _hub_reachable():
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = source.partition("@")
        if not isinstance(try_to_load_from_cache(repo, "config.json", revision=revision or None), str):
            raise ModelLoadError(
                f"{source!r} is not in the local Hugging Face cache and the hub cannot be reached (offline): "
                "download it once on a connected machine.",
                f"Or save it there with save_pretrained and load load_model('{HF_PREFIX}path/to/folder').",
                remedy="hf_folder",
            )
        return source, True
    return source, False


@contextmanager
def _hf_errors(source: str) -> Iterator[None]:
    """Turn transformers' loading errors (missing files, bad JSON, remote code) into a ModelLoadError."""
    try:
        yield
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError) as error:
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise ModelLoadError(f"{HF_PREFIX}{source} could not be loaded: {first}") from error

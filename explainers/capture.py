"""Capture: the one forward (and backward) pass every explainer reads from.

``capture(model, images, target)`` runs a timm Vision Transformer once and keeps, for every block
``l``, the post-softmax attention ``A_l`` ``(B, H, N, N)`` and, when gradients are asked for,
``∂y_t/∂A_l`` for the target logit ``y_t`` of each image, paired with the same block. Explainers are
then cheap tensor maths on this object (see :func:`explainers.compute`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, replace

import torch
from torch import nn

from .layout import TokenLayout
from .recorder import ActivationRecorder, AttentionRecorder, ForwardStopped
from .relevance import Relevance, check_supported, propagate, watch_list

Target = int | Sequence[int] | torch.Tensor | None


@dataclass(frozen=True)
class Capture:
    """What one pass of the model left behind; everything an explainer may read.

    Attributes:
        attentions: per block, the post-softmax attention ``(B, H, N, N)``, in block order.
        gradients: per block, ``∂y_t/∂A_l`` ``(B, H, N, N)`` paired with ``attentions``; ``None`` when the
            capture was made without gradients.
        logits: the model's output ``(B, C)``; ``None`` when captured with ``logits=False``.
        targets: the class ``t`` explained for each image ``(B,)``; ``None`` when there are no logits and
            no target was given.
        layout: prefix tokens and patch grid.
        relevance: LRP relevance of the attention maps and input tokens for ``targets``
            (:mod:`explainers.relevance`); ``None`` unless captured with ``relevance=True``.
    """

    attentions: tuple[torch.Tensor, ...]
    gradients: tuple[torch.Tensor, ...] | None
    logits: torch.Tensor | None
    targets: torch.Tensor | None
    layout: TokenLayout
    relevance: Relevance | None = None

    @property
    def num_layers(self) -> int:
        return len(self.attentions)

    @property
    def num_heads(self) -> int:
        return self.attentions[0].shape[1]

    @property
    def batch_size(self) -> int:
        return self.attentions[0].shape[0]

    @property
    def device(self) -> torch.device:
        return self.attentions[0].device

    @property
    def dims(self) -> dict[str, int]:
        """Sizes that bound explainer parameters (``layer < num_layers``, ``head < num_heads``)."""
        return {"num_layers": self.num_layers, "num_heads": self.num_heads}

    @property
    def nbytes(self) -> int:
        tensors = [*self.attentions, *(self.gradients or ()), self.logits, self.targets]
        if self.relevance is not None:
            tensors += [*self.relevance.attention, self.relevance.tokens]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def upto(self, stop: int) -> Capture:
        """The same capture seen through blocks ``0 .. stop-1`` only (for layer-by-layer views)."""
        if not 1 <= stop <= self.num_layers:
            raise ValueError(f"stop must be in 1..{self.num_layers}, got {stop}")
        grads = None if self.gradients is None else self.gradients[:stop]
        rel = self.relevance
        if rel is not None:  # the token relevance is the whole model's: blocks after ``stop`` shaped it
            rel = replace(rel, attention=rel.attention[:stop])
        return replace(self, attentions=self.attentions[:stop], gradients=grads, relevance=rel)

    def subset(self, index: int | slice | Sequence[int]) -> Capture:
        """The capture of some images of the batch (no copy for an int or a slice)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        elif not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long, device=self.device)

        def pick(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor[index]

        def pick_all(tensors: tuple[torch.Tensor, ...] | None) -> tuple[torch.Tensor, ...] | None:
            return None if tensors is None else tuple(t[index] for t in tensors)

        rel = self.relevance
        return replace(
            self,
            attentions=pick_all(self.attentions),
            gradients=pick_all(self.gradients),
            logits=pick(self.logits),
            targets=pick(self.targets),
            relevance=None
            if rel is None
            else Relevance(pick_all(rel.attention), pick(rel.tokens), pick(rel.position)),
        )


def attention_blocks(model: nn.Module) -> nn.ModuleList | nn.Sequential:
    """The transformer blocks of a timm ViT, or a ``ValueError`` saying why ``model`` is not one."""
    blocks = getattr(model, "blocks", None)
    if (
        not isinstance(model, nn.Module)
        or blocks is None
        or len(blocks) == 0
        or not hasattr(model, "patch_embed")
        or not all(hasattr(getattr(b, "attn", None), "num_heads") for b in blocks)
    ):
        name = type(model).__name__
        raise ValueError(
            f"model {name} is not a Vision Transformer with attention blocks: expected a timm ViT "
            "(model.patch_embed and model.blocks[i].attn), e.g. timm.create_model('deit_tiny_patch16_224')."
        )
    return blocks


def model_dims(model: nn.Module) -> dict[str, int]:
    """``num_layers`` and ``num_heads`` of a ViT, read from its blocks."""
    blocks = attention_blocks(model)
    return {"num_layers": len(blocks), "num_heads": int(blocks[0].attn.num_heads)}


def _check_images(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    in_chans = model.patch_embed.proj.in_channels if hasattr(model.patch_embed, "proj") else 3
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != in_chans:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(
            f"images must be a normalised float tensor of shape (B, {in_chans}, H, W); got {shape}. "
            "Use the model's preprocess and stack the results (add a batch dimension for one image)."
        )
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point (normalised), got dtype {images.dtype}")
    param = next(model.parameters(), None)
    if param is not None:
        images = images.to(device=param.device, dtype=param.dtype)
    return images


def _check_targets(target: Target, batch_size: int, num_classes: int, device: torch.device) -> torch.Tensor:
    targets = torch.as_tensor(target, dtype=torch.long, device=device).reshape(-1)
    if targets.numel() == 1:
        targets = targets.expand(batch_size)
    if targets.numel() != batch_size:
        raise ValueError(f"target must be one class or one per image ({batch_size}), got {targets.numel()}")
    bad = targets[(targets < 0) | (targets >= num_classes)]
    if bad.numel():
        raise ValueError(
            f"target {bad[0].item()} is outside the model's classes: choose a class in 0..{num_classes - 1}"
        )
    return targets


def capture(
    model: nn.Module,
    images: torch.Tensor,
    target: Target = None,
    *,
    gradients: bool = True,
    logits: bool = True,
    dtype: torch.dtype | None = None,
    relevance: bool = False,
) -> Capture:
    """Run ``model`` once on ``images`` and keep what the explainers need.

    Args:
        model: a timm Vision Transformer with a class token (any fused-attention setting, any mode).
        images: normalised ``(B, 3, H, W)`` tensor (moved to the model's device if needed).
        target: class to explain: one int for all images, one per image, or ``None`` for each image's
            predicted class.
        gradients: also compute ``∂y_t/∂A_l`` (needed by gradient methods such as ``grad_rollout``, ``gae``).
            The backward pass goes from the target logits to the attention maps only; no parameter
            gradient is computed and ``.grad`` fields are left untouched.
        logits: run the model to its output and keep the logits. ``logits=False`` (without gradients)
            stops the forward pass right after the last block's attention map, which is all that
            attention-only methods (``rollout``, ``raw_attention``) read: it saves the rest of the network
            (the last MLP and the head, about 6% of a ViT-Ti/16 forward's FLOPs) and works on headless
            backbones. The capture's ``logits`` is then ``None``, and so is ``targets`` unless ``target``
            is given.
        dtype: store attention and gradients in this dtype (e.g. ``torch.float16`` to halve the memory of
            large models); explainers compute in float32 whatever the storage.
        relevance: also propagate LRP relevance from each target back through the network
            (:mod:`explainers.relevance`; needed by ``lrp``, ``partial_lrp``, ``transformer_attribution``).
            The same forward pass records the activations the rules read; the propagation is tensor
            maths after it, with no autograd. Class-token models only.

    The model is not modified in any way (see :mod:`explainers.recorder`), so this is safe to call from
    many threads on one shared model.
    """
    blocks = attention_blocks(model)
    images = _check_images(model, images)
    layout = TokenLayout.from_model(model, tuple(images.shape[-2:]))
    for asked, what in ((gradients, "gradients need"), (relevance, "relevance needs")):
        if asked and not logits:
            raise ValueError(f"{what} the logits: capture with logits=True (the default)")
    if relevance:
        check_supported(model)
    num_classes = int(getattr(model, "num_classes", 0))
    if num_classes <= 0 and (logits or target is not None):
        raise ValueError(
            "model has no classifier head (num_classes=0): only attention-only methods such as rollout "
            "apply (explain without a target, or capture with gradients=False, logits=False)."
        )
    targets = None if target is None else _check_targets(target, images.shape[0], num_classes, images.device)

    output = None
    if relevance:  # the same pass also keeps the activations the LRP rules read
        recorder = ActivationRecorder(watch_list(model))
    else:
        recorder = AttentionRecorder(None if logits else len(blocks))
    with torch.set_grad_enabled(gradients), recorder:
        if gradients:
            images = images.detach().requires_grad_(True)
        with suppress(ForwardStopped):
            output = model(images)
    attentions = recorder.attentions
    if len(attentions) != len(blocks):
        raise ValueError(
            f"captured {len(attentions)} attention maps for {len(blocks)} blocks: this model's attention "
            "is computed in a way the capture does not recognise (expected timm's Attention module)."
        )
    if attentions[0].shape[-1] != layout.num_tokens:
        raise ValueError(
            f"attention covers {attentions[0].shape[-1]} tokens but the layout expects {layout.num_tokens} "
            f"({layout.num_prefix} prefix + {layout.grid[0]}×{layout.grid[1]} patches)"
        )
    if targets is None and output is not None:
        targets = output.detach().argmax(dim=-1)

    store = dtype or attentions[0].dtype
    grads = None
    if gradients:
        score = output.gather(1, targets[:, None]).sum()  # images are independent: Σ_b y_b,t_b
        grads = tuple(g.to(store) for g in torch.autograd.grad(score, attentions))
    lrp = None
    if relevance:
        lrp = propagate(model, recorder.inputs, recorder.outputs, attentions, targets).to(store)
    return Capture(
        attentions=tuple(a.detach().to(store) for a in attentions),
        gradients=grads,
        logits=None if output is None else output.detach(),
        targets=targets,
        layout=layout,
        relevance=lrp,
    )

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
from functools import partial

import torch
from torch import nn

from .layer_readout import check_layer_readout, forward_with_block_tokens, layer_readout_gradients
from .layout import ModelDescription, TokenLayout, describe_model
from .recorder import ActivationRecorder, AttentionRecorder, ForwardStopped
from .relevance import Relevance, check_supported, propagate, watch_list
from .targets import SimilarityTarget, pooled_embedding

Target = int | Sequence[int] | torch.Tensor | SimilarityTarget | None


@dataclass(frozen=True)
class Capture:
    """What one pass of the model left behind; everything an explainer may read.

    Attributes:
        attentions: per block, the post-softmax attention ``(B, H, N, N)``, in block order.
        gradients: per block, ``∂y_t/∂A_l`` ``(B, H, N, N)`` paired with ``attentions``; ``None`` when the
            capture was made without gradients.
        logits: the model's output ``(B, C)``; ``None`` when captured with ``logits=False`` or for a
            :class:`~explainers.SimilarityTarget`.
        targets: the class ``t`` explained for each image ``(B,)``; ``None`` when there are no logits and
            no target was given, and for a :class:`~explainers.SimilarityTarget`.
        layout: prefix tokens, patch grid and readout.
        pool_attention: the attention pool's ``(B, H_pool, 1, N)`` attention of its latent query over the
            tokens after the last block (zero on tokens it does not pool); ``None`` unless
            ``layout.readout == "attention_pool"``.
        pool_gradient: ``∂y/∂pool_attention``, paired with it; ``None`` without gradients or pool.
        scores: the explained score of each image ``(B,)``: the target logit ``y_t``, or the cosine
            similarity for a :class:`~explainers.SimilarityTarget`; ``None`` without logits.
        layer_gradients: per attention step, ``∂s_l/∂A`` ``(B, H, Q_l, N)``, ``s_l`` the explained score read
            from step ``l``'s own tokens through the final norm and head, ``A`` the step's attention
            (``Q_l = N``; CaiT: its ``P`` patch rows, then the class token's row) or, for an attention
            pool, the pool's attention on the step's tokens (``Q_l = 1``; see
            :mod:`explainers.layer_readout`); ``None`` unless captured with ``layer_gradients=True``.
        relevance: LRP relevance of the attention maps and input tokens for ``targets``
            (:mod:`explainers.relevance`); ``None`` unless captured with ``relevance=True``.
    """

    attentions: tuple[torch.Tensor, ...]
    gradients: tuple[torch.Tensor, ...] | None
    logits: torch.Tensor | None
    targets: torch.Tensor | None
    layout: TokenLayout
    relevance: Relevance | None = None
    pool_attention: torch.Tensor | None = None
    pool_gradient: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    layer_gradients: tuple[torch.Tensor, ...] | None = None

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
        tensors = [*self.attentions, *(self.gradients or ()), *(self.layer_gradients or ())]
        tensors += [self.logits, self.targets, self.pool_attention, self.pool_gradient, self.scores]
        if self.relevance is not None:
            tensors += [*self.relevance.attention, self.relevance.tokens, self.relevance.pool]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def upto(self, stop: int) -> Capture:
        """The same capture seen through blocks ``0 .. stop-1`` only (for layer-by-layer views); the readout
        (class token, mean, or the attention pool's row) stays the model's."""
        if not 1 <= stop <= self.num_layers:
            raise ValueError(f"stop must be in 1..{self.num_layers}, got {stop}")
        grads = None if self.gradients is None else self.gradients[:stop]
        layer_grads = None if self.layer_gradients is None else self.layer_gradients[:stop]
        rel = self.relevance
        if rel is not None:  # the token relevance is the whole model's: blocks after ``stop`` shaped it
            rel = replace(rel, attention=rel.attention[:stop])
        return replace(self, attentions=self.attentions[:stop], gradients=grads, relevance=rel,
                       layer_gradients=layer_grads)

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
            layer_gradients=pick_all(self.layer_gradients),
            logits=pick(self.logits),
            targets=pick(self.targets),
            pool_attention=pick(self.pool_attention),
            pool_gradient=pick(self.pool_gradient),
            scores=pick(self.scores),
            relevance=None
            if rel is None
            else Relevance(pick_all(rel.attention), pick(rel.tokens), pick(rel.position), pick(rel.pool)),
        )


def attention_blocks(model: nn.Module) -> list[nn.Module]:
    """The attention blocks of a timm ViT in order (CaiT: its patch blocks, then its class-attention
    blocks), or a ``ValueError`` saying why ``model`` cannot be explained (see
    :func:`~explainers.describe_model`)."""
    describe_model(model)
    return [*model.blocks, *(getattr(model, "blocks_token_only", None) or ())]


def model_dims(model: nn.Module) -> dict[str, int]:
    """``num_layers`` (attention steps: blocks, plus CaiT's class-attention blocks) and ``num_heads``."""
    description = describe_model(model)
    return {"num_layers": description.num_layers, "num_heads": description.num_heads}


def _in_channels(model: nn.Module) -> int:
    """Input channels: the first convolution of the patch embedding (a hybrid ViT's backbone stem),
    else the ``pretrained_cfg`` (NaFlexViT embeds flattened patches with a linear layer)."""
    embed = getattr(model, "patch_embed", None)
    convolutions = (m for m in embed.modules() if isinstance(m, nn.Conv2d)) if embed is not None else ()
    first = next(iter(convolutions), None)
    if first is not None:
        return first.in_channels
    return int((getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3,))[0])


def _check_images(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    in_chans = _in_channels(model)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != in_chans:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(
            f"images must be a normalised float tensor of shape (B, {in_chans}, H, W); got {shape}. "
            "Use the model's preprocess and stack the results (add a batch dimension for one image)."
        )
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point (normalised), got dtype {images.dtype}")
    param = next(model.parameters(), None) if isinstance(model, nn.Module) else None
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
    layer_gradients: bool = False,
    dtype: torch.dtype | None = None,
    relevance: bool = False,
) -> Capture:
    """Run ``model`` once on ``images`` and keep what the explainers need.

    Args:
        model: a timm Vision Transformer (any fused-attention setting, any mode) that
            :func:`~explainers.describe_model` accepts: class-token, average-pool and attention-pool
            readouts, CaiT's late class token, NaFlexViT, headless backbones.
        images: normalised ``(B, 3, H, W)`` tensor (moved to the model's device if needed).
        target: class to explain: one int for all images, one per image, or ``None`` for each image's
            predicted class; or a :class:`~explainers.SimilarityTarget` (the cosine similarity of each
            image's pooled embedding to a reference: the target of headless backbones).
        gradients: also compute ``∂y_t/∂A_l`` (needed by gradient methods such as ``grad_rollout``, ``gae``).
            The backward pass goes from the target scores to the attention maps only; no parameter
            gradient is computed and ``.grad`` fields are left untouched.
        logits: run the model to its output and keep the logits. ``logits=False`` (without gradients)
            stops the forward pass right after the last attention map (the last block's, the last
            class-attention block's or the attention pool's), which is all that attention-only methods
            (``rollout``, ``raw_attention``) read: it saves the rest of the network (the last MLP and the
            head, about 6% of a ViT-Ti/16 forward's FLOPs) and works on headless backbones. The
            capture's ``logits`` is then ``None``, and so is ``targets`` unless ``target`` is given.
        layer_gradients: also compute, for every attention step ``l``, ``∂s_l/∂A`` with ``s_l`` the explained
            score (target logit or similarity) read from step ``l``'s tokens through the final norm and head
            (LeGrad; see :mod:`explainers.layer_readout`): one small backward pass per step. Off by default,
            so the forward pass is ``model(images)`` itself and other methods pay nothing for it.
        dtype: store attention and gradients in this dtype (e.g. ``torch.float16`` to halve the memory of
            large models); explainers compute in float32 whatever the storage.
        relevance: also propagate LRP relevance from each target back through the network
            (:mod:`explainers.relevance`; needed by ``lrp``, ``partial_lrp``, ``transformer_attribution``).
            The same forward pass records the activations the rules read; the propagation is tensor
            maths after it, with no autograd. Every family :mod:`explainers.lrp_families` covers (class
            token, average pool, attention pool; similarity targets too); others get a ``ValueError``.

    The model is not modified in any way (see :mod:`explainers.recorder`), so this is safe to call from
    many threads on one shared model. CaiT's maps are laid out on all ``N = 1 + P`` tokens (see
    :class:`~explainers.TokenLayout`), so every explainer reads every model as ``(B, H, N, N)`` maps.
    """
    images = _check_images(model, images)
    description = describe_model(model, tuple(images.shape[-2:]))
    layout = description.layout
    for asked, what in ((gradients or layer_gradients, "gradients need"), (relevance, "relevance needs")):
        if asked and not logits:
            raise ValueError(f"{what} the logits: capture with logits=True (the default)")
    if relevance:
        check_supported(model)
    if layer_gradients:
        check_layer_readout(model)
    similarity = target if isinstance(target, SimilarityTarget) else None
    num_classes = int(getattr(model, "num_classes", 0))
    if num_classes <= 0 and similarity is None and (logits or target is not None):
        raise ValueError(
            "model has no classifier head (num_classes=0): gradient methods explain the similarity to a "
            "reference, so pass target=explainers.SimilarityTarget(reference_image_or_embedding); "
            "attention-only methods such as rollout need no target (or capture with gradients=False, "
            "logits=False)."
        )
    targets = None
    if target is not None and similarity is None:
        targets = _check_targets(target, images.shape[0], num_classes, images.device)
    reference = None
    if similarity is not None and logits:
        if similarity.reference.dim() == 4:  # the reference image must be a valid input too
            describe_model(model, tuple(_check_images(model, similarity.reference).shape[-2:]))
        reference = similarity.embedding(model, images.device, images.dtype)

    pooled = layout.readout == "attention_pool"
    expected = description.num_layers + pooled
    output, tokens = None, None
    if relevance:  # the same pass also keeps the activations the LRP rules read
        recorder = ActivationRecorder(watch_list(model))
    else:
        recorder = AttentionRecorder(None if logits else expected)
    with_grad = gradients or layer_gradients
    with torch.set_grad_enabled(with_grad), recorder:
        if with_grad:
            images = images.detach().requires_grad_(True)
        with suppress(ForwardStopped):
            if layer_gradients:
                output, tokens = forward_with_block_tokens(model, images, pre_logits=similarity is not None)
            else:
                output = model(images) if similarity is None else pooled_embedding(model, images)
    maps = recorder.attentions
    _check_maps(maps, description, expected)

    scores = None
    if output is not None:
        if similarity is not None:
            scores = similarity.scores(output, reference)
        else:
            if targets is None:
                targets = output.detach().argmax(dim=-1)
            scores = _target_scores(output, targets)
    store = dtype or maps[0].dtype
    layer_grads = None
    if layer_gradients:
        if similarity is not None:
            score = partial(similarity.scores, reference=reference)
        else:
            score = partial(_target_scores, targets=targets)
        steps = maps[: description.num_layers]  # the pool's own map is recorded again per step
        pre_logits = similarity is not None
        found = layer_readout_gradients(model, tokens, steps, layout, score, pre_logits=pre_logits)
        layer_grads = tuple(g.to(store) for g in found)
    grads = None
    if gradients:
        grads = torch.autograd.grad(scores.sum(), maps)  # images are independent: Σ_b y_b
    attentions, pool = _lay_out(tuple(a.detach() for a in maps), layout, pooled, store)
    gradients_out, pool_gradient = (None, None) if grads is None else _lay_out(grads, layout, pooled, store)
    lrp = None
    if relevance:  # check_supported: no late class token, so the recorded maps are the blocks' (and pool's)
        embedding = None if similarity is None else (output.detach(), reference)
        lrp = propagate(model, recorder.inputs, recorder.outputs, maps, targets, layout.grid, embedding)
        lrp = lrp.to(store)
    return Capture(
        attentions=attentions,
        gradients=gradients_out,
        logits=None if output is None or similarity is not None else output.detach(),
        targets=targets,
        layout=layout,
        pool_attention=pool,
        pool_gradient=pool_gradient,
        scores=None if scores is None else scores.detach(),
        relevance=lrp,
        layer_gradients=layer_grads,
    )


def _target_scores(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``y_t`` ``(B,)``: each image's logit of its target class."""
    return output.gather(1, targets[:, None])[:, 0]


def _check_maps(maps: list[torch.Tensor], description: ModelDescription, expected: int) -> None:
    """The recorded maps are the model's attention steps, in order, over the layout's tokens."""
    layout = description.layout
    if len(maps) != expected:
        raise ValueError(
            f"captured {len(maps)} attention maps where {description.architecture} has {expected} attention "
            "steps: its attention is computed in a way the capture does not recognise (expected timm's "
            "Attention modules)."
        )
    split = layout.class_attention_from
    n, p = layout.num_tokens, layout.num_patches
    for step, attention in enumerate(maps):
        if step == description.num_layers:  # the attention pool's latent query
            shape = (1, n - layout.pooled_from)
        elif split is None:
            shape = (n, n)
        else:
            shape = (p, p) if step < split else (1, n)
        if tuple(attention.shape[-2:]) != shape:
            raise ValueError(
                f"attention step {step} covers {tuple(attention.shape[-2:])} query×key tokens but the layout "
                f"expects {shape} ({layout.num_prefix} prefix + {layout.grid[0]}×{layout.grid[1]} patches)"
            )


def _lay_out(
    maps: tuple[torch.Tensor, ...], layout: TokenLayout, pooled: bool, dtype: torch.dtype
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    """Recorded maps (or their gradients) as ``(B, H, N, N)`` block maps and the ``(B, H, 1, N)`` pool map.

    A plain ViT's maps are already that. CaiT's patch-only blocks ``(P×P)`` get a zero class-token row and
    column (the class token does not exist yet: nothing flows to or from it), its class-attention rows
    ``(1×N)`` zero patch rows (the patches are not updated there: only their residual carries them).
    The pool's row gets zeros on tokens it does not pool.
    """
    pool = None
    if pooled:
        *maps, row = maps
        pool = row.new_zeros(*row.shape[:-1], layout.num_tokens, dtype=dtype)
        pool[..., layout.pooled_from :] = row
    split = layout.class_attention_from
    if split is None:
        return tuple(a.to(dtype) for a in maps), pool
    n, cls = layout.num_tokens, layout.cls_index
    full = []
    for step, attention in enumerate(maps):
        out = attention.new_zeros(*attention.shape[:2], n, n, dtype=dtype)
        if step < split:
            out[:, :, cls + 1 :, cls + 1 :] = attention
        else:
            out[:, :, cls : cls + 1, :] = attention
        full.append(out)
    return tuple(full), pool

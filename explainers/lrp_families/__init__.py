"""Where the LRP rules find their tensors: one small adapter per model family.

The rules of :mod:`explainers.relevance` are written once, for a pre-norm transformer block

    x_mid = x_in + s₁(proj(attention(qkv(norm1(x_in)))))
    x_out = x_mid + s₂(fc2(act(fc1(norm2(x_mid)))))

(or its post-norm form, ``x_mid = x_in + norm1(proj(attention(qkv(x_in))))``, ``x_out = x_mid +
norm2(fc2(act(fc1(x_mid))))``) and a readout of the last block's tokens. An adapter names, for one
family, the modules that play these parts (:class:`BlockParts`, :class:`ModelParts`); the recorder
watches their weights during the capture's own forward pass (:mod:`explainers.recorder`), so nothing is
hooked, patched or copied. Families:

* :mod:`.timm_vit`: timm's ``VisionTransformer`` (class token, average pool with or without ``fc_norm``,
  attention pool, registers, distilled DeiT), its relative-position variant, BEiT, EVA (rotary
  position embeddings: EVA02, rope ViTs, PE, DINOv3 …), NaFlexViT and CaiT (talking-heads patch blocks,
  then class-attention blocks where the class token joins);
* :mod:`.hf`: Hugging Face ``transformers`` ViTs wrapped by :mod:`explainers.sources.hf`.

:func:`model_parts` raises a ``ValueError`` naming the model and the reason for anything else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

LRP_METHODS = "relevance propagation (lrp, partial_lrp, transformer_attribution)"


@dataclass(frozen=True)
class BlockParts:
    """The modules of one pre-norm block that the rules read.

    Attributes:
        norm1: the norm before attention; its input is the block's input ``x_in``. ``None`` for a
            post-norm block (its attention reads ``x_in`` itself).
        qkv: one fused ``[q | k | v]`` projection, or three (q, k, v) reading the same input.
        q_norm, k_norm: per-head norms whose outputs the attention reads (``None``: none).
        rotate: rotary position embedding, ``(t, grid) → t'`` for q or k ``(B, H, N, d)`` after their
            norms: a fixed rotation of each token's channel pairs (``None`` without one).
        proj: the attention's output projection.
        norm2: the norm before the MLP; its input is ``x_mid`` (``None`` for a post-norm block).
        fc1: the MLP's input projection(s); with ``gated`` their concatenated outputs are the two factors
            of a product (GLU / SwiGLU: ``h = a ⊙ act(b)``), else ``h = act(fc1(x))``.
        fc2: the MLP's output projection.
        mlp_scale: what follows the MLP on its branch, ``x_out = x_mid + s₂(fc2(h))``: its layer scale
            (identity without one), or the post-norm block's ``norm2``.
        num_heads: attention heads.
        talking_heads: ``(proj_l, proj_w)`` of talking-heads attention (CaiT's patch blocks), linear maps
            across the heads before and after the softmax: ``A = softmax(proj_l(S))``, the output reads
            ``proj_w(A)·V`` (``None`` for plain attention).

    A class-attention block (CaiT's ``blocks_token_only``, :attr:`ModelParts.class_blocks`) has the same
    parts: ``qkv = (q, k, v)``, where ``q`` reads the class token's row of ``norm1([x_cls | patches])``
    only and ``k, v`` all of it; ``x_in``/``x_mid`` are the class token's (``norm1`` reads ``[x_in |
    patches]``).
    """

    norm1: nn.Module | None
    qkv: tuple[nn.Linear, ...]
    q_norm: nn.Module | None
    k_norm: nn.Module | None
    rotate: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor] | None
    proj: nn.Linear
    norm2: nn.Module | None
    fc1: tuple[nn.Linear, ...]
    gated: bool
    fc2: nn.Linear
    mlp_scale: Callable[[torch.Tensor], torch.Tensor]
    num_heads: int
    talking_heads: tuple[nn.Linear, nn.Linear] | None = None


@dataclass(frozen=True)
class PoolParts:
    """An attention pool with one latent query (timm's ``AttentionPoolLatent``, SigLIP's ``map`` head):
    ``p = y + fc2(act(fc1(norm(y))))``, ``y = proj(softmax(q kᵀ) v)``, ``[k | v] = kv(tokens)``,
    ``q = q_norm(q_proj(latent))``.

    Attributes:
        query: ``() → q`` ``(1, H, 1, d)``: the latent query after its projection and norm (parameters only).
        kv, k_norm, proj, fc1, fc2: the pool's layers (``k_norm`` ``None`` without one).
    """

    query: Callable[[], torch.Tensor]
    kv: nn.Linear
    k_norm: nn.Module | None
    proj: nn.Linear
    fc1: nn.Linear
    fc2: nn.Linear
    num_heads: int


@dataclass(frozen=True)
class ModelParts:
    """The modules of a whole model that the rules read.

    Attributes:
        blocks: the blocks, in order.
        patches: the layer that embeds the patches (a convolution, or NaFlexViT's linear layer).
        patch_tokens: ``(its recorded input, its recorded output) → (B, P, D)`` patch embeddings, before
            any position embedding.
        prefix: the prefix-token parameters ``(1, k, D)`` in token order (class, distillation, registers).
        norm_pre: a norm between the embeddings and the first block (CLIP), or ``None``.
        norm: the final norm over the tokens, or ``None`` when the model has none there.
        heads: the classifier(s); their inputs, concatenated, are the pooled embedding as the head reads it
            (distilled DeiT: ``[x_cls | x_dist]`` with ``[W_head | W_dist]``). Empty when headless.
        readout: what the heads read, one token range ``[a, b)`` per ``D`` channels of their input: the
            mean of the final tokens ``a..b-1`` (a single token when ``b = a + 1``).
        embedding_readout: the same for the pooled embedding ``e`` that a similarity target reads (equal to
            ``readout`` except for distilled DeiT, whose embedding is the mean of its two tokens).
        pool: the attention pool that replaces ``readout`` (it reads the last tokens, as many as it
            was given), or ``None``.
        class_blocks: CaiT's class-attention blocks after ``blocks``: the class token (a parameter, not in
            ``prefix``) joins there, ``x_cls ← x_cls + s₁(proj(A v))``, then
            ``x_cls ← x_cls + s₂(mlp(norm2(x_cls)))``, with ``A = softmax(q(x̂_cls) k(x̂)ᵀ)`` over
            ``x̂ = norm1([x_cls | patches])``; the patch tokens pass through unchanged and the final
            tokens are ``[x_cls | patches]``. Empty for other models.
    """

    blocks: tuple[BlockParts, ...]
    patches: nn.Module
    patch_tokens: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    prefix: tuple[torch.Tensor, ...]
    norm_pre: nn.Module | None
    norm: nn.Module | None
    heads: tuple[nn.Linear, ...]
    readout: tuple[tuple[int, int | None], ...]
    embedding_readout: tuple[tuple[int, int | None], ...]
    pool: PoolParts | None = None
    class_blocks: tuple[BlockParts, ...] = ()


def is_identity(module: object) -> bool:
    return module is None or isinstance(module, nn.Identity)


def recordable_norm(module: object) -> bool:
    """A norm whose input and output the recorder sees: ``F.layer_norm`` with a weight tensor."""
    return isinstance(module, nn.LayerNorm) and isinstance(getattr(module, "weight", None), torch.Tensor)


def optional_norm(module: object) -> nn.Module | None:
    """``None`` for an identity; the norm itself when the recorder can read it; else a ``ValueError``."""
    if is_identity(module):
        return None
    if recordable_norm(module):
        return module
    raise ValueError(f"a {type(module).__name__} the recorder cannot read")


def as_linear(module: object, what: str) -> nn.Linear:
    """``module`` when it is a linear layer (the rules' weights), else a ``ValueError`` naming ``what``."""
    if not isinstance(module, nn.Linear):
        raise ValueError(f"its {what} is a {type(module).__name__}, not a linear layer")
    return module


def model_parts(model: nn.Module) -> ModelParts:
    """The parts of ``model`` for the LRP rules, or a ``ValueError`` naming the model and saying why not."""
    from . import hf, timm_vit

    for family in (hf, timm_vit):
        if family.handles(model):
            return family.parts(model)
    raise ValueError(
        f"{LRP_METHODS} does not cover {type(model).__name__}: it supports timm VisionTransformer, relative-"
        "position ViTs, BEiT, EVA, NaFlexViT, CaiT and Hugging Face ViTs. Use an attention method such as "
        "rollout or gae."
    )

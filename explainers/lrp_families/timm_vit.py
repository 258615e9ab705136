"""timm's ViTs for the LRP rules: ``VisionTransformer`` (and distilled DeiT), ``VisionTransformerRelPos``,
``Beit``, ``Eva`` (EVA02, rope ViTs, PE, DINOv3 …: rotary position embeddings), ``NaFlexVit`` and
``Cait`` (``LayerScaleBlock`` with talking-heads attention, then ``LayerScaleBlockClassAttn`` blocks in
which the class token joins: :attr:`~explainers.lrp_families.ModelParts.class_blocks`).

Readouts: ``global_pool='token'`` reads token 0; ``'avg'`` the mean of the pooled tokens (``fc_norm``
after it, an identity for the rules like every norm); an ``AttentionPoolLatent`` (``'map'``) its latent
query's attention; distilled DeiT averages its two heads on tokens 0 and 1. Block variants: pre-norm and
post-norm (``ResPostBlock``) blocks, fused or separate q/k/v, q/k LayerNorm, LayerScale (``ls1/ls2`` or
``gamma_1/gamma_2``), relative-position bias (an additive term of the scores the rules leave out, see
:mod:`explainers.relevance`), plain, GLU and SwiGLU MLPs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.layers import apply_rot_embed_cat
from torch import nn

from . import (
    LRP_METHODS,
    BlockParts,
    ModelParts,
    PoolParts,
    as_linear,
    is_identity,
    optional_norm,
    recordable_norm,
)

_MODELS = (
    "VisionTransformer", "VisionTransformerDistilled", "VisionTransformerRelPos", "Beit", "Eva", "NaFlexVit",
    "Cait",
)


def handles(model: nn.Module) -> bool:
    return any(cls.__name__ in _MODELS for cls in type(model).__mro__)


def _refuse(model: nn.Module, why: str) -> ValueError:
    return ValueError(
        f"{LRP_METHODS} does not cover {type(model).__name__}: {why}. "
        "Use an attention method such as rollout, grad_rollout or gae."
    )


def parts(model: nn.Module) -> ModelParts:
    embed = getattr(model, "patch_embed", None) or getattr(model, "embeds", None)  # NaFlexViT: embeds
    proj = getattr(embed, "proj", None)
    if not isinstance(proj, nn.Conv2d | nn.Linear):
        raise _refuse(model, "its patch embedding is not one convolution or linear layer")
    try:
        blocks = tuple(_block(block, _rotation(model, i)) for i, block in enumerate(model.blocks))
        class_blocks = tuple(_class_block(block) for block in getattr(model, "blocks_token_only", None) or ())
        norm_pre, norm = (optional_norm(getattr(model, n, None)) for n in ("norm_pre", "norm"))
        patch_tokens = _patch_tokens(embed)
    except ValueError as error:
        raise _refuse(model, str(error)) from None
    owner = embed if type(embed).__name__ == "NaFlexEmbeds" else model  # where the prefix tokens live
    names = ("cls_token", "dist_token", "reg_token")
    prefix = tuple(t for t in (getattr(owner, n, None) for n in names) if t is not None)
    if class_blocks:  # CaiT: the class token joins in the class-attention blocks, not with the patches
        prefix = ()
    heads = tuple(h for h in (model.head, getattr(model, "head_dist", None)) if isinstance(h, nn.Linear))
    if not heads and not is_identity(model.head):
        raise _refuse(model, f"its head is a {type(model.head).__name__}, not a linear classifier")
    num_prefix = int(getattr(model, "num_prefix_tokens", len(prefix)))
    pooled_from = 0 if getattr(model, "pool_include_prefix", False) else num_prefix  # of the mean
    pool = model.attn_pool if not is_identity(getattr(model, "attn_pool", None)) else None
    distilled = getattr(model, "dist_token", None) is not None
    if pool is not None:
        readout, embedding = (), ()
        pool_parts = _pool(model, pool)
    elif distilled:
        readout, embedding = ((0, 1), (1, 2)), ((0, 2),)
    elif model.global_pool == "token":
        readout = embedding = ((0, 1),)
    elif model.global_pool == "avg":
        readout = embedding = ((pooled_from, None),)
    else:
        raise _refuse(model, f"global_pool={model.global_pool!r} has no readout the rules cover")
    return ModelParts(
        blocks=blocks,
        patches=proj,
        patch_tokens=patch_tokens,
        prefix=prefix,
        norm_pre=norm_pre,
        norm=norm,
        heads=heads,
        readout=readout,
        embedding_readout=embedding,
        pool=pool_parts if pool is not None else None,
        class_blocks=class_blocks,
    )


def _patch_tokens(embed: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The patch embeddings from the projection's recorded input and output. NaFlexViT adds its position
    embedding to the projection's output in place, so there they are the projection of its input again
    (its own layer, on the input it was given: one more patch projection, about 1% of a forward)."""
    norm = getattr(embed, "norm", None) or nn.Identity()
    if type(embed).__name__ != "NaFlexEmbeds":
        return lambda images, out: norm(out.flatten(2).transpose(1, 2))
    if embed.is_linear and embed.norm_input is not None:
        raise ValueError("its patch embedding normalises the pixels of each patch first")

    def tokens(inputs: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        projected = embed.proj(inputs)
        return norm(projected if embed.is_linear else projected.flatten(2).transpose(1, 2))

    return tokens


def _rotation(model: nn.Module, index: int) -> Callable[[torch.Tensor, tuple[int, int]], torch.Tensor] | None:
    """EVA's rotary embedding of block ``index``: the embedding its ``_pos_embed`` makes for the grid,
    applied by timm's own ``apply_rot_embed_cat`` to the tokens after the prefix, as ``EvaAttention``."""
    rope = getattr(model, "rope", None)
    if rope is None:
        return None
    attn = model.blocks[index].attn

    def rotate(t: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if getattr(model, "dynamic_img_size", True) or not hasattr(rope, "feat_shape"):
            embed = rope.get_embed(shape=grid)
        else:
            embed = rope.get_embed()
        if getattr(model, "rope_mixed", False) or getattr(model, "rope_is_mixed", False):
            embed = embed[index]  # one embedding per block
        prefix, half = attn.num_prefix_tokens, getattr(attn, "rotate_half", False)
        rotated = apply_rot_embed_cat(t[:, :, prefix:], embed.to(t.dtype), half=half)
        return torch.cat([t[:, :, :prefix], rotated], dim=2)

    return rotate


def _block(block: nn.Module, rotate: Callable | None) -> BlockParts:
    kind = type(block).__name__
    attn, mlp = getattr(block, "attn", None), getattr(block, "mlp", None)
    post_norm = kind in ("ResPostBlock", "ResPostRelPosBlock")
    plain = ("Block", "RelPosBlock", "EvaBlock", "LayerScaleBlock")
    if (kind not in plain and not post_norm) or attn is None or mlp is None:
        raise ValueError(f"its {kind} blocks are not attention + MLP blocks with one residual each")
    norm1, norm2 = getattr(block, "norm1", None), getattr(block, "norm2", None)
    if not post_norm and not (recordable_norm(norm1) and recordable_norm(norm2)):
        raise ValueError(f"its blocks' norms are {type(norm1).__name__}, which the recorder cannot read")
    if getattr(attn, "gate", None) is not None:
        raise ValueError("its attention output is gated by a sigmoid of the input")
    if getattr(attn, "num_kv_heads", attn.num_heads) != attn.num_heads:
        raise ValueError("its grouped-query attention shares keys and values between heads")
    fused = getattr(attn, "qkv", None)
    qkv = (fused,) if fused is not None else tuple(getattr(attn, f"{c}_proj", None) for c in "qkv")
    qkv = tuple(as_linear(m, "q/k/v projection") for m in qkv)
    if hasattr(mlp, "fc1_g"):  # SwiGLU: act(fc1_g(x)) ⊙ fc1_x(x)
        fc1, gated = (as_linear(mlp.fc1_g, "MLP gate"), as_linear(mlp.fc1_x, "MLP input")), True
    elif type(mlp).__name__ in ("Mlp", "GluMlp") and getattr(mlp, "chunk_dim", -1) == -1:
        fc1, gated = (as_linear(mlp.fc1, "MLP input"),), type(mlp).__name__ == "GluMlp"
    else:
        raise ValueError(f"its MLP is a {type(mlp).__name__}, not a plain, GLU or SwiGLU MLP")
    gamma = getattr(block, "gamma_2", None)
    scale = getattr(block, "ls2", None) or ((lambda y: y * gamma) if gamma is not None else nn.Identity())
    return BlockParts(
        norm1=None if post_norm else norm1,
        qkv=qkv,
        q_norm=optional_norm(getattr(attn, "q_norm", None)),
        k_norm=optional_norm(getattr(attn, "k_norm", None)),
        rotate=rotate,
        proj=as_linear(attn.proj, "attention output projection"),
        norm2=None if post_norm else norm2,
        fc1=fc1,
        gated=gated,
        fc2=as_linear(mlp.fc2, "MLP output"),
        mlp_scale=norm2 if post_norm else scale,
        num_heads=int(attn.num_heads),
        talking_heads=_talking_heads(attn),
    )


def _talking_heads(attn: nn.Module) -> tuple[nn.Linear, nn.Linear] | None:
    """CaiT's ``TalkingHeadAttn``: ``(proj_l, proj_w)``, the head-mixing maps before and after the softmax."""
    if type(attn).__name__ != "TalkingHeadAttn":
        return None
    return as_linear(attn.proj_l, "talking-heads map"), as_linear(attn.proj_w, "talking-heads map")


def _class_block(block: nn.Module) -> BlockParts:
    """CaiT's ``LayerScaleBlockClassAttn``: ``ClassAttn`` (``q`` from the class token, ``k, v`` from all
    tokens) and a plain MLP, both after a LayerNorm and scaled by ``gamma_1``/``gamma_2``."""
    kind, attn, mlp = type(block).__name__, getattr(block, "attn", None), getattr(block, "mlp", None)
    kinds = (kind, type(attn).__name__, type(mlp).__name__)
    if kinds != ("LayerScaleBlockClassAttn", "ClassAttn", "Mlp"):
        raise ValueError(f"its class-attention {kind} blocks are not ClassAttn + MLP blocks")
    if not (recordable_norm(block.norm1) and recordable_norm(block.norm2)):
        raise ValueError(f"its class-attention blocks' norms are {type(block.norm1).__name__}")
    gamma = block.gamma_2
    return BlockParts(
        norm1=block.norm1,
        qkv=tuple(as_linear(getattr(attn, c), "class attention's q/k/v projection") for c in "qkv"),
        q_norm=None,
        k_norm=None,
        rotate=None,
        proj=as_linear(attn.proj, "class attention's output projection"),
        norm2=block.norm2,
        fc1=(as_linear(mlp.fc1, "MLP input"),),
        gated=False,
        fc2=as_linear(mlp.fc2, "MLP output"),
        mlp_scale=lambda y: y * gamma,
        num_heads=int(attn.num_heads),
    )


def _pool(model: nn.Module, pool: nn.Module) -> PoolParts:
    if type(pool).__name__ != "AttentionPoolLatent" or pool.latent_len != 1:
        raise _refuse(model, f"its {type(pool).__name__} is not an attention pool with one latent query")
    if pool.pos_embed is not None or pool.mlp is None:
        raise _refuse(model, "its attention pool adds a position embedding or has no output MLP")
    try:
        k_norm = optional_norm(pool.k_norm)
    except ValueError as error:
        raise _refuse(model, f"its attention pool has {error}") from None

    def query() -> torch.Tensor:
        q = pool.q(pool.latent).reshape(1, 1, pool.num_heads, pool.head_dim).transpose(1, 2)
        return pool.q_norm(q)

    return PoolParts(
        query=query,
        kv=as_linear(pool.kv, "attention pool's key/value projection"),
        k_norm=k_norm,
        proj=as_linear(pool.proj, "attention pool's output projection"),
        fc1=as_linear(pool.mlp.fc1, "attention pool's MLP"),
        fc2=as_linear(pool.mlp.fc2, "attention pool's MLP"),
        num_heads=int(pool.num_heads),
    )

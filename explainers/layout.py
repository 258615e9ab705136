"""Where each token sits, and which tokens the model's output reads, learned from the model itself.

Read from the model, never guessed from the token count: ``sqrt(N - 1)`` is wrong for distilled DeiT
(two prefix tokens), register models (CLS + R registers) and non-square inputs, and the readout comes
from the model's own pooling (``global_pool``, ``attn_pool``), not from the presence of a class token.

:func:`describe_model` is the one compatibility check: the capture, the compatibility table
(``scripts/compatibility.py``) and the dashboard's model picker all ask it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

#: How the model's output reads the tokens of the last block, with a label for people.
READOUTS = {"cls": "class token", "mean": "average pool", "attention_pool": "attention pool"}

#: Architectures whose attention is not global softmax attention over one fixed set of tokens:
#: class-name prefix → why they cannot be explained by attention products.
_REFUSED = {
    "SwinTransformer": "Swin attends within shifted local windows and merges patches between stages, "
    "so no token attends over the whole image and the token set changes",
    "PoolingVisionTransformer": "PiT pools the patch tokens between stages (the token count changes)",
    "Levit": "LeViT's attention-subsample blocks shrink the token grid between stages",
    "MultiScaleVit": "MViT pools queries, keys and values, so the attention is not square over one token set",
    "Twins": "Twins uses locally-grouped and sub-sampled attention (keys are pooled tokens)",
    "EfficientVit": "EfficientViT uses linear/cascaded-group attention without a token-to-token softmax map",
    "FastVit": "FastViT mixes tokens by convolutions (RepMixer) and attends only at reduced resolution",
    "CrossVit": "CrossViT runs two branches at two patch sizes that exchange class tokens by cross-attention",
    "Xcit": "XCiT's cross-covariance attention attends across channels (d×d), not across tokens",
    "ConVit": "ConViT's gated positional self-attention mixes two softmax maps per block",
    "TNT": "TNT nests a pixel-level transformer inside every patch (inner and outer attention)",
    "VOLO": "VOLO's outlook attention is local (a window around each token)",
}
#: Block classes inside otherwise supported models that have no single softmax map per block.
_REFUSED_BLOCKS = {
    "ParallelThingsBlock": "its blocks run several attention branches in parallel (one map per branch)",
    "DiffParallelScalingBlock": "its differential attention subtracts two softmax maps in every block",
    "DiffAttention": "its differential attention subtracts two softmax maps in every block",
}


@dataclass(frozen=True)
class TokenLayout:
    """Token order ``[prefix tokens..., patch tokens in row-major grid order]`` and the model's readout.

    Attributes:
        num_prefix: tokens before the patches (1 for CLS; 2 for distilled DeiT; 1 + R with registers;
            R for register models without a class token; 0 for SigLIP).
        grid: patch grid ``(gh, gw)`` for the input size that was captured.
        cls_index: position of the class token, or ``None`` when the model has none.
        readout: which tokens the output reads (a key of :data:`READOUTS`):
            ``"cls"``: the class token, ρ = e_cls;
            ``"mean"``: the mean of the pooled tokens S = {pooled_from, …, N-1}, ρ = 1_S / |S|;
            ``"attention_pool"``: a latent query attending over the pooled tokens S (SigLIP's
            ``AttentionPoolLatent``), ρ = its attention row, one more attention step after the last
            block (recorded by the capture as ``Capture.pool_attention``).
        pooled_from: first token the mean or the attention pool reads (``num_prefix``, or 0 when the
            model pools its prefix tokens too).
        class_attention_from: CaiT only: index of the first class-attention step in
            ``Capture.attentions``. Before it the class token does not exist (patch-only blocks: its
            row and column are zero); from it on only the class token is updated (its row holds the
            class attention over [cls, patches]; the patch rows are zero).
    """

    num_prefix: int
    grid: tuple[int, int]
    cls_index: int | None = 0
    readout: str = "cls"
    pooled_from: int = 0
    class_attention_from: int | None = None

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.num_patches

    @property
    def protected_index(self) -> int | None:
        """The token whose row and column the discard never drops: the class token when the output
        reads it; ``None`` (nothing protected) for the mean and the attention pool, whose readout row
        ρ is applied after the discarded blocks and is itself never discarded."""
        return self.cls_index if self.readout == "cls" else None

    def readout_vector(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """ρ ``(B, N)`` float32 for a fixed readout: e_cls, or 1_S/|S| for the mean of the pooled tokens S.

        The attention pool's ρ depends on the image and on how a method weights attention: see
        :func:`explainers.attention_ops.readout_row`.
        """
        rho = torch.zeros(batch, self.num_tokens, device=device)
        if self.readout == "cls":
            rho[:, self.cls_index] = 1.0
        elif self.readout == "mean":
            rho[:, self.pooled_from :] = 1.0 / (self.num_tokens - self.pooled_from)
        else:
            raise ValueError("the attention pool's readout row is its attention: see readout_row")
        return rho

    def to_grid(self, token_relevance: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` relevance of every token → ``(B, gh, gw)`` relevance of the patches."""
        if token_relevance.shape[-1] != self.num_tokens:
            raise ValueError(
                f"expected relevance for {self.num_tokens} tokens, got {token_relevance.shape[-1]}"
            )
        return token_relevance[:, self.num_prefix :].reshape(-1, *self.grid)

    @classmethod
    def from_model(cls, model: nn.Module, image_size: tuple[int, int]) -> TokenLayout:
        """Layout of ``model`` for inputs of ``image_size = (H, W)`` pixels (see :func:`describe_model`)."""
        return describe_model(model, image_size).layout


@dataclass(frozen=True)
class ModelDescription:
    """What :func:`describe_model` learns from a model.

    Attributes:
        architecture: the model's class name (``VisionTransformer``, ``Cait``, ``NaFlexVit`` …).
        layout: prefix tokens, grid, readout (for ``image_size``).
        image_size: ``(H, W)`` the layout was computed for.
        num_layers: attention steps recorded per image (blocks, plus CaiT's class-attention blocks).
        num_heads: heads per block.
        has_head: the model has a classifier (``num_classes > 0``); headless backbones explain a
            :class:`~explainers.targets.SimilarityTarget` with the gradient methods.
    """

    architecture: str
    layout: TokenLayout
    image_size: tuple[int, int]
    num_layers: int
    num_heads: int
    has_head: bool

    @property
    def readout(self) -> str:
        return self.layout.readout

    @property
    def summary(self) -> str:
        """One line, e.g. ``class token · 1 prefix token · 14×14 patches · 12 layers × 3 heads``."""
        p = self.layout.num_prefix
        gh, gw = self.layout.grid
        split = self.layout.class_attention_from
        late = "" if split is None else f" (joins at step {split})"
        head = "" if self.has_head else " · headless"
        return (
            f"{READOUTS[self.readout]}{late} · {p} prefix token{'s' if p != 1 else ''} · {gh}×{gw} patches · "
            f"{self.num_layers} layers × {self.num_heads} heads{head}"
        )


def _patch_embed(model: nn.Module) -> nn.Module | None:
    return getattr(model, "patch_embed", None) or getattr(model, "embeds", None)  # NaFlexViT: embeds


def _num_heads(block: nn.Module) -> int | None:
    """Heads of a block's attention: ``block.attn.num_heads``, or ``block.num_heads`` for timm's
    ``ParallelScalingBlock`` (attention and MLP from one fused projection)."""
    heads = getattr(getattr(block, "attn", None), "num_heads", None)
    if heads is None and type(block).__name__ == "ParallelScalingBlock":
        heads = getattr(block, "num_heads", None)
    return heads


def _refusal(model: nn.Module) -> str | None:
    name = type(model).__name__
    for prefix, reason in _REFUSED.items():
        if name.startswith(prefix):
            return f"{name} is not supported: {reason}."
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential | nn.ModuleList) and len(blocks):
        kind = next(
            (
                k
                for k in (type(blocks[0]).__name__, type(getattr(blocks[0], "attn", None)).__name__)
                if k in _REFUSED_BLOCKS
            ),
            None,
        )
        if kind is not None:
            return f"{name} with {kind} is not supported: {_REFUSED_BLOCKS[kind]}."
    if (
        _patch_embed(model) is None
        or not isinstance(blocks, nn.Sequential | nn.ModuleList)
        or len(blocks) == 0
        or any(_num_heads(b) is None for b in blocks)
    ):
        return (
            f"model {name} is not a Vision Transformer with attention blocks: expected a timm ViT "
            "(model.patch_embed and model.blocks[i].attn), e.g. timm.create_model('deit_tiny_patch16_224')."
        )
    return None


def _readout(model: nn.Module, num_prefix: int, has_cls: bool) -> tuple[str, int]:
    """``(readout, pooled_from)`` from the model's pooling, or a ``ValueError`` saying why not."""
    name = type(model).__name__
    pool = getattr(model, "attn_pool", None)
    # ViT and NaFlexViT say whether they pool the prefix tokens too; EVA, which does not say, feeds every
    # token to its attention pool and only the patches to its mean (the capture checks the pool's width)
    include_prefix = getattr(model, "pool_include_prefix", pool is not None)
    pooled_from = 0 if include_prefix else num_prefix
    if pool is not None:
        if type(pool).__name__ != "AttentionPoolLatent":
            raise ValueError(
                f"{name} pools with {type(pool).__name__}, a self-attention over all tokens before pooling "
                "whose readout is not supported: use global_pool='token', 'avg' or 'map'."
            )
        if getattr(pool, "latent_len", 1) != 1:
            raise ValueError(f"{name}'s attention pool has {pool.latent_len} latent queries, not one.")
        return "attention_pool", pooled_from
    global_pool = getattr(model, "global_pool", "token")
    if global_pool == "token":
        if not has_cls:
            raise ValueError(f"{name} reads the class token but has none")
        return "cls", pooled_from
    if global_pool == "avg":
        return "mean", pooled_from
    if global_pool in ("max", "avgmax"):
        raise ValueError(
            f"{name} uses global_pool={global_pool!r}: each channel is pooled from a different token, so no "
            "single row of token weights is read and attention products have no readout to start from. "
            "Create the model with global_pool='avg' or 'token'."
        )
    raise ValueError(
        f"{name} uses global_pool={global_pool!r}: its output is not one pooled vector read from the tokens. "
        "Create the model with global_pool='token', 'avg' or 'map'."
    )


def default_image_size(model: nn.Module) -> tuple[int, int]:
    """``(H, W)`` the model was built for: its patch embedding's ``img_size``, else its
    ``pretrained_cfg['input_size']`` (224×224 when it has neither)."""
    size = getattr(_patch_embed(model), "img_size", None)
    if size is None:
        size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))
    size = (size, size) if isinstance(size, int) else size
    return int(size[-2]), int(size[-1])


def _grid(model: nn.Module, patch_embed: nn.Module, image_size: tuple[int, int]) -> tuple[int, int]:
    height, width = image_size
    name = type(model).__name__
    if name == "NaFlexVit":  # any size whose sides are multiples of the patch (or padded to them)
        ph, pw = patch_embed.patch_size
        if not getattr(patch_embed, "dynamic_img_pad", False) and (height % ph or width % pw):
            raise ValueError(
                f"images are {height}×{width} pixels: {name} takes any size whose sides are multiples of its "
                f"{ph}×{pw} patches (e.g. {height - height % ph}×{width - width % pw}); resize or crop them."
            )
    elif not getattr(model, "dynamic_img_size", False) and getattr(patch_embed, "strict_img_size", True):
        expected = tuple(patch_embed.img_size)
        if (height, width) != expected:
            raise ValueError(
                f"images are {height}×{width} pixels but this model takes {expected[0]}×{expected[1]}: "
                "resize them with the model's preprocess, or create the model with dynamic_img_size=True."
            )
    return tuple(int(g) for g in patch_embed.dynamic_feat_size((height, width)))


def describe_model(model: nn.Module, image_size: tuple[int, int] | None = None) -> ModelDescription:
    """What the explainers need to know about ``model``, read from the model, or a ``ValueError`` saying why
    it cannot be explained.

    Args:
        model: a timm Vision Transformer (VisionTransformer and its relatives: DeiT, BEiT, EVA, CaiT,
            NaFlexViT, relative-position ViTs …), with or without a classifier head.
        image_size: ``(H, W)`` of the inputs; default :func:`default_image_size`.

    The readout follows the model's pooling: ``global_pool="token"`` → class token, ``"avg"`` → mean of
    the pooled tokens, an ``AttentionPoolLatent`` (``"map"``) → attention pool. Refused with the reason:
    windowed or pooled-token attention (Swin, PiT, LeViT, MViT, Twins, EfficientViT, FastViT, CrossViT),
    cross-covariance attention (XCiT), gated positional attention (ConViT), ``global_pool`` ``"max"``,
    ``"avgmax"`` or ``""`` (no single token readout), and anything without timm's ViT structure.
    """
    reason = _refusal(model)
    if reason is not None:
        raise ValueError(reason)
    patch_embed = _patch_embed(model)
    image_size = default_image_size(model) if image_size is None else tuple(int(s) for s in image_size)
    grid = _grid(model, patch_embed, image_size)
    num_prefix = int(getattr(model, "num_prefix_tokens", 1))
    has_cls = getattr(model, "cls_token", None) is not None or bool(getattr(model, "has_class_token", False))
    readout, pooled_from = _readout(model, num_prefix, has_cls)
    blocks, class_blocks = model.blocks, getattr(model, "blocks_token_only", None) or ()
    layout = TokenLayout(
        num_prefix=num_prefix,
        grid=grid,
        cls_index=0 if has_cls else None,
        readout=readout,
        pooled_from=pooled_from,
        class_attention_from=len(blocks) if class_blocks else None,
    )
    return ModelDescription(
        architecture=type(model).__name__,
        layout=layout,
        image_size=image_size,
        num_layers=len(blocks) + len(class_blocks),
        num_heads=int(_num_heads(blocks[0])),
        has_head=int(getattr(model, "num_classes", 0)) > 0,
    )

"""Hugging Face ``transformers`` ViTs (wrapped by :class:`explainers.sources.hf.HFVisionTransformer`) for
the LRP rules.

Every supported type has pre-norm layers: ``layernorm_before``/``norm1``, separate ``q_proj``, ``k_proj``,
``v_proj`` (older releases: ``attention.attention.query/key/value``), ``o_proj`` (``attention.output.
dense``), ``layernorm_after``/``norm2``, an MLP ``fc1 → act → fc2`` (``intermediate.dense → output.dense``)
or DINOv2's SwiGLU (``gate_proj``, ``up_proj``, ``down_proj``; older: ``weights_in``, ``weights_out``), and
LayerScale (BEiT's ``lambda_2``, DINOv2's ``layer_scale2``). BEiT's relative-position bias enters the
scores as an additive term, like timm's. The readouts follow the wrapper's pooling: ViT, DeiT, ViT-MSN
and BEiT with ``use_mean_pooling=False`` read token 0; BEiT / Data2Vec-Vision with mean pooling the mean of
the patches (its pooler LayerNorm is an identity for the rules); DINOv2 ``[token 0 | mean of the patches]``
(registers left out); I-JEPA the mean of all tokens; DeiT with a teacher head averages its two heads on
tokens 0 and 1.
"""

from __future__ import annotations

from torch import nn

from . import LRP_METHODS, BlockParts, ModelParts, as_linear, is_identity, optional_norm, recordable_norm


def handles(model: nn.Module) -> bool:
    return type(model).__name__ == "HFVisionTransformer"


def _first(owner: object, *paths: str) -> object:
    """The first of the dotted ``paths`` that exists on ``owner`` (``None`` if none does)."""
    for path in paths:
        found = owner
        for name in path.split("."):
            found = getattr(found, name, None)
        if found is not None:
            return found
    return None


def parts(model: nn.Module) -> ModelParts:
    hf = model.hf
    config = hf.config
    try:
        blocks = tuple(_block(b.layer, int(config.num_attention_heads)) for b in model.blocks)
        norm = optional_norm(getattr(hf.base_model, "layernorm", None))
    except ValueError as error:
        raise ValueError(
            f"{LRP_METHODS} does not cover this Hugging Face {config.model_type} model: {error}. "
            "Use an attention method such as rollout or gae."
        ) from None
    embeddings = hf.base_model.embeddings
    names = ("cls_token", "distillation_token", "register_tokens")
    prefix = tuple(t for t in (getattr(embeddings, n, None) for n in names) if t is not None)
    kind = config.model_type
    if hasattr(hf, "distillation_classifier"):
        heads = (hf.cls_classifier, hf.distillation_classifier)
        readout, embedding = ((0, 1), (1, 2)), ((0, 2),)
    else:
        heads = (hf.classifier,)
        if kind.startswith("dinov2"):
            readout = ((0, 1), (1 + int(getattr(config, "num_register_tokens", 0)), None))
        elif kind == "ijepa":
            readout = ((0, None),)
        elif kind in ("beit", "data2vec-vision") and config.use_mean_pooling:
            readout = ((1, None),)
        else:
            readout = ((0, 1),)
        embedding = readout
    heads = tuple(h for h in heads if isinstance(h, nn.Linear))
    if not heads and not is_identity(hf.classifier):
        raise ValueError(f"{LRP_METHODS} needs a linear classifier, not {type(hf.classifier).__name__}")
    return ModelParts(
        blocks=blocks,
        patches=embeddings.patch_embeddings.projection,
        patch_tokens=lambda images, out: out.flatten(2).transpose(1, 2),
        prefix=prefix,
        norm_pre=None,
        norm=norm,
        heads=heads,
        readout=readout,
        embedding_readout=embedding,
    )


def _block(layer: nn.Module, num_heads: int) -> BlockParts:
    norm1, norm2 = _first(layer, "layernorm_before", "norm1"), _first(layer, "layernorm_after", "norm2")
    if not (recordable_norm(norm1) and recordable_norm(norm2)):
        raise ValueError(f"its {type(layer).__name__} has no pre-norm LayerNorms the recorder can read")
    attention = layer.attention
    qkv = tuple(
        as_linear(_first(attention, f"{c}_proj", f"attention.{name}"), f"{name} projection")
        for c, name in (("q", "query"), ("k", "key"), ("v", "value"))
    )
    proj = as_linear(_first(attention, "o_proj", "output.dense"), "attention output projection")
    mlp = getattr(layer, "mlp", None)
    if _first(mlp, "gate_proj") is not None:  # SwiGLU: down(silu(gate(x)) ⊙ up(x))
        fc1, fc2, gated = (mlp.gate_proj, mlp.up_proj), mlp.down_proj, True
    elif _first(mlp, "weights_in") is not None:  # older SwiGLU: weights_in → [x1 | x2], silu(x1) ⊙ x2
        fc1, fc2, gated = (mlp.weights_in,), mlp.weights_out, True
    else:
        fc1 = (_first(layer, "mlp.fc1", "intermediate.dense"),)
        fc2, gated = _first(layer, "mlp.fc2", "output.dense"), False
    fc1 = tuple(as_linear(m, "MLP input projection") for m in fc1)
    scale = _first(layer, "layer_scale2", "lambda_2")
    mlp_scale = scale if isinstance(scale, nn.Module) else (lambda y, s=scale: y * s if s is not None else y)
    return BlockParts(
        norm1=norm1,
        qkv=qkv,
        q_norm=None,
        k_norm=None,
        rotate=None,
        proj=proj,
        norm2=norm2,
        fc1=fc1,
        gated=gated,
        fc2=as_linear(fc2, "MLP output projection"),
        mlp_scale=mlp_scale,
        num_heads=num_heads,
    )

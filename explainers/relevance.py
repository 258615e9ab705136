"""Layer-wise relevance propagation (LRP) through a timm ViT, with the rules of Chefer, Gur & Wolf 2021.

The rules per module kind are all in this file, written as in the authors' code
(hila-chefer/Transformer-Explainability, ``modules/layers_ours.py`` and ``baselines/ViT/ViT_LRP.py``):

* **Linear** (``qkv``, ``proj``, ``fc1``, ``fc2``, ``head``): αβ rule with α = 1, β = 0, bias left out:
  ``Z = x⁺W⁺ᵀ + x⁻W⁻ᵀ``, ``S = R ⊘ Z``, ``R_x = x⁺ ⊙ (S W⁺) + x⁻ ⊙ (S W⁻)`` (Bach et al. 2015).
* **Matrix products** ``A·V`` and ``Q·Kᵀ``: the LRP-0 rule for each factor,
  ``R_a = a ⊙ ((R ⊘ ab) bᵀ)``, ``R_b = b ⊙ (aᵀ (R ⊘ ab))``, each then halved (the two factors share R).
* **Residual addition** ``x + y``: ``R_x = x ⊙ S``, ``R_y = y ⊙ S`` with ``S = R ⊘ (x + y)``, then each
  rescaled so that ``ΣR_x : ΣR_y = |Σ x⊙S| : |Σ y⊙S|`` and ``ΣR_x + ΣR_y = ΣR`` (sums per image; the
  authors' code sums over the whole batch, which is the same for their batch of one).
* **Softmax, LayerNorm, GELU, dropout, LayerScale**: relevance passes unchanged (identity), as in their
  code. The pooling of the class token passes the head's relevance to that token only, and where the
  residual stream forks (their ``Clone``) the two branches' relevances are added.

``⊘`` is their ``safe_divide``: ``a / (b + 1e-9)`` where ``b ≠ 0``, else 0. The relevance at the output
is the one-hot vector of the target class (not its logit). The propagation is plain tensor maths over
the activations the capture records in its one forward pass (:class:`~explainers.recorder.
ActivationRecorder`): no autograd, no hook, no second model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

EPS = 1e-9


@dataclass(frozen=True)
class Relevance:
    """LRP relevance of one capture, for its targets.

    Attributes:
        attention: per block, the relevance of the post-softmax attention ``R_A`` ``(B, H, N, N)``
            (the authors' ``attn_cam``: the halved share of ``A`` in ``A·V``).
        tokens: ``(B, N)`` relevance of each token's embedding at the input, summed over channels (the
            authors' ``method="full"`` before the patch embedding; their pixel map summed per patch).
        position: ``(B,)`` relevance of the position embedding, the other term of the input sum; the
            rules conserve relevance, so ``tokens.sum(-1) + position = 1`` (the one-hot target).
    """

    attention: tuple[torch.Tensor, ...]
    tokens: torch.Tensor
    position: torch.Tensor

    def to(self, dtype: torch.dtype) -> Relevance:
        return Relevance(tuple(r.to(dtype) for r in self.attention), self.tokens.to(dtype), self.position)


def safe_divide(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / (b + ε)`` where ``b ≠ 0``, 0 where ``b = 0`` (the authors' stabiliser, ε = 1e-9)."""
    den = b + EPS
    den = den + (den == 0) * EPS
    return a / den * (b != 0)


def linear_rule(x: torch.Tensor, weight: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """α = 1, β = 0: ``R_x = x⁺ ⊙ (S W⁺) + x⁻ ⊙ (S W⁻)`` with ``S = R ⊘ (x⁺W⁺ᵀ + x⁻W⁻ᵀ)``."""
    wp, wn = weight.clamp(min=0), weight.clamp(max=0)
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    s = safe_divide(r, xp @ wp.T + xn @ wn.T)
    return xp * (s @ wp) + xn * (s @ wn)


def matmul_rule(a: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LRP-0 for ``a @ b``, halved per factor: ``(a ⊙ (S bᵀ) / 2, b ⊙ (aᵀ S) / 2)``, ``S = R ⊘ ab``."""
    s = safe_divide(r, a @ b)
    return a * (s @ b.transpose(-1, -2)) / 2, b * (a.transpose(-1, -2) @ s) / 2


def add_rule(x: torch.Tensor, y: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance of ``x + y`` split by the z-rule, then each share renormalised per image (see above)."""
    s = safe_divide(r, x + y)
    rx, ry = x * s, y * s
    dims = tuple(range(1, r.dim()))
    sx, sy, total = rx.sum(dims, keepdim=True), ry.sum(dims, keepdim=True), r.sum(dims, keepdim=True)
    norm = sx.abs() + sy.abs()
    rx = rx * safe_divide(safe_divide(sx.abs(), norm) * total, sx)
    ry = ry * safe_divide(safe_divide(sy.abs(), norm) * total, sy)
    return rx, ry


def _is_identity(module: nn.Module | None) -> bool:
    return module is None or isinstance(module, nn.Identity)


def check_supported(model: nn.Module) -> None:
    """``ValueError`` unless ``model`` is a timm ViT whose output reads the class token only, with the
    modules the rules cover (joint ``qkv``, no q/k norm, an ``fc1 → act → fc2`` MLP, a linear head)."""
    readout = getattr(model, "global_pool", None)
    distilled = getattr(model, "dist_token", None) is not None
    if readout != "token" or distilled or not _is_identity(getattr(model, "attn_pool", None)):
        raise ValueError(
            "relevance propagation (lrp, partial_lrp, transformer_attribution) supports the class-token "
            "readout only (timm global_pool='token', no distillation token); this model reads "
            f"global_pool={readout!r}{' with a distillation token' if distilled else ''}. "
            "Use a ViT/DeiT with a class token, or an attention method such as rollout."
        )
    for block in model.blocks:
        attn, mlp = block.attn, getattr(block, "mlp", None)
        if (
            not isinstance(getattr(attn, "qkv", None), nn.Linear)
            or not all(_is_identity(getattr(attn, n, None)) for n in ("q_norm", "k_norm", "norm"))
            or not all(isinstance(getattr(mlp, n, None), nn.Linear) for n in ("fc1", "fc2"))
            or not _is_identity(getattr(mlp, "norm", None))
        ):
            raise ValueError(
                f"relevance propagation needs blocks of timm's standard form (attn.qkv, no q/k norm, "
                f"mlp.fc1 → act → mlp.fc2); {type(block).__name__} of {type(model).__name__} is not."
            )
    if not isinstance(getattr(model, "head", None), nn.Linear) or not _is_identity(
        getattr(model, "fc_norm", None)
    ):
        raise ValueError(
            "relevance propagation needs a linear classifier head on the class token (num_classes > 0)"
        )


def supports(model: nn.Module) -> bool:
    """Whether :func:`check_supported` accepts ``model`` (relevance can be captured for it)."""
    try:
        check_supported(model)
    except ValueError:
        return False
    return True


def watch_list(model: nn.Module) -> dict[int, str]:
    """The layers whose activations the propagation reads, by ``id`` of their weight."""
    watch = {id(model.patch_embed.proj.weight): "patches", id(model.head.weight): "head"}
    norm_pre = getattr(model, "norm_pre", None)
    if getattr(norm_pre, "weight", None) is not None:
        watch[id(norm_pre.weight)] = "embed"
    for i, block in enumerate(model.blocks):
        for name, module in (("norm1", block.norm1), ("qkv", block.attn.qkv), ("proj", block.attn.proj),
                             ("norm2", block.norm2), ("fc1", block.mlp.fc1), ("fc2", block.mlp.fc2)):
            watch[id(module.weight)] = f"{i}.{name}"
    watch[id(model.norm.weight)] = "norm"
    return watch


def propagate(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    outputs: dict[str, torch.Tensor],
    attentions: list[torch.Tensor],
    targets: torch.Tensor,
) -> Relevance:
    """Relevance from the one-hot target at the output back to the input tokens (``ViT_LRP.relprop``).

    ``inputs``/``outputs``: what :class:`~explainers.recorder.ActivationRecorder` kept for
    :func:`watch_list`; ``attentions``: the post-softmax maps of the same pass.
    """
    with torch.no_grad():
        x = {k: v.detach().float() for k, v in inputs.items()}
        head_in = x["head"]
        one_hot = torch.zeros(head_in.shape[0], model.head.weight.shape[0], device=head_in.device)
        one_hot.scatter_(1, targets[:, None].to(head_in.device), 1.0)
        tokens_out = x["norm"]  # the last block's output
        r = torch.zeros_like(tokens_out)
        r[:, 0] = linear_rule(head_in, model.head.weight.float(), one_hot)  # head; the pool picks token 0
        attention_relevance = []
        for i in reversed(range(len(model.blocks))):
            block = model.blocks[i]
            x_in, x_mid = x[f"{i}.norm1"], x[f"{i}.norm2"]
            r_skip, r_mlp = add_rule(x_mid, tokens_out - x_mid, r)
            r_mlp = linear_rule(x[f"{i}.fc2"], block.mlp.fc2.weight.float(), r_mlp)
            r = r_skip + linear_rule(x[f"{i}.fc1"], block.mlp.fc1.weight.float(), r_mlp)
            r_skip, r_attn = add_rule(x_in, x_mid - x_in, r)
            qkv, attention = outputs[f"{i}.qkv"].float(), attentions[i].float()
            r_attn, r_a = _attention_rule(block.attn, x, qkv, attention, i, r_attn)
            attention_relevance.append(r_a)
            r = r_skip + r_attn
            tokens_out = x_in
        embed = x.get("embed", tokens_out)
        patches = outputs["patches"].detach().float().flatten(2).transpose(1, 2)
        patches = model.patch_embed.norm(patches) if hasattr(model.patch_embed, "norm") else patches
        prefix = [
            t.expand(len(patches), -1, -1).float()
            for t in (model.cls_token, getattr(model, "reg_token", None))
            if t is not None
        ]
        tokens = torch.cat([*prefix, patches], dim=1)
        r_tokens, r_position = add_rule(tokens, embed - tokens, r)  # token embeddings + position embedding
        return Relevance(tuple(reversed(attention_relevance)), r_tokens.sum(-1), r_position.sum((1, 2)))


def _attention_rule(
    attn: nn.Module, x: dict[str, torch.Tensor], qkv: torch.Tensor, a: torch.Tensor, i: int, r: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relevance of the attention branch's input and of its attention map ``A`` (``Attention.relprop``)."""
    batch, tokens, _ = r.shape
    heads = attn.num_heads
    r = linear_rule(x[f"{i}.proj"], attn.proj.weight.float(), r)
    r = r.reshape(batch, tokens, heads, -1).transpose(1, 2)  # b n (h d) -> b h n d
    q, k, v = qkv.reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
    r_a, r_v = matmul_rule(a, v, r)  # A·V
    r_q, r_kt = matmul_rule(q, k.transpose(-1, -2), r_a)  # softmax: identity; the scale cancels in LRP-0
    r_qkv = torch.stack([r_q, r_kt.transpose(-1, -2), r_v]).permute(1, 3, 0, 2, 4).reshape(batch, tokens, -1)
    return linear_rule(x[f"{i}.qkv"], attn.qkv.weight.float(), r_qkv), r_a

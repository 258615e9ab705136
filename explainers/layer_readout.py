"""Per-layer readouts: the target score read from each block's tokens through the model's own output.

LeGrad (Bousselham et al. 2024) asks, for every block ``l``, how the target score *as read from that
block's tokens* depends on that block's attention: ``∂s_l/∂A_l`` with

    s_l = head(fc_norm(norm(mean_n x_l[n])))[t],

``x_l`` ``(B, N, D)`` the output of block ``l``, the mean over all ``N`` tokens (class token included, as
in the authors' code, ``feat_post_mlp.mean(dim=0)`` before ``ln_post``), ``norm`` / ``fc_norm`` the
model's final norms (one of them is the identity in timm) and ``head`` its classifier.

The block outputs come from timm's own ``forward_intermediates`` (the same computation as
``model.forward``, which the capture checks), so nothing is hooked or patched: the model is left as
found and any number of threads may do this at once. Each ``∂s_l/∂A_l`` is one ``autograd.grad`` call
that only runs back through the head and block ``l`` (autograd prunes everything else).
"""

from __future__ import annotations

import torch
from torch import nn


def check_layer_readout(model: nn.Module) -> None:
    """A ``ValueError`` unless ``model`` exposes its block outputs and a class-token or mean readout."""
    name = type(model).__name__
    needed = ("forward_intermediates", "norm", "fc_norm", "head_drop", "head")
    missing = [a for a in needed if not hasattr(model, a)]
    if missing:
        raise ValueError(
            f"per-layer readouts (LeGrad) need timm's forward_intermediates and the model's final norm and "
            f"head; {name} has no {', '.join(missing)}. Use a timm VisionTransformer such as deit_tiny."
        )
    if getattr(model, "attn_pool", None) is not None:
        raise ValueError(
            f"{name} reads its output through an attention pool: per-layer readouts (LeGrad) support class-"
            "token and average-pool models only (the authors explain attention-pool models by the pool's "
            "attention, a different method)."
        )


def forward_with_block_tokens(
    model: nn.Module, images: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The logits ``(B, C)`` and every block's output tokens ``(B, N, D)``, prefix tokens first."""
    with_prefix = model.num_prefix_tokens > 0  # without prefix tokens timm returns the patch tokens alone
    final, per_block = model.forward_intermediates(images, return_prefix_tokens=with_prefix, output_fmt="NLC")
    if not with_prefix:
        return model.forward_head(final), list(per_block)
    tokens = [torch.cat([prefix, patches], dim=1) for patches, prefix in per_block]
    return model.forward_head(final), tokens


def layer_readout(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``head(fc_norm(norm(mean_n tokens[:, n])))``: the logits ``(B, C)`` one block's tokens would give.

    Distilled DeiT has a second head; its output is the mean of both heads, and so is this readout.
    """
    features = model.head_drop(model.fc_norm(model.norm(tokens.mean(dim=1))))
    if getattr(model, "head_dist", None) is not None:
        return (model.head(features) + model.head_dist(features)) / 2
    return model.head(features)


def layer_readout_gradients(
    model: nn.Module,
    tokens: list[torch.Tensor],
    attentions: list[torch.Tensor],
    targets: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """``∂s_l/∂A_l`` ``(B, H, N, N)`` for every block ``l``, ``s_l`` block ``l``'s readout for ``targets``.

    Images are independent, so one call per block differentiates ``Σ_b s_l[b, t_b]``. The graph is kept
    for the caller (``retain_graph``).
    """
    grads = []
    for block_tokens, attention in zip(tokens, attentions, strict=True):
        score = layer_readout(model, block_tokens).gather(1, targets[:, None]).sum()
        grads.append(torch.autograd.grad(score, attention, retain_graph=True)[0])
    return tuple(grads)

"""Per-layer readouts: the target score read from each block's tokens through the model's own output.

LeGrad (Bousselham et al. 2024) asks, for every attention step ``l``, how the target score *as read from
that step's tokens* depends on an attention map: ``∂s_l/∂A`` with, for ``x_l`` ``(B, N_l, D)`` the tokens
after step ``l`` and ``head`` the model's own ``forward_head`` after its final ``norm``:

- class-token and mean readouts (the authors' CLIP recipe, ``ln_post(feat_post_mlp.mean(dim=0))``):
  ``s_l = head(norm(x̄_l))[t]``, every token of ``x̄_l`` replaced by ``mean_n x_l[n]`` (class token
  included), i.e. ``head(fc_norm(norm(mean_n x_l)))``; differentiated w.r.t. the step's own attention
  ``A_l`` (all its query rows);
- attention pool (the authors' SigLIP recipe, ``compute_legrad_siglip``): ``s_l = head(norm(x_l))[t]``,
  the model's own pool applied to the step's tokens, differentiated w.r.t. **the pool's** attention
  ``A_pool^(l)`` on those tokens (its latent query's row). The authors apply the pool to the block
  output without the trunk's final norm; here the norm is applied, as the model's own output does
  (so the last layer's score is the model's score).

``t`` is a class; for a :class:`~explainers.SimilarityTarget` the score is ``cos(e_l, e_ref)`` with
``e_l`` the same readout before the classifier (``pre_logits``), as the authors score an image against a
text embedding. CaiT: the class token exists from its class-attention blocks on, so the tokens of a
patch-only block are its patches (``N_l = P``) and those of a class-attention step are the class token
after that step followed by the last patch block's patches.

The block outputs come from the model's own ``forward_intermediates`` (timm; the same computation as
``model.forward``), the Hugging Face wrapper's ``forward_block_tokens``, or, for CaiT, whose
``forward_intermediates`` does not return its class token, the model's own modules called in the order
of ``Cait.forward_features``. Nothing is hooked or patched: the model is left as found and any number of
threads may do this at once. Each gradient is one ``autograd.grad`` call that only runs back through the
readout and step ``l`` (autograd prunes everything else).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .layout import TokenLayout
from .recorder import AttentionRecorder


def check_layer_readout(model: nn.Module) -> None:
    """A ``ValueError`` unless ``model`` exposes its block outputs, its final norm and ``forward_head``."""
    name = type(model).__name__
    tokens = "forward_block_tokens" if hasattr(model, "forward_block_tokens") else "forward_intermediates"
    missing = [a for a in (tokens, "norm", "forward_head") if not hasattr(model, a)]
    if missing:
        raise ValueError(
            f"per-layer readouts (LeGrad) need the block outputs (timm's forward_intermediates), the model's "
            f"final norm and forward_head; {name} has no {', '.join(missing)}. Use a timm VisionTransformer "
            "such as deit_tiny."
        )


def forward_with_block_tokens(
    model: nn.Module, images: torch.Tensor, pre_logits: bool = False
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The output ``(B, C)`` (the pooled embedding with ``pre_logits``) and every attention step's output
    tokens ``(B, N_l, D)``, prefix tokens first."""
    if hasattr(model, "forward_block_tokens"):  # Hugging Face models
        final, tokens = model.forward_block_tokens(images)
        return model.forward_head(final, pre_logits=pre_logits), tokens
    if getattr(model, "blocks_token_only", None):  # CaiT: Cait.forward_features, keeping each step's tokens
        x = model.pos_drop(model.patch_embed(images) + model.pos_embed)
        tokens = []
        for block in model.blocks:
            x = block(x)
            tokens.append(x)
        cls = model.cls_token.expand(x.shape[0], -1, -1)
        for block in model.blocks_token_only:
            cls = block(x, cls)
            tokens.append(torch.cat((cls, x), dim=1))
        return model.forward_head(model.norm(tokens[-1]), pre_logits=pre_logits), tokens
    with_prefix = model.num_prefix_tokens > 0  # without prefix tokens timm returns the patch tokens alone
    final, per_block = model.forward_intermediates(images, return_prefix_tokens=with_prefix, output_fmt="NLC")
    if with_prefix:
        per_block = [torch.cat([prefix, patches], dim=1) for patches, prefix in per_block]
    return model.forward_head(final, pre_logits=pre_logits), list(per_block)


def layer_readout(
    model: nn.Module, tokens: torch.Tensor, pooled: bool, pre_logits: bool = False
) -> torch.Tensor:
    """The output ``(B, C)`` (embedding with ``pre_logits``) one step's tokens would give: the model's
    ``forward_head(norm(·))`` on the tokens (attention pool, ``pooled``) or on their mean repeated at
    every position (class-token and mean readouts: ``head(fc_norm(norm(mean_n tokens)))``; distilled
    DeiT's two heads are averaged as in its own output)."""
    if not pooled:
        tokens = tokens.mean(dim=1, keepdim=True).expand_as(tokens)
    return model.forward_head(model.norm(tokens), pre_logits=pre_logits)


def _lay_out_rows(grad: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """A gradient ``(B, H, Q, K)`` over the ``K`` tokens that exist at its step → ``(B, H, Q, N)`` on the
    layout's tokens (zero on the others: CaiT's class token in patch-only blocks, tokens before the
    attention pool's first)."""
    n = layout.num_tokens
    if grad.shape[-1] == n:
        return grad
    out = grad.new_zeros(*grad.shape[:-1], n)
    out[..., n - grad.shape[-1] :] = grad
    return out


def layer_readout_gradients(
    model: nn.Module,
    tokens: list[torch.Tensor],
    attentions: list[torch.Tensor],
    layout: TokenLayout,
    score: Callable[[torch.Tensor], torch.Tensor],
    pre_logits: bool = False,
) -> tuple[torch.Tensor, ...]:
    """For every attention step ``l``: ``∂s_l/∂A`` over the query rows that attend there, ``(B, H, Q_l, N)``.

    ``score`` maps the readout ``(B, C)`` to ``s_l`` ``(B,)`` (the target logit or the similarity). ``A``
    is the step's own attention ``A_l`` (``Q_l = N``; CaiT: ``P`` patch rows, then the class token's one
    row), or for an attention pool the pool's attention on the step's tokens (``Q_l = 1``), recorded
    while the readout runs. Images are independent, so one call per step differentiates ``Σ_b s_l[b]``.
    The graph is kept for the caller (``retain_graph``).
    """
    pooled = layout.readout == "attention_pool"
    grads = []
    for step_tokens, attention in zip(tokens, attentions, strict=True):
        if pooled:  # the pool's attention on these tokens, recorded as it runs (in the graph)
            with AttentionRecorder() as recorder:
                readout = layer_readout(model, step_tokens, True, pre_logits)
            attention = recorder.attentions[-1]
        else:
            readout = layer_readout(model, step_tokens, False, pre_logits)
        (grad,) = torch.autograd.grad(score(readout).sum(), attention, retain_graph=True)
        grads.append(_lay_out_rows(grad, layout))
    return tuple(grads)

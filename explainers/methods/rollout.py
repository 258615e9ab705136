"""Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020)."""

from collections.abc import Iterator

import torch

from ..attention_ops import discard_lowest_, fuse_heads, readout_product, readout_row
from ..capture import Capture
from ..params import DISCARD_RATIO, HEAD_FUSION, START_LAYER
from ..registry import register


@register(
    "rollout",
    label="Attention rollout",
    needs_gradients=False,
    params=(HEAD_FUSION, DISCARD_RATIO, START_LAYER),
    reference="Abnar & Zuidema, ACL 2020",
)
def rollout(capture: Capture, *, head_fusion: str, discard_ratio: float, start_layer: int) -> torch.Tensor:
    """How much of each token flows into what the model's output reads through every block's residual stream.

    Ā_l = fuse_heads(A_l) (mean, max or min), with the lowest ``discard_ratio`` of its entries zeroed
    per image (the class token's row and column are kept when the output reads it; nothing is protected
    for mean and attention-pool readouts); Â_l = rownorm(Ā_l + I), the identity modelling the residual
    connection; map = ρ · Â_{L-1} ⋯ Â_s with the readout row ρ: e_cls for a class token (for the
    distilled DeiT the CLS token's, not the distillation token's), the mean 1_S/|S| of the pooled tokens,
    or rownorm(fuse_heads(A_pool)) for an attention pool (see ``attention_ops.readout_row``). CaiT's
    patch-only and class-attention blocks chain through the same product (see ``TokenLayout``).
    """
    rho = readout_row(capture, lambda attention, _: fuse_heads(attention, head_fusion), normalise=True)
    fused = fused_layers(capture, head_fusion, discard_ratio, start_layer)
    return readout_product(fused, rho, normalise=True)


def fused_layers(
    capture: Capture, head_fusion: str, discard_ratio: float, start_layer: int
) -> Iterator[torch.Tensor]:
    """Ā_l of rollout, from the last block down to ``start_layer``: heads fused, lowest entries discarded
    (the readout's protected token kept).

    One workspace for all layers: each Ā_l must be consumed before the next one is asked for.
    """
    workspace = None
    protected = capture.layout.protected_index
    for layer in reversed(range(start_layer, capture.num_layers)):
        workspace = fuse_heads(capture.attentions[layer], head_fusion, out=workspace)
        yield discard_lowest_(workspace, discard_ratio, protected)

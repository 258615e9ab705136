"""Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020)."""

from collections.abc import Iterator

import torch

from ..attention_ops import cls_row_product, discard_lowest_, fuse_heads
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
    """How much of each token flows into the class token through the residual stream of every block.

    Ā_l = fuse_heads(A_l) (mean, max or min), with the lowest ``discard_ratio`` of its entries zeroed
    per image (the CLS row and column are kept); Â_l = rownorm(Ā_l + I), the identity modelling the
    residual connection; R = Â_{L-1} ⋯ Â_s; map = R[cls, patches]. For the distilled DeiT the CLS
    token's row is used (not the distillation token's).
    """
    layout = capture.layout
    fused = fused_layers(capture, head_fusion, discard_ratio, start_layer)
    return cls_row_product(fused, layout.cls_index, layout.num_tokens, normalise=True)


def fused_layers(
    capture: Capture, head_fusion: str, discard_ratio: float, start_layer: int
) -> Iterator[torch.Tensor]:
    """Ā_l of rollout, from the last block down to ``start_layer``: heads fused, lowest entries discarded.

    One workspace for all layers: each Ā_l must be consumed before the next one is asked for.
    """
    workspace = None
    for layer in reversed(range(start_layer, capture.num_layers)):
        workspace = fuse_heads(capture.attentions[layer], head_fusion, out=workspace)
        yield discard_lowest_(workspace, discard_ratio, capture.layout.cls_index)

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

    def fused() -> Iterator[torch.Tensor]:  # one workspace: each Ā_l is consumed before the next is made
        workspace = None
        for layer in reversed(range(start_layer, capture.num_layers)):
            workspace = fuse_heads(capture.attentions[layer], head_fusion, out=workspace)
            yield discard_lowest_(workspace, discard_ratio, layout.cls_index)

    return cls_row_product(fused(), layout.cls_index, layout.num_tokens, normalise=True)

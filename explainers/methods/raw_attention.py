"""Raw attention: the class token's attention row in one block."""

import torch

from ..attention_ops import fuse_heads
from ..capture import Capture
from ..params import HEAD, HEAD_FUSION, LAYER
from ..registry import register


@register(
    "raw_attention",
    label="Raw attention",
    needs_gradients=False,
    params=(LAYER, HEAD_FUSION, HEAD),
    reference="e.g. Caron et al., DINO, ICCV 2021 (last-layer CLS attention)",
)
def raw_attention(capture: Capture, *, layer: int, head_fusion: str, head: int | None) -> torch.Tensor:
    """How much the class token attends to each token in one block.

    map = A_layer[h, cls, patches] for a single ``head`` h, else fuse_h(A_layer[h, cls, patches]) with
    the mean, max or min over heads.
    """
    cls_rows = capture.attentions[layer][:, :, capture.layout.cls_index : capture.layout.cls_index + 1]
    if head is not None:
        return cls_rows[:, head, 0].float()
    return fuse_heads(cls_rows, head_fusion)[:, 0]

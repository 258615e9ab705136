"""Partial LRP: the relevance of the last block's attention (Voita et al. 2019; Chefer et al. 2021)."""

import torch

from ..capture import Capture
from ..registry import Cost, register


@register(
    "partial_lrp",
    label="Partial LRP",
    needs_gradients=False,
    cost=Cost(lrp_passes=1),
    reference="Voita et al., ACL 2019; as in Chefer, Gur & Wolf, CVPR 2021",
)
def partial_lrp(capture: Capture) -> torch.Tensor:
    """LRP relevance of the last block's attention map, positive part averaged over heads, CLS row.

    map = mean_h((R_A[h])⁺)[cls, :], R_A the relevance of the post-softmax attention of the last block
    in ``A·V`` (:mod:`explainers.relevance`), as the authors' ``relprop(method="last_layer")``.
    """
    cls = capture.layout.cls_index
    return capture.relevance.attention[-1][:, :, cls].float().clamp(min=0).mean(1)

"""Partial LRP: the relevance of the last attention layer's map (Voita et al. 2019; Chefer et al. 2021)."""

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
    """LRP relevance of the last attention layer's map, positive part, summed over its query rows and
    averaged over heads.

    With R_A the relevance of the post-softmax attention in ``A·V`` (:mod:`explainers.relevance`):
    map_j = mean_h Σ_i (R_A[h, i, j])⁺, the relevance that reaches token j through the last attention.
    Per readout:

    - class token: the last block's R_A is zero outside the class token's row (only that token reaches
      the head), so map = mean_h((R_A[h])⁺)[cls, :], as the authors' ``relprop(method="last_layer")``;
    - mean of the tokens S: every row i ∈ S of the last block carries relevance; the sum takes them all;
    - attention pool: the last attention is the pool's latent query over the tokens,
      map = mean_h((R_pool[h])⁺)[0, :] (``Relevance.pool``).
    """
    relevance = capture.relevance
    last = relevance.pool if relevance.pool is not None else relevance.attention[-1]
    return last.float().clamp(min=0).sum(2).mean(1)

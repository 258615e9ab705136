"""Full LRP to the input tokens: the LRP baseline of Chefer, Gur & Wolf, CVPR 2021 (Table 1)."""

import torch

from ..capture import Capture
from ..registry import Cost, register


@register(
    "lrp",
    label="LRP (full)",
    needs_gradients=False,
    cost=Cost(lrp_passes=1),
    reference="Bach et al., PLOS ONE 2015; rules of Chefer, Gur & Wolf, CVPR 2021",
)
def lrp(capture: Capture) -> torch.Tensor:
    """Relevance of each input patch, propagated from the target class through every layer.

    R starts as the one-hot target at the output (or, for a :class:`~explainers.SimilarityTarget`, the
    cosine's terms ``R_c = e_c r̂_c / ‖e‖`` at the pooled embedding) and goes back through the head, the
    readout, every block and the sum of token and position embeddings with the rules of
    :mod:`explainers.relevance` (linear α=1 β=0, LRP-0 on both attention products, identity through
    softmax/LayerNorm/GELU, renormalised residual sums); map = ReLU(Σ_channels R_patch). The readout, per
    model: class token: R_e goes to that token; mean of the tokens S: the z-rule of the mean,
    ``R_n = (t_n / |S|) ⊙ (R_e ⊘ e)``; attention pool: the pool's attention, projection and MLP with the
    same rules, the latent query's share given to the keys. The rules are those of the authors'
    ``ViT_LRP.py`` + ``layers_ours.py`` (``relprop(method="full")``): their Table 1 baseline was produced by
    ``ViT_orig_LRP.py`` + ``layers_lrp.py``, which leaves residual sums unnormalised and normalises the
    x⁺W⁺ and x⁻W⁻ parts of the linear rule separately. Their pixel map, summed over each patch, equals the
    patch relevance here (the zβ rule of the patch embedding conserves relevance per patch). Negative
    relevance (evidence against the class) is set to 0 so that the map is non-negative like the others.
    """
    return capture.relevance.tokens.float().clamp(min=0)

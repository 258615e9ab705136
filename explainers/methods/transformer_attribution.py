"""Transformer Attribution (Chefer, Gur & Wolf, "Transformer Interpretability Beyond Attention
Visualization", CVPR 2021)."""

from dataclasses import replace

import torch

from ..attention_ops import readout_product, readout_row
from ..capture import Capture
from ..params import START_LAYER
from ..registry import Cost, register


@register(
    "transformer_attribution",
    label="Transformer Attribution",
    needs_gradients=True,
    cost=Cost(lrp_passes=1),
    params=(replace(START_LAYER, default=1),),
    reference="Chefer, Gur & Wolf, CVPR 2021",
)
def transformer_attribution(capture: Capture, *, start_layer: int) -> torch.Tensor:
    """Gradient-weighted LRP relevance of the attention, accumulated through the blocks.

    Ā_l = mean_h((∂y_t/∂A_l ⊙ R_{A_l})⁺) (Eq. 13), R_A the LRP relevance of the attention map
    (:mod:`explainers.relevance`, the authors' ``attn_cam``); C = (I + Ā_{L-1}) ⋯ (I + Ā_s) with no row
    normalisation (Eq. 14, and the code's ``compute_rollout_attention`` in ``ViT_LRP.py``); map = ρ C on the
    patch columns, with ρ the readout row:

    - class token: ρ = e_cls, the authors' ``C[cls, patches]``;
    - mean of the tokens S: ρ = 1_S / |S|;
    - attention pool: one more step weighted like the blocks, without identity (the latent is not a
      token): ρ = mean_h((∂y/∂A_pool ⊙ R_{A_pool})⁺)[0] (:func:`~explainers.attention_ops.readout_row`).

    ``y_t`` is the target logit, or the cosine for a :class:`~explainers.SimilarityTarget`.
    ``start_layer`` defaults to 1 as in the authors' evaluation script (``generate_visualizations.py``;
    their ``generate_LRP`` default is 0).
    """
    relevance = capture.relevance
    fused = (
        (capture.gradients[layer].float() * relevance.attention[layer].float()).clamp_(min=0).mean(dim=1)
        for layer in reversed(range(start_layer, capture.num_layers))
    )

    def fuse_pool(attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        return (gradient.float() * relevance.pool.float()).clamp_(min=0).mean(dim=1)

    rho = readout_row(capture, fuse_pool, normalise=False)
    return readout_product(fused, rho, normalise=False)

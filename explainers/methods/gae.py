"""Generic Attention-model Explainability (Chefer, Gur & Wolf, ICCV 2021)."""

import torch

from ..attention_ops import readout_product, readout_row
from ..capture import Capture
from ..params import START_LAYER
from ..registry import register


def _relevance(attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """mean_h((∂y/∂A ⊙ A)⁺), float32."""
    return (gradient.float() * attention.float()).clamp_(min=0).mean(dim=1)


@register(
    "gae",
    label="Gradient × attention (GAE)",
    needs_gradients=True,
    params=(START_LAYER,),
    reference="Chefer, Gur & Wolf, ICCV 2021",
)
def gae(capture: Capture, *, start_layer: int) -> torch.Tensor:
    """Relevance accumulated through the blocks from gradient-weighted attention, negatives removed.

    Ā_l = mean_h((∂y_t/∂A_l ⊙ A_l)⁺), clamped per head before the mean (Eq. 5); R_s = I,
    R_l = R_{l-1} + Ā_l R_{l-1} (Eq. 6), i.e. R = (I + Ā_{L-1}) ⋯ (I + Ā_s) with no normalisation;
    map = ρ · R with the readout row ρ = e_cls (R[cls, patches]), the mean 1_S/|S| of the pooled tokens,
    or, for an attention pool whose latent query q is one more attention step without residual,
    ρ = mean_h((∂y_t/∂A_pool ⊙ A_pool)⁺)[q] (Eq. 6 for a query that is not itself a token).
    CaiT: in patch-only blocks the class token's row and column of Ā_l are zero and in class-attention
    blocks only its row is non-zero, so I + Ā_l propagates among the patches in the first and adds the
    class attention to the class token's row in the second; the product chains both.
    """
    fused = (
        _relevance(capture.attentions[layer], capture.gradients[layer])
        for layer in reversed(range(start_layer, capture.num_layers))
    )
    return readout_product(fused, readout_row(capture, _relevance, normalise=False), normalise=False)

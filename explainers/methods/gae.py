"""Generic Attention-model Explainability (Chefer, Gur & Wolf, ICCV 2021)."""

import torch

from ..attention_ops import cls_row_product
from ..capture import Capture
from ..params import START_LAYER
from ..registry import register


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
    map = R[cls, patches].
    """
    layout = capture.layout
    fused = (
        (capture.gradients[layer].float() * capture.attentions[layer].float()).clamp_(min=0).mean(dim=1)
        for layer in reversed(range(start_layer, capture.num_layers))
    )
    return cls_row_product(fused, layout.cls_index, layout.num_tokens, normalise=False)

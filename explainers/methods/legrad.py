"""LeGrad (Bousselham, Boggust, Chaybouti, Strobelt & Kuehne, 2024; ICCV 2025)."""

import torch

from ..capture import Capture
from ..params import START_LAYER
from ..registry import Cost, register


@register(
    "legrad",
    label="LeGrad",
    needs_gradients=False,
    params=(START_LAYER,),
    reference="Bousselham et al., LeGrad, 2024 (legrad-torch 1.1)",
    cost=Cost(layer_backwards=True),
)
def legrad(capture: Capture, *, start_layer: int) -> torch.Tensor:
    """Sensitivity of the target score read at each block to that block's attention, over the blocks.

    s_l = head(norm(mean_n x_l))[t], the target logit read from block l's output tokens x_l through the
    model's final norm and head; map = Σ_{l ≥ start_layer} mean_{h, q} (∂s_l/∂A_l)⁺[h, q, patches]: the
    gradient itself, ReLU, averaged over heads and query rows (class token included), summed over blocks.
    As in the authors' code (``LeWrapper.compute_legrad_clip``, legrad-torch 1.1): each block's tokens are
    averaged (class token included) before the final norm, whatever the model's own pooling; the maps are
    summed (a mean would only rescale them); the package's default uses the last two blocks only
    (``layer_index=-2``, here ``start_layer = L - 2``), its upsampling and min-max scaling are left to
    the display.
    """
    total = None
    for layer in range(start_layer, capture.num_layers):
        relevance = capture.layer_gradients[layer].float().clamp(min=0).mean(dim=(1, 2))
        total = relevance if total is None else total.add_(relevance)
    return total

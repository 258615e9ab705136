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
    """Sensitivity of the target score read at each attention step to that step's attention, over the steps.

    s_l is the explained score (target logit, or the similarity of a headless model's embedding to a
    :class:`~explainers.SimilarityTarget`) read from step l's tokens x_l through the model's final norm and
    head (:mod:`explainers.layer_readout`); map = Σ_{l ≥ start_layer} mean_{h, q} (∂s_l/∂A)⁺[h, q, patches]:
    the gradient itself, ReLU, averaged over heads and the query rows that attend, summed over steps.
    Per readout, as in the authors' code (legrad-torch 1.1):

    - class token and mean (``compute_legrad_clip``): s_l = head(fc_norm(norm(mean_n x_l))), each step's
      tokens averaged (class token included) before the final norm whatever the model's own pooling, and
      A = A_l, the step's own attention, every query row (class token included);
    - attention pool (``compute_legrad_siglip``): s_l = head(fc_norm(attn_pool(norm(x_l)))), the model's
      own pool on the step's tokens, and A its attention there (one query row: the latent). The authors
      pool the block output without the final norm; here the norm is applied as in the model's output.
      Their "correction" with an empty text prompt has no counterpart for a classifier and is left out;
    - CaiT: patch-only blocks read the mean of their patch tokens (the class token does not exist yet),
      class-attention steps the mean of the class token after that step and the patches; their
      attention rows are the P patch rows and the class token's one row respectively.

    The maps are summed (a mean would only rescale them); the package's default uses the last two
    blocks only (``layer_index=-2``, here ``start_layer = L - 2``), its upsampling and min-max scaling
    are left to the display.
    """
    total = None
    for layer in range(start_layer, capture.num_layers):
        relevance = capture.layer_gradients[layer].float().clamp(min=0).mean(dim=(1, 2))
        total = relevance if total is None else total.add_(relevance)
    return total

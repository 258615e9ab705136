"""Gradient-weighted attention rollout (J. Gildenblat, vit-explain, 2020), with its bugs corrected."""

from collections.abc import Iterator

import torch

from ..attention_ops import cls_row_product, discard_lowest_
from ..capture import Capture
from ..params import DISCARD_RATIO, START_LAYER
from ..registry import register


@register(
    "grad_rollout",
    label="Gradient rollout",
    needs_gradients=True,
    params=(DISCARD_RATIO, START_LAYER),
    reference="Gildenblat, vit-explain (2020), after Abnar & Zuidema 2020",
)
def grad_rollout(capture: Capture, *, discard_ratio: float, start_layer: int) -> torch.Tensor:
    """Rollout of the attention weighted by its gradient for the target class.

    Ā_l = ReLU(mean_h(A_l ⊙ ∂y_t/∂A_l)), the gradient taken of the post-softmax attention of the same
    block; then, as in rollout, the lowest ``discard_ratio`` entries are zeroed per image (CLS row and
    column kept), Â_l = rownorm(Ā_l + I) and map = (Â_{L-1} ⋯ Â_s)[cls, patches].
    """
    layout = capture.layout

    def fused() -> Iterator[torch.Tensor]:  # two workspaces: each Ā_l is consumed before the next is made
        product = workspace = None
        for layer in reversed(range(start_layer, capture.num_layers)):
            attention, gradient = capture.attentions[layer].float(), capture.gradients[layer].float()
            product = torch.mul(attention, gradient, out=product)
            workspace = torch.mean(product, dim=1, out=workspace).clamp_min_(0)
            yield discard_lowest_(workspace, discard_ratio, layout.cls_index)

    return cls_row_product(fused(), layout.cls_index, layout.num_tokens, normalise=True)

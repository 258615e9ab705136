"""Gradient-weighted attention rollout (J. Gildenblat, vit-explain, 2020), with its bugs corrected."""

from collections.abc import Iterator

import torch

from ..attention_ops import discard_lowest_, readout_product, readout_row
from ..capture import Capture
from ..params import DISCARD_RATIO, START_LAYER
from ..registry import register


def _weighted(attention: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """ReLU(mean_h(A ⊙ ∂y/∂A)), float32."""
    return (attention.float() * gradient.float()).mean(dim=1).clamp_min(0)


@register(
    "grad_rollout",
    label="Gradient rollout",
    needs_gradients=True,
    params=(DISCARD_RATIO, START_LAYER),
    reference="Gildenblat, vit-explain (2020), after Abnar & Zuidema 2020",
)
def grad_rollout(capture: Capture, *, discard_ratio: float, start_layer: int) -> torch.Tensor:
    """Rollout of the attention weighted by its gradient for the target.

    Ā_l = ReLU(mean_h(A_l ⊙ ∂y_t/∂A_l)), the gradient taken of the post-softmax attention of the same
    block; then, as in rollout, the lowest ``discard_ratio`` entries are zeroed per image (the class
    token's row and column kept when the output reads it), Â_l = rownorm(Ā_l + I) and
    map = ρ · Â_{L-1} ⋯ Â_s, with ρ = e_cls, the mean 1_S/|S| of the pooled tokens, or for an attention
    pool ρ = rownorm(ReLU(mean_h(A_pool ⊙ ∂y_t/∂A_pool))).
    """
    protected = capture.layout.protected_index

    def fused() -> Iterator[torch.Tensor]:  # two workspaces: each Ā_l is consumed before the next is made
        product = workspace = None
        for layer in reversed(range(start_layer, capture.num_layers)):
            attention, gradient = capture.attentions[layer].float(), capture.gradients[layer].float()
            product = torch.mul(attention, gradient, out=product)
            workspace = torch.mean(product, dim=1, out=workspace).clamp_min_(0)
            yield discard_lowest_(workspace, discard_ratio, protected)

    return readout_product(fused(), readout_row(capture, _weighted, normalise=True), normalise=True)

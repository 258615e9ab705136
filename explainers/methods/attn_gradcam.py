"""GradCAM on the last attention step: the baseline of Chefer, Gur & Wolf, CVPR 2021 (Table 1)."""

import torch

from ..capture import Capture
from ..registry import register


@register(
    "attn_gradcam",
    label="Attention GradCAM",
    needs_gradients=True,
    reference="Selvaraju et al., ICCV 2017, on attention as in Chefer, Gur & Wolf, CVPR 2021",
)
def attn_gradcam(capture: Capture) -> torch.Tensor:
    """The last attention step's row of what the output reads, per head, weighted by the head's mean
    gradient, then ReLU.

    With A, ∇A = ∂y_t/∂A of the last attention step and ρ the readout row: w_h = mean_{j ∈ patches}
    (ρ ∇A_h)[j]; map = ReLU(mean_h(w_h · ρ A_h)). Per readout:

    - class token: ρ = e_cls, the class token's row of the last block (CaiT: of the last class-attention
      block). As in the authors' code (``Baselines.generate_cam_attn``), the gradient is averaged over
      that row at the patch columns only (not over the whole map), and the ReLU comes after the mean
      over heads; their final min-max scaling is left out (maps here are not rescaled).
    - mean of the pooled tokens S: ρ = 1_S/|S|, the mean of those tokens' rows of A_h and of ∇A_h in
      the last block (the pooled output is their mean, so this is the row it reads).
    - attention pool (SigLIP): the pool's latent-query attention is the last attention step and the
      one read, so A, ∇A are ``Capture.pool_attention``/``pool_gradient`` (its own heads) and ρ = e_q.

    The ReLU of a signed head-weighted sum may be zero everywhere (e.g. when every head's mean gradient
    is negative); such a map is all zero, never negative.
    """
    layout = capture.layout
    if layout.readout == "attention_pool":
        attention, gradient = capture.pool_attention[:, :, 0].float(), capture.pool_gradient[:, :, 0].float()
    else:
        rho = layout.readout_vector(capture.batch_size, capture.device)[:, None, None, :]  # (B, 1, 1, N)
        attention = (rho @ capture.attentions[-1].float())[:, :, 0]  # (B, H, N): ρ A_h
        gradient = (rho @ capture.gradients[-1].float())[:, :, 0]  # ρ ∇A_h
    weights = gradient[:, :, layout.num_prefix :].mean(-1, keepdim=True)
    return (attention * weights).mean(1).clamp_(min=0)

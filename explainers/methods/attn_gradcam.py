"""GradCAM on the last block's attention: the baseline of Chefer, Gur & Wolf, CVPR 2021 (Table 1)."""

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
    """The last block's class-token attention per head, weighted by the head's mean gradient, then ReLU.

    With A, ∇A = ∂y_t/∂A of the last block: w_h = mean_{j ∈ patches} ∇A[h, cls, j];
    map = ReLU(mean_h(w_h · A[h, cls, :])). As in the authors' code (``Baselines.generate_cam_attn``), the
    gradient is averaged over the class token's row at the patch columns only (not over the whole map),
    and the ReLU comes after the mean over heads. Their final min-max scaling is left out (maps here are
    not rescaled). Class-token readout only.
    """
    layout = capture.layout
    if layout.readout != "cls":
        raise ValueError(
            f"attn_gradcam reads the class token's attention row, but this model's output reads its "
            f"{layout.readout} readout: use rollout, grad_rollout, gae or raw_attention"
        )
    cls = layout.cls_index
    attention = capture.attentions[-1][:, :, cls].float()  # (B, H, N)
    weights = capture.gradients[-1][:, :, cls, layout.num_prefix :].float().mean(-1, keepdim=True)
    return (attention * weights).mean(1).clamp_(min=0)

"""Raw attention: the attention row of what the model's output reads, in one block."""

import torch

from ..attention_ops import fuse_heads, readout_row
from ..capture import Capture
from ..params import HEAD, HEAD_FUSION, LAYER
from ..registry import register


@register(
    "raw_attention",
    label="Raw attention",
    needs_gradients=False,
    params=(LAYER, HEAD_FUSION, HEAD),
    reference="e.g. Caron et al., DINO, ICCV 2021 (last-layer CLS attention)",
)
def raw_attention(capture: Capture, *, layer: int, head_fusion: str, head: int | None) -> torch.Tensor:
    """How much the tokens the output reads attend to each token in one block.

    r_h = ρ · A_layer[h] with the readout row ρ: the class token's row A_layer[h, cls] (ρ = e_cls), the
    mean of the pooled tokens' rows (ρ = 1_S/|S|), or, for an attention pool, those rows weighted by the
    pool's head-mean attention (ρ = mean_h A_pool[q]). map = r_h for a single ``head`` h, else
    fuse_h(r_h) with the mean, max or min over heads. For CaiT the class token exists only from the
    class-attention blocks on (and the pooled patches attend only before them): other layers are refused.
    """
    layout = capture.layout
    attention = capture.attentions[layer]
    split = layout.class_attention_from
    if split is not None and (layer < split) == (layout.readout == "cls"):
        where = "patch-only blocks (no class token yet)" if layer < split else "class-attention blocks"
        raise ValueError(
            f"layer {layer} is one of this model's {where}: the tokens its output reads do not attend there. "
            f"Choose a layer {'≥' if layer < split else '<'} {split}."
        )
    if layout.readout == "cls":  # ρ = e_cls: the row itself, no product needed
        rows = attention[:, :, layout.cls_index : layout.cls_index + 1]
    else:
        rho = readout_row(capture, lambda pool, _: pool.float().mean(dim=1), normalise=False)
        rows = rho[:, None, None, :] @ attention.float()  # (B, H, 1, N)
    if head is not None:
        return rows[:, head, 0].float()
    return fuse_heads(rows, head_fusion)[:, 0]

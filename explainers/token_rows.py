"""Where one token looks: its attention row per layer and head, and its rollout row.

The explainers read the class token's row (what the class token gathers); any other row answers the
question "where does this patch look?". For a patch at grid position ``(r, c)`` the token is
``t = num_prefix + r·gw + c`` (row-major after the prefix tokens, :class:`~explainers.TokenLayout`).

- :func:`attention_rows`: ``A_l[h, t, patches]`` for every layer ``l`` and head ``h``: what token ``t``
  attends to in one step.
- :func:`rollout_row`: ``R[t, patches]`` with ``R = Â_{L-1} ⋯ Â_s`` the rollout matrix of Abnar &
  Zuidema (ACL 2020), exactly as the ``rollout`` explainer builds it (same fusion, discard and start
  layer); its CLS row is the rollout map, its row ``t`` the flow of every patch into token ``t``.
"""

from __future__ import annotations

import torch

from .attention_ops import readout_product
from .capture import Capture
from .layout import TokenLayout
from .methods.rollout import fused_layers


def patch_token(layout: TokenLayout, row: int, column: int) -> int:
    """Index of the token of the patch at grid position ``(row, column)``, or a ``ValueError``."""
    grid_h, grid_w = layout.grid
    if not (0 <= row < grid_h and 0 <= column < grid_w):
        raise ValueError(f"patch ({row}, {column}) is outside the {grid_h}×{grid_w} patch grid")
    return layout.num_prefix + row * grid_w + column


def _check_token(capture: Capture, token: int) -> None:
    if not 0 <= token < capture.layout.num_tokens:
        raise ValueError(f"token must be in [0, {capture.layout.num_tokens - 1}], got {token}")


def attention_rows(capture: Capture, token: int) -> torch.Tensor:
    """``A_l[b, h, token, patches]`` for every layer and head: ``(B, L, H, gh, gw)`` float32."""
    _check_token(capture, token)
    start, grid = capture.layout.num_prefix, capture.layout.grid
    rows = torch.stack([a[:, :, token, start:].float() for a in capture.attentions], dim=1)
    return rows.reshape(*rows.shape[:3], *grid)


def rollout_row(
    capture: Capture,
    token: int,
    *,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    start_layer: int = 0,
) -> torch.Tensor:
    """Row ``token`` of the rollout matrix, patch columns: ``(B, gh, gw)`` (``token`` = CLS: the rollout map).

    ``R[token] = e_token · Â_{L-1} ⋯ Â_s`` with ``Â_l = rownorm(Ā_l + I)`` as in the ``rollout`` explainer
    (the discard spares the CLS token's row and column, whichever row is read).
    """
    _check_token(capture, token)
    layout = capture.layout
    fused = fused_layers(capture, head_fusion, discard_ratio, start_layer)
    row = torch.zeros(capture.batch_size, layout.num_tokens, device=capture.device)
    row[:, token] = 1.0
    return layout.to_grid(readout_product(fused, row, normalise=True))

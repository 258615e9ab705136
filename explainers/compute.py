"""The two ways to get maps: ``explain`` (one call) and ``compute`` (from a cached capture)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .capture import Capture, Target, capture, model_dims
from .registry import capture_options, get_explainer


def compute(capture: Capture, method: str, **params: Any) -> torch.Tensor:
    """Maps ``(B, gh, gw)`` of ``method`` from an existing capture: tensor maths only, no forward pass."""
    return get_explainer(method)(capture, **params)


def explain(
    model: nn.Module, images: torch.Tensor, method: str, target: Target = None, **params: Any
) -> torch.Tensor:
    """Maps ``(B, gh, gw)`` of ``method`` for ``images``: ``compute(capture(model, images, target), ...)``.

    Parameters are checked before the model runs. The capture is made with what the method reads
    (:func:`~explainers.registry.capture_options`): a gradient method gets the full forward and backward
    pass; a method that reads the attention only gets a forward pass that stops at the last attention map
    (``capture(..., gradients=False, logits=False)``); an LRP method gets the relevance pass
    (``relevance=True``).
    """
    explainer = get_explainer(method)
    explainer.validate(params, model_dims(model))
    options = capture_options([method])
    return explainer(capture(model, images, target, logits=any(options.values()), **options), **params)

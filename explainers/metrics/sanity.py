"""Sanity check by cascading model-parameter randomisation (Adebayo et al., "Sanity Checks for Saliency
Maps", NeurIPS 2018).

The blocks of a copy of the model are re-initialised from the top down, one more at each step: at step
``k = 1 … L`` blocks ``L−k … L−1`` hold fresh random weights (timm's own ViT initialisation: truncated
normal ``σ = 0.02`` for linear layers with zero biases, layer norms reset), the patch embedding and the
classifier head are kept. At every step the same images are explained for the same target classes and
each map is compared with the map of the trained model by Spearman's ρ (:func:`.agreement.spearman`).
An explanation that reflects what the model learnt must change as its weights are destroyed, so ρ falls
towards 0; a method whose maps keep their ranking (mean ``|ρ|`` at ``k = L`` still ≥
:data:`SANITY_THRESHOLD`) fails the check: it shows something about the image, not about the model. The
absolute value is used, as in Adebayo et al.'s "ABS" rank correlations: a map that turns into its mirror
image (ρ near −1) is just as determined by the input as one that stays the same.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from timm.models import named_apply
from timm.models.vision_transformer import init_weights_vit_timm
from torch import nn

from ..capture import attention_blocks
from .agreement import spearman

#: ``explain(model, images, targets) -> {name: maps (B, gh, gw)}``: the maps under test for one model.
ExplainFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], Mapping[str, torch.Tensor]]
#: A method fails when the mean |ρ| of its maps, trained against fully randomised model, is at least this.
SANITY_THRESHOLD = 0.5


def randomised_models(model: nn.Module, seed: int = 0) -> Iterator[nn.Module]:
    """Yield one deep copy of ``model`` with blocks re-initialised from the last, one more at each step.

    The ``k``-th model yielded (k = 1 … L) has its last ``k`` blocks random; it is the same copy, changed in
    place between steps, so use each before asking for the next. Block ``L−k`` is initialised from the
    seed ``seed + k`` (the caller's random state is left as it was); ``model`` itself is never modified.
    """
    randomised = copy.deepcopy(model)
    blocks = attention_blocks(randomised)
    device = next(randomised.parameters()).device
    for k in range(1, len(blocks) + 1):
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=device.type):
            torch.manual_seed(seed + k)
            named_apply(init_weights_vit_timm, blocks[len(blocks) - k])
        yield randomised


def cascading_randomisation(
    model: nn.Module, images: torch.Tensor, targets: torch.Tensor, explain: ExplainFn, *, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Spearman ρ between each map of the trained model and of the model with its top ``k`` blocks random.

    Returns:
        name → ``(B, L + 1)`` float64: column ``k`` is ρ after randomising ``k`` blocks (column 0 is the
        trained model against itself, 1 unless a map is constant; ρ is NaN for a constant map).
    """
    original = {name: maps.detach() for name, maps in explain(model, images, targets).items()}
    columns = {name: [spearman(maps, maps)] for name, maps in original.items()}
    for randomised in randomised_models(model, seed):
        for name, maps in explain(randomised, images, targets).items():
            columns[name].append(spearman(original[name], maps.detach()))
    return {name: torch.stack(rho, dim=1) for name, rho in columns.items()}


def fails_sanity(
    final_rho: torch.Tensor | np.ndarray | Sequence[float], threshold: float = SANITY_THRESHOLD
) -> bool:
    """Whether a method fails: mean ``|ρ|`` over images (NaN left out), every block random, ≥ ``threshold``.

    ``final_rho`` holds one ρ (or ``|ρ|``) per image at ``k = L``: the last column of
    :func:`cascading_randomisation`, or the ``sanity_abs_rho`` column of an evaluation.
    """
    values = final_rho.detach().cpu().numpy() if isinstance(final_rho, torch.Tensor) else final_rho
    return bool(np.nanmean(np.abs(np.asarray(values, dtype=np.float64))) >= threshold)

"""What a gradient method explains when there is no class to explain: similarity to a reference.

Headless backbones (``num_classes=0``: DINOv2, EVA02, CLIP and SigLIP image towers) output an embedding.
``SimilarityTarget(reference)`` makes the explained score the cosine similarity between each image's
pooled embedding and the reference's: ``y_b = cos(e(x_b), e_ref) = e(x_b)·e_ref / (‖e(x_b)‖ ‖e_ref‖)``,
the quantity behind retrieval ("why are these two images alike").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def pooled_embedding(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``e(x)`` ``(B, D)``: the model's pooled features before its classifier (its output when headless)."""
    return model.forward_head(model.forward_features(images), pre_logits=True)


@dataclass(frozen=True, eq=False)
class SimilarityTarget:
    """Explain ``cos(e(x_b), e_ref)``; pass it as ``target=`` to :func:`~explainers.capture` or
    :func:`~explainers.explain`.

    Attributes:
        reference: a normalised image batch ``(1, 3, H, W)`` (embedded by the same model, without
            gradients, when the capture runs) or an embedding vector ``(D,)``.
    """

    reference: torch.Tensor

    def __post_init__(self) -> None:
        ref = self.reference
        if (
            not isinstance(ref, torch.Tensor)
            or not ref.is_floating_point()
            or not (ref.dim() == 1 or (ref.dim() == 4 and ref.shape[0] == 1))
        ):
            shape = tuple(ref.shape) if isinstance(ref, torch.Tensor) else type(ref).__name__
            raise ValueError(
                f"SimilarityTarget reference must be a float image batch (1, 3, H, W) or an embedding (D,); "
                f"got {shape}. Preprocess the reference image like the others and add a batch dimension."
            )

    def embedding(self, model: nn.Module, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``e_ref`` ``(D,)`` on ``device``: the reference vector, or the model's embedding of the image."""
        ref = self.reference.to(device=device, dtype=dtype)
        if ref.dim() == 1:
            return ref
        with torch.no_grad():
            return pooled_embedding(model, ref)[0]

    def scores(self, embeddings: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """``cos(e_b, e_ref)`` ``(B,)``, or a ``ValueError`` when the sizes differ."""
        if embeddings.shape[-1] != reference.shape[-1]:
            raise ValueError(
                f"the reference embedding has {reference.shape[-1]} values but the model's pooled embedding "
                f"has {embeddings.shape[-1]}: pass an embedding made by this model, or a reference image."
            )
        return torch.nn.functional.cosine_similarity(embeddings, reference[None], dim=-1)

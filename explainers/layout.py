"""Where each token sits: prefix tokens (CLS, distillation, registers) and the patch grid.

Read from the model itself, never guessed from the token count: ``sqrt(N - 1)`` is wrong for
distilled DeiT (two prefix tokens), register models (CLS + R registers) and non-square inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TokenLayout:
    """Token order of a timm ViT: ``[prefix tokens..., patch tokens in row-major grid order]``.

    Attributes:
        num_prefix: tokens before the patches (1 for CLS; 2 for distilled DeiT; 1 + R with registers).
        grid: patch grid ``(gh, gw)`` for the input size that was captured.
        cls_index: position of the class token, whose attention row every explainer reads.
    """

    num_prefix: int
    grid: tuple[int, int]
    cls_index: int = 0

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.num_patches

    def to_grid(self, token_relevance: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` relevance of every token → ``(B, gh, gw)`` relevance of the patches."""
        if token_relevance.shape[-1] != self.num_tokens:
            raise ValueError(
                f"expected relevance for {self.num_tokens} tokens, got {token_relevance.shape[-1]}"
            )
        return token_relevance[:, self.num_prefix :].reshape(-1, *self.grid)

    @classmethod
    def from_model(cls, model: nn.Module, image_size: tuple[int, int]) -> TokenLayout:
        """Layout of ``model`` for inputs of ``image_size = (H, W)`` pixels.

        Raises:
            ValueError: the model has no class token, or does not accept this input size.
        """
        if getattr(model, "cls_token", None) is None:
            raise ValueError(
                "this model has no class token: the explainers read the CLS token's attention row. "
                "Choose a ViT built with class_token=True (e.g. deit_*, vit_*_patch16_224)."
            )
        patch_embed = model.patch_embed
        height, width = image_size
        if not getattr(model, "dynamic_img_size", False) and getattr(patch_embed, "strict_img_size", True):
            expected = tuple(patch_embed.img_size)
            if (height, width) != expected:
                raise ValueError(
                    f"images are {height}×{width} pixels but this model takes {expected[0]}×{expected[1]}: "
                    "resize them with the model's preprocess, or create the model with dynamic_img_size=True."
                )
        grid = tuple(int(g) for g in patch_embed.dynamic_feat_size((height, width)))
        return cls(num_prefix=int(model.num_prefix_tokens), grid=grid)

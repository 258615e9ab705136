"""Record every attention matrix of a forward pass without touching the model.

A :class:`torch.overrides.TorchFunctionMode` sees each torch call made on the current thread.
It replaces ``F.scaled_dot_product_attention`` (timm's fused path) by the explicit
``softmax(q kᵀ · scale + mask) v`` and keeps the post-softmax matrix; on the unfused path it keeps the
output of the attention ``softmax``. Square self-attention maps ``(B, H, N, N)`` and single-query maps
``(B, H, 1, N)`` (CaiT's class attention, SigLIP's attention-pool latent) are kept, in call order; the
capture tells them apart by the model's structure. The recorded tensors stay in the autograd graph, so
``∂y/∂A`` is the gradient with respect to the post-softmax attention itself.

Torch function modes are thread-local: no hook is registered, no flag is flipped, nothing is shared,
so any number of threads may record on one model at once and the model is left exactly as found.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_SOFTMAX_FUNCS = {torch.Tensor.softmax, torch.softmax, F.softmax}


def _is_attention(t: torch.Tensor) -> bool:
    """A ``(B, H, N, N)`` self-attention or a ``(B, H, 1, N)`` single-query attention map."""
    return t.dim() == 4 and t.shape[-2] in (1, t.shape[-1])


def _softmax_dim(args: tuple, kwargs: dict) -> int | None:
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    return dim


class ForwardStopped(Exception):
    """Raised by :class:`AttentionRecorder` once it holds ``stop_after`` maps: the rest is not needed."""


class AttentionRecorder(TorchFunctionMode):
    """Context manager collecting post-softmax attention maps ``(B, H, N|1, N)`` in call order.

    With ``stop_after=n`` the forward pass is cut short by :class:`ForwardStopped` as soon as the
    ``n``-th map is recorded (nothing after the last attention map of a ViT changes the maps).
    """

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.attentions: list[torch.Tensor] = []
        self.stop_after = stop_after

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self._attention(*args, **kwargs)
        out = func(*args, **kwargs)
        if func in _SOFTMAX_FUNCS and _is_attention(out) and _softmax_dim(args, kwargs) in (-1, 3):
            self._record(out)
        return out

    def _record(self, attention: torch.Tensor) -> None:
        self.attentions.append(attention)
        if len(self.attentions) == self.stop_after:
            raise ForwardStopped

    def _attention(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> torch.Tensor:
        """``softmax(q kᵀ · scale + mask) v``, the exact definition of scaled dot-product attention."""
        if enable_gqa and key.shape[-3] != query.shape[-3]:
            repeat = query.shape[-3] // key.shape[-3]
            key = key.repeat_interleave(repeat, dim=-3)
            value = value.repeat_interleave(repeat, dim=-3)
        scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
        plain = attn_mask is None and not is_causal and dropout_p == 0.0
        if plain and not torch.is_grad_enabled() and query.dim() == 4:
            return self._attention_without_autograd(query, key, value, scale)
        scores = (query * scale) @ key.transpose(-2, -1)
        if is_causal:
            n_q, n_k = scores.shape[-2:]
            causal = torch.ones(n_q, n_k, dtype=torch.bool, device=scores.device).tril()
            scores = scores.masked_fill(~causal, float("-inf"))
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            else:
                scores = scores + attn_mask
        attn = scores.softmax(dim=-1)
        if _is_attention(attn):
            self._record(attn)
        if dropout_p > 0.0:
            attn = F.dropout(attn, p=dropout_p)
        return attn @ value

    def _attention_without_autograd(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """The same ``softmax(q kᵀ · scale) v`` for ``(B, H, N, d)`` inputs, head by head, in place.

        timm's ``q, k, v`` are strided views into one ``qkv`` tensor; a 4-D matmul would copy them, while
        each head's ``(B, N, d)`` slice is a valid batched-GEMM operand as it is. The attention is written
        into one ``(H, B, N, N)`` buffer (recorded as its ``(B, H, N, N)`` view) and the softmax is taken in
        place; the output is laid out ``(B, N, H, d)`` so that timm's merge of the heads is a free view.
        """
        batch, heads, tokens, _ = query.shape
        attn = query.new_empty(heads, batch, tokens, key.shape[-2])
        for h in range(heads):
            torch.baddbmm(attn[h], query[:, h], key[:, h].transpose(1, 2), beta=0.0, alpha=scale, out=attn[h])
        torch.softmax(attn, dim=-1, out=attn)
        if _is_attention(attn):
            self._record(attn.transpose(0, 1))
        out = query.new_empty(batch, tokens, heads, value.shape[-1])
        for h in range(heads):
            out[:, :, h] = torch.bmm(attn[h], value[:, h])
        return out.transpose(1, 2)


class ActivationRecorder(AttentionRecorder):
    """An :class:`AttentionRecorder` that also keeps the inputs and outputs of chosen layers.

    ``watch`` maps a layer's weight tensor (by ``id``) to a name; every ``F.linear``, ``F.layer_norm``
    or ``F.conv2d`` call made with that weight on this thread stores its input in ``inputs[name]`` and
    its output in ``outputs[name]``. The layers are recognised by their parameters, so no hook is
    registered and the model is left as found (relevance propagation reads these activations).
    """

    def __init__(self, watch: dict[int, str], stop_after: int | None = None) -> None:
        super().__init__(stop_after)
        self.watch = watch
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func not in _WEIGHTED:
            return super().__torch_function__(func, types, args, kwargs)
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        position = _WEIGHTED[func]
        weight = kwargs.get("weight", args[position] if len(args) > position else None)
        name = self.watch.get(id(weight))
        if name is not None:
            self.inputs[name] = kwargs.get("input", args[0] if args else None)
            self.outputs[name] = out
        return out


_WEIGHTED = {F.linear: 1, F.conv2d: 1, F.layer_norm: 2}  # position of the weight argument

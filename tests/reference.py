"""Straightforward reference implementations, written from the papers with full matrices in float64.

They share no code with ``explainers``: each formula is spelled out once more, the slow way.
"""

import numpy as np

FUSE = {"mean": np.mean, "max": np.max, "min": np.min}


def discard(fused: np.ndarray, ratio: float) -> np.ndarray:
    """Zero the ⌊ratio·(N-1)²⌋ smallest entries outside the CLS (index 0) row and column."""
    out = fused.copy()
    n = out.shape[0]
    inner = out[1:, 1:].reshape(-1)  # a copy
    count = int(ratio * (n - 1) ** 2)
    order = np.argsort(inner, kind="stable")
    inner[order[:count]] = 0.0
    out[1:, 1:] = inner.reshape(n - 1, n - 1)
    return out


def rollout(attentions, num_prefix, fusion="mean", ratio=0.0, start=0, grads=None):
    """Abnar & Zuidema 2020: R = Π rownorm(Ā_l + I); with ``grads`` Ā_l = ReLU(mean_h(A ⊙ ∂y/∂A))."""
    n = attentions[0].shape[-1]
    result = np.eye(n)
    for layer in range(start, len(attentions)):
        a = np.asarray(attentions[layer], dtype=np.float64)
        if grads is None:
            fused = FUSE[fusion](a, axis=0)
        else:
            fused = np.maximum((a * np.asarray(grads[layer], dtype=np.float64)).mean(axis=0), 0.0)
        fused = discard(fused, ratio)
        step = fused + np.eye(n)
        step = step / step.sum(axis=-1, keepdims=True)
        result = step @ result
    return result[0, num_prefix:], result


def gae(attentions, grads, num_prefix, start=0):
    """Chefer et al. 2021: R ← R + mean_h((∇A ⊙ A)⁺) R, from R = I."""
    n = attentions[0].shape[-1]
    r = np.eye(n)
    for layer in range(start, len(attentions)):
        cam = np.clip(
            np.asarray(grads[layer], np.float64) * np.asarray(attentions[layer], np.float64), 0, None
        )
        r = r + cam.mean(axis=0) @ r
    return r[0, num_prefix:]


def raw_attention(attentions, num_prefix, layer=-1, fusion="mean", head=None):
    a = np.asarray(attentions[layer], dtype=np.float64)[:, 0, num_prefix:]
    return a[head] if head is not None else FUSE[fusion](a, axis=0)

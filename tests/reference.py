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


# --- readouts (issue 10): products from any readout row, written with explicit loops ------------------


def discard_unprotected(fused: np.ndarray, ratio: float, protected: int | None) -> np.ndarray:
    """Zero the ⌊ratio·M²⌋ smallest entries whose row and column are not ``protected`` (M tokens)."""
    if protected is not None:
        assert protected == 0
        return discard(fused, ratio)
    out = fused.copy().reshape(-1)
    order = np.argsort(out, kind="stable")
    out[order[: int(ratio * fused.shape[0] ** 2)]] = 0.0
    return out.reshape(fused.shape)


def step_matrix(fused: np.ndarray, normalise: bool) -> np.ndarray:
    """M = Ā + I, each row divided by its sum when ``normalise``, built entry by entry."""
    n = fused.shape[0]
    m = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            m[i, j] = fused[i, j] + (1.0 if i == j else 0.0)
        if normalise:
            m[i] /= m[i].sum()
    return m


def readout_map(fused_steps, rho, normalise, num_prefix, ratio=0.0, protected=0):
    """ρ · M_{L-1} ⋯ M_0 over explicit full matrices, then the patch columns."""
    n = rho.shape[0]
    r = np.eye(n)
    for fused in fused_steps:
        r = step_matrix(discard_unprotected(fused, ratio, protected), normalise) @ r
    return (rho @ r)[num_prefix:]


def pool_row(pool_attention, pool_gradient, method, fusion="mean"):
    """The attention pool's readout row ρ for each method, from its (H, 1, N) attention."""
    a = np.asarray(pool_attention, np.float64)[:, 0]
    if method == "rollout":
        row = FUSE[fusion](a, axis=0)
        return row / row.sum()
    g = np.asarray(pool_gradient, np.float64)[:, 0]
    if method == "grad_rollout":
        row = np.maximum((a * g).mean(axis=0), 0.0)
        return row / row.sum()
    if method == "gae":
        return np.clip(a * g, 0, None).mean(axis=0)
    return a.mean(axis=0)  # raw attention

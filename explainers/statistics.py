"""Statistics over evaluation rows (one row per image and method, :mod:`explainers.evaluate`).

* :func:`chefer_table`: the figure of Chefer, Gur & Wolf, "Transformer Interpretability Beyond Attention
  Visualization", CVPR 2021, Table 1: top-1 accuracy of the model on the perturbed images, averaged over
  the images at each step ``f = 0, 0.1, …, 0.9`` of removed patches, and the area under that curve by the
  trapezoid rule, times 100: ``AUC = 100 · Σ_s (f_{s+1} − f_s)(acc_s + acc_{s+1}) / 2`` (at most 90).
  Positive perturbation (most relevant first): lower is better; negative: higher is better.
* :func:`paired_bootstrap`: differences of mean scores between two methods on the same images, with a
  percentile bootstrap confidence interval that resamples images (both methods' scores of an image move
  together, so the interval is that of the paired difference; Efron & Tibshirani 1993, ch. 13).
* :func:`ranking_agreement`: how the scores agree on the ranking of the methods: Kendall's τ-b between the
  orders that two scores give the methods (best first), for every pair of scores. Faithfulness metrics are
  known to disagree (Tomsett et al., AAAI 2020; Rong et al., ICML 2022).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

from .evaluate import SCORES

#: The two curves of Chefer et al.'s Table 1.
CHEFER_CURVES: tuple[str, ...] = ("positive", "negative")
CHEFER_LABEL = "Chefer et al. 2021 Table 1: top-1 AUC ×100"


def chefer_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Chefer et al.'s positive and negative perturbation AUC (top-1 accuracy, %) per method.

    The mean over images of each image's top-1 trapezoid AUC (``<curve>_top1_auc``) is the trapezoid AUC
    of the mean accuracy curve (the trapezoid rule is linear), so the figure is ``100 · mean``.

    Returns one row per method (order of first appearance) with ``target_mode`` (the class explained:
    ``predicted`` or ``label``, their "Predicted" and "Target" columns), ``positive`` and ``negative``
    (AUC ×100), ``top1`` (the model's accuracy on the images, %) and ``n`` (images).
    """
    columns = [f"{curve}_top1_auc" for curve in CHEFER_CURVES]
    if not set(columns) <= set(frame.columns):
        return pd.DataFrame(columns=["method", "target_mode", *CHEFER_CURVES, "top1", "n"])
    rows = []
    for method, group in frame.groupby("method", sort=False):
        values = group[[*columns, "positive_top1_00"]].apply(pd.to_numeric, errors="coerce").dropna()
        rows.append({
            "method": method,
            "target_mode": ", ".join(map(str, group["target_mode"].dropna().unique())),
            **{curve: 100 * values[f"{curve}_top1_auc"].mean() for curve in CHEFER_CURVES},
            "top1": 100 * values["positive_top1_00"].mean(),
            "n": len(values),
        })
    return pd.DataFrame(rows)


def score_directions(frame: pd.DataFrame) -> dict[str, tuple[str, bool]]:
    """Score column → (label, higher is better) for the :data:`~explainers.evaluate.SCORES` in ``frame``."""
    return {column: found for column, found in SCORES.items() if column in frame}


def paired_bootstrap(
    frame: pd.DataFrame,
    score: str,
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    chunk: int = 250,
) -> pd.DataFrame:
    """Mean difference of ``score`` for every pair of methods, with a paired percentile bootstrap CI.

    For methods ``a`` and ``b`` and the ``n`` images scored by both, ``d_i = s_a(i) − s_b(i)``; the
    estimate is ``mean(d)`` and the interval is the ``(1 − confidence)/2`` and ``(1 + confidence)/2``
    quantiles of ``mean(d*)`` over ``resamples`` resamples ``d*`` of the ``n`` images drawn with
    replacement (the same draws for every pair).

    Returns:
        One row per pair: ``method_a, method_b, n, difference, low, high, better`` where ``better`` names
        the better method when the interval excludes 0 (by the score's direction), else ``"—"``.
    """
    if score not in frame:
        raise ValueError(f"no column {score!r} in the results")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    higher = score_directions(frame).get(score, (score, True))[1]
    wide = frame.pivot_table(index="image_id", columns="method", values=score, aggfunc="first", sort=False)
    methods = list(dict.fromkeys(frame["method"]))
    rng = np.random.default_rng(seed)
    rows = []
    for a, b in combinations(methods, 2):
        if a not in wide or b not in wide:
            continue
        d = (wide[a] - wide[b]).dropna().to_numpy(dtype=float)
        n = len(d)
        if n == 0:
            continue
        means = np.concatenate([
            d[rng.integers(0, n, size=(min(chunk, resamples - start), n))].mean(axis=1)
            for start in range(0, resamples, chunk)
        ])
        low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
        better = "—"
        if low > 0 or high < 0:
            better = a if (d.mean() > 0) == higher else b
        rows.append({"method_a": a, "method_b": b, "n": n, "difference": d.mean(), "low": low, "high": high,
                     "better": better})
    return pd.DataFrame(rows, columns=["method_a", "method_b", "n", "difference", "low", "high", "better"])


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's τ-b of two equally long vectors: ``(C − D) / √((P − T_x)(P − T_y))`` over the ``P``
    pairs, ``C``/``D`` concordant/discordant, ``T_x``/``T_y`` the pairs tied in x/y; NaN if undefined."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    i, j = np.triu_indices(len(x), k=1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    denominator = np.sqrt(np.count_nonzero(sx) * np.count_nonzero(sy))
    return float((sx * sy).sum() / denominator) if denominator else float("nan")


def ranking_agreement(frame: pd.DataFrame) -> pd.DataFrame:
    """Kendall's τ-b between the method rankings of every two scores (score × score, ``"<column> ↑"``).

    Each score ranks the methods by its mean over the images, oriented so that larger is better (a
    lower-is-better score is negated); τ = 1: the same order, −1: reversed. Needs two methods or more.
    """
    directions = score_directions(frame)
    means = frame.groupby("method", sort=False)[list(directions)].agg(
        lambda s: pd.to_numeric(s, errors="coerce").mean()
    )
    means = means.loc[:, means.notna().all()]
    oriented = {c: means[c].to_numpy() * (1 if directions[c][1] else -1) for c in means}
    labels = [f"{c} {'↑' if directions[c][1] else '↓'}" for c in oriented]
    matrix = [[kendall_tau_b(oriented[a], oriented[b]) for b in oriented] for a in oriented]
    return pd.DataFrame(matrix, index=labels, columns=labels)


#: The scores whose method differences the text report gives (the perturbation AUCs).
REPORTED_DIFFERENCES: tuple[str, ...] = (
    "positive_auc", "negative_auc", "insertion_auc", "positive_top1_auc", "negative_top1_auc",
)


def report(frame: pd.DataFrame, *, resamples: int = 1000, confidence: float = 0.95) -> str:
    """Chefer et al.'s table, the paired differences of :data:`REPORTED_DIFFERENCES` and the ranking
    agreement, as text (what ``python -m explainers evaluate`` prints after the summary)."""
    parts = []
    chefer = chefer_table(frame)
    if len(chefer):
        parts.append(f"{CHEFER_LABEL} (steps 0 … 90 %; positive ↓, negative ↑):\n"
                     + chefer.round(2).to_string(index=False))
    if frame["method"].nunique() >= 2:
        differences = [
            paired_bootstrap(frame, score, resamples=resamples, confidence=confidence).assign(score=score)
            for score in REPORTED_DIFFERENCES if score in frame
        ]
        if differences:
            table = pd.concat(differences)
            table["interval"] = [f"[{lo:+.4f}, {hi:+.4f}]" for lo, hi in zip(table["low"], table["high"],
                                                                              strict=True)]
            table = table[["score", "method_a", "method_b", "n", "difference", "interval", "better"]]
            parts.append(f"Paired differences a − b, {confidence:.0%} bootstrap interval over images "
                         f"({resamples} resamples):\n" + table.round(4).to_string(index=False))
        agreement = ranking_agreement(frame)
        if len(agreement) >= 2:
            parts.append("Kendall's τ-b between the rankings of the methods by each score:\n"
                         + agreement.round(2).to_string())
    return "\n\n".join(parts)

"""Statistics over result rows, each checked against an independent computation."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from explainers.evaluate import Evaluation, cluttered_samples
from explainers.statistics import chefer_table, kendall_tau_b, paired_bootstrap, ranking_agreement
from tests.test_evaluate import tiny_loaded


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    loaded = tiny_loaded()
    evaluation = Evaluation(loaded, {"rollout": {}, "gae": {}, "raw_attention": {}},
                            metrics=["perturbation"], target="label", batch_size=4)
    return pd.DataFrame(evaluation.run(cluttered_samples(loaded, 6, seed=1)))


def test_chefer_figure_is_the_trapezoid_area_of_the_mean_accuracy_curve(rows: pd.DataFrame) -> None:
    table = chefer_table(rows).set_index("method")
    steps = np.arange(10) / 10
    for method, group in rows.groupby("method"):
        for curve in ("positive", "negative"):
            accuracy = [group[f"{curve}_top1_{round(100 * f):02d}"].mean() for f in steps]
            area = sum((steps[k + 1] - steps[k]) * (accuracy[k] + accuracy[k + 1]) / 2 for k in range(9))
            assert table.loc[method, curve] == pytest.approx(100 * area)
        labels_right = (group["predicted"] == group["label"]).mean()
        assert table.loc[method, "top1"] == pytest.approx(100 * labels_right)
        assert table.loc[method, "n"] == 6 and table.loc[method, "target_mode"] == "label"


def test_chefer_figure_by_hand() -> None:
    """Accuracy falling linearly from 1 to 0.1 over the ten steps: area (1 + 0.1) / 2 · 0.9 = 0.495."""
    accuracy = np.linspace(1, 0.1, 10)
    row = {"method": "m", "target_mode": "predicted", "positive_top1_auc": np.trapezoid(accuracy, dx=0.1),
           "negative_top1_auc": 0.9, "positive_top1_00": 1.0}
    table = chefer_table(pd.DataFrame([row]))
    assert table.loc[0, "positive"] == pytest.approx(49.5) and table.loc[0, "negative"] == pytest.approx(90)


def test_paired_bootstrap_matches_scipy_and_the_normal_approximation() -> None:
    rng = np.random.default_rng(0)
    n = 400
    base = rng.normal(0.5, 0.2, n)  # shared image difficulty: pairing removes it
    a, b = base + rng.normal(0.02, 0.05, n), base + rng.normal(0.0, 0.05, n)
    frame = pd.DataFrame({"image_id": np.tile(np.arange(n), 2), "method": ["a"] * n + ["b"] * n,
                          "target_mode": "predicted", "negative_auc": np.concatenate([a, b])})
    result = paired_bootstrap(frame, "negative_auc", resamples=4000, seed=1).iloc[0]
    d = a - b
    assert result["difference"] == pytest.approx(d.mean()) and result["n"] == n
    reference = stats.bootstrap((d,), np.mean, n_resamples=4000, method="percentile", random_state=2)
    assert result["low"] == pytest.approx(reference.confidence_interval.low, abs=0.002)
    assert result["high"] == pytest.approx(reference.confidence_interval.high, abs=0.002)
    half_width = 1.96 * d.std(ddof=1) / np.sqrt(n)
    assert result["high"] - result["low"] == pytest.approx(2 * half_width, rel=0.1)
    assert result["better"] == "a"  # higher negative AUC is better, and the interval excludes 0
    # Unpaired, the shared difficulty would swamp the difference: the paired interval is much narrower.
    assert result["high"] - result["low"] < 0.3 * 2 * 1.96 * np.sqrt((a.var() + b.var()) / n)
    same = frame.assign(negative_auc=np.concatenate([base, base + rng.normal(0, 0.05, n)]))
    assert paired_bootstrap(same, "negative_auc", seed=1).iloc[0]["better"] == "—"
    lower_better = frame.rename(columns={"negative_auc": "positive_auc"})
    assert paired_bootstrap(lower_better, "positive_auc", seed=1).iloc[0]["better"] == "b"
    with pytest.raises(ValueError, match="no column"):
        paired_bootstrap(frame, "insertion_auc")


def test_kendall_tau_b_is_scipys() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        x, y = rng.integers(0, 4, 7), rng.integers(0, 4, 7)
        expected = stats.kendalltau(x, y, variant="b").statistic
        assert kendall_tau_b(x, y) == pytest.approx(expected, nan_ok=True)


def test_ranking_agreement_orients_scores_by_direction() -> None:
    frame = pd.DataFrame({
        "image_id": [0, 0, 0],
        "method": ["a", "b", "c"],
        "positive_auc": [0.1, 0.2, 0.3],  # lower is better: a > b > c
        "negative_auc": [0.9, 0.8, 0.7],  # higher is better: a > b > c
        "insertion_auc": [0.7, 0.8, 0.9],  # higher is better: c > b > a
    })
    matrix = ranking_agreement(frame)
    assert matrix.shape == (3, 3) and np.allclose(np.diag(matrix), 1)
    assert matrix.iloc[0, 1] == pytest.approx(1.0) and matrix.iloc[0, 2] == pytest.approx(-1.0)
    assert matrix.index[0].endswith("↓") and matrix.index[1].endswith("↑")

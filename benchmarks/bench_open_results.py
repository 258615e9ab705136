"""Opening a large results file as the Evaluate page does: read, summarise, Chefer's table, one bootstrap.

    python benchmarks/bench_open_results.py [--images 50000] [--folder /tmp/bench-results]

Builds a results file of ``--images`` images × 4 methods from the rows of a real 20-image evaluation of the
embedded model (ids renumbered, scores jittered), in CSV and in Parquet (one part, as the store writes
it), then times :func:`explainers.results.read_results` and the page's statistics on it.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import torch

from explainers.evaluate import Evaluation, cluttered_samples, summary_table
from explainers.models import load_model
from explainers.results import read_results, schema
from explainers.statistics import chefer_table, paired_bootstrap, ranking_agreement

METHODS = ("rollout", "grad_rollout", "raw_attention", "gae")


def synthetic(images: int) -> tuple[pd.DataFrame, list[str]]:
    """``images`` × 4 rows made from a real evaluation of 20 digits, and the evaluation's columns."""
    loaded = load_model("embedded")
    evaluation = Evaluation(loaded, {m: {} for m in METHODS}, metrics=["perturbation", "localisation",
                                                                        "agreement"])
    seed = pd.DataFrame(evaluation.run(cluttered_samples(loaded, 20)))
    rng = np.random.default_rng(0)
    frame = seed.iloc[np.tile(np.arange(len(seed)), -(-images // 20))[: images * len(METHODS)]].copy()
    frame["image_id"] = [f"img-{i // len(METHODS):06d}" for i in range(len(frame))]
    scores = [c for c in evaluation.score_columns if frame[c].dtype.kind == "f"]
    frame[scores] = frame[scores] + rng.normal(0, 0.01, (len(frame), len(scores)))
    return frame.reset_index(drop=True), evaluation.columns


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/bench-results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    frame, columns = synthetic(args.images)
    args.folder.mkdir(parents=True, exist_ok=True)
    csv_path, parquet_path = args.folder / "results.csv", args.folder / "results.parquet"
    frame.to_csv(csv_path, index=False, float_format="%.7g")
    parquet_path.mkdir(exist_ok=True)
    for old in parquet_path.glob("*.parquet"):
        old.unlink()
    frame[columns].to_parquet(parquet_path / "part-0.parquet", schema=schema(columns), index=False)
    print(f"{len(frame):,} rows × {len(columns)} columns ({args.images:,} images, {len(METHODS)} methods)\n")
    sizes = [csv_path.stat().st_size, sum(p.stat().st_size for p in parquet_path.glob("*.parquet"))]
    print(f"CSV {sizes[0] / 2**20:.0f} MiB, Parquet {sizes[1] / 2**20:.0f} MiB\n")
    print("| step | time |")
    print("|---|---:|")
    for path in (csv_path, parquet_path):
        rows, seconds = timed(read_results, path)
        print(f"| read_results, {path.suffix[1:]} | {seconds:.2f} s |")
    for label, function, kwargs in (
        ("summary table (mean ± std)", summary_table, {}),
        ("Chefer et al.'s table", chefer_table, {}),
        ("paired bootstrap of one score, 6 pairs, 1000 resamples", paired_bootstrap,
         {"score": "negative_auc", "resamples": 1000}),
        ("ranking agreement", ranking_agreement, {}),
    ):
        _, seconds = timed(function, rows, **kwargs)
        print(f"| {label} | {seconds:.2f} s |")

if __name__ == "__main__":
    main()

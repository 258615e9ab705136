"""Wall time of the full evaluation loop (``explainers.evaluate``) on held-out cluttered digits.

    python benchmarks/bench_evaluate.py [--model embedded] [--images 500] [--batch-size 32] [--threads N]

Times one run of each metric set over the same images, the images made and preprocessed once beforehand
(their cost is printed on its own line). The target: 500 images, the four explainers, the perturbation
curves and the localisation scores in at most 5 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from explainers.evaluate import Evaluation, cluttered_samples
from explainers.models import load_model

METHODS = ("rollout", "grad_rollout", "raw_attention", "gae")
METRIC_SETS = ("perturbation,localisation", "perturbation,localisation,agreement,sanity")
TARGET_SECONDS = 300.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--metrics", action="append", help="a comma-separated metric set (repeatable)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, device=args.device)
    print(f"model {args.model} on {args.device}, {torch.get_num_threads()} threads, batch {args.batch_size}")

    start = time.perf_counter()
    samples = list(cluttered_samples(loaded, args.images, seed=0))
    print(f"making and preprocessing {args.images} images: {time.perf_counter() - start:.1f} s\n")

    print("| metrics | images | methods | wall time (s) | images/s |")
    print("|---|---:|---:|---:|---:|")
    for metrics in args.metrics or METRIC_SETS:
        evaluation = Evaluation(
            loaded, {m: {} for m in METHODS}, metrics=metrics.split(","), batch_size=args.batch_size
        )
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        rows = sum(1 for _ in evaluation.run(samples))
        seconds = time.perf_counter() - start
        assert rows == len(samples) * len(METHODS)
        rate = len(samples) / seconds
        print(f"| {metrics} | {len(samples)} | {len(METHODS)} | {seconds:.1f} | {rate:.1f} |")
    print(f"\ntarget: perturbation + localisation of 500 images in ≤ {TARGET_SECONDS:.0f} s")


if __name__ == "__main__":
    main()

"""Images per second of a full evaluation: one process against Ray workers at the same core count.

    python benchmarks/bench_distributed.py [--images 400] [--batch-size 16] [--workers 2] [--repeats 3]

The same preprocessed held-out cluttered digits, the four explainers and every metric (perturbation,
localisation, sanity, agreement), evaluated (a) by ``Evaluation.run`` in this process with ``workers``
torch threads and (b) by :class:`explainers.distributed.RayEvaluation` on a local Ray instance of
``workers`` CPUs, ``workers`` workers of one thread each. Model loading is not timed in either; the Ray
start-up (instance and workers, each loading torch and the model) is timed on its own line. Target: Ray
loses at most 10 % to the single process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import ray
import torch

from explainers.distributed import RayEvaluation
from explainers.evaluate import METRICS, Evaluation, cluttered_samples
from explainers.models import load_model

METHODS = ("rollout", "grad_rollout", "raw_attention", "gae")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    loaded = load_model(args.model)
    samples = list(cluttered_samples(loaded, args.images, seed=0))
    evaluation = Evaluation(loaded, {m: {} for m in METHODS}, metrics=METRICS, batch_size=args.batch_size)
    expected = len(samples) * len(METHODS)

    def timed(run) -> float:
        start = time.perf_counter()
        assert sum(1 for _ in run(samples)) == expected
        return time.perf_counter() - start

    torch.set_num_threads(args.workers)
    single = [timed(evaluation.run) for _ in range(args.repeats)]
    torch.set_num_threads(1)
    start = time.perf_counter()
    ray.init(address="local", num_cpus=args.workers, include_dashboard=False, object_store_memory=256 * 2**20,
             logging_level="WARNING")
    with RayEvaluation(evaluation, workers=args.workers, threads=1) as runner:
        startup = time.perf_counter() - start
        spread = [timed(runner.run) for _ in range(args.repeats)]
    ray.shutdown()

    print(f"{args.model}, {len(samples)} images, batch {args.batch_size}, methods {', '.join(METHODS)}, "
          f"metrics {', '.join(METRICS)}; medians of {args.repeats} runs\n")
    print("| run | processes × threads | wall time (s) | images/s | vs one process |")
    print("|---|---|---:|---:|---:|")
    base = statistics.median(single)
    for name, shape, times in (("one process", f"1 × {args.workers}", single),
                               ("Ray, local instance", f"{args.workers} × 1", spread)):
        wall = statistics.median(times)
        print(f"| {name} | {shape} | {wall:.1f} ({min(times):.1f}–{max(times):.1f}) "
              f"| {len(samples) / wall:.1f} | {base / wall:.2f}× |")
    print(f"\nRay start-up (instance and {args.workers} workers loading the model): {startup:.1f} s, "
          "once per run")
    print("target: Ray ≥ 0.90× the single process")


if __name__ == "__main__":
    main()

"""ROAD's noisy linear imputation: ``explainers.metrics.road.road_impute`` against pytorch-grad-cam's
``NoisyLinearImputer`` (a copy of the authors' code), on the same images and masks.

    python benchmarks/bench_road.py [--threads 1] [--images 4]

The masks are those of an evaluation: for each image, a random patch ranking removed most relevant first
and least relevant first at 10 %, 20 %, … 90 % of the patches (18 masks per image), at the embedded
model's size (64×64, 8×8 patches) and at ViT-B/16's (224×224, 16×16 patches). grad-cam imputes one
image at a time (as it does); ``road_impute`` takes all the masks of the images at once, as the
evaluation hands them. Both without noise, so the table also gives the largest difference between them.
Target: at least 5× faster.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from pytorch_grad_cam.metrics.road import NoisyLinearImputer

from explainers.metrics.road import road_impute

SETTINGS = ((64, 8), (224, 16))
TARGET = 5.0


def masks_of(size: int, patch: int, images: int, seed: int = 0) -> torch.Tensor:
    """``(images · 18, size, size)`` bool removed-pixel masks (see the module docstring)."""
    grid, rng = size // patch, np.random.default_rng(seed)
    masks = []
    for _ in range(images):
        ranking = rng.permutation(grid * grid)
        for order in (ranking, ranking[::-1]):
            for share in np.arange(1, 10) / 10:
                removed = np.zeros(grid * grid, bool)
                removed[order[: round(share * grid * grid)]] = True
                masks.append(np.kron(removed.reshape(grid, grid), np.ones((patch, patch), bool)))
    return torch.from_numpy(np.stack(masks))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--images", type=int, default=4, help="images per setting (18 masks each)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of road_impute; the median is shown")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    imputer = NoisyLinearImputer(noise=0.0)
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} thread(s); {args.images} images × 18 masks\n")
    print("| image, patch | masks | grad-cam NoisyLinearImputer | road_impute (median) "
          "| speed-up | max |Δ| |")
    print("|---|---:|---:|---:|---:|---:|")
    for size, patch in SETTINGS:
        removed = masks_of(size, patch, args.images)
        images = torch.rand(args.images, 3, size, size, generator=torch.Generator().manual_seed(size))
        images = images.repeat_interleave(18, dim=0)
        start = time.perf_counter()
        reference = torch.stack([imputer(i, (~m).float()) for i, m in zip(images, removed, strict=True)])
        theirs = time.perf_counter() - start
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            ours = road_impute(images, removed, noise=0.0)
            times.append(time.perf_counter() - start)
        mine = float(np.median(times))
        difference = (ours - reference).abs().max().item()
        print(f"| {size}×{size}, {patch}×{patch} | {len(removed)} | {theirs * 1e3:.0f} ms "
              f"| {mine * 1e3:.0f} ms | {theirs / mine:.1f}× (target ≥ {TARGET:.0f}×) | {difference:.1e} |")


if __name__ == "__main__":
    main()

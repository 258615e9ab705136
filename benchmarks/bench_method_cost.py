"""Time per image of every registered explainer, relative to one plain forward+backward of the model.

    python benchmarks/bench_method_cost.py [--model deit_tiny_patch16_224] [--threads 2] [--batch-sizes 1 32]

Each method runs as ``explainers.explain(model, images, method)`` with its default parameters: its own
capture (only what it reads) and its maths. The reference is ``model(images)`` and a backward pass from the
top logit of each image, with parameter gradients, as a training step would. Random weights: the cost
does not depend on the values. Medians of ``--repeats`` runs after a warm-up; a run longer than
``--long`` seconds is measured once (it is its own warm-up).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm
import torch

import explainers
from explainers.capture import model_dims


def seconds(fn: Callable[[], object], repeats: int, long: float) -> float:
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    if first > long:
        return first
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--long", type=float, default=5.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval()
    size = model.pretrained_cfg["input_size"][1:]
    layout = explainers.capture(model, torch.randn(1, 3, *size), gradients=False, logits=False).layout
    dims = {**model_dims(model), "num_tokens": layout.num_tokens}

    per_image: dict[str, dict[int, float]] = {}
    for batch_size in args.batch_sizes:
        images = torch.randn(batch_size, 3, *size)

        def forward_backward(images: torch.Tensor = images) -> None:
            model(images).max(dim=-1).values.sum().backward()
            model.zero_grad(set_to_none=True)

        per_image.setdefault("forward+backward", {})[batch_size] = (
            seconds(forward_backward, args.repeats, args.long) / batch_size
        )
        for method in explainers.list_explainers():
            def run(method: str = method, images: torch.Tensor = images) -> None:
                explainers.explain(model, images, method)

            per_image.setdefault(method, {})[batch_size] = seconds(run, args.repeats, args.long) / batch_size

    print(f"model {args.model}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"medians of {args.repeats} runs (one run when longer than {args.long:g} s)")
    header = ["method", "passes (per image)"]
    for b in args.batch_sizes:
        header += [f"batch {b}: ms / image", f"batch {b}: × fwd+bwd"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * 2 + "---:|" * (2 * len(args.batch_sizes)))
    for name, times in per_image.items():
        if name == "forward+backward":
            passes = "forward + backward (parameter gradients)"
        else:
            explainer = explainers.get_explainer(name)
            passes = explainer.cost.describe(explainer.needs_gradients, dims)
        cells = [f"`{name}`" if name != "forward+backward" else "plain forward+backward", passes]
        for b in args.batch_sizes:
            cells += [f"{times[b] * 1e3:.1f}", f"{times[b] / per_image['forward+backward'][b]:.2f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

"""Cost of the LRP methods: a capture with relevance against a plain forward+backward.

    python benchmarks/bench_relevance.py [--model deit_tiny_patch16_224] [--device cpu] [--repeats 5]

The relevance pass (``capture(..., relevance=True)``) records activations in the capture's one forward
pass, then propagates relevance with tensor maths; the four LRP-family methods then read the capture.
Medians of ``--repeats`` timed runs after a warm-up, batch 1 and ``--batch-size``.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm
import torch
from bench_explainers import median_seconds

import explainers

METHODS = ("attn_gradcam", "lrp", "partial_lrp", "transformer_attribution")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval().to(device)
    size = model.pretrained_cfg["input_size"][1:]
    rows: list[tuple[str, float, str]] = []
    for n in (1, args.batch_size):
        batch = torch.randn(n, 3, *size, device=device)

        def plain_forward_backward(batch: torch.Tensor = batch) -> None:
            model(batch).max(dim=-1).values.sum().backward()
            model.zero_grad(set_to_none=True)

        def time_it(fn) -> float:
            return median_seconds(fn, args.repeats, device)

        fb = time_it(plain_forward_backward)
        grads = time_it(lambda b=batch: explainers.capture(model, b))
        rel = time_it(lambda b=batch: explainers.capture(model, b, relevance=True))
        cap = explainers.capture(model, batch, relevance=True)
        methods = time_it(lambda c=cap: [explainers.compute(c, m) for m in METHODS])
        rows += [
            (f"batch {n}: plain forward+backward", fb * 1e3 / n, "ms/image"),
            (f"batch {n}: capture with gradients (existing methods)", grads * 1e3 / n, "ms/image"),
            (f"batch {n}: capture with gradients + relevance", rel * 1e3 / n, "ms/image"),
            (f"batch {n}:   ratio to plain forward+backward", rel / fb, "×"),
            (f"batch {n}: the four LRP-family methods from that capture", methods * 1e3 / n, "ms/image"),
        ]
        if n > 1:
            rows.append((f"batch {n}: capture memory with relevance", cap.nbytes / 2**20, "MiB"))
    threads = torch.get_num_threads()
    print(f"model {args.model}, device {device}, torch {torch.__version__}, {threads} threads")
    width = max(len(r[0]) for r in rows)
    for name, value, unit in rows:
        print(f"{name:<{width}}  {value:>10.2f} {unit}")


if __name__ == "__main__":
    main()

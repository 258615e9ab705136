"""Speed and memory of the explainer library against the model's own passes and vit-explain.

    python benchmarks/bench_explainers.py [--model deit_tiny_patch16_224] [--device cpu] [--repeats 7]

Random weights are fine: the cost does not depend on the values. Every figure is the median of
``--repeats`` timed runs after a warm-up, measured in this one process.
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

METHODS = ("rollout", "grad_rollout", "raw_attention", "gae")


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    def run() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run()
    return statistics.median(run() for _ in range(repeats))


def vit_explain_rollout(model: torch.nn.Module, image: torch.Tensor, discard_ratio: float) -> torch.Tensor:
    """jacobgil/vit-explain's ``VITAttentionRollout`` path, as published (baseline only, bugs included)."""
    attentions: list[torch.Tensor] = []
    handles = [
        b.attn.attn_drop.register_forward_hook(lambda m, i, o: attentions.append(o.cpu()))
        for b in model.blocks
    ]
    try:
        with torch.no_grad():
            model(image)
            result = torch.eye(attentions[0].size(-1))
            for attention in attentions:
                fused = attention.mean(axis=1)
                flat = fused.view(fused.size(0), -1)
                _, indices = flat.topk(int(flat.size(-1) * discard_ratio), -1, False)
                indices = indices[indices != 0]
                flat[0, indices] = 0
                a = (fused + torch.eye(fused.size(-1))) / 2
                a = a / a.sum(dim=-1)
                result = torch.matmul(a, result)
    finally:
        for handle in handles:
            handle.remove()
    mask = result[0, 0, 1:]
    width = int(mask.size(-1) ** 0.5)
    return mask.reshape(width, width)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval().to(device)
    size = model.pretrained_cfg["input_size"][1:]
    batch = torch.randn(args.batch_size, 3, *size, device=device)
    one = batch[:1]
    n = args.batch_size
    rows: list[tuple[str, float, str]] = []

    def time_it(fn: Callable[[], object]) -> float:
        return median_seconds(fn, args.repeats, device)

    # 1. recomputing from an existing capture: per image of a batch capture, and one image alone (what the
    #    dashboard's what-if page recomputes on every parameter change)
    cap = explainers.capture(model, batch)
    for source, images in ((cap, n), (explainers.capture(model, one), 1)):
        where = "per image" if images > 1 else "batch 1"
        for ratio in (0.0, 0.9):
            worst = 0.0
            for method in METHODS:
                params = {"discard_ratio": ratio} if method.endswith("rollout") else {}
                t = time_it(lambda c=source, m=method, p=params: explainers.compute(c, m, **p)) / images
                worst = max(worst, t)
                rows.append((f"compute {method}, discard {ratio}, {where}", t * 1e3, "ms"))
            target = {(0.0, False): " (target ≤ 1 ms)", (0.9, False): " (target ≤ 4 ms)",
                      (0.9, True): " (target ≤ 4 ms)"}.get((ratio, images == 1), "")
            rows.append((f"  slowest explainer, discard {ratio}, {where}{target}", worst * 1e3, "ms"))

    # 2. capture with gradients + all four explainers vs a plain forward+backward, one image
    def plain_forward_backward() -> None:
        model(one).max(dim=-1).values.sum().backward()
        model.zero_grad(set_to_none=True)

    def capture_all_four() -> None:
        c = explainers.capture(model, one)
        for method in METHODS:
            explainers.compute(c, method)

    fb = time_it(plain_forward_backward)
    c4 = time_it(capture_all_four)
    rows.append(("plain forward+backward, 1 image", fb * 1e3, "ms"))
    rows.append(("capture with gradients + 4 explainers, 1 image", c4 * 1e3, "ms"))
    rows.append(("  ratio (target ≤ 1.2)", c4 / fb, "×"))

    # 3. rollout of a batch vs a plain batched no-grad forward (fused attention on) and vit-explain
    def plain_forward() -> None:
        with torch.no_grad():
            model(batch)

    fwd = time_it(plain_forward)
    rows.append((f"plain no-grad forward, batch {n}, fused attention", fwd * 1e3, "ms"))
    for ratio, target in ((0.0, 1.05), (0.9, 1.2)):
        t = time_it(lambda r=ratio: explainers.explain(model, batch, "rollout", discard_ratio=r))
        rows.append((f"rollout, batch {n}, discard {ratio}", t * 1e3, "ms"))
        rows.append((f"  ratio to the plain forward (target ≤ {target})", t / fwd, "×"))
        if ratio == 0.9:
            rollout_09 = t

    flags = [b.attn.fused_attn for b in model.blocks]
    for b in model.blocks:
        b.attn.fused_attn = False
    try:
        base = time_it(lambda: [vit_explain_rollout(model, batch[i : i + 1], 0.9) for i in range(n)])
    finally:
        for b, flag in zip(model.blocks, flags, strict=True):
            b.attn.fused_attn = flag
    rows.append((f"vit-explain rollout, {n} images one by one, discard 0.9", base * 1e3, "ms"))
    rows.append(("  its ratio to the plain forward", base / fwd, "×"))
    rows.append(("  speed-up of batched rollout, discard 0.9 (target ≥ 3.5)", base / rollout_09, "×"))

    # 4. memory of a capture: nothing but the attention, gradient and logit tensors
    layers, heads, tokens = cap.num_layers, cap.num_heads, cap.layout.num_tokens
    attention_bytes = layers * n * heads * tokens * tokens * 4
    rows.append((f"attention tensors of batch {n} (float32)", attention_bytes / 2**20, "MiB"))
    rows.append(("capture with gradients (attention + gradients + logits)", cap.nbytes / 2**20, "MiB"))
    half = explainers.capture(model, batch, dtype=torch.float16)
    rows.append(("same capture stored in float16", half.nbytes / 2**20, "MiB"))

    print(
        f"model {args.model}, device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}}  {'value':>10}")
    for name, value, unit in rows:
        print(f"{name:<{width}}  {value:>10.3f} {unit}")


if __name__ == "__main__":
    main()

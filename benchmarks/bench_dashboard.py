"""How fast the what-if page answers a parameter change: one AppTest rerun of the whole app.

    python benchmarks/bench_dashboard.py [--model deit_tiny_patch16_224] [--repeats 15] [--limit-ms 150]

The model gets random weights written to a temporary file (the cost does not depend on the values), so
nothing is downloaded. For every explainer, the page is opened once (which loads the model and captures
the image), then one of its parameters is changed again and again; each change is one ``AppTest.run()``
(the full script: sidebar and page, as a browser interaction would cost without fragments). The model
must not run during these reruns: captures are counted and must stay at zero. Figures are the median
and the 90th percentile of ``--repeats`` reruns, measured in this process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm
import torch
from safetensors.torch import save_file
from streamlit.testing.v1 import AppTest

import explainers
from explainers import get_explainer, list_explainers

APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"


def parameter_values(method: str, dims: dict[str, int]) -> tuple[str, str, list[Any]]:
    """The first parameter of ``method`` and the values the benchmark cycles through."""
    param = get_explainer(method).params[0]
    low, high = param.bounds(dims)
    if param.choices:
        return param.name, "selectbox", list(param.choices)
    if param.kind is float:
        return param.name, "slider", [0.1, 0.5, 0.9]
    return param.name, "slider", list(range(int(low), int(high) + 1))[:4]


def bench(model: str, weights: Path, method: str, repeats: int) -> tuple[str, float, float, int]:
    app = AppTest.from_file(str(APP), default_timeout=300)
    app.query_params.update({"model": model, "weights": str(weights), "page": "what_if", "explore": method})
    app.run()
    if app.exception:
        raise RuntimeError(app.exception[0].value)
    name, kind, values = parameter_values(method, app.session_state["_scene"].dims)
    widget = f"p.{method}.{name}"
    captures = []
    original = explainers.capture
    explainers.capture = lambda *a, **k: captures.append(1) or original(*a, **k)
    try:
        seconds = []
        for i in range(repeats + 1):
            getattr(app, kind)(key=widget).set_value(values[(i + 1) % len(values)])
            start = time.perf_counter()
            app.run()
            seconds.append(time.perf_counter() - start)
    finally:
        explainers.capture = original
    seconds = seconds[1:]  # the first rerun also builds this explainer's widgets
    p90 = statistics.quantiles(seconds, n=10)[-1]
    return name, statistics.median(seconds) * 1000, p90 * 1000, len(captures)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--limit-ms", type=float, default=150.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        os.environ["VIT_EXPLAIN_DATA_DIR"] = folder
        weights = Path(folder) / f"{args.model}.safetensors"
        network = timm.create_model(args.model, pretrained=False)
        save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(weights))
        print(f"What-if page, one AppTest rerun after a parameter change; {args.model}, "
              f"{torch.get_num_threads()} CPU threads, {args.repeats} reruns each")
        print(f"{'explainer':<14} {'parameter':<14} {'median ms':>10} {'p90 ms':>8} {'captures':>9}  verdict")
        for method in list_explainers():
            name, median, p90, captures = bench(args.model, weights, method, args.repeats)
            ok = median <= args.limit_ms and captures == 0
            print(f"{method:<14} {name:<14} {median:>10.1f} {p90:>8.1f} {captures:>9}  "
                  f"{'ok' if ok else 'OVER'} (limit {args.limit_ms:.0f} ms)")


if __name__ == "__main__":
    main()

"""The command line, ``python -m explainers SUBCOMMAND``: one ``add_*`` function per subcommand.

    python -m explainers evaluate --model embedded --images cluttered:500 --out results/eval.csv
    python -m explainers explain --model embedded --images photos/ --methods rollout,gae --out maps/
    python -m explainers export 12 --out meeting/ --format html,zip

Each ``add_*(subparsers)`` declares its arguments and sets ``run``, the function called with the parsed
arguments; it returns the exit status. Every ``ValueError`` (bad spec, unknown method, missing folder…)
is printed as one ``error:`` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .capture import capture, model_dims
from .compute import compute
from .evaluate import (
    KEY_COLUMNS,
    METRICS,
    TARGETS,
    Evaluation,
    Sample,
    cluttered_samples,
    folder_samples,
    image_files,
    summary_table,
)
from .metrics.perturbation import BASELINES
from .models import LoadedModel, load_model
from .registry import Param, get_explainer, list_explainers
from .render import overlay
from .reviews.export import FORMATS, write_exports
from .reviews.store import DB_NAME, ReviewStore, default_path

CLUTTERED = "cluttered:"


def _add_common(parser: argparse.ArgumentParser, images_help: str) -> None:
    parser.add_argument("--model", default="embedded", help="'embedded' (default) or a timm model name")
    parser.add_argument("--weights", help="local .safetensors/.pth/.pt weights for --model")
    parser.add_argument("--images", required=True, help=images_help)
    parser.add_argument("--methods", default="all", help="comma-separated explainers, or 'all' (default)")
    parser.add_argument(
        "--param", action="append", default=[], metavar="METHOD.NAME=VALUE",
        help="an explainer parameter, e.g. rollout.discard_ratio=0.9 (repeatable; 'none' leaves one unset)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cluttered:N images (default: 0)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; 1 is "
                        "often faster on a busy machine)")


def add_evaluate(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score explainers: perturbation, localisation, sanity, agreement → CSV",
        description="Score explainers on a set of images; one CSV row per (image, method), written as it is "
        "computed. Rerun with the same --out to resume an interrupted run.",
    )
    _add_common(parser, "a folder of images, or cluttered:N: N held-out cluttered digits with ground truth")
    parser.add_argument("--out", required=True, type=Path,
                        help="CSV file of results, numbers to 7 significant digits (resumed if it exists)")
    parser.add_argument("--metrics", default=",".join(METRICS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--baseline", default="black", choices=BASELINES, help="value of removed pixels")
    parser.add_argument("--target", default="predicted", choices=TARGETS, help="class explained")
    parser.add_argument("--topk", type=float, default=0.1, help="top share of patches for IoU (default 0.1)")
    parser.add_argument("--step", type=int, default=10,
                        help="perturbation step in %% of the patches: 0, step, … ≤ 90%% (default 10)")
    parser.set_defaults(run=run_evaluate)


def add_explain(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "explain", help="overlay PNGs and raw maps (.npy) for a folder of images",
        description="Explain the predicted class of every image: OUT/<image>/<method>.png (the map over the "
        "image as the model sees it) and <method>.npy (the raw (gh, gw) map), listed in OUT/index.csv.",
    )
    _add_common(parser, "a folder of images, or cluttered:N")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.set_defaults(run=run_explain)


def add_export(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "export", help="exports of a saved review: PNG grid, scores CSV, HTML report, zip",
        description="Write the exports of a review saved on the dashboard's review board: OUT/review-ID.png "
        "(the maps side by side), .csv (the scores), .html (a self-contained report) and .zip (all three).",
    )
    parser.add_argument("review_id", type=int, metavar="REVIEW_ID", help="id of the review (see the board)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--format", default=",".join(FORMATS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--db", type=Path, default=None,
                        help=f"review database (default: $VIT_EXPLAIN_DATA_DIR/{DB_NAME}, ./data without it)")
    parser.set_defaults(run=run_export)


SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (add_evaluate, add_explain, add_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m explainers", description="Compare how ViTs explain.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):  # the subcommands that run a model take --threads
        torch.set_num_threads(args.threads)
    try:
        return args.run(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def parse_methods(text: str, assignments: list[str]) -> dict[str, dict[str, Any]]:
    """``--methods`` and ``--param METHOD.NAME=VALUE`` → method → parameters, values typed by declaration."""
    names = list_explainers() if text.strip() == "all" else [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("--methods is empty: name at least one explainer, or 'all'")
    methods: dict[str, dict[str, Any]] = {get_explainer(name).name: {} for name in names}
    for assignment in assignments:
        target, sep, value = assignment.partition("=")
        method, dot, name = target.partition(".")
        if not sep or not dot:
            raise ValueError(f"--param {assignment!r}: write METHOD.NAME=VALUE, e.g. rollout.start_layer=2")
        if method not in methods:
            chosen = ", ".join(methods)
            raise ValueError(f"--param {assignment!r}: {method!r} is not among --methods ({chosen})")
        declared = {p.name: p for p in get_explainer(method).params}
        if name not in declared:
            known = ", ".join(declared) or "none"
            raise ValueError(f"{method} has no parameter {name!r}; its parameters are: {known}")
        methods[method][name] = _typed(declared[name], value)
    return methods


def _typed(param: Param, text: str) -> Any:
    if param.optional and text.strip().lower() == "none":
        return None
    try:
        return param.kind(text)
    except ValueError:
        raise ValueError(f"{param.name} must be {param.kind.__name__}, got {text!r}") from None


def image_source(images: str) -> int | Path:
    """``--images``: the N of ``cluttered:N``, or a folder holding images; checked before the model loads."""
    if images.startswith(CLUTTERED):
        count = images[len(CLUTTERED) :]
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"--images {images!r}: expected cluttered:N with N a positive whole number")
        return int(count)
    image_files(images)
    return Path(images)


def load_images(
    loaded: LoadedModel, source: int | Path, seed: int, skipped: list[tuple[str, str]]
) -> tuple[Iterator[Sample], int]:
    """Samples of an :func:`image_source` and their number (unreadable files are added to ``skipped``)."""
    if isinstance(source, int):
        return cluttered_samples(loaded, source, seed), source
    return folder_samples(loaded, source, skipped), len(image_files(source))


class Progress:
    """A plain-text progress bar on stderr: redrawn in place on a terminal, a line every 10 s otherwise."""

    def __init__(self, total: int, label: str, start: int = 0, stream: TextIO | None = None) -> None:
        self.total, self.label, self.count, self.stream = total, label, start, stream or sys.stderr
        self.first, self.started, self.shown = start, time.monotonic(), 0.0
        self.tty = self.stream.isatty()

    def advance(self, step: int = 1) -> None:
        self.count += step
        now = time.monotonic()
        if self.tty or now - self.shown >= 10 or self.count >= self.total:
            self.shown = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        share = self.count / max(self.total, 1)
        rate = (self.count - self.first) / max(now - self.started, 1e-9)
        eta = (self.total - self.count) / rate if rate > 0 else float("nan")
        bar = "#" * int(share * 30)
        text = f"{self.label} [{bar:<30}] {self.count}/{self.total} images {rate:.1f}/s eta {eta:.0f}s"
        self.stream.write(("\r" + text) if self.tty else text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def read_done(path: Path, evaluation: Evaluation) -> set[tuple[str, ...]]:
    """Keys of the rows already in ``path`` (a CSV of an earlier run of the same settings), or an error.

    A last line cut short by an interruption is removed, so the file stays a valid CSV.
    """
    if not path.exists() or path.stat().st_size == 0:
        return set()
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        if header != evaluation.columns:
            raise ValueError(
                f"{path} holds results with other columns (other methods, metrics or model): "
                "choose another --out, or delete the file to start again"
            )
        done = set()
        for values in reader:
            row = dict(zip(header, values, strict=False))
            key = tuple(row.get(c, "") for c in KEY_COLUMNS)
            method = row.get("method", "")
            if method in evaluation.methods and key != evaluation.key(row["image_id"], method):
                raise ValueError(
                    f"{path} holds {method} rows computed with other settings ({', '.join(key[2:])}): "
                    "choose another --out, or use the same parameters, baseline and target"
                )
            done.add(key)
    return done


def run_evaluate(args: argparse.Namespace) -> int:
    methods = parse_methods(args.methods, args.param)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    source = image_source(args.images)
    loaded = load_model(args.model, device=args.device, weights=args.weights)
    evaluation = Evaluation(
        loaded, methods, metrics=metrics, baseline=args.baseline, target=args.target, topk=args.topk,
        step=args.step, batch_size=args.batch_size,
    )
    done = read_done(args.out, evaluation)
    skipped: list[tuple[str, str]] = []
    samples, total = load_images(loaded, source, args.seed, skipped)
    counted = {key[0] for key in done if all(evaluation.key(key[0], m) in done for m in evaluation.methods)}
    progress = Progress(total, "evaluate", start=len(counted))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=evaluation.columns)
        if handle.tell() == 0:
            writer.writeheader()
        for row in evaluation.run(samples, done):
            writer.writerow({k: f"{v:.7g}" if isinstance(v, float) else v for k, v in row.items()})
            handle.flush()
            if row["image_id"] not in counted:
                counted.add(row["image_id"])
                progress.advance()
    progress.close()
    _report_skipped(skipped)
    frame = pd.read_csv(args.out)
    print(summary_table(frame).T.to_string())
    print(f"\n{len(frame)} rows ({frame['image_id'].nunique()} images) in {args.out}")
    return 0


def run_explain(args: argparse.Namespace) -> int:
    methods = parse_methods(args.methods, args.param)
    source = image_source(args.images)
    loaded = load_model(args.model, device=args.device, weights=args.weights)
    dims = model_dims(loaded.model)
    methods = {name: get_explainer(name).validate(params, dims) for name, params in methods.items()}
    skipped: list[tuple[str, str]] = []
    samples, total = load_images(loaded, source, args.seed, skipped)
    progress = Progress(total, "explain")
    index: list[dict[str, Any]] = []
    while batch := list(islice(samples, args.batch_size)):
        index += _explain_batch(loaded, batch, methods, args.out)
        progress.advance(len(batch))
    progress.close()
    args.out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(index, columns=INDEX_COLUMNS).to_csv(args.out / "index.csv", index=False)
    _report_skipped(skipped)
    print(f"{len(index)} maps of {len({row['image_id'] for row in index})} images in {args.out}")
    return 0


INDEX_COLUMNS = ("image_id", "method", "class", "class_name", "probability", "png", "npy")


def run_export(args: argparse.Namespace) -> int:
    path = args.db or default_path()
    if not path.is_file():
        raise ValueError(f"no review board at {path}: pass --db, or set VIT_EXPLAIN_DATA_DIR")
    try:
        review = ReviewStore(path).get(args.review_id)
    except KeyError as error:
        raise ValueError(error.args[0]) from None
    for written in write_exports(review, args.out, [f.strip() for f in args.format.split(",") if f.strip()]):
        print(written)
    return 0


def _explain_batch(
    loaded: LoadedModel, batch: list[Sample], methods: dict[str, dict[str, Any]], out: Path
) -> list[dict[str, Any]]:
    """Write ``out/<image id>/<method>.png`` and ``.npy`` for one batch; their index rows."""
    gradients = any(get_explainer(name).needs_gradients for name in methods)
    relevance = any(get_explainer(name).needs_relevance for name in methods)
    images = torch.stack([s.image for s in batch])
    cap = capture(loaded.model, images, gradients=gradients, relevance=relevance)
    maps = {name: compute(cap, name, **params).cpu().numpy() for name, params in methods.items()}
    probability = cap.logits.float().softmax(-1).gather(1, cap.targets[:, None])[:, 0].tolist()
    rows = []
    for b, sample in enumerate(batch):
        folder = Path(sample.id).with_suffix("")
        (out / folder).mkdir(parents=True, exist_ok=True)
        picture = loaded.to_display(sample.image)
        target = int(cap.targets[b])
        class_name = loaded.class_names[target] if target < len(loaded.class_names) else ""
        for name in methods:
            np.save(out / folder / f"{name}.npy", maps[name][b])
            Image.fromarray(overlay(picture, maps[name][b])).save(out / folder / f"{name}.png")
            values = (sample.id, name, target, class_name, probability[b], f"{folder.as_posix()}/{name}.png",
                      f"{folder.as_posix()}/{name}.npy")
            rows.append(dict(zip(INDEX_COLUMNS, values, strict=True)))
    return rows


def _report_skipped(skipped: list[tuple[str, str]]) -> None:
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s):", file=sys.stderr)
        for name, reason in skipped:
            print(f"  {name}: {reason}", file=sys.stderr)

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
import contextlib
import sys
from collections.abc import Callable, Collection, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from . import statistics
from .capture import capture, model_dims
from .compute import compute
from .distributed import LOCAL, RayEvaluation
from .evaluate import (
    METRICS,
    TARGETS,
    Evaluation,
    Sample,
    cluttered_samples,
    summary_table,
)
from .inputs import image_files, image_items, load_samples
from .metrics.perturbation import BASELINES
from .models import LoadedModel, load_model
from .registry import Param, capture_options, get_explainer, list_explainers
from .render import overlay
from .results import ResultStore, read_results, result_format
from .reviews.export import FORMATS, write_exports
from .reviews.store import DB_NAME, ReviewStore, default_path

CLUTTERED = "cluttered:"


def _add_common(parser: argparse.ArgumentParser, images_help: str) -> None:
    parser.add_argument("--model", default="embedded", help="'embedded' (default) or a timm model name")
    parser.add_argument("--weights", help="local .safetensors/.pth/.pt weights for --model")
    parser.add_argument("--images", required=True, help=images_help)
    names = ", ".join(list_explainers())
    parser.add_argument("--methods", default="all",
                        help=f"comma-separated explainers ({names}), or 'all' (default)")
    parser.add_argument(
        "--param", action="append", default=[], metavar="METHOD.NAME=VALUE",
        help="an explainer parameter, e.g. rollout.discard_ratio=0.9 (repeatable; 'none' leaves one unset)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (default: 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the cluttered:N images (default: 0)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; 1 is "
                        "often faster on a busy machine)")
    parser.add_argument("--labels", type=Path, metavar="FILE.csv",
                        help="labels of a flat folder: a CSV with columns path,label (paths relative to "
                        "--images; labels: class names, WordNet ids for ImageNet models, or class indices)")
    parser.add_argument("--readers", type=int, default=2,
                        help="processes reading and decoding the images of a folder (default: %(default)s; "
                        "0 reads in the main process)")


def add_evaluate(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="score explainers: perturbation, localisation, sanity, agreement → CSV",
        description="Score explainers on a set of images; one row per (image, method), written as it is "
        "computed. Rerun with the same --out to resume an interrupted run: rows already written are never "
        "computed again.",
    )
    _add_common(parser, "a folder of images (one sub-folder per class names the labels: ImageFolder), or "
                "cluttered:N: N held-out cluttered digits with ground truth")
    parser.add_argument("--out", required=True, type=Path,
                        help="results: *.csv (one file, numbers to 7 significant digits) or *.parquet (a "
                        "folder of part files); resumed if it exists")
    parser.add_argument("--metrics", default=",".join(METRICS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--baseline", default="black", choices=BASELINES,
                        help="what removed pixels become: black, the training mean, a blur of the image, or "
                        "road (noisy linear imputation from the neighbours) (default: %(default)s)")
    parser.add_argument("--target", default="predicted", choices=TARGETS,
                        help="class explained: the model's prediction or the image's label (Chefer et al. "
                        "report both) (default: %(default)s)")
    parser.add_argument("--topk", type=float, default=0.1, help="top share of patches for IoU (default 0.1)")
    parser.add_argument("--step", type=int, default=10,
                        help="perturbation step in %% of the patches: 0, step, … ≤ 90%% (default 10)")
    parser.add_argument("--ray", nargs="?", const=LOCAL, metavar="ADDRESS",
                        help="run on Ray workers, one model each: alone, on a local Ray instance started for "
                        "the run; 'auto' or HOST:PORT joins a cluster (needs the [distributed] extra)")
    parser.add_argument("--workers", type=int,
                        help="Ray workers (default: one per GPU of the cluster with --device cuda, else one "
                        "per --threads CPUs); each uses --threads torch threads (default 1)")
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


def image_source(images: str, labels: Path | None = None) -> int | Path:
    """``--images``: the N of ``cluttered:N``, or a folder holding images; checked before the model loads."""
    if images.startswith(CLUTTERED):
        count = images[len(CLUTTERED) :]
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"--images {images!r}: expected cluttered:N with N a positive whole number")
        if labels is not None:
            raise ValueError("--labels goes with a folder of images; cluttered:N digits have their labels")
        return int(count)
    if labels is None:
        image_files(images)
    elif not labels.is_file():
        raise ValueError(f"--labels {str(labels)!r} does not exist")
    return Path(images)


def load_images(
    loaded: LoadedModel, source: int | Path, args: argparse.Namespace, skipped: list[tuple[str, str]],
    finished: Collection[str] = (),
) -> tuple[Iterator[Sample], int]:
    """Samples of an :func:`image_source` and their number (unreadable files are added to ``skipped``).

    A folder's images are read by ``--readers`` processes (:func:`explainers.inputs.load_samples`); how
    their labels were found is printed on stderr. Files whose id is in ``finished`` (every row stored) are
    not read at all, so resuming a large run does not decode what it will not evaluate.
    """
    if isinstance(source, int):
        return cluttered_samples(loaded, source, args.seed), source
    items, how = image_items(loaded, source, args.labels)
    print(f"{len(items)} images, {how}", file=sys.stderr)
    pending = [item for item in items if item.id not in finished]
    return load_samples(loaded, pending, skipped, workers=args.readers), len(items)


def progress(total: int, label: str, initial: int = 0) -> tqdm:
    """A progress bar of ``total`` images on stderr (redrawn in place on a terminal, every 10 s otherwise)."""
    interval = 0.1 if sys.stderr.isatty() else 10.0
    return tqdm(total=total, initial=initial, desc=label, unit="image", file=sys.stderr, mininterval=interval,
                dynamic_ncols=True)


def run_evaluate(args: argparse.Namespace) -> int:
    methods = parse_methods(args.methods, args.param)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    source = image_source(args.images, args.labels)
    result_format(args.out)
    if args.workers is not None and args.ray is None:
        raise ValueError("--workers sets the number of Ray workers: add --ray")
    # With Ray the driver's model only checks the settings and preprocesses; the workers load their own.
    loaded = load_model(args.model, device="cpu" if args.ray else args.device, weights=args.weights)
    evaluation = Evaluation(
        loaded, methods, metrics=metrics, baseline=args.baseline, target=args.target, topk=args.topk,
        step=args.step, batch_size=args.batch_size,
    )
    runner: contextlib.AbstractContextManager = contextlib.nullcontext(evaluation)
    if args.ray is not None:
        runner = RayEvaluation(evaluation, device=args.device, address=args.ray, workers=args.workers,
                               threads=args.threads or 1)
    skipped: list[tuple[str, str]] = []
    with ResultStore(args.out, evaluation) as store:
        finished = evaluation.finished(store.done)
        samples, total = load_images(loaded, source, args, skipped, finished)
        with runner as engine, progress(total, "evaluate", initial=len(finished)) as bar:
            for row in engine.run(samples, set(store.done)):
                store.append([row])
                finished.add(row["image_id"])
                bar.update(len(finished) + len(skipped) - bar.n)  # skipped files count as handled
            bar.update(len(finished) + len(skipped) - bar.n)  # files skipped after the last row
    _report_skipped(skipped)
    frame = read_results(args.out)
    print(summary_table(frame).T.to_string())
    print("\n" + statistics.report(frame))
    print(f"\n{len(frame)} rows ({frame['image_id'].nunique()} images) in {args.out}")
    return 0


def run_explain(args: argparse.Namespace) -> int:
    methods = parse_methods(args.methods, args.param)
    source = image_source(args.images, args.labels)
    loaded = load_model(args.model, device=args.device, weights=args.weights)
    dims = model_dims(loaded.model)
    methods = {name: get_explainer(name).validate(params, dims) for name, params in methods.items()}
    skipped: list[tuple[str, str]] = []
    samples, total = load_images(loaded, source, args, skipped)
    index: list[dict[str, Any]] = []
    with progress(total, "explain") as bar:
        while batch := list(islice(samples, args.batch_size)):
            index += _explain_batch(loaded, batch, methods, args.out)
            bar.update(len({row["image_id"] for row in index}) + len(skipped) - bar.n)
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
    cap = capture(loaded.model, torch.stack([s.image for s in batch]), **capture_options(methods))
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

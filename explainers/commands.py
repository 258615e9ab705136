"""What the subcommands of ``python -m explainers`` do (the parser is :mod:`explainers.cli`).

``run(args)`` calls ``run_<command>(args)``; each returns the exit status and raises ``ValueError`` with
a message fit for the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Collection, Iterator
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
from .distributed import RayEvaluation
from .evaluate import Evaluation, Sample, cluttered_samples, summary_table
from .inputs import image_files, image_items, load_samples
from .models import LoadedModel, load_model
from .registry import Param, capture_options, get_explainer, list_explainers
from .render import overlay
from .results import ResultStore, read_results, result_format
from .reviews.export import write_exports
from .reviews.store import DATA_DIR_ENV, DB_NAME, ReviewStore, default_path

CLUTTERED = "cluttered:"


def run(args: argparse.Namespace) -> int:
    """Run the parsed subcommand ``args.command`` (``--threads`` first sets torch's CPU threads)."""
    if getattr(args, "threads", None):  # the subcommands that run a model take --threads
        torch.set_num_threads(args.threads)
    return RUNS[args.command](args)


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


def review_board(db: Path | None) -> Path:
    """The review board's file: ``--db``, else the data folder's; a missing one is an error saying which."""
    if db is not None:
        if db.is_dir():
            raise ValueError(f"--db {str(db)!r} is a folder: name the review board's file in it, e.g. "
                             f"{db / DB_NAME}")
        if not db.is_file():
            raise ValueError(f"--db {str(db)!r}: there is no such file (no review board at that path)")
        return db
    path = default_path()
    if not path.is_file():
        folder = (f"${DATA_DIR_ENV} is {os.environ[DATA_DIR_ENV]!r}" if os.environ.get(DATA_DIR_ENV)
                  else f"${DATA_DIR_ENV} is not set, so ./data")
        raise ValueError(f"no review board at {path} (the data folder: {folder}): pass --db FILE, or set "
                         f"{DATA_DIR_ENV} to the dashboard's data folder")
    return path


def run_export(args: argparse.Namespace) -> int:
    path = review_board(args.db)
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


RUNS = {"evaluate": run_evaluate, "explain": run_explain, "export": run_export}

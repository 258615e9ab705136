"""The command line, ``python -m explainers SUBCOMMAND``: one ``add_*`` function per subcommand.

    python -m explainers evaluate --model embedded --images cluttered:500 --out results/eval.csv
    python -m explainers explain --model embedded --images photos/ --methods rollout,gae --out maps/
    python -m explainers export 12 --out meeting/ --format html,zip

Each ``add_*(subparsers)`` declares its arguments; the subcommand runs ``explainers.commands.run_<name>``
with the parsed arguments, which returns the exit status. The parser imports nothing heavy (its choices
come from :mod:`explainers.names`): ``--help`` and usage errors answer before torch is imported. Every
``ValueError`` (bad spec, unknown method, missing folder…) is printed as one ``error:`` line and exits
with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .names import BASELINES, DB_NAME, FORMATS, LOCAL, METRICS, TARGETS, method_names


def _add_common(parser: argparse.ArgumentParser, images_help: str) -> None:
    parser.add_argument("--model", default="embedded",
                        help="'embedded' (default), a timm model name, or hf:FOLDER or hf:HUB_ID")
    parser.add_argument("--weights", metavar="FILE",
                        help="local .safetensors/.pth/.pt weights for a timm --model")
    parser.add_argument("--images", required=True, help=images_help)
    names = ", ".join(method_names())
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


def add_explain(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "explain", help="overlay PNGs and raw maps (.npy) for a folder of images",
        description="Explain the predicted class of every image: OUT/<image>/<method>.png (the map over the "
        "image as the model sees it) and <method>.npy (the raw (gh, gw) map), listed in OUT/index.csv.",
    )
    _add_common(parser, "a folder of images, or cluttered:N")
    parser.add_argument("--out", required=True, type=Path, help="output folder")


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


SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (add_evaluate, add_explain, add_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m explainers", description="Compare how ViTs explain.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


#: The fixes of a model that cannot be loaded (:data:`explainers.models.REMEDIES`), said with the flags.
REMEDIES = {
    "weights_file": "Pass a local weights file instead: --weights FILE (.safetensors, or a .pth/.pt state "
    "dict).",
    "hf_folder": "Or save it there with save_pretrained, copy the folder here and pass --model hf:FOLDER.",
    "no_weights": "--weights is only for timm models: leave it out.",
}


def message(error: ValueError) -> str:
    """The error's message for the command line: a fix the library words as Python code (a
    :class:`~explainers.models.ModelLoadError` with a ``remedy``) is said with the flags instead."""
    from .models import ModelLoadError  # loaded by then, with the commands

    if isinstance(error, ModelLoadError) and error.remedy in REMEDIES:
        return f"{error.problem} {REMEDIES[error.remedy]}"
    return str(error)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import commands  # torch, timm, pandas: only once the arguments parse

    try:
        return commands.run(args)
    except ValueError as error:
        print(f"error: {message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130

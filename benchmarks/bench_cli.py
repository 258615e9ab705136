"""How fast the command line answers ``--help`` and a usage error: the whole process, start to exit.

    python benchmarks/bench_cli.py [--repeats 5] [--root DIR]

Each command is ``python -m explainers ...`` in a fresh process (Python's own start-up included), run
``--repeats`` times; the table shows the median and the range of the wall times. ``--root`` measures
another checkout of the project (e.g. an older commit, ``git archive COMMIT | tar -x -C DIR``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

EVALUATE = ["evaluate", "--images", "cluttered:1", "--out", "x.csv"]
COMMANDS = {
    "--help": ["--help"],
    "evaluate --help": ["evaluate", "--help"],
    "usage error (unknown flag)": [*EVALUATE, "--colour", "red"],
    "usage error (bad choice)": [*EVALUATE, "--baseline", "grey"],
}


def wall_times(root: Path, arguments: list[str], repeats: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "explainers", *arguments], cwd=root, env=env,
                       capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="the checkout to measure (default: this one)")
    args = parser.parse_args()
    print(f"python -m explainers, {args.repeats} fresh processes each ({args.root})\n")
    print("| command | median (s) | range (s) |\n|---|---:|---:|")
    for label, arguments in COMMANDS.items():
        times = wall_times(args.root.resolve(), arguments, args.repeats)
        print(f"| `{label}` | {statistics.median(times):.2f} | {min(times):.2f}–{max(times):.2f} |")


if __name__ == "__main__":
    main()

"""Memory of the dashboard's shared caches filled with the largest inputs a visitor may give.

    python benchmarks/bench_memory.py [--model vit_base_patch16_224] [--models 4] [--uploads 30]
                                      [--captures 12] [--maps 60000]

In one process, through the dashboard's own functions (``dashboard.state``), each cache is filled past its
byte budget, and the table shows, per cache: its budget, the entries and bytes it holds afterwards (its own
count: never more than the budget), and how much this process's resident memory (RSS, ``/proc``, read
after ``malloc_trim``) grew.

- models: ``--models`` loads of ``--model`` (random weights written to a file in the data folder; the
  file is touched between loads, so each is a new version, as an operator replacing it would make). The
  default, ViT-B/16 (86.6 M parameters), is the size class of the largest a visitor may load
  (``VIT_EXPLAIN_MAX_PARAMS``, 100 M by default).
- images: ``--uploads`` uploads at the largest size the upload limit lets through (8.4 megapixel noise,
  an uncompressed PNG just under 25 MB), each reduced on arrival to 4 megapixels (12 MB), the most kept.
- captures: ``--captures`` analyses of different images by the last model, with every optional part
  (LRP relevance and LeGrad's per-layer gradients: the largest capture of that model).
- maps: ``--maps`` maps of the model's 14×14 grid (put directly: computing them all would take long).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["VIT_EXPLAIN_DATA_DIR"] = tempfile.mkdtemp(prefix="bench-memory-")

import ctypes  # noqa: E402
import gc  # noqa: E402
import io  # noqa: E402

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from dashboard import state  # noqa: E402
from dashboard.byte_cache import nbytes  # noqa: E402
from explainers import list_explainers  # noqa: E402
from explainers.reviews import data_dir  # noqa: E402

MB = 2**20
LIBC = ctypes.CDLL("libc.so.6")


def rss() -> int:
    """Resident memory of this process in bytes, after handing freed memory back to the system."""
    gc.collect()
    LIBC.malloc_trim(0)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def largest_upload(index: int, generator: np.random.Generator) -> bytes:
    """A noise PNG of 8192×1024 pixels, uncompressed: 25.2 MB, under the 25 MiB upload limit; reduced on
    arrival to the most an image keeps (4 megapixels, 12 MB: a shorter side under 1024 px)."""
    pixels = generator.integers(0, 256, (1024, 8192, 3), dtype=np.uint8)
    pixels[0, 0, 0] = index % 256
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=0)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--uploads", type=int, default=30)
    parser.add_argument("--captures", type=int, default=12)
    parser.add_argument("--maps", type=int, default=60_000)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    caches = state.caches()
    rows = []

    def measure(name: str, cache, fill) -> None:
        before, start = rss(), time.perf_counter()
        fill()
        rows.append((name, cache.budget / MB, len(cache), cache.total / MB, (rss() - before) / MB,
                     time.perf_counter() - start))

    weights = data_dir() / "weights" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    save_file(timm.create_model(args.model, pretrained=False).state_dict(), str(weights))
    loaded = []

    def models() -> None:
        for index in range(args.models):
            os.utime(weights, (time.time(), time.time() + index))  # a new version of the file
            loaded.append(state.get_model(args.model, "cpu", "weights/model.safetensors"))
        del loaded[:-1]  # only the cache keeps the others

    def images() -> None:
        generator = np.random.default_rng(0)
        for index in range(args.uploads):
            state.get_image(state.store_upload(largest_upload(index, generator)))

    def captures() -> None:
        for seed in range(args.captures):
            record = state.get_image(f"digit:{seed}")
            state.analyse(loaded[-1], record, None, methods=list_explainers())

    def maps() -> None:
        for index in range(args.maps):
            caches.maps.put(("map", index), torch.rand(14, 14))

    measure(f"models ({args.models} loads of {args.model})", caches.models, models)
    measure(f"images ({args.uploads} largest uploads)", caches.images, images)
    measure(f"captures ({args.captures} images, every part)", caches.analyses, captures)
    measure(f"maps ({args.maps} of 14×14)", caches.maps, maps)
    analysis = caches.analyses.get(next(caches.analyses.held_keys()))
    print(f"RSS at the end: {rss() / MB:.0f} MB; one capture of {args.model} with every part: "
          f"{nbytes(analysis) / MB:.1f} MB\n")
    print("| cache | budget MB | entries held | bytes held MB | RSS growth MB | seconds |")
    print("|---|---|---|---|---|---|")
    for name, budget, entries, held, grown, seconds in rows:
        print(f"| {name} | {budget:.0f} | {entries} | {held:.1f} | {grown:.0f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()

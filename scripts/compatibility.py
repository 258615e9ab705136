"""Which timm ViT-style families every registered explainer can explain: the README's compatibility table.

For each family (a timm module's models with sizes, patch sizes and resolutions taken out of the name,
e.g. ``vit_base_patch16_siglip_224`` → ``vit_siglip``) one representative is built small: random weights,
depth 2 (narrower where timm allows), at an input of at most 8×8 patches (``img_size`` scaled down, the
pixels per patch kept, where timm allows; NaFlexViT and ``dynamic_img_size`` models simply take the small
input), through :func:`explainers.describe_model`; then every method of :func:`explainers.list_explainers`
runs on two random images (headless models explain a :class:`explainers.SimilarityTarget`). A cell is ✓
when the maps have the model's grid and are finite and non-negative ("✓ flat" when the random model's map
is constant), "refused: …" when the method refuses this model with a ``ValueError`` (its reason), "error:
…" for any other exception, "invalid map" otherwise. The dashboard's model picker offers the families with
no error and no invalid map (``dashboard.state.supported_timm_models``).

    python scripts/compatibility.py            # prints the table, writes it into README.md and
                                               # benchmarks/results/compatibility.csv (every model name)
    python scripts/compatibility.py --no-write --families siglip,cait
"""

from __future__ import annotations

import argparse
import csv
import re
import time
from contextlib import suppress
from pathlib import Path

import timm
import torch

import explainers

MODULES = (
    "vision_transformer",
    "vision_transformer_relpos",
    "vision_transformer_hybrid",
    "deit",
    "beit",
    "eva",
    "cait",
    "naflexvit",
    "xcit",
    "swin_transformer",
    "swin_transformer_v2",
    "pit",
    "levit",
    "mvitv2",
    "twins",
    "efficientvit_mit",
    "efficientvit_msra",
    "fastvit",
    "crossvit",
    "convit",
    "volo",
    "tnt",
)
SIZES = (
    r"(?:tiny|small|base|large|huge|giant|gigantic|medium|little|mediumd|betwixt|wee|pwee|nano|micro|"
    r"xxs|xs|s|m|l|b|t|ti|h|g|so\d+m\d*|\d+[mb]|xlarge|xxsmall|xsmall|e|enormous)"
)
#: Modules whose architecture is refused as a whole: one row each.
WHOLE = {
    "fastvit",
    "levit",
    "volo",
    "swin_transformer",
    "swin_transformer_v2",
    "pit",
    "crossvit",
    "twins",
    "xcit",
    "efficientvit_mit",
    "efficientvit_msra",
    "mvitv2",
    "tnt",
    "convit",
}
MARKERS = ("<!-- compatibility:start -->", "<!-- compatibility:end -->")
SMALL = (  # tried in order; never the full-size default (giant models at full resolution exhaust memory)
    {"depth": 2, "embed_dim": 64, "num_heads": 2, "init_values": 1.0},  # layer scale: random blocks matter
    {"depth": 2, "embed_dim": 64, "num_heads": 2},
    {"depth": 2},
    {"depth": 2, "img_size": 224},
    {"img_size": 224},
)
#: Largest patch grid side checked: attention flow's max-flows (N per image on L·N² edges) and LRP on
#: full-size grids would take minutes per family; the maps' validity does not depend on the size.
GRID = 8
#: Skip a model whose capture would exceed this (attention + gradients + autograd's copies, 2 images).
MAX_CAPTURE_BYTES = 2**30


def family(name: str) -> str:
    """``vit_base_patch16_siglip_224`` → ``vit_siglip``: size words, patch sizes and resolutions removed."""
    parts = [
        p
        for p in name.split(".")[0].split("_")
        if not re.fullmatch(SIZES + r"\d*|patch\d+|p\d+|\d+|w\d+|window\d+", p)
    ]
    return "_".join(parts)


def representatives() -> dict[str, tuple[str, str, list[str]]]:
    """family → (module, smallest-looking model name, all the family's model names)."""
    found: dict[str, list[str]] = {}
    modules: dict[str, str] = {}
    for module in MODULES:
        for name in timm.list_models(module=module):
            if name.startswith("test_"):  # timm's own unit-test models
                continue
            key = module if module in WHOLE else family(name)
            found.setdefault(key, []).append(name)
            modules.setdefault(key, module)
    order = ("tiny", "small", "little", "medium", "base")

    def rank(name: str) -> tuple[int, int, str]:
        return next((i for i, w in enumerate(order) if w in name), len(order)), len(name), name

    return {key: (modules[key], min(names, key=rank), names) for key, names in sorted(found.items())}


def _create(name: str, extra: dict) -> torch.nn.Module:
    error: Exception | None = None
    for kwargs in SMALL:
        try:
            torch.manual_seed(0)
            return timm.create_model(name, pretrained=False, **kwargs, **extra).eval()
        except Exception as exc:  # timm rejects kwargs some architectures don't take: try others
            error = exc
    raise error


def build(name: str) -> tuple[torch.nn.Module, explainers.ModelDescription]:
    """The model built small and its description, at an input of at most ``GRID×GRID`` patches: the model
    is built again with ``img_size`` scaled down (pixels per patch kept) where timm takes it; NaFlexViT and
    models with ``dynamic_img_size`` take the small input as they are. A ``ValueError`` if refused."""
    model = _create(name, {})
    description = explainers.describe_model(model)
    (height, width), (gh, gw) = description.image_size, description.layout.grid
    if gh <= GRID and gw <= GRID:
        return model, description
    small = (height * min(gh, GRID) // gh, width * min(gw, GRID) // gw)
    with suppress(Exception):  # a hybrid's or a fixed-size model's img_size may not be changed
        smaller = _create(name, {"img_size": small})
        return smaller, explainers.describe_model(smaller, small)
    with suppress(ValueError):  # NaFlexViT and dynamic_img_size models take any multiple of the patch
        return model, explainers.describe_model(model, small)
    return model, description


def short(exc: Exception) -> str:
    """A cell: ``refused: <reason>`` (the first sentence of the library's ``ValueError``: what and why),
    ``error: <type>: <message>`` else."""
    if isinstance(exc, ValueError):
        text = "refused: " + str(exc).split(". ")[0]
    else:
        text = f"error: {type(exc).__name__}: {exc}"
    return text.replace("|", "/").replace("\n", " ")[:200]


def check(name: str, methods: list[str]) -> tuple[str, list[str]]:
    """``(summary or reason, one cell per method)``."""
    try:
        model, description = build(name)
    except ValueError as exc:
        return f"refused: {exc}", ["—"] * len(methods)
    except Exception as exc:
        return f"cannot build: {type(exc).__name__}: {exc}".replace("|", "/")[:120], ["—"] * len(methods)
    tokens = description.layout.num_tokens
    if 3 * 2 * description.num_layers * description.num_heads * tokens**2 * 4 > MAX_CAPTURE_BYTES:
        reason = f"not checked: too large when built small ({description.num_layers} layers, {tokens} tokens)"
        return reason, ["—"] * len(methods)
    images = torch.randn(2, 3, *description.image_size, generator=torch.Generator().manual_seed(0))
    target = None if description.has_head else explainers.SimilarityTarget(images[:1].flip(-1))
    cells = []
    for method in methods:
        needs_target = any(explainers.capture_options([method]).values())  # gradients, LeGrad, LRP
        try:
            maps = explainers.explain(model, images, method, target=target if needs_target else None)
        except Exception as exc:
            cells.append(short(exc))
            continue
        good = (
            maps.shape == (2, *description.layout.grid)
            and bool(torch.isfinite(maps).all())
            and bool((maps >= 0).all())
        )
        flat = bool((maps.flatten(1).std(dim=1) == 0).any())
        cells.append(("✓ flat" if flat else "✓") if good else "invalid map")
    return description.summary, cells


def table(families: list[str] | None = None, csv_path: Path | None = None) -> str:
    methods = explainers.list_explainers()
    lines = [
        "| family (timm module, models) | example, built small | readout · prefix · grid | "
        + " | ".join(methods)
        + " |",
        "|---|---|---|" + "---|" * len(methods),
    ]
    records = []
    for key, (module, name, names) in representatives().items():
        if families and not any(f in key for f in families):
            continue
        start = time.perf_counter()
        summary, cells = check(name, methods)
        print(f"{key:40s} {name:45s} {time.perf_counter() - start:5.1f}s {summary[:60]}", flush=True)
        row = [f"`{key}` ({module}, {len(names)})", f"`{name}`", summary.replace("|", "/"), *cells]
        lines.append("| " + " | ".join(row) + " |")
        records.append(
            {
                "family": key,
                "module": module,
                "example": name,
                "summary": summary,
                **dict(zip(methods, cells, strict=True)),
                "models": " ".join(names),
            }
        )
    if csv_path is not None:
        with csv_path.open("w", newline="") as handle:
            writer = csv.DictWriter(
                handle, fieldnames=["family", "module", "example", "summary", *methods, "models"]
            )
            writer.writeheader()
            writer.writerows(records)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--families", default="", help="comma-separated parts of family names to check")
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    families = [f for f in args.families.split(",") if f]
    text = table(families, None if args.no_write else root / "benchmarks" / "results" / "compatibility.csv")
    print(text)
    if not args.no_write:
        readme = root / "README.md"
        content = readme.read_text()
        start, end = content.index(MARKERS[0]) + len(MARKERS[0]), content.index(MARKERS[1])
        readme.write_text(content[:start] + "\n" + text + "\n" + content[end:])


if __name__ == "__main__":
    main()

"""Train the embedded ViT on cluttered digits: one command, fixed seed, CPU only, torch + timm + numpy.

    python scripts/train_embedded.py              # train, save to explainers/embedded/, evaluate
    python scripts/train_embedded.py --evaluate   # only evaluate the saved model

Every batch is freshly generated from the train split of the source digits (so no image is seen twice),
then lightly augmented (half of them rotated ±10° and scaled ±10%). The final weights are those of the
last step; the test split is only read for logging and for the final figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer
from timm.optim import create_optimizer_v2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from explainers.datasets.cluttered_digits import cluttered_digits  # noqa: E402
from explainers.metrics.localisation import mass_inside, pointing_chance, pointing_game, region_masks  # noqa: E402
from explainers.models import LoadedModel  # noqa: E402

OUT_DIR = ROOT / "explainers" / "embedded"
IMG_SIZE, PATCH_SIZE, NUM_CLASSES = 64, 8, 10
TEST_IMAGES, TEST_SEED = 2000, 1
LARGE_TEST_IMAGES, LARGE_TEST_SEED = 10_000, 4  # a tighter estimate: ±0.6 points (95%) instead of ±1.3
LOCALISATION_IMAGES, LOCALISATION_SEED = 500, 3
STATS_IMAGES, STATS_SEED = 4096, 2


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--mlp-ratio", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=16000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup", type=float, default=0.05, help="share of the steps spent warming up")
    parser.add_argument("--augment", type=float, default=0.5, help="share of images rotated and scaled")
    parser.add_argument("--n-clutter", type=int, default=4, help="clutter fragments per training image")
    parser.add_argument("--seed", type=int, default=0)
    # one thread: on a shared 2-core machine two threads ran 2-4× slower (measured), idling at barriers
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument(
        "--evaluate", action="store_true", help="evaluate the model in explainers/embedded/, train nothing"
    )
    return parser.parse_args()


def normalise(images: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 ``(n, H, W, 3)`` → float ``(n, 3, H, W)`` in [0, 1], normalised by mean and std."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def augment(x: torch.Tensor, gen: torch.Generator, share: float) -> torch.Tensor:
    """A ``share`` of the images rotated (±10°) and scaled (±10%) about the canvas centre, the others
    left crisp as at test time; ``x`` in [0, 1], black padding."""
    n = x.shape[0]
    keep = torch.rand(n, generator=gen) >= share
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(10)
    scale = 1 + (torch.rand(n, generator=gen) * 2 - 1) * 0.1
    angle[keep], scale[keep] = 0.0, 1.0
    cos, sin, zero = torch.cos(angle) / scale, torch.sin(angle) / scale, torch.zeros(n)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def data_stats() -> tuple[list[float], list[float]]:
    """Per-channel mean and std of training images in [0, 1]."""
    x = cluttered_digits(STATS_IMAGES, seed=STATS_SEED, split="train").images.astype(np.float64) / 255
    mean, std = x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std]


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, labels: np.ndarray, batch: int = 500) -> float:
    model.eval()
    preds = torch.cat([model(x[i : i + batch]).argmax(-1) for i in range(0, len(x), batch)])
    return float((preds.numpy() == labels).mean())


def gallery_accuracy(model: torch.nn.Module, mean: list[float], std: list[float]) -> float:
    """Accuracy on the digits of the shipped gallery, read from their PNG files."""
    from explainers.datasets.gallery import load_gallery

    digits = [item for item in load_gallery() if item.kind == "digit"]
    images = np.stack([np.asarray(item.image) for item in digits])
    return accuracy(model, normalise(images, mean, std), np.array([item.label for item in digits]))


def training_batch(args: argparse.Namespace, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Fresh train-split images and labels for one step."""
    batch = cluttered_digits(
        args.batch_size, seed=args.seed * 1_000_000 + step, split="train", n_clutter=args.n_clutter
    )
    return batch.images, batch.labels


def model_args(args: argparse.Namespace) -> dict:
    """Keyword arguments of the timm ``VisionTransformer``; every other setting is timm's default."""
    return dict(
        img_size=IMG_SIZE,
        patch_size=PATCH_SIZE,
        in_chans=3,
        num_classes=NUM_CLASSES,
        embed_dim=args.embed_dim,
        depth=args.depth,
        num_heads=args.num_heads,
        mlp_ratio=args.mlp_ratio,
    )


def train(args: argparse.Namespace, mean: list[float], std: list[float]) -> tuple[VisionTransformer, float]:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = VisionTransformer(**model_args(args))
    # timm's own AdamW set-up: no weight decay on biases, norms, the class token and position embeddings
    optimiser = create_optimizer_v2(model, opt="adamw", lr=args.lr, weight_decay=args.weight_decay)
    warmup = max(1, int(args.warmup * args.steps))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, schedule)
    monitor = cluttered_digits(500, seed=TEST_SEED + 1, split="test")
    monitor_x = normalise(monitor.images, mean, std)
    start = window = time.time()
    seen, loss_sum, correct = 0, 0.0, 0
    for step in range(args.steps):
        model.train()
        images, labels = training_batch(args, step)
        x = augment(normalise(images, [0.0] * 3, [1.0] * 3), gen, args.augment)
        x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        y = torch.from_numpy(labels)
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=0.1)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        scheduler.step()
        seen += len(y)
        loss_sum += loss.item() * len(y)
        correct += int((logits.argmax(-1) == y).sum())
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            now = time.time()
            line = (
                f"step {step + 1}/{args.steps} loss {loss_sum / seen:.3f} train-acc {correct / seen:.3f} "
                f"lr {scheduler.get_last_lr()[0]:.2e} {(now - start) / 60:.1f} min "
                f"{seen / (now - window):.0f} img/s"
            )
            if (step + 1) % (10 * args.log_every) == 0:
                line += f" monitor-acc {accuracy(model, monitor_x, monitor.labels):.3f}"
            print(line, flush=True)
            seen, loss_sum, correct, window = 0, 0.0, 0, time.time()
    return model.eval(), time.time() - start


def evaluate(model: torch.nn.Module, mean: list[float], std: list[float]) -> dict[str, float | int]:
    test = cluttered_digits(TEST_IMAGES, seed=TEST_SEED, split="test")
    large = cluttered_digits(LARGE_TEST_IMAGES, seed=LARGE_TEST_SEED, split="test")
    metrics: dict[str, float | int] = {
        "test_images": TEST_IMAGES,
        "test_seed": TEST_SEED,
        "test_accuracy": round(accuracy(model, normalise(test.images, mean, std), test.labels), 4),
        "large_test_images": LARGE_TEST_IMAGES,
        "large_test_seed": LARGE_TEST_SEED,
        "large_test_accuracy": round(accuracy(model, normalise(large.images, mean, std), large.labels), 4),
        "gallery_accuracy": round(gallery_accuracy(model, mean, std), 4),
    }
    print(json.dumps(metrics), flush=True)
    return metrics


def localisation(loaded: LoadedModel, images: np.ndarray, labels: np.ndarray, boxes: np.ndarray) -> dict:
    """Per explainer (default parameters, target = true class): mean share of map mass inside the box
    and pointing-game hit rate, with the chance levels of both (box area share, share of patches
    touching the box)."""
    import explainers

    x = torch.stack([loaded.preprocess(Image.fromarray(image)) for image in images])
    size, grid = tuple(x.shape[-2:]), tuple(loaded.model.patch_embed.grid_size)
    result = {
        "images": len(images),
        "chance": {
            "mass_in_box": round(float(region_masks(boxes, size).double().mean()), 4),
            "pointing": round(float(pointing_chance(boxes, grid, size).mean()), 4),
        },
    }
    for method in explainers.list_explainers():
        maps = torch.cat(
            [
                explainers.explain(loaded.model, x[i : i + 100], method, target=labels[i : i + 100].tolist())
                for i in range(0, len(x), 100)
            ]
        )
        result[method] = {
            "mass_in_box": round(float(mass_inside(maps, boxes, size).mean()), 4),
            "pointing": round(float(pointing_game(maps, boxes, size).mean()), 4),
        }
    return result


def markdown(name: str, result: dict) -> str:
    chance = result["chance"]
    lines = [
        f"{name} ({result['images']} images; chance: mass {chance['mass_in_box']:.3f}, "
        f"pointing {chance['pointing']:.3f})",
        "",
        "| Method | Mass in box | × chance | Pointing game | × chance |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method, row in result.items():
        if method in ("images", "chance"):
            continue
        lines.append(
            f"| {method} | {row['mass_in_box']:.3f} | {row['mass_in_box'] / chance['mass_in_box']:.1f} "
            f"| {row['pointing']:.3f} | {row['pointing'] / chance['pointing']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def evaluate_saved(config_path: Path) -> None:
    """Accuracy and localisation of the saved embedded model, through the project's own loader."""
    from explainers.datasets.gallery import load_gallery
    from explainers.models import load_model

    loaded = load_model("embedded")
    config = json.loads(config_path.read_text())
    cfg = config["pretrained_cfg"]
    metrics = evaluate(loaded.model, cfg["mean"], cfg["std"])
    digits = [item for item in load_gallery() if item.kind == "digit"]
    gallery = localisation(
        loaded,
        np.stack([np.asarray(item.image) for item in digits]),
        np.array([item.label for item in digits]),
        np.array([item.box for item in digits]),
    )
    held_out = cluttered_digits(LOCALISATION_IMAGES, seed=LOCALISATION_SEED, split="test")
    metrics["localisation"] = {
        "gallery": gallery,
        f"held_out_seed_{LOCALISATION_SEED}": localisation(
            loaded, held_out.images, held_out.labels, held_out.boxes
        ),
    }
    print(markdown("Gallery digits", gallery))
    print(
        markdown(
            f"Held-out digits, seed {LOCALISATION_SEED}",
            metrics["localisation"][f"held_out_seed_{LOCALISATION_SEED}"],
        )
    )
    config["metrics"] = metrics
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.evaluate:
        evaluate_saved(OUT_DIR / "config.json")
        return
    config_path, weights_path = args.out / "config.json", args.out / "model.safetensors"
    mean, std = data_stats()
    print(f"mean {mean} std {std}", flush=True)
    model, seconds = train(args, mean, std)
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights_path)
    config = {
        "architecture": "timm.models.vision_transformer.VisionTransformer",
        "model_args": model_args(args),
        "pretrained_cfg": {
            "input_size": [3, IMG_SIZE, IMG_SIZE],
            "mean": mean,
            "std": std,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "num_classes": NUM_CLASSES,
            "first_conv": "patch_embed.proj",
            "classifier": "head",
        },
        "class_names": [str(d) for d in range(10)],
        "training": {
            "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "seed": args.seed,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "augment": args.augment,
            "n_clutter": args.n_clutter,
            "wall_minutes": round(seconds / 60, 1),
            "threads": args.threads,
            "date": date.today().isoformat(),
            "torch": torch.__version__,
        },
    }
    config["metrics"] = evaluate(model, mean, std)
    config_path.write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    main()

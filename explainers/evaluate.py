"""Batched evaluation of explainers: the loop behind ``python -m explainers evaluate`` and the Evaluate page.

:class:`Evaluation` checks its settings when built (so a bad method or parameter fails before any image
is read). :meth:`Evaluation.rows` turns one batch of samples into one flat row per (image, method): the
local loop (:meth:`Evaluation.run`, which yields rows as soon as their batch is done, so callers can
write, show, stop and resume) and the Ray workers (:mod:`explainers.distributed`) both call it, and
:mod:`explainers.results` stores rows by their key. Per batch of images the model runs once to capture
attention (and gradients when a method needs them); every method's map comes from that capture; then
the metrics of :mod:`explainers.metrics` are computed for all methods at once:

* ``perturbation``: the positive, negative and insertion curves and their AUCs
  (:mod:`.metrics.perturbation`);
* ``localisation``: pointing game, map mass inside the mask and top-k% IoU with the mask, for images with
  ground truth (:mod:`.metrics.localisation`);
* ``sanity``: Spearman ρ with the map of the model whose top k blocks are random (:mod:`.metrics.sanity`);
* ``agreement``: Spearman ρ and top-k% IoU with every other method's map (:mod:`.metrics.agreement`).

The class explained is the model's prediction (``target="predicted"``) or the label (``"label"``); top-1
along the perturbation curves compares with the label when the image has one, else with the prediction
on the unperturbed image.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations, islice
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .capture import Capture, capture, model_dims
from .compute import compute
from .datasets.cluttered_digits import cluttered_digits
from .metrics.agreement import spearman, top_k_iou
from .metrics.localisation import mass_inside, pointing_game, topk_iou
from .metrics.perturbation import BASELINES, CURVES, fractions_every, perturbation_curves
from .metrics.sanity import cascading_randomisation
from .models import LoadedModel
from .names import METRICS, TARGETS
from .registry import capture_options, get_explainer

#: The columns that identify a row and the settings it was computed with.
KEY_COLUMNS: tuple[str, ...] = ("image_id", "method", "params", "baseline", "target_mode")
#: What the model made of the image: its label (if known), the class explained, the prediction, whether
#: it is right, and the probability of the class explained.
INFO_COLUMNS: tuple[str, ...] = ("label", "target", "predicted", "correct", "p_target")
#: The whole-number columns (missing: ``None``); every column not a key is otherwise a float.
INTEGER_COLUMNS: tuple[str, ...] = ("label", "target", "predicted", "correct")
#: Score columns summarised per method → (label, whether higher is better).
SCORES: dict[str, tuple[str, bool]] = {
    **{f"{c}_auc": (f"{curve.label} AUC", curve.higher_is_better) for c, curve in CURVES.items()},
    **{f"{c}_top1_auc": (f"{curve.label} top-1 AUC", curve.higher_is_better) for c, curve in CURVES.items()},
    "pointing_game": ("Pointing game", True),
    "mass_inside": ("Mass inside mask", True),
    "topk_iou": ("Top-k IoU with mask", True),
    "sanity_abs_rho": ("Sanity |ρ|, all blocks random", False),
}


@dataclass(frozen=True, eq=False)
class Sample:
    """One image to evaluate: the model's input and, when known, its label and ground truth.

    image: normalised ``(3, H, W)``, what the model sees; mask: bool ``(H, W)`` on the same pixels; box:
    the mask's bounding box ``(x0, y0, x1, y1)``, x1 and y1 exclusive.
    """

    id: str
    image: torch.Tensor
    label: int | None = None
    mask: torch.Tensor | None = None
    box: tuple[int, int, int, int] | None = None


def to_sample(
    loaded: LoadedModel, id: str, image: Image.Image, label: int | None = None, mask: np.ndarray | None = None
) -> Sample:
    """A :class:`Sample` from a picture; the mask follows the image through the model's preprocess.

    The mask is drawn white on black, preprocessed like the image (same resize and crop) and read back
    as the pixels of at least half intensity, so it stays aligned with whatever the model sees; the box
    is the bounding box of that mask. A mask cropped away entirely leaves the sample without one.
    """
    tensor = loaded.preprocess(image)
    if mask is None:
        return Sample(id, tensor, label)
    picture = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).convert("RGB")
    aligned = loaded.to_display(loaded.preprocess(picture))[..., 0] >= 128
    rows, cols = np.flatnonzero(aligned.any(axis=1)), np.flatnonzero(aligned.any(axis=0))
    if not len(rows):
        return Sample(id, tensor, label)
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    return Sample(id, tensor, label, torch.from_numpy(aligned), box)


def cluttered_samples(loaded: LoadedModel, n: int, seed: int = 0) -> Iterator[Sample]:
    """``cluttered_digits(n, seed, split="test")`` with labels and masks; ids ``cluttered-s{seed}-{i}``."""
    data = cluttered_digits(n, seed=seed, split="test")
    for i in range(n):
        image = Image.fromarray(data.images[i])
        yield to_sample(loaded, f"cluttered-s{seed}-{i:05d}", image, int(data.labels[i]), data.masks[i])


def params_text(params: Mapping[str, Any]) -> str:
    """Parameters as one canonical string, ``name=value`` joined by ``;`` in declaration order."""
    return ";".join(f"{name}={value}" for name, value in params.items())


def _pct(fraction: float) -> str:
    return f"{round(fraction * 100):02d}"


class Evaluation:
    """Settings of one evaluation, checked against the model; :meth:`run` evaluates samples.

    Args:
        loaded: the model with its preprocess and data config (mean and std of its inputs).
        methods: explainer name → parameters (missing ones take their defaults).
        metrics: which of :data:`METRICS` to compute.
        baseline: what removed pixels become (:data:`.metrics.perturbation.BASELINES`).
        target: explain the ``"predicted"`` class or the ``"label"``.
        topk: fraction of the patches forming the top region (localisation and agreement IoU).
        step: perturbation step in percent of the patches (curves at 0, step, 2·step, … ≤ 90 %).
        seed: seed of the random weights of the sanity check.
        batch_size: images per batch (perturbed copies go through the model in larger batches).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        methods: Mapping[str, Mapping[str, Any]],
        *,
        metrics: Sequence[str] = METRICS,
        baseline: str = "black",
        target: str = "predicted",
        topk: float = 0.1,
        step: int = 10,
        seed: int = 0,
        batch_size: int = 32,
    ) -> None:
        if not methods:
            raise ValueError("choose at least one method")
        dims = model_dims(loaded.model)
        self.methods = {name: get_explainer(name).validate(params, dims) for name, params in methods.items()}
        for name, allowed, value in (("metric", METRICS, metrics), ("target", TARGETS, [target]),
                                     ("baseline", BASELINES, [baseline])):
            bad = [v for v in value if v not in allowed]
            if bad:
                raise ValueError(f"unknown {name} {bad[0]!r}: choose from {', '.join(allowed)}")
        if not 0.0 < topk <= 1.0:
            raise ValueError(f"topk must be in (0, 1], got {topk}")
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.fractions = fractions_every(step)
        self.loaded, self.metrics, self.baseline, self.target = loaded, tuple(metrics), baseline, target
        self.topk, self.step, self.seed, self.batch_size = topk, step, seed, batch_size
        self.num_layers = dims["num_layers"]
        self.capture_options = capture_options(self.methods)

    @property
    def columns(self) -> list[str]:
        """Every column of a result row, in order."""
        return [*KEY_COLUMNS, *INFO_COLUMNS, *self.score_columns]

    @property
    def score_columns(self) -> list[str]:
        """The columns of the metrics, in order."""
        columns: list[str] = []
        if "perturbation" in self.metrics:
            for curve in CURVES:
                columns += [f"{curve}_auc", f"{curve}_top1_auc"]
                columns += [f"{curve}_p_{_pct(f)}" for f in self.fractions]
                columns += [f"{curve}_top1_{_pct(f)}" for f in self.fractions]
        if "localisation" in self.metrics:
            columns += ["pointing_game", "mass_inside", "topk_iou"]
        if "sanity" in self.metrics:
            columns += [f"sanity_rho_{k}" for k in range(1, self.num_layers + 1)] + ["sanity_abs_rho"]
        if "agreement" in self.metrics:
            for other in self.methods:
                columns += [f"spearman_vs_{other}", f"iou_vs_{other}"]
        return columns

    def key(self, image_id: str, method: str) -> tuple[str, ...]:
        """The :data:`KEY_COLUMNS` of the row of ``image_id`` and ``method`` under these settings."""
        return image_id, method, params_text(self.methods[method]), self.baseline, self.target

    def explain(
        self, model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor | None
    ) -> tuple[Capture, dict[str, torch.Tensor]]:
        """One capture of ``model`` on ``images`` and every method's maps ``(B, gh, gw)`` from it."""
        cap = capture(model, images, targets, **self.capture_options)
        return cap, {name: compute(cap, name, **params) for name, params in self.methods.items()}

    def maps(self, model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> dict:
        """Every method's maps for ``targets`` (the explain function of the sanity check)."""
        return self.explain(model, images, targets)[1]

    def settings(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this evaluation around another copy of the model
        (``Evaluation(load_model(...), **settings)``: how a Ray worker gets the driver's settings)."""
        return {
            "methods": self.methods, "metrics": self.metrics, "baseline": self.baseline,
            "target": self.target, "topk": self.topk, "step": self.step, "seed": self.seed,
            "batch_size": self.batch_size,
        }

    def finished(self, done: Iterable[tuple[str, ...]]) -> set[str]:
        """The image ids of which every method's row is in ``done``."""
        done = set(done)
        return {key[0] for key in done if all(self.key(key[0], m) in done for m in self.methods)}

    def batches(self, samples: Iterable[Sample], done: set[tuple[str, ...]]) -> Iterator[list[Sample]]:
        """The samples with at least one row not in ``done``, in batches of ``batch_size``, read lazily."""
        pending = (s for s in samples if any(self.key(s.id, m) not in done for m in self.methods))
        while batch := list(islice(pending, self.batch_size)):
            yield batch

    def run(
        self, samples: Iterable[Sample], done: Iterable[tuple[str, ...]] = ()
    ) -> Iterator[dict[str, Any]]:
        """The local loop: :meth:`rows` of every batch of :meth:`batches`, leaving out the rows in ``done``.

        Rows whose :meth:`key` is in ``done`` are neither computed nor yielded (an image is skipped whole
        when all its methods are done). Rows come batch by batch, in sample then method order.
        """
        done = set(done)
        for batch in self.batches(samples, done):
            yield from self.new_rows(self.rows(batch), done)

    def new_rows(self, rows: Iterable[dict[str, Any]], done: set[tuple[str, ...]]) -> list[dict[str, Any]]:
        """The ``rows`` whose key is not in ``done``."""
        return [row for row in rows if tuple(row[c] for c in KEY_COLUMNS) not in done]

    @torch.no_grad()
    def _scores(self, batch: list[Sample], images: torch.Tensor, cap: Capture, maps: dict) -> dict:
        """column → ``(M, B)`` tensor, or list of M ``(B,)`` tensors, of every score but the sanity check."""
        model, logits, targets, device = self.loaded.model, cap.logits, cap.targets, cap.device
        names = list(self.methods)
        stacked = torch.stack([maps[name] for name in names])
        predicted = logits.argmax(dim=-1)
        labels = torch.tensor([-1 if s.label is None else s.label for s in batch], device=device)
        truth = torch.where(labels >= 0, labels, predicted)
        scores: dict[str, Any] = {}
        if "perturbation" in self.metrics:
            curves = perturbation_curves(
                model, images, stacked, targets, labels=truth, mean=self.loaded.data_config["mean"],
                std=self.loaded.data_config["std"], baseline=self.baseline, fractions=self.fractions,
                chunk_size=max(256, 8 * self.batch_size),
            )
            for curve in CURVES:
                scores[f"{curve}_auc"] = curves.auc(curve)
                scores[f"{curve}_top1_auc"] = curves.auc(curve, "top1")
                for i, f in enumerate(self.fractions):
                    scores[f"{curve}_p_{_pct(f)}"] = curves.probability[curve][..., i]
                    scores[f"{curve}_top1_{_pct(f)}"] = curves.top1[curve][..., i]
        if "localisation" in self.metrics:
            scores |= self._localisation(batch, stacked)
        if "agreement" in self.metrics:
            for first, second in combinations(range(len(names)), 2):
                rho = spearman(stacked[first], stacked[second])
                iou = top_k_iou(stacked[first], stacked[second], self.topk)
                for a, b in ((first, second), (second, first)):
                    for column, value in ((f"spearman_vs_{names[b]}", rho), (f"iou_vs_{names[b]}", iou)):
                        scores.setdefault(column, [torch.full_like(rho, torch.nan)] * len(names))[a] = value
        return scores

    def _localisation(self, batch: list[Sample], stacked: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pointing game (in the box), mass inside and top-k IoU (with the mask) ``(M, B)``; NaN without
        ground truth."""
        known = [i for i, s in enumerate(batch) if s.mask is not None]
        if not known:
            return {}
        masks = torch.stack([batch[i].mask for i in known])
        boxes = torch.tensor([batch[i].box for i in known])
        size = tuple(masks.shape[1:])
        maps = stacked[:, known].cpu()
        found = {
            "pointing_game": [pointing_game(m, boxes, size) for m in maps],
            "mass_inside": [mass_inside(m, masks) for m in maps],
            "topk_iou": [topk_iou(m, masks, self.topk) for m in maps],
        }
        full = {}
        for column, values in found.items():
            full[column] = torch.full(stacked.shape[:2], torch.nan, dtype=torch.float64)
            full[column][:, known] = torch.from_numpy(np.stack(values))
        return full

    def rows(self, batch: list[Sample]) -> list[dict[str, Any]]:
        """Every row of one batch, in sample then method order: the one function behind every loop.

        It depends on nothing but the settings, the model (left as found) and ``batch``, so the local loop
        (:meth:`run`) and the Ray workers (:mod:`explainers.distributed`) compute the same rows.
        """
        model = self.loaded.model
        device = next(model.parameters()).device
        images = torch.stack([s.image for s in batch]).to(device)
        if self.target == "label":
            missing = [s.id for s in batch if s.label is None]
            if missing:
                raise ValueError(f"target='label' but image {missing[0]!r} has no label")
            targets = torch.tensor([s.label for s in batch], device=device)
        else:
            targets = None
        cap, maps = self.explain(model, images, targets)
        logits, targets = cap.logits, cap.targets
        scores = self._scores(batch, images, cap, maps)
        if "sanity" in self.metrics:
            rho = cascading_randomisation(model, images, targets, self.maps, seed=self.seed)
            for k in range(1, self.num_layers + 1):
                scores[f"sanity_rho_{k}"] = torch.stack([rho[name][:, k] for name in self.methods])
            scores["sanity_abs_rho"] = scores[f"sanity_rho_{self.num_layers}"].abs()
        probability = logits.float().softmax(dim=-1).gather(1, targets[:, None])[:, 0].tolist()
        predicted = logits.argmax(dim=-1).tolist()
        values = {column: _as_lists(value) for column, value in scores.items()}
        missing = [[math.nan] * len(batch)] * len(self.methods)
        rows = []
        for b, sample in enumerate(batch):
            for m, name in enumerate(self.methods):
                row: dict[str, Any] = dict(zip(KEY_COLUMNS, self.key(sample.id, name), strict=True))
                row |= {
                    "label": sample.label,
                    "target": int(targets[b]),
                    "predicted": predicted[b],
                    "correct": None if sample.label is None else int(predicted[b] == sample.label),
                    "p_target": probability[b],
                }
                for column in self.score_columns:
                    value = values.get(column, missing)[m][b]
                    row[column] = None if math.isnan(value) else value
                rows.append(row)
        return rows


def _as_lists(value: torch.Tensor | list) -> list[list[float]]:
    """``(M, B)`` tensor, or list of M ``(B,)`` tensors, → M lists of B floats."""
    return torch.stack(list(value)).double().cpu().tolist()


def _stats(values: pd.Series) -> dict[str, float]:
    """Mean, population std and count of the numeric, non-missing values of a column."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    return {"mean": values.mean(), "std": values.std(ddof=0), "n": len(values)}


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and count of every score of :data:`SCORES` in ``frame`` per method, missing values left out.

    Returns:
        One row per (method, score) with columns ``method``, ``score``, ``label``, ``higher_is_better``,
        ``mean``, ``std``, ``n``; methods in order of first appearance.
    """
    rows = [
        {"method": method, "score": column, "label": label, "higher_is_better": up, **_stats(group[column])}
        for method, group in frame.groupby("method", sort=False)
        for column, (label, up) in SCORES.items()
        if column in group
    ]
    columns = ["method", "score", "label", "higher_is_better", "mean", "std", "n"]
    return pd.DataFrame(rows, columns=columns).query("n > 0").reset_index(drop=True)


def summary_table(frame: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """``mean ± std`` of every score (columns, labelled with ↑ or ↓) for every method (rows)."""
    stats = summary(frame)
    means, stds = stats["mean"], stats["std"]
    stats["cell"] = [f"{m:.{digits}f} ± {s:.{digits}f}" for m, s in zip(means, stds, strict=True)]
    arrows = stats["higher_is_better"].map({True: "↑", False: "↓"})
    stats["column"] = stats["label"] + " " + arrows
    table = stats.pivot(index="method", columns="column", values="cell")
    table = table.loc[stats["method"].unique(), stats["column"].unique()]
    return table.rename_axis(index="method", columns=None)


def curve_means(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of the perturbation curves: columns ``method, curve, measure, fraction, mean, std, n``."""
    rows = [
        {"method": method, "curve": curve, "measure": measure, "fraction": int(column[len(prefix) :]) / 100,
         **_stats(group[column])}
        for method, group in frame.groupby("method", sort=False)
        for curve in CURVES
        for measure, prefix in (("probability", f"{curve}_p_"), ("top1", f"{curve}_top1_"))
        for column in group.columns
        if column.startswith(prefix) and column[len(prefix) :].isdigit()
    ]
    return pd.DataFrame(rows, columns=["method", "curve", "measure", "fraction", "mean", "std", "n"])


def sanity_means(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of ρ per number of randomised blocks (0: the trained model, ρ = 1), per method."""
    rows = []
    for method, group in frame.groupby("method", sort=False):
        rows.append({"method": method, "blocks": 0, "mean": 1.0, "std": 0.0, "n": len(group)})
        rows += [
            {"method": method, "blocks": int(column.rsplit("_", 1)[1]), **_stats(group[column])}
            for column in group.columns
            if column.startswith("sanity_rho_")
        ]
    return pd.DataFrame(rows, columns=["method", "blocks", "mean", "std", "n"])

"""The evaluation loop: settings checks, rows, incremental batches, resume keys, ground truth, summaries."""

import math

import pandas as pd
import pytest
import timm.data
import torch
from PIL import Image
from timm.models.vision_transformer import VisionTransformer

from explainers.datasets.cluttered_digits import cluttered_digits
from explainers.evaluate import (
    KEY_COLUMNS,
    Evaluation,
    Sample,
    cluttered_samples,
    curve_means,
    sanity_means,
    summary,
    summary_table,
    to_sample,
)
from explainers.metrics.agreement import spearman
from explainers.metrics.localisation import mass_inside, pointing_game
from explainers.metrics.perturbation import perturbation_curves
from explainers.models import LoadedModel, Preprocess

METHODS = {"rollout": {}, "raw_attention": {"layer": 0}, "gae": {}}


def tiny_loaded(img_size: int = 64) -> LoadedModel:
    """A random-weight 10-class ViT on 64×64 inputs with 8×8 patches, wrapped like ``load_model`` does."""
    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=img_size, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=10
    ).eval()
    model.pretrained_cfg = {
        "input_size": (3, img_size, img_size), "mean": (0.1, 0.1, 0.1), "std": (0.3, 0.3, 0.3),
        "crop_pct": 1.0, "interpolation": "bilinear",
    }
    config = timm.data.resolve_model_data_config(model)
    names = tuple(str(d) for d in range(10))
    return LoadedModel("tiny", "cpu", None, model, Preprocess(config), names, config)


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return tiny_loaded()


@pytest.fixture(scope="module")
def samples(loaded: LoadedModel) -> list[Sample]:
    return list(cluttered_samples(loaded, 5, seed=2))


@pytest.fixture(scope="module")
def rows(loaded: LoadedModel, samples: list[Sample]) -> list[dict]:
    return list(Evaluation(loaded, METHODS, batch_size=2).run(samples))


def test_settings_are_checked_before_any_image(loaded: LoadedModel) -> None:
    for methods, kwargs, message in (
        ({"nope": {}}, {}, "unknown method"),
        ({"rollout": {"discard_ratio": 2.0}}, {}, "discard_ratio"),
        ({"rollout": {"colour": 1}}, {}, "no parameter"),
        ({}, {}, "at least one method"),
        (METHODS, {"metrics": ["speed"]}, "unknown metric"),
        (METHODS, {"baseline": "white"}, "unknown baseline"),
        (METHODS, {"target": "random"}, "unknown target"),
        (METHODS, {"topk": 0.0}, "topk"),
        (METHODS, {"batch_size": 0}, "batch size"),
        (METHODS, {"step": 0}, "perturbation step"),
        (METHODS, {"step": 2.5}, "whole percentage"),
    ):
        with pytest.raises(ValueError, match=message):
            Evaluation(loaded, methods, **kwargs)


def test_one_row_per_image_and_method_with_every_column(
    rows: list[dict], samples: list[Sample], loaded: LoadedModel
) -> None:
    evaluation = Evaluation(loaded, METHODS)
    assert [(r["image_id"], r["method"]) for r in rows] == [(s.id, m) for s in samples for m in METHODS]
    assert all(list(r) == evaluation.columns for r in rows)
    assert rows[0]["params"] == "head_fusion=mean;discard_ratio=0.0;start_layer=0"
    assert rows[1]["params"] == "layer=0;head_fusion=mean;head=None"
    for row in rows:
        assert row["label"] == next(s.label for s in samples if s.id == row["image_id"])
        assert row["correct"] == int(row["predicted"] == row["label"])
        assert row["target"] == row["predicted"]
        assert row["pointing_game"] in (0.0, 1.0)
        assert 0.0 <= row["mass_inside"] <= 1.0 and 0.0 <= row["topk_iou"] <= 1.0
        assert row["sanity_abs_rho"] == abs(row["sanity_rho_2"])
        assert row[f"spearman_vs_{row['method']}"] is None


def test_rows_agree_with_the_metrics_computed_directly(
    rows: list[dict], samples: list[Sample], loaded: LoadedModel
) -> None:
    evaluation = Evaluation(loaded, METHODS)
    images = torch.stack([s.image for s in samples])
    cap, maps = evaluation.explain(loaded.model, images, None)
    masks = torch.stack([s.mask for s in samples])
    boxes = torch.tensor([s.box for s in samples])
    curves = perturbation_curves(
        loaded.model, images, maps["gae"], cap.targets, labels=torch.tensor([s.label for s in samples]),
        mean=loaded.data_config["mean"], std=loaded.data_config["std"],
    )
    rho = spearman(maps["gae"], maps["rollout"])
    table = pd.DataFrame(rows).set_index(["image_id", "method"])
    for b, sample in enumerate(samples):
        row = table.loc[(sample.id, "gae")]
        assert row["p_target"] == pytest.approx(float(cap.logits.softmax(-1)[b, cap.targets[b]]), rel=1e-5)
        assert row["positive_auc"] == pytest.approx(float(curves.auc("positive")[b]), abs=1e-6)
        assert row["insertion_top1_auc"] == pytest.approx(float(curves.auc("insertion", "top1")[b]), abs=1e-6)
        assert row["mass_inside"] == pytest.approx(mass_inside(maps["gae"][b : b + 1], masks[b : b + 1])[0])
        assert row["pointing_game"] == pointing_game(maps["gae"][b : b + 1], boxes[b : b + 1], (64, 64))[0]
        assert row["spearman_vs_rollout"] == pytest.approx(float(rho[b]))
        assert table.loc[(sample.id, "rollout"), "spearman_vs_gae"] == row["spearman_vs_rollout"]


def test_rows_come_batch_by_batch(loaded: LoadedModel, samples: list[Sample]) -> None:
    taken = []

    def source():
        for sample in samples:
            taken.append(sample.id)
            yield sample

    run = Evaluation(loaded, METHODS, metrics=["agreement"], batch_size=2).run(source())
    first = next(run)
    assert first["image_id"] == samples[0].id and len(taken) == 2
    assert len(list(run)) == 5 * 3 - 1 and len(taken) == 5


def test_done_rows_are_skipped_and_the_rest_is_unchanged(
    loaded: LoadedModel, samples: list[Sample], rows: list[dict]
) -> None:
    evaluation = Evaluation(loaded, METHODS, batch_size=2)
    done = {tuple(r[c] for c in KEY_COLUMNS) for r in rows[:7]}
    rest = list(evaluation.run(samples, done))
    assert [(r["image_id"], r["method"]) for r in rest] == [(r["image_id"], r["method"]) for r in rows[7:]]
    for new, old in zip(rest, rows[7:], strict=True):
        for column, value in old.items():
            if isinstance(value, float):
                assert new[column] == pytest.approx(value, rel=1e-5, abs=1e-6), column
    other = Evaluation(loaded, METHODS, baseline="mean")
    assert len(list(other.run(samples[:1], done))) == 3  # other settings: nothing is done


def test_finer_perturbation_steps(loaded: LoadedModel, samples: list[Sample]) -> None:
    fine = Evaluation(loaded, {"gae": {}}, metrics=["perturbation"], step=5)
    row = next(fine.run(samples[:1]))
    assert [c for c in fine.columns if c.startswith("insertion_p_")] == [f"insertion_p_{p:02d}" for p in
                                                                          range(0, 91, 5)]
    coarse = next(Evaluation(loaded, {"gae": {}}, metrics=["perturbation"]).run(samples[:1]))
    for p in range(0, 91, 10):
        assert row[f"positive_p_{p:02d}"] == pytest.approx(coarse[f"positive_p_{p:02d}"], rel=1e-5)


def test_label_target_and_images_without_ground_truth(loaded: LoadedModel, samples: list[Sample]) -> None:
    evaluation = Evaluation(loaded, {"rollout": {}}, target="label", metrics=["perturbation"])
    rows = list(evaluation.run(samples[:2]))
    assert [r["target"] for r in rows] == [s.label for s in samples[:2]]
    bare = Sample("bare", samples[0].image)
    row = next(Evaluation(loaded, {"rollout": {}}, metrics=["localisation", "perturbation"]).run([bare]))
    assert row["label"] is None and row["correct"] is None and row["mass_inside"] is None
    assert row["positive_top1_00"] == 1.0  # without a label, top-1 compares with the unperturbed prediction
    with pytest.raises(ValueError, match="has no label"):
        list(Evaluation(loaded, {"rollout": {}}, target="label").run([bare]))


def test_masks_follow_the_preprocess(loaded: LoadedModel) -> None:
    data = cluttered_digits(2, seed=4, split="test")
    same = to_sample(loaded, "a", Image.fromarray(data.images[0]), 1, data.masks[0])
    assert torch.equal(same.mask, torch.from_numpy(data.masks[0]))
    assert same.box == tuple(int(v) for v in data.boxes[0])
    half = to_sample(tiny_loaded(32), "b", Image.fromarray(data.images[1]), 1, data.masks[1])
    assert half.image.shape == (3, 32, 32) and half.mask.shape == (32, 32)
    coverage = torch.nn.functional.avg_pool2d(torch.from_numpy(data.masks[1])[None].float(), 2)[0]
    shrunk = coverage >= 0.5
    overlap = (half.mask & shrunk).sum() / (half.mask | shrunk).sum()
    assert overlap > 0.8
    ys, xs = torch.nonzero(half.mask, as_tuple=True)
    assert half.box == (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    x0, y0, x1, y1 = (int(v) for v in data.boxes[1])
    assert x0 // 2 - 1 <= half.box[0] < half.box[2] <= -(-x1 // 2) + 1
    assert y0 // 2 - 1 <= half.box[1] < half.box[3] <= -(-y1 // 2) + 1


def test_summaries_are_means_and_population_stds() -> None:
    frame = pd.DataFrame({
        "method": ["a", "a", "b", "b"],
        "positive_auc": [0.1, 0.3, 0.5, 0.5],
        "mass_inside": [0.2, None, 0.4, 0.8],
        "sanity_rho_1": [0.9, 0.7, 1.0, 1.0],
        "sanity_rho_2": [0.1, 0.3, 0.9, 1.0],
        "positive_p_00": [1.0, 0.8, 0.6, 0.4],
        "positive_p_50": [0.5, 0.3, 0.2, 0.2],
    })
    stats = summary(frame).set_index(["method", "score"])
    assert stats.loc[("a", "positive_auc"), "mean"] == pytest.approx(0.2)
    assert stats.loc[("a", "positive_auc"), "std"] == pytest.approx(0.1)
    assert stats.loc[("a", "mass_inside"), "n"] == 1
    assert stats.loc[("b", "mass_inside"), "std"] == pytest.approx(0.2)
    table = summary_table(frame)
    assert list(table.index) == ["a", "b"]
    assert table.loc["a", "Deletion, most relevant first (positive) AUC ↓"] == "0.200 ± 0.100"
    curves = curve_means(frame).set_index(["method", "curve", "measure", "fraction"])
    assert curves.loc[("b", "positive", "probability", 0.5), "mean"] == pytest.approx(0.2)
    sanity = sanity_means(frame).set_index(["method", "blocks"])
    assert sanity.loc[("a", 0), "mean"] == 1.0
    assert sanity.loc[("b", 2), "mean"] == pytest.approx(0.95)
    assert math.isclose(sanity.loc[("a", 1), "std"], 0.1)

"""Agreement between maps: Spearman ρ with average ranks (checked against SciPy) and top-k% IoU."""

import math

import pytest
import torch
from scipy.stats import spearmanr

from explainers.metrics.agreement import agreement_table, average_ranks, spearman, top_k_iou, top_region


def test_average_ranks_share_ties():
    ranks = average_ranks(torch.tensor([[10.0, 20.0, 10.0, 30.0, 20.0]]))
    assert ranks.tolist() == [[1.5, 3.5, 1.5, 5.0, 3.5]]


def test_spearman_matches_scipy_with_and_without_ties():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(6, 7, 7, generator=generator)
    b = a + torch.randn(6, 7, 7, generator=generator)
    a[0] = a[0].round()  # many ties
    b[1] = (b[1] * 2).round()
    b[2] = -a[2]
    rho = spearman(a, b)
    assert rho.shape == (6,) and rho.dtype == torch.float64
    for i in range(6):
        expected = spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert rho[i].item() == pytest.approx(expected, abs=1e-12)
    assert rho[2].item() == pytest.approx(-1.0)


def test_spearman_of_a_constant_map_is_nan():
    rho = spearman(torch.ones(1, 3, 3), torch.rand(1, 3, 3))
    assert math.isnan(rho.item())


def test_top_region_includes_ties_and_iou():
    a = torch.tensor([[[5.0, 4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]]])
    assert top_region(a, 0.2).sum().item() == 2
    tied = torch.tensor([[[1.0, 1.0, 1.0, 0.0]]])
    assert top_region(tied, 0.25).sum().item() == 3  # the tied cells all count
    b = torch.tensor([[[5.0, 0.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]])
    assert top_k_iou(a, b, 0.2).item() == pytest.approx(1 / 3)
    assert top_k_iou(a, a, 0.2).item() == 1.0
    with pytest.raises(ValueError, match="top fraction"):
        top_k_iou(a, b, 0.0)


def test_shapes_must_match():
    with pytest.raises(ValueError, match="same shape"):
        spearman(torch.rand(1, 3, 3), torch.rand(1, 4, 4))


def test_agreement_table_has_one_row_per_pair():
    maps = {name: torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(i))
            for i, name in enumerate(["a", "b", "c"])}
    maps["d"] = maps["a"] * 3 + 1
    table = agreement_table(maps, 0.25)
    assert list(table.columns) == ["method A", "method B", "spearman", "iou"]
    assert len(table) == 6
    row = table[(table["method A"] == "a") & (table["method B"] == "d")].iloc[0]
    assert row["spearman"] == pytest.approx(1.0) and row["iou"] == 1.0

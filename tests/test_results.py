"""The result store: keys stored once, CSV and Parquet appends that survive a kill, the settings guard."""

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from explainers.evaluate import KEY_COLUMNS, Evaluation, Sample, cluttered_samples
from explainers.models import LoadedModel
from explainers.results import ResultStore, read_results, result_format
from tests.test_evaluate import tiny_loaded

METHODS = {"rollout": {}, "gae": {}}


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return tiny_loaded()


@pytest.fixture(scope="module")
def evaluation(loaded: LoadedModel) -> Evaluation:
    return Evaluation(loaded, METHODS, metrics=["perturbation", "localisation"], batch_size=2)


@pytest.fixture(scope="module")
def samples(loaded: LoadedModel) -> list[Sample]:
    images = list(cluttered_samples(loaded, 4, seed=3))
    return [*images, Sample("no-truth", images[0].image)]  # without label or mask: None columns


@pytest.fixture(scope="module")
def rows(evaluation: Evaluation, samples: list[Sample]) -> list[dict]:
    return list(evaluation.run(samples))


def keys(frame: pd.DataFrame) -> list[tuple[str, ...]]:
    return list(frame[list(KEY_COLUMNS)].itertuples(index=False, name=None))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_rows_are_stored_once_and_read_back(
    tmp_path: Path, suffix: str, evaluation: Evaluation, rows: list[dict]
) -> None:
    path = tmp_path / f"results{suffix}"
    with ResultStore(path, evaluation, flush_seconds=0) as store:
        assert store.append(rows[:4]) == 4
        assert store.append(rows[2:6]) == 2  # two keys already stored
        assert store.append(rows[2:6]) == 0
    with ResultStore(path, evaluation) as store:
        assert store.done == {tuple(r[c] for c in KEY_COLUMNS) for r in rows[:6]}
        assert store.append(rows) == len(rows) - 6
    frame = read_results(path)
    assert keys(frame) == [tuple(r[c] for c in KEY_COLUMNS) for r in rows]
    assert list(frame.columns) == evaluation.columns
    for row, (_, stored) in zip(rows, frame.iterrows(), strict=True):
        for column, value in row.items():
            if value is None:
                assert pd.isna(stored[column]), column
            elif isinstance(value, float):
                assert stored[column] == pytest.approx(value, rel=1e-6), column
            else:
                assert stored[column] == value, column


def test_parquet_parts_are_atomic_share_one_schema_and_open_with_pandas(
    tmp_path: Path, evaluation: Evaluation, rows: list[dict]
) -> None:
    path = tmp_path / "results.parquet"
    with ResultStore(path, evaluation, flush_seconds=3600, flush_rows=4) as store:
        store.append(rows[:2])
        assert not path.exists()  # buffered
        store.append(rows[2:8])  # 8 rows buffered ≥ 4: one part
        assert len(list(path.glob("part-*.parquet"))) == 1
        store.append(rows[8:])  # the image without ground truth: label, mask scores all None
    parts = sorted(path.glob("part-*.parquet"))
    assert len(parts) == 2 and len({pq.read_schema(p) for p in parts}) == 1
    assert pq.read_schema(parts[1]).field("mass_inside").type == "double"
    assert pq.read_schema(parts[1]).field("label").type == "int64"
    direct = pd.read_parquet(path)  # any reader sees the folder as one table
    assert len(direct) == len(rows) and direct["label"].isna().sum() == 2
    (path / ".part-123-killed.tmp").write_bytes(b"half a part")  # a part a killed run was writing
    with ResultStore(path, evaluation) as store:
        assert len(store.done) == len(rows)
    assert not list(path.glob(".*.tmp"))


def test_a_csv_line_cut_by_a_kill_is_removed_and_computed_again(
    tmp_path: Path, evaluation: Evaluation, rows: list[dict]
) -> None:
    path = tmp_path / "results.csv"
    with ResultStore(path, evaluation) as store:
        store.append(rows[:3])
    path.write_bytes(path.read_bytes()[:-25])
    with ResultStore(path, evaluation) as store:
        assert len(store.done) == 2
        assert store.append(rows[:3]) == 1
    assert len(read_results(path)) == 3


def test_two_writers_never_make_a_reader_count_a_key_twice(
    tmp_path: Path, evaluation: Evaluation, rows: list[dict]
) -> None:
    path = tmp_path / "results.parquet"
    first, second = ResultStore(path, evaluation), ResultStore(path, evaluation)  # opened at once
    first.append(rows[:4])
    second.append(rows[2:6])
    first.close()
    second.close()
    assert len(pd.read_parquet(path)) == 8
    assert keys(read_results(path)) == keys(pd.DataFrame(rows[:6]))


def test_stores_of_other_settings_are_refused(
    tmp_path: Path, loaded: LoadedModel, evaluation: Evaluation, rows: list[dict]
) -> None:
    for suffix in (".csv", ".parquet"):
        path = tmp_path / f"results{suffix}"
        with ResultStore(path, evaluation) as store:
            store.append(rows)
        blur = Evaluation(loaded, METHODS, metrics=["perturbation", "localisation"], baseline="blur")
        with pytest.raises(ValueError, match="other settings"):
            ResultStore(path, blur)
        fewer = Evaluation(loaded, METHODS, metrics=["perturbation"])
        with pytest.raises(ValueError, match="other columns"):
            ResultStore(path, fewer)
    (tmp_path / "file.parquet").write_bytes(b"PAR1")
    with pytest.raises(ValueError, match="folder of part files"):
        ResultStore(tmp_path / "file.parquet", evaluation)
    with pytest.raises(ValueError, match=r"\*.csv or \*.parquet"):
        result_format(tmp_path / "results.xlsx")
    with pytest.raises(ValueError, match="no results"):
        read_results(tmp_path / "missing.csv")

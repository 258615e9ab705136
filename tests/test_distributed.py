"""Evaluations on a local Ray instance with two workers: the single-process rows exactly once, after a
worker or the driver is killed too. One Ray instance serves the whole module (its start-up is slow)."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from explainers import cli
from explainers.distributed import RayEvaluation
from explainers.evaluate import KEY_COLUMNS, Evaluation, Sample, cluttered_samples
from explainers.models import LoadedModel, load_model
from explainers.results import ResultStore, read_results

ray = pytest.importorskip("ray")

METHODS = {"rollout": {"discard_ratio": 0.5}, "gae": {}}
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster() -> str:
    """A local Ray instance; its address. Four logical CPUs: the two shared workers stay up, idle, while a
    test runs two workers of its own (two compute at a time, as on the 2-core machine)."""
    ray.init(address="local", num_cpus=4, include_dashboard=False, object_store_memory=128 * 2**20,
             logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model("embedded")


@pytest.fixture(scope="module")
def evaluation(loaded: LoadedModel) -> Evaluation:
    return Evaluation(loaded, METHODS, batch_size=1)  # every metric; one image a batch: many batches


@pytest.fixture(scope="module")
def samples(loaded: LoadedModel) -> list[Sample]:
    return list(cluttered_samples(loaded, 10, seed=1))


@pytest.fixture(scope="module")
def runner(cluster: str, evaluation: Evaluation) -> RayEvaluation:
    """Two workers shared by the tests (starting a worker loads torch and the model: seconds)."""
    with RayEvaluation(evaluation, workers=2) as started:
        yield started


@pytest.fixture(scope="module")
def local_rows(evaluation: Evaluation, samples: list[Sample]) -> pd.DataFrame:
    """The single-process run, sorted by key."""
    return by_key(pd.DataFrame(evaluation.run(samples)))


def by_key(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by key, after checking that no key repeats."""
    assert not frame.duplicated(list(KEY_COLUMNS)).any()
    return frame.sort_values(list(KEY_COLUMNS)).reset_index(drop=True)


def assert_same_rows(rows: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Exactly the keys of ``expected``, each once, with every number equal to 1e-5."""
    rows = by_key(rows)
    assert list(rows.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(rows[list(KEY_COLUMNS)], expected[list(KEY_COLUMNS)])
    numbers = [c for c in expected.columns if c not in KEY_COLUMNS]
    actual = rows[numbers].astype(float).to_numpy()
    wanted = expected[numbers].astype(float).to_numpy()
    np.testing.assert_allclose(actual, wanted, rtol=0, atol=1e-5, equal_nan=True)


def test_two_workers_give_the_single_process_rows(
    runner: RayEvaluation, samples: list[Sample], local_rows: pd.DataFrame
) -> None:
    assert len(set(runner.pids)) == 2 and os.getpid() not in runner.pids
    assert_same_rows(pd.DataFrame(runner.run(samples)), local_rows)


def test_a_killed_worker_is_restarted_and_every_row_comes_once(
    runner: RayEvaluation, evaluation: Evaluation, samples: list[Sample], local_rows: pd.DataFrame,
    tmp_path: Path,
) -> None:
    path = tmp_path / "results.parquet"
    killed = ray.get(runner.actors[0].pid.remote())
    with ResultStore(path, evaluation, flush_seconds=0) as store:
        run = runner.run(samples, store.done)
        store.append([next(run)])
        os.kill(killed, signal.SIGKILL)  # it has batches queued: Ray restarts it and reruns them
        for row in run:
            store.append([row])
    assert ray.get(runner.actors[0].pid.remote()) != killed
    assert_same_rows(pd.read_parquet(path), local_rows)  # the raw parts: no key twice


def test_a_worker_lost_for_good_fails_and_a_rerun_computes_only_the_rest(
    runner: RayEvaluation, evaluation: Evaluation, samples: list[Sample], local_rows: pd.DataFrame,
    tmp_path: Path,
) -> None:
    path = tmp_path / "results.csv"
    with ResultStore(path, evaluation) as store, RayEvaluation(evaluation, workers=2, restarts=0) as fragile:
        run = fragile.run(samples, store.done)
        store.append([next(run)])
        os.kill(fragile.pids[1], signal.SIGKILL)
        with pytest.raises(ValueError, match="run again with the same --out"):
            for row in run:
                store.append([row])
    written = set(read_results(path)[list(KEY_COLUMNS)].itertuples(index=False, name=None))
    assert 0 < len(written) < len(local_rows)
    with ResultStore(path, evaluation) as store:
        rest = list(runner.run(samples, store.done))
        store.append(rest)
    assert not written & {tuple(row[c] for c in KEY_COLUMNS) for row in rest}  # nothing computed twice
    assert ray.is_initialized()  # a connection the runner did not open is left open
    assert_same_rows(pd.read_csv(path, dtype={c: str for c in KEY_COLUMNS}), local_rows)


def test_a_killed_driver_is_resumed_by_the_next_run(cluster: str, tmp_path: Path) -> None:
    """A command-line run joining the cluster (``--ray ADDRESS``) is killed mid-run; the next run (through
    the command line too) keeps every line written and computes only the images not written."""
    out = tmp_path / "results.csv"
    args = ["evaluate", "--model", "embedded", "--images", "cluttered:120", "--methods", "rollout,gae",
            "--out", str(out), "--metrics", "perturbation,localisation", "--batch-size=1", "--threads=1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "explainers", *args, "--ray", cluster, "--workers", "2"],
                              env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (out.exists() and out.read_text().count("\n") > 6):  # the header and 3 images
        assert driver.poll() is None, driver.stderr.read().decode()
        assert time.monotonic() < deadline, "the driver wrote no rows in time"
        time.sleep(0.02)
    driver.kill()
    driver.wait()
    before = out.read_bytes()
    kept = before[: before.rfind(b"\n") + 1]  # a line cut short by the kill is dropped on resume
    assert kept.count(b"\n") - 1 < 240, "the run finished before it was killed"
    assert cli.main([*args, "--ray", "--workers", "5"]) == 2  # more than the 4 CPUs: an error, no wait
    assert cli.main([*args, "--ray", "--workers", "2"]) == 0  # connected already: it uses the cluster
    after = out.read_bytes()
    assert after.startswith(kept)
    frame = read_results(out)
    assert len(frame) == len(pd.read_csv(out)) == 240  # 120 images × 2 methods, none twice


def test_a_worker_that_cannot_load_the_model_is_a_clear_error(cluster: str, loaded: LoadedModel) -> None:
    elsewhere = Evaluation(replace(loaded, weights="/no/such/weights.safetensors"), METHODS)
    with pytest.raises(ValueError, match="could not load the model"), RayEvaluation(elsewhere, workers=1,
                                                                                    restarts=0):
        pass

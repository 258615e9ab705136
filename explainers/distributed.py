"""Evaluations on Ray: the rows of :meth:`Evaluation.rows <explainers.evaluate.Evaluation.rows>`, computed
by a pool of Ray actors, one model per worker (and one GPU per worker with ``device="cuda"``).

The driver reads the samples (so whatever reads and preprocesses images locally does it for Ray too),
cuts the pending ones into batches with :meth:`Evaluation.batches`, and streams them to the workers,
at most :data:`IN_FLIGHT` batches per worker, so a worker always has its next batch queued while the
memory held stays bounded. Rows come back as each batch finishes, in whatever order the workers finish.

Nothing here makes the run exactly-once; the result store's key does (:mod:`explainers.results`): every
batch is computed by exactly one worker unless that worker dies, in which case Ray restarts it (up to
``restarts`` times, reloading the model) and runs its queued batches again; the rows are filtered against
``done`` and the store writes only new keys. When a worker is lost for good, the rows of every other
batch still come back before the run fails with a ``ValueError``; rerunning with the same store finishes.

Ray is an optional extra (``pip install -e .[distributed]``), imported only when a run starts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from .evaluate import Evaluation, Sample
from .models import load_model
from .names import LOCAL

#: Batches queued on one worker at a time: one computing, one waiting.
IN_FLIGHT = 2
#: Object store of a local instance: batches in flight and rows are small.
OBJECT_STORE_BYTES = 256 * 2**20


class _Worker:
    """A Ray actor: one copy of the model and of the evaluation settings."""

    def __init__(self, model: tuple[str, str, str | None], settings: dict[str, Any], threads: int) -> None:
        torch.set_num_threads(threads)
        self.evaluation = Evaluation(load_model(*model), **settings)

    def pid(self) -> int:
        return os.getpid()

    def rows(self, batch: list[Sample]) -> list[dict[str, Any]]:
        return self.evaluation.rows(batch)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ValueError("--ray needs Ray: pip install -e '.[distributed]'") from None
    return ray


def worker_env() -> dict[str, str]:
    """The environment variables that make workers import this copy of ``explainers``: ``PYTHONPATH`` led
    by the folder holding the package, then the driver's own ``PYTHONPATH``."""
    root = str(Path(__file__).resolve().parent.parent)
    paths = [root, *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != root)]
    return {"PYTHONPATH": os.pathsep.join(paths)}


class RayEvaluation:
    """An evaluation run by Ray workers; a context manager that connects, starts and stops them.

    Args:
        evaluation: the settings (checked by the driver against its own copy of the model); every worker
            builds ``Evaluation(load_model(spec, device, weights), **evaluation.settings())``.
        device: the workers' device; ``"cuda"`` gives each worker one GPU.
        address: :data:`LOCAL` starts a Ray instance for the run (stopped at the end), ``"auto"`` joins the
            cluster of this machine, ``"HOST:PORT"`` that cluster. When this process is already connected
            to Ray, that connection is used and left open.
        workers: number of workers; default one per GPU of the cluster with CUDA, else one per ``threads``
            CPUs. More than the cluster holds is a ``ValueError``; workers that fit wait for resources that
            other jobs hold (e.g. the workers of a killed run, until Ray has noticed).
        threads: torch CPU threads of each worker (also the CPUs Ray reserves for it).
        restarts: how many times Ray restarts a worker that died (its queued batches are rerun).
    """

    def __init__(
        self, evaluation: Evaluation, *, device: str = "cpu", address: str = LOCAL,
        workers: int | None = None, threads: int = 1, restarts: int = 3,
    ) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
        if threads < 1:
            raise ValueError(f"--threads must be at least 1, got {threads}")
        self.evaluation, self.device, self.address = evaluation, device, address
        self.workers, self.threads, self.restarts = workers, threads, restarts
        self.ray = _import_ray()
        self.actors: list[Any] = []
        self.pids: list[int] = []
        self._started = False

    def __enter__(self) -> RayEvaluation:
        ray = self.ray
        if not ray.is_initialized():
            local = self.address == LOCAL
            options: dict[str, Any] = {"include_dashboard": False, "object_store_memory": OBJECT_STORE_BYTES,
                                       "num_cpus": (self.workers or 0) * self.threads or os.cpu_count()}
            try:
                ray.init(address=self.address, **(options if local else {}), logging_level="WARNING")
            except (ConnectionError, RuntimeError) as error:
                raise ValueError(f"cannot join the Ray cluster at {self.address!r}: {error}") from None
            self._started = True
        try:
            self._start_workers()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start_workers(self) -> None:
        ray = self.ray
        gpu = torch.device(self.device).type == "cuda"
        kind = "GPU" if gpu else "CPU"
        total = ray.cluster_resources().get(kind, 0)
        fitting = int(total if gpu else total // self.threads)
        count = self.workers or fitting
        if not 1 <= count <= fitting:  # a worker that the cluster can never place would wait for ever
            need = f"{count} worker(s) need {count if gpu else count * self.threads} {kind}(s)"
            raise ValueError(
                f"{need if count else 'a worker needs a ' + kind}, but the Ray cluster has {total:g}: "
                "choose fewer --workers or --threads, or add machines"
            )
        loaded = self.evaluation.loaded
        actor = ray.remote(_Worker).options(
            num_cpus=self.threads, num_gpus=1 if gpu else 0, max_restarts=self.restarts,
            max_task_retries=self.restarts, runtime_env={"env_vars": worker_env()},
        )
        model = (loaded.spec, self.device, loaded.weights)
        self.actors = [actor.remote(model, self.evaluation.settings(), self.threads) for _ in range(count)]
        try:
            self.pids = self._get([a.pid.remote() for a in self.actors])
        except ray.exceptions.RayActorError as error:
            raise ValueError(
                "a Ray worker could not load the model (every machine needs the project, and the --weights "
                f"file, at the same path as here): {error}"
            ) from None

    def _get(self, refs: Any) -> Any:
        """``ray.get``; an error raised in a worker comes back as itself (a ``ValueError`` stays one)."""
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayTaskError as error:
            cause = error.cause
            if isinstance(cause, ValueError):
                raise ValueError(str(cause)) from None
            raise

    def run(
        self, samples: Iterable[Sample], done: Iterable[tuple[str, ...]] = ()
    ) -> Iterator[dict[str, Any]]:
        """The rows of every pending batch (as :meth:`Evaluation.run`, but in the order batches finish)."""
        ray, evaluation, done = self.ray, self.evaluation, set(done)
        batches = evaluation.batches(samples, done)
        queued = [0] * len(self.actors)
        in_flight: dict[Any, int] = {}
        lost: Exception | None = None

        def submit() -> None:
            while lost is None and min(queued) < IN_FLIGHT:
                batch = next(batches, None)
                if batch is None:
                    return
                index = queued.index(min(queued))
                in_flight[self.actors[index].rows.remote(batch)] = index
                queued[index] += 1

        submit()
        while in_flight:
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            queued[in_flight.pop(ref)] -= 1
            try:
                rows = self._get(ref)
            except ray.exceptions.RayActorError as error:
                lost = error
                continue
            yield from evaluation.new_rows(rows, done)
            submit()
        if lost is not None:
            raise ValueError(
                f"a Ray worker died more than {self.restarts} time(s) ({type(lost).__name__}); the rows "
                "finished so far are kept: run again with the same --out to compute the rest"
            )

    def __exit__(self, *exc: object) -> None:
        for actor in self.actors:
            self.ray.kill(actor, no_restart=True)
        self.actors = []
        if self._started:
            self.ray.shutdown()
            self._started = False


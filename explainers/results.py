"""The result store of an evaluation: one row per key, appended as results finish, in CSV or Parquet.

A row's key is :data:`~explainers.evaluate.KEY_COLUMNS`, (image, method, parameters, baseline, target
mode). Resume and exactly-once come from the key, not from whoever computed the rows: :class:`ResultStore`
reads the keys already stored when it opens, and :meth:`ResultStore.append` writes only rows whose key is
new, so a run killed at any point (a worker, or the driver) and started again with the same file computes
what is missing and nothing that was written. :func:`read_results` drops repeated keys too (first row
kept), so even two drivers writing one store at once cannot make a reader count an image twice.

Formats, chosen by the path's suffix:

* ``*.csv``: one file; each append writes whole lines and flushes. A last line cut short by a kill is
  removed when the store is opened again. Numbers are written to 7 significant digits.
* ``*.parquet``: a folder of part files (``part-<time>-<pid>.parquet``), a new one per flush, each written
  under a hidden temporary name and renamed into place, so a reader (``pandas.read_parquet(folder)``,
  pyarrow, Spark, DuckDB) never sees half a part. Every part has the same schema (keys are strings,
  :data:`~explainers.evaluate.INTEGER_COLUMNS` 64-bit integers, every other column a 64-bit float, all
  nullable). Rows are buffered and flushed every ``flush_seconds`` or ``flush_rows`` rows and on close:
  a kill loses at most that much work, which the next run recomputes.

A store holds the rows of one setting. Opening one whose columns differ (other methods, metrics or
perturbation steps) or whose rows of a chosen method were computed with other parameters, baseline or
target mode is refused with a ``ValueError``: mixing them would average different settings under one
method name. The model is not part of the rows; use one store per model.
"""

from __future__ import annotations

import csv
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .evaluate import INTEGER_COLUMNS, KEY_COLUMNS, Evaluation

FORMATS: tuple[str, ...] = (".csv", ".parquet")
PART_GLOB = "part-*.parquet"

Key = tuple[str, ...]


def result_format(path: str | os.PathLike) -> str:
    """``".csv"`` or ``".parquet"`` from the suffix of ``path``; anything else is a ``ValueError``."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"results file {str(path)!r}: name it *.csv or *.parquet (a folder of parts)")
    return suffix


def schema(columns: Sequence[str]) -> pa.Schema:
    """The Parquet schema of rows with ``columns``: strings, 64-bit integers and 64-bit floats."""
    def kind(column: str) -> pa.DataType:
        if column in KEY_COLUMNS:
            return pa.string()
        return pa.int64() if column in INTEGER_COLUMNS else pa.float64()

    return pa.schema([pa.field(column, kind(column)) for column in columns])


def read_results(path: str | os.PathLike) -> pd.DataFrame:
    """The rows of a result store (a CSV file, or a Parquet file or folder of parts), one per key.

    Key columns are strings (``""`` where empty) whatever they look like; repeated keys keep their first row.
    """
    path = Path(path)
    if result_format(path) == ".parquet":
        if not path.exists():
            raise ValueError(f"no results at {path}")
        frame = pd.read_parquet(path)
    else:
        if not path.is_file():
            raise ValueError(f"no results at {path}")
        frame = pd.read_csv(path, dtype={c: str for c in KEY_COLUMNS}, keep_default_na=False,
                            na_values={c: [""] for c in _non_key_columns(path)})
    missing = [c for c in KEY_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} is not a results file of this tool: it has no {missing[0]!r} column")
    frame[list(KEY_COLUMNS)] = frame[list(KEY_COLUMNS)].fillna("")
    return frame.drop_duplicates(list(KEY_COLUMNS), keep="first").reset_index(drop=True)


def _non_key_columns(path: Path) -> list[str]:
    with path.open(newline="") as handle:
        return [c for c in next(csv.reader(handle), []) if c not in KEY_COLUMNS]


class ResultStore:
    """The rows of ``evaluation`` at ``path``: :attr:`done` holds the stored keys; :meth:`append` adds rows.

    Use as a context manager (or call :meth:`close`) so that buffered Parquet rows are written.
    """

    def __init__(
        self, path: str | os.PathLike, evaluation: Evaluation, *, flush_seconds: float = 10.0,
        flush_rows: int = 10_000,
    ) -> None:
        self.path, self.evaluation = Path(path), evaluation
        self.format = result_format(self.path)
        self.columns = evaluation.columns
        self.flush_seconds, self.flush_rows = flush_seconds, flush_rows
        self._buffer: list[dict[str, Any]] = []
        self._flushed = time.monotonic()
        self._handle = None
        self.done: set[Key] = set()
        for key in self._stored_keys():
            method = key[1]
            if method in evaluation.methods and key != evaluation.key(key[0], method):
                raise ValueError(
                    f"{self.path} holds {method} rows computed with other settings ({', '.join(key[2:])}): "
                    "choose another --out, or use the same parameters, baseline and target"
                )
            self.done.add(key)

    def _refuse_columns(self) -> None:
        raise ValueError(
            f"{self.path} holds results with other columns (other methods, metrics or model): "
            "choose another --out, or delete it to start again"
        )

    def _stored_keys(self) -> list[Key]:
        """The keys in the store, after checking its columns and repairing what a kill left behind."""
        if self.format == ".csv":
            return self._csv_keys()
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"{self.path} is a file: --out *.parquet names a folder of part files")
        for stale in self.path.glob(".part-*.tmp"):  # a part a killed run was writing
            stale.unlink()
        parts = sorted(self.path.glob(PART_GLOB))
        if not parts:
            return []
        if pq.read_schema(parts[0]).names != self.columns:
            self._refuse_columns()
        table = pq.read_table(self.path, columns=list(KEY_COLUMNS))
        return list(zip(*(table.column(c).to_pylist() for c in KEY_COLUMNS), strict=True))

    def _csv_keys(self) -> list[Key]:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return []
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):  # a line cut short by a kill
            with self.path.open("r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
        with self.path.open(newline="") as handle:
            reader = csv.reader(handle)
            if next(reader, []) != self.columns:
                self._refuse_columns()
            where = [self.columns.index(c) for c in KEY_COLUMNS]
            return [tuple(values[i] for i in where) for values in reader]

    def append(self, rows: Iterable[dict[str, Any]]) -> int:
        """Store the ``rows`` whose key is new (CSV: written now; Parquet: buffered); how many were new."""
        new = []
        for row in rows:
            key = tuple(row[c] for c in KEY_COLUMNS)
            if key not in self.done:
                self.done.add(key)
                new.append(row)
        if not new:
            return 0
        if self.format == ".csv":
            self._write_csv(new)
        else:
            self._buffer += new
            if len(self._buffer) >= self.flush_rows or time.monotonic() - self._flushed >= self.flush_seconds:
                self.flush()
        return len(new)

    def _write_csv(self, rows: list[dict[str, Any]]) -> None:
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a", newline="")
            self._writer = csv.DictWriter(self._handle, fieldnames=self.columns)
            if self._handle.tell() == 0:
                self._writer.writeheader()
        self._writer.writerows({k: f"{v:.7g}" if isinstance(v, float) else v for k, v in row.items()}
                               for row in rows)
        self._handle.flush()

    def flush(self) -> None:
        """Write the buffered Parquet rows as one new part file (atomically: written, then renamed)."""
        self._flushed = time.monotonic()
        if not self._buffer:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        temporary = self.path / f".{name}.tmp"
        pq.write_table(pa.Table.from_pylist(self._buffer, schema=schema(self.columns)), temporary)
        os.replace(temporary, self.path / f"{name}.parquet")
        self._buffer = []

    def close(self) -> None:
        """Write what is buffered and close the file."""
        self.flush()
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

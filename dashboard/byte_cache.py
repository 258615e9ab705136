"""A thread-safe least-recently-used cache bounded by bytes, that computes each missing value once.

The dashboard's shared resources (models, images, captures, maps) are kept in these: a budget in bytes
(not a number of entries) bounds what the server holds whatever the size of each entry, and concurrent
sessions asking for the same missing key wait for one computation instead of each running it.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

import numpy as np
import torch
from PIL import Image

V = TypeVar("V")


def nbytes(value: object) -> int:
    """Bytes held by the tensors, arrays, images and byte strings in ``value``, followed through
    dataclasses, tuples, lists and dicts (shared storage counted once per occurrence)."""
    if isinstance(value, torch.Tensor):
        return value.nelement() * value.element_size()
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, Image.Image):
        return value.width * value.height * len(value.getbands())
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, torch.nn.Module):
        return sum(nbytes(t) for t in (*value.parameters(), *value.buffers()))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(nbytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, tuple | list):
        return sum(nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    return 0


class ByteCache(Generic[V]):
    """Values by key, the least recently used evicted first so that the total :func:`nbytes` (or
    ``size_of``) of the values kept, plus ``per_entry`` bytes for each (the Python objects of a key and a
    small value: count it where entries are many and small), never exceeds ``budget`` bytes.

    A value larger than the whole budget is returned but not kept. Exceptions are not cached. While one
    thread computes a key, the others asking for it wait for that result (one lock per missing key).
    """

    def __init__(self, budget: int, size_of: Callable[[V], int] = nbytes, per_entry: int = 0) -> None:
        if budget < 0:
            raise ValueError(f"a cache budget is a number of bytes ≥ 0, not {budget}")
        self.budget = budget
        self._size_of = size_of
        self._per_entry = per_entry
        self._lock = threading.Lock()
        self._values: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._computing: dict[Hashable, threading.Lock] = {}
        self._total = 0

    @property
    def total(self) -> int:
        """Bytes held now (never more than :attr:`budget`)."""
        with self._lock:
            return self._total

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def get(self, key: Hashable) -> V | None:
        """The value of ``key`` (now the most recently used), or None."""
        with self._lock:
            entry = self._values.get(key)
            if entry is None:
                return None
            self._values.move_to_end(key)
            return entry[0]

    def held_keys(self) -> Iterator[Hashable]:
        """The keys held, least recently used first (a copy: safe while others write)."""
        with self._lock:
            return iter(list(self._values))

    def put(self, key: Hashable, value: V) -> V:
        """Keep ``value`` under ``key`` (if it fits in the budget at all), evicting the least recently used
        values until the total fits; returns ``value``."""
        size = self._size_of(value) + self._per_entry
        with self._lock:
            self._discard(key)
            if size <= self.budget:
                self._values[key] = (value, size)
                self._total += size
                while self._total > self.budget:
                    self._discard(next(iter(self._values)))
        return value

    def discard(self, key: Hashable) -> None:
        with self._lock:
            self._discard(key)

    def _discard(self, key: Hashable) -> None:
        entry = self._values.pop(key, None)
        if entry is not None:
            self._total -= entry[1]

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The value of ``key``; when missing, ``compute()`` runs once however many threads ask at once."""
        value = self.get(key)
        if value is not None:
            return value
        with self._lock:
            lock = self._computing.setdefault(key, threading.Lock())
        with lock:
            try:
                value = self.get(key)  # computed by the thread this one waited for
                return value if value is not None else self.put(key, compute())
            finally:
                with self._lock:
                    if self._computing.get(key) is lock:
                        del self._computing[key]

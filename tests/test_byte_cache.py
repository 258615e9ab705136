"""The dashboard's shared caches: bounded by bytes, least recently used out first, one computation per key."""

import random
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from dashboard.byte_cache import ByteCache, nbytes


def test_it_never_holds_more_than_its_budget_and_evicts_the_least_recently_used() -> None:
    cache: ByteCache[bytes] = ByteCache(1000)
    generator = random.Random(0)
    for step in range(500):
        key = generator.randrange(40)
        if generator.random() < 0.3:
            cache.get(key)
        else:
            cache.put(key, bytes(generator.randrange(1, 400)))
        held = [cache.get(k) for k in list(cache.held_keys())]
        assert cache.total == sum(len(v) for v in held) <= 1000, step
    cache = ByteCache(1000)
    for key in "abc":
        cache.put(key, bytes(300))
    cache.get("a")  # now the most recently used: b goes first
    cache.put("d", bytes(300))
    assert list(cache.held_keys()) == ["c", "a", "d"] and cache.total == 900
    cache.put("e", bytes(650))
    assert list(cache.held_keys()) == ["d", "e"] and cache.total == 950


def test_small_entries_count_their_overhead() -> None:
    cache: ByteCache[bytes] = ByteCache(1000, per_entry=100)
    for key in range(5):
        cache.put(key, bytes(150))
    assert list(cache.held_keys()) == [1, 2, 3, 4] and cache.total == 4 * 250


def test_a_value_larger_than_the_budget_is_returned_not_kept() -> None:
    cache: ByteCache[bytes] = ByteCache(100)
    cache.put("small", bytes(60))
    assert cache.get_or_compute("big", lambda: bytes(101)) == bytes(101)
    assert cache.get("big") is None and cache.get("small") is not None and cache.total == 60


def test_sessions_asking_at_once_for_a_missing_key_compute_it_once() -> None:
    cache: ByteCache[torch.Tensor] = ByteCache(10_000)
    calls, results = [], []
    start = threading.Barrier(8)

    def compute() -> torch.Tensor:
        calls.append(1)
        time.sleep(0.2)
        return torch.ones(4)

    def session() -> None:
        start.wait()
        results.append(cache.get_or_compute(("model", "image"), compute))

    threads = [threading.Thread(target=session) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(calls) == 1 and len(results) == 8 and all(r is results[0] for r in results)


def test_a_failure_is_not_kept() -> None:
    cache: ByteCache[bytes] = ByteCache(100)

    def fail() -> bytes:
        raise ValueError("no such file")

    with pytest.raises(ValueError, match="no such file"):
        cache.get_or_compute("k", fail)
    assert cache.get_or_compute("k", lambda: b"ok") == b"ok"
    with pytest.raises(ValueError, match="budget"):
        ByteCache(-1)


def test_nbytes_counts_tensors_arrays_images_and_what_holds_them() -> None:
    @dataclass
    class Held:
        tensors: tuple
        array: np.ndarray
        image: Image.Image
        extra: dict
        name: str = "not counted"

    tensors = (torch.zeros(10, dtype=torch.float32), torch.zeros(3, dtype=torch.float16))
    held = Held(tensors, np.zeros((2, 5), dtype=np.uint8), Image.new("RGB", (4, 3)),
                {"b": b"xyz", "m": torch.nn.Linear(2, 3)})
    assert nbytes(held) == 40 + 6 + 10 + 36 + 3 + (6 + 3) * 4

"""Progress of long computations (max-flows), reported to a callback the caller installs for its thread.

A :class:`contextvars.ContextVar` holds the callback, so each thread (each dashboard session) sees only
its own and nothing is shared::

    with progress.reporting(lambda fraction: bar.progress(fraction)):
        maps = explainers.compute(cap, "attention_flow")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_CALLBACK: ContextVar[Callable[[float], None] | None] = ContextVar("explainers_progress", default=None)


@contextmanager
def reporting(callback: Callable[[float], None]) -> Iterator[None]:
    """Call ``callback(fraction done)`` from long computations in this context, with fractions in (0, 1]."""
    token = _CALLBACK.set(callback)
    try:
        yield
    finally:
        _CALLBACK.reset(token)


def report(done: int, total: int) -> None:
    """Tell the installed callback, if any, that ``done`` of ``total`` steps are finished."""
    callback = _CALLBACK.get()
    if callback is not None:
        callback(done / total)

"""Garbage collection tuned for a run: a large, long-lived heap that keeps growing.

A run keeps every node, event and call of every tree alive until it ends, and allocates
short-lived containers (requests, responses, events) for every call. With CPython's
default thresholds a young collection runs every 700 allocations and an older one every
few thousand, and each older collection walks the whole live heap: measured on the
overhead benchmark, about a third of thinktree's CPU per call. While a run is going,
what existed before it (modules, configuration) is frozen out of the collector and young
collections run every 200,000 allocations; both are restored when the last run ends.
Reference counting frees acyclic garbage as before, so memory is not held longer.

What the run made and still holds as it ends (its trees, above all) joins the oldest
generation then, beside what existed before it: the young collection that the restored
threshold would start at once walks all of it only to find it alive (5-9 ms at the end of
a 3,200-sample run). Garbage cycles the run left wait for the next full collection; a
run leaves few (its connections', each a protocol and its parser).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["YOUNG_THRESHOLD", "run_gc"]

YOUNG_THRESHOLD = 200_000

_depth = 0
_saved: tuple[int, int, int] | None = None


@contextmanager
def run_gc() -> Iterator[None]:
    """Collect less often while the block runs (nests: restored when the outermost ends)."""
    global _depth, _saved
    if _depth == 0:
        _saved = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(max(_saved[0], YOUNG_THRESHOLD), _saved[1], _saved[2])
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _saved is not None:
            gc.freeze()  # what the run made and still holds: to the oldest generation
            gc.set_threshold(*_saved)
            gc.unfreeze()
            _saved = None

"""A sharded cell's progress while its shards run: their traces, read as they grow.

The driver of a sharded cell sees no events of its own until the merge; this reads each
shard's ``trace.jsonl`` (on the shared folder) and hands a cell's watcher what a
progress view needs: one ``run-started`` with the cell's problem count, then each
problem's ``problem-finished`` once (a shard run again after its worker died rewrites
its trace, and its problems are not counted twice) and every ``call-retried``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from thinktree.orchestrator.bus import Subscriber
from thinktree.orchestrator.events import CallRetried, ProblemFinished, RunStarted
from thinktree.orchestrator.trace import TRACE_NAME, TraceDecoder, TraceError


class ShardFollower:
    """Call :meth:`poll` now and then; it forwards what the shards wrote since."""

    def __init__(
        self, subscriber: Subscriber, folders: Sequence[Path], started: RunStarted
    ) -> None:
        self._subscriber = subscriber
        self._traces = [folder / TRACE_NAME for folder in folders]
        self._offsets = [0] * len(folders)
        self._decoders = [TraceDecoder() for _ in folders]
        self._finished: set[str] = set()
        subscriber.handle(started)

    def poll(self) -> None:
        for i, path in enumerate(self._traces):
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if size < self._offsets[i]:  # written again from the start by a re-run
                self._offsets[i], self._decoders[i] = 0, TraceDecoder()
            if size == self._offsets[i]:
                continue
            try:
                with path.open("rb") as file:
                    file.seek(self._offsets[i])
                    chunk = file.read(size - self._offsets[i])
                self._offsets[i] += len(chunk)
                events = self._decoders[i].feed(chunk)
            except (OSError, TraceError):
                # progress only (the merge reads the traces properly): skip what is there
                self._offsets[i], self._decoders[i] = size, TraceDecoder()
                continue
            for event in events:
                if isinstance(event, ProblemFinished):
                    if event.problem_id in self._finished:
                        continue
                    self._finished.add(event.problem_id)
                elif not isinstance(event, CallRetried):
                    continue
                self._subscriber.handle(event)

"""Where the view's events come from: a live run, a recorded trace, or a trace growing.

Each source yields batches of events; the app applies a batch to its state and draws
on a timer, so neither the source nor the app ever waits on the other's pace.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream

from thinktree._files import in_use
from thinktree.orchestrator.events import Event, RunFinished
from thinktree.orchestrator.trace import (
    TraceDecoder,
    TraceError,
    is_trace,
    resolve_trace,
    run_folder,
    trace_finished,
)

BATCH = 2000  # events applied between two chances for the screen to draw
SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, math.inf)
_READ = 1 << 20  # bytes of a trace decoded at a time
_TICK = 0.05  # seconds a replay sleeps at most before it looks at speed and pause again


class LiveSource:
    """Events of a run in this process, from a :class:`~thinktree.tui.subscriber.TuiSubscriber`.

    ``engine``, when given, is the run itself, started by the app once it is up: as one
    of its workers, or through ``spawn`` (a task outside the app, so that the run can go on
    after the view closes; the app then asks before quitting). ``folder`` says where the
    run's folder is, once it is known, and ``config`` the config file its endpoint was
    named in (for the hint on how to resume it).
    """

    def __init__(
        self,
        receive: MemoryObjectReceiveStream[Event],
        engine: Callable[[], Awaitable[Any]] | None = None,
        *,
        spawn: Callable[[Callable[[], Coroutine[Any, Any, Any]]], None] | None = None,
        folder: Callable[[], Path | None] | None = None,
        config: Path | None = None,
    ) -> None:
        self.receive = receive
        self.engine = engine
        self.spawn = spawn
        self.folder = folder
        self.config = config

    @property
    def status(self) -> str:
        return "live"

    async def batches(self) -> AsyncIterator[list[Event]]:
        async with self.receive:
            while True:
                try:
                    batch = [await self.receive.receive()]
                except anyio.EndOfStream:
                    return
                while len(batch) < BATCH:
                    try:
                        batch.append(self.receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                yield batch


class ReplaySource:
    """A recorded trace played back at ``speed`` × real time (``inf``: all at once)."""

    def __init__(self, path: Path, *, speed: float = math.inf) -> None:
        if not speed > 0:
            raise ValueError(f"replay speed must be positive, not {speed}")
        self.path = path
        self.speed = speed
        self.paused = False
        self.clock = 0.0  # the replay's position, in seconds of the recorded run
        self.poll_s = 0.25
        self.rewritten = False  # a resume of the run wrote its trace anew since
        self._read = 0  # bytes of the trace read
        self._inode = 0

    @property
    def status(self) -> str:
        if self.rewritten:
            return REWRITTEN
        if self.paused:
            return "replay paused"
        return "replay" if self.speed == math.inf else f"replay {self.speed:g}×"

    async def until_rewritten(self) -> None:
        """Once replayed, wait while the trace stays as read: a cancelled, failed or
        stopped run may be resumed, which writes its trace anew; the view then says so."""
        self.rewritten = await _rewritten(self.path, self._read, self._inode, self.poll_s)

    def faster(self) -> None:
        self.speed = next((s for s in SPEEDS if s > self.speed), SPEEDS[-1])

    def slower(self) -> None:
        # a speed given below the slowest listed one stays (it went up to 0.25x)
        self.speed = next((s for s in reversed(SPEEDS) if s < self.speed), self.speed)

    def toggle_pause(self) -> None:
        self.paused = not self.paused

    async def batches(self) -> AsyncIterator[list[Event]]:
        pending: deque[Event] = deque()
        started = False
        async for chunk in _decoded_chunks(self.path, self):
            pending.extend(chunk)
            if not started and pending:
                self.clock, started = pending[0].at, True
            while pending:
                if self.paused:
                    await anyio.sleep(_TICK)
                    continue
                batch: list[Event] = []
                while (
                    pending
                    and len(batch) < BATCH
                    and (self.speed == math.inf or pending[0].at <= self.clock)
                ):
                    batch.append(pending.popleft())
                if batch:
                    self.clock = max(self.clock, batch[-1].at)
                    yield batch
                    await anyio.lowlevel.checkpoint()
                    continue
                step = min((pending[0].at - self.clock) / self.speed, _TICK)
                await anyio.sleep(step)
                self.clock += step * self.speed


async def _decoded_chunks(path: Path, source: ReplaySource) -> AsyncIterator[list[Event]]:
    """The events of a whole trace file, a chunk at a time, decoded off the event loop
    (the bytes read and the file's inode noted on ``source``).

    A line that is no event raises :class:`TraceError` once the events before it are given.
    """
    decoder = TraceDecoder(str(path))
    async with await anyio.open_file(path, "rb") as file:
        source._inode = os.fstat(file.wrapped.fileno()).st_ino
        while chunk := await file.read(_READ):
            source._read += len(chunk)
            try:
                events = await anyio.to_thread.run_sync(decoder.feed, chunk)
            except TraceError as exc:
                yield exc.events
                raise
            yield events
    yield decoder.finish()


class FollowSource:
    """A trace still being written (``thinktree run`` in another terminal), polled.

    The process writing a run folder holds its lock as long as it lives (what ``runs``
    reads too): once the lock is free and the trace read to its end without the run's
    end, that process died, and following stops with the run :attr:`interrupted`. A
    trace outside a run folder is followed as long as the view stays open.
    """

    GONE = "its process ended"

    def __init__(self, path: Path, *, poll_s: float = 0.25) -> None:
        self.path = path
        self.poll_s = poll_s
        self.state = "following"
        self.folder = run_folder(path)  # None: nothing tells when its writer is gone
        self.interrupted = False  # the run's process ended before the run did
        self._read = 0  # bytes of the trace read so far
        self._inode = 0

    @property
    def status(self) -> str:
        return self.state

    async def batches(self) -> AsyncIterator[list[Event]]:
        decoder = TraceDecoder(str(self.path))
        writer_gone = False
        async with await anyio.open_file(self.path, "rb") as file:
            self._inode = os.fstat(file.wrapped.fileno()).st_ino
            while True:
                chunk = await file.read(1 << 20)
                if chunk:
                    self._read += len(chunk)
                    try:
                        events = decoder.feed(chunk)
                    except TraceError as exc:  # what came before it is shown
                        self.state = "stopped reading"
                        if exc.events:
                            yield exc.events
                        raise
                    for start in range(0, len(events), BATCH):
                        yield events[start : start + BATCH]
                    if any(isinstance(e, RunFinished) for e in events):
                        self.state = "finished"
                        return
                    continue
                if os.fstat(file.wrapped.fileno()).st_nlink == 0:
                    self.state = "trace removed (run failed or cancelled)"
                    return
                if writer_gone:  # and all it wrote before it went has been read since
                    if last := decoder.finish():
                        yield last
                    self.state, self.interrupted = self.GONE, True
                    return
                writer_gone = self.folder is not None and not in_use(self.folder)
                if not writer_gone:
                    await anyio.sleep(self.poll_s)

    async def until_rewritten(self) -> None:
        """After the run's end (or its process's), wait while its trace stays as read: a
        resume of the run writes it anew, and this view then says it is out of date."""
        if self.state not in ("finished", self.GONE):
            return
        if await _rewritten(self.path, self._read, self._inode, self.poll_s):
            self.state = REWRITTEN


REWRITTEN: Final = "the run was resumed: this view is out of date (watch it again)"


async def _rewritten(path: Path, read: int, inode: int, poll_s: float) -> bool:
    """Wait until the trace at ``path`` is no longer the one read (``read`` bytes of file
    ``inode``): True once a resume wrote it anew, False once it is gone."""
    while True:
        await anyio.sleep(poll_s)
        try:
            stat = await anyio.Path(path).stat()
        except OSError:
            return False
        if stat.st_size < read or stat.st_ino != inode:
            return True


Source = LiveSource | ReplaySource | FollowSource


def source_for(path: Path, *, speed: float | None = None) -> ReplaySource | FollowSource:
    """The source for ``thinktree watch PATH``: follow a run still going, else replay.

    A finished run is shown at once unless ``speed`` asks for a replay in time. Raises
    FileNotFoundError when there is no trace at ``path``, ValueError for a file that is
    not a trace, one that cannot be read, or a bad speed (each with a one-line message).
    """
    try:
        trace = resolve_trace(path)
        if not is_trace(trace):
            what = "a run folder or a trace" if trace == path else "a trace"
            raise ValueError(f"{trace} is not {what}")
        finished = trace_finished(trace)
    except OSError as exc:
        if exc.errno is None:  # resolve_trace's own: no trace there
            raise
        raise ValueError(unreadable(Path(exc.filename or path), exc)) from None
    if not finished:
        return FollowSource(trace)
    return ReplaySource(trace, speed=math.inf if speed is None else speed)


def unreadable(path: Path, exc: OSError) -> str:
    """The one-line message for a trace (or the folder it is in) that cannot be read."""
    return f"cannot read {path}: {(exc.strerror or str(exc)).lower()}"

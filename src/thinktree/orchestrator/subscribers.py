"""Subscribers that every run has: the tree recorder, the JSONL trace and the console."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from thinktree.errors import RecordingError
from thinktree.orchestrator.events import (
    CallRetried,
    Event,
    NodeDelta,
    ProblemFinished,
    RunStarted,
)
from thinktree.orchestrator.tree import RunTree
from thinktree.sanitize import clean


class TreeRecorder:
    """Keeps the run's tree current; the results file is written from it."""

    wants_deltas = False

    def __init__(self) -> None:
        self.tree = RunTree()
        self.retries = 0
        self.started: RunStarted | None = None

    def handle(self, event: Event) -> None:
        self.handle_batch((event,))

    def handle_batch(self, events: Sequence[Event]) -> None:
        apply = self.tree.apply
        for event in events:
            # one isinstance check for both, which most events fail, instead of two
            if isinstance(event, (CallRetried, RunStarted)):
                if isinstance(event, CallRetried):
                    self.retries += event.resent  # a wait for the endpoint sends nothing
                else:
                    self.started = event
            apply(event)

    async def aclose(self) -> None:
        return None


class TraceWriter:
    """Appends every event as one JSON line (streamed deltas only when asked for).

    ``also``: given each batch's lines once they are written (the run store's writer is
    fed so, instead of making every line a second time).
    """

    def __init__(
        self, path: Path, *, deltas: bool = False, also: Callable[[bytes], None] | None = None
    ) -> None:
        self.wants_deltas = deltas
        self.path = path
        self._also = also
        self._copy = bytearray()
        try:
            self._file: IO[bytes] = path.open("wb", buffering=1 << 16)
        except OSError as exc:
            raise self._unwritable(exc) from None

    def handle(self, event: Event) -> None:
        self.handle_batch((event,))

    def handle_batch(self, events: Sequence[Event]) -> None:
        """Write each event's line as it is made, then flush the batch.

        A line goes into the file's buffer at once rather than into a list joined later:
        orjson allocates each line at its working buffer's size (then shrinks it), and
        holding a batch of those grows the heap (page faults); written at once, each line's
        memory is reused by the next.
        """
        deltas = self.wants_deltas
        write = self._file.write
        copy = self._copy
        also = self._also
        try:
            if also is None:
                for event in events:
                    if deltas or type(event) is not NodeDelta:
                        write(event.json_line())
            else:
                for event in events:
                    if deltas or type(event) is not NodeDelta:
                        line = event.json_line()
                        write(line)
                        copy += line
            self._file.flush()  # `thinktree watch` follows the file as the run writes it
        except OSError as exc:
            copy.clear()
            raise self._unwritable(exc) from None
        if copy and also is not None:
            also(bytes(copy))
            copy.clear()

    async def aclose(self) -> None:
        try:
            self._file.close()
        except OSError as exc:
            raise self._unwritable(exc) from None

    def _unwritable(self, exc: OSError) -> RecordingError:
        return RecordingError(f"cannot write the trace {self.path}: {exc.strerror or exc}")


class ConsoleProgress:
    """A rich progress bar of problems done, with retries and waits as they happen."""

    wants_deltas = False

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            # as written: no markup, no emoji codes (":cat:" in a model's name stays so)
            TextColumn("{task.description}", style="bold", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}", markup=False),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            # off a terminal nothing would show, but stopping would print an empty line
            disable=not console.is_terminal,
        )
        self._task: TaskID | None = None
        self._correct = 0
        self._graded = 0

    def handle_batch(self, events: Sequence[Event]) -> None:
        for event in events:  # most events change nothing the bar shows
            if type(event) in _SHOWN:
                self.handle(event)

    def handle(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            # the task first: the bar's first frame shows it (and is its only one now)
            self._task = self._progress.add_task(
                clean(f"{event.mode} · {event.model}"), total=event.problems, status=""
            )
            self._progress.start()
        elif self._task is None:
            return
        elif isinstance(event, ProblemFinished):
            if event.correct is not None:
                self._graded += 1
                self._correct += int(event.correct)
            status = f"{self._correct}/{self._graded} right" if self._graded else ""
            self._progress.update(self._task, advance=1, status=status)
        elif isinstance(event, CallRetried):
            self._progress.update(
                self._task, status=f"waiting {event.wait_s:.0f} s: {clean(event.reason)}"
            )

    async def aclose(self) -> None:
        self._progress.stop()


_SHOWN = frozenset({RunStarted, ProblemFinished, CallRetried})

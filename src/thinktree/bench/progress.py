"""The bench's progress view: cells done, the current cell's problems, and a line per cell."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from thinktree.bench.grid import Cell
from thinktree.bench.runner import CellOutcome, CellWatcher
from thinktree.orchestrator.bus import Subscriber
from thinktree.orchestrator.events import CallRetried, Event, ProblemFinished, RunStarted
from thinktree.sanitize import clean, printable


class _CellEvents:
    """Feeds one cell's run events into the cell bar."""

    wants_deltas = False

    def __init__(self, view: BenchProgress) -> None:
        self._view = view
        self._graded = 0
        self._correct = 0

    def handle(self, event: Event) -> None:
        progress, task = self._view.progress, self._view.cell_task
        if isinstance(event, RunStarted):
            progress.reset(task, total=event.problems, status="")
        elif isinstance(event, ProblemFinished):
            if event.correct is not None:
                self._graded += 1
                self._correct += int(event.correct)
            status = f"{self._correct}/{self._graded} right" if self._graded else ""
            progress.update(task, advance=1, status=status)
        elif isinstance(event, CallRetried):
            progress.update(task, status=f"waiting {event.wait_s:.0f} s: {clean(event.reason)}")

    async def aclose(self) -> None:
        return None


class BenchProgress(CellWatcher):
    """Two bars (cells; problems of the running cell) and one line per finished cell."""

    def __init__(self, console: Console, cells: int, done: int = 0) -> None:
        self.console = console
        self.progress = Progress(
            # as written: no markup, no emoji codes
            TextColumn("{task.description}", style="bold", markup=False, table_column=None),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}", markup=False),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            # off a terminal nothing would show, but stopping would print an empty line
            disable=not console.is_terminal,
        )
        self.bench_task: TaskID = self.progress.add_task(
            "cells", total=cells, completed=done, status=""
        )
        self.cell_task: TaskID = self.progress.add_task("", total=None, status="")

    def __enter__(self) -> BenchProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def cell_started(self, cell: Cell, position: int, total: int) -> Subscriber:
        self.progress.update(self.cell_task, description=clean(cell.name), completed=0, total=None)
        self.progress.update(self.bench_task, status=f"cell {position}/{total}")
        return _CellEvents(self)

    def cell_finished(self, outcome: CellOutcome) -> None:
        self.progress.update(self.bench_task, advance=1)
        result = outcome.result
        if result is None:
            return
        m = result.metrics
        acc = "n/a" if m.accuracy is None else f"{100 * m.accuracy:.0f} %"
        hits = result.cached_calls
        cached = f", {hits} call{'' if hits == 1 else 's'} from the cache" if hits else ""
        note = f"; {outcome.note}" if outcome.note else ""
        failed = result.failed_requests()
        if result.stopped_by:  # what it shows covers only what ran
            mark, note = "[yellow]■ stopped[/]", f"{note}; {result.stopped_by}"
        elif failed:
            mark, note = "[yellow]![/]", f"{note}; {failed} model call(s) failed"
        else:
            mark = "[green]✓[/]"
        if m.past_context:  # complete all the same: no resume sends them again
            note = f"{note}; {m.past_context} model call(s) past the model's context"
        self.console.print(
            f"{mark} {printable(outcome.cell.name)} ({outcome.status}): accuracy {acc} "
            f"({m.correct}/{m.graded}), {m.completion_tokens:,} completion tokens, "
            f"{outcome.seconds:.1f} s{cached}{printable(note)}",
            highlight=False,
            soft_wrap=True,  # one line a cell, also in a log file
        )

"""Screenshots of the view over a fixed synthetic run (times come from the events)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

from thinktree.tui.app import ThinktreeApp
from thinktree.tui.sources import ReplaySource
from thinktree.tui.synthetic import synthetic_run, write_trace

SIZE = (120, 40)
NASTY = "[bold red]not bold[/] \x1b[2J\x1b[31mred?\x1b[0m\nsecond line\twith a tab"

Snap = Callable[..., bool]


def app_for(tmp_path: Path) -> ThinktreeApp:
    events = synthetic_run(8, 3, running=2, texts={"p4/b1": NASTY})
    trace = write_trace(events, tmp_path / "trace.jsonl")
    return ThinktreeApp(ReplaySource(trace), refresh_hz=0.001)  # drawn when the test says


def settled(then: Callable[[ThinktreeApp, Pilot[Any]], Awaitable[None]] | None = None) -> Any:
    async def run_before(pilot: Pilot[Any]) -> None:
        app = pilot.app
        assert isinstance(app, ThinktreeApp)
        await app.source_done.wait()
        app.refresh_view()
        await app.workers.wait_for_complete()
        await pilot.pause()
        if then is not None:
            await then(app, pilot)
        app.refresh_view()
        await pilot.pause()

    return run_before


def test_main_screen(snap_compare: Snap, tmp_path: Path) -> None:
    """Header, problem list with outcome marks, p1's tree with the vote's winner, p1's facts."""
    assert snap_compare(app_for(tmp_path), terminal_size=SIZE, run_before=settled())


def test_node_detail(snap_compare: Snap, tmp_path: Path) -> None:
    """p4's tree (a failed branch) and the text of a node whose output has markup and escapes."""

    async def open_node(app: ThinktreeApp, pilot: Pilot[Any]) -> None:
        await pilot.press("j", "j", "j", "enter")  # p4, and into its tree
        await pilot.press("j", "enter")  # branch 1, its first call, opened
        assert app.detail.node_id == "p4/b1"

    assert snap_compare(app_for(tmp_path), terminal_size=SIZE, run_before=settled(open_node))


def test_wrong_answers_filtered(snap_compare: Snap, tmp_path: Path) -> None:
    """Filter 5: only the problems answered wrong, and the first one's tree."""

    async def wrong(app: ThinktreeApp, pilot: Pilot[Any]) -> None:
        await pilot.press("5")

    assert snap_compare(app_for(tmp_path), terminal_size=SIZE, run_before=settled(wrong))


def test_running_problem(snap_compare: Snap, tmp_path: Path) -> None:
    """A problem mid-way: running marks, streamed characters, the text so far."""

    async def running(app: ThinktreeApp, pilot: Pilot[Any]) -> None:
        await pilot.press("end", "enter", "j")
        assert app.detail.node_id == "p8/b1"

    assert snap_compare(app_for(tmp_path), terminal_size=SIZE, run_before=settled(running))

"""How the live view copes with a big run replayed as fast as the trace can be read.

A synthetic run of 1,000 problems × 16 branches (streamed text included) is written to a
trace and replayed headless into :class:`~thinktree.tui.app.ThinktreeApp` at full speed,
while keys ``j`` are sent to the problem list (the tree follows once keys settle).
Printed: events applied and their rate, the update batches (events applied between two
chances to draw) and the redraws, with their times, how long key presses took to be
answered while the replay was going, and when the tree caught up after the last key.

    .venv/bin/python benchmarks/tui_replay.py [--problems 1000] [--branches 16] [--keys 50]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from textual import events

from thinktree.orchestrator.events import Event
from thinktree.tui.app import ThinktreeApp
from thinktree.tui.sources import ReplaySource
from thinktree.tui.synthetic import synthetic_run, write_trace

KEY_BUDGET_MS = 100.0


class TimedReplay(ReplaySource):
    """A replay that notes how long the app spends on each batch it is given."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, speed=math.inf)
        self.apply_ms: list[float] = []

    async def batches(self) -> AsyncIterator[list[Event]]:
        async for batch in super().batches():
            start = time.perf_counter()
            yield batch  # the app applies the whole batch before asking for the next
            self.apply_ms.append((time.perf_counter() - start) * 1000)


class TimedApp(ThinktreeApp):
    """The app, noting the time of every redraw."""

    def __init__(self, source: TimedReplay, *, refresh_hz: float) -> None:
        super().__init__(source, refresh_hz=refresh_hz)
        self.redraw_ms: list[float] = []

    def refresh_view(self) -> None:
        start = time.perf_counter()
        super().refresh_view()
        self.redraw_ms.append((time.perf_counter() - start) * 1000)


def press(app: ThinktreeApp, key: str) -> None:
    """Send a key the way the terminal driver does.

    ``Pilot.press`` also waits until the process looks idle (CPU time barely moving, up
    to a second), which a replay at full speed never is: that would time the wait, not
    the app.
    """
    event = events.Key(key, key if len(key) == 1 else None)
    event.set_sender(app)
    driver = app._driver
    assert driver is not None
    driver.send_message(event)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _line(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:<24} (none)"
    return (
        f"{name:<24} n={len(values):<6} mean {statistics.fmean(values):7.2f}  "
        f"p50 {_pct(values, 0.5):7.2f}  p95 {_pct(values, 0.95):7.2f}  "
        f"max {max(values):7.2f}  ms"
    )


async def bench(problems: int, branches: int, keys: int, refresh_hz: float) -> None:
    made = time.perf_counter()
    events = synthetic_run(problems, branches)
    with tempfile.TemporaryDirectory() as tmp:
        trace = write_trace(events, Path(tmp) / "trace.jsonl")
        size_mb = trace.stat().st_size / 1e6
        print(
            f"trace: {problems} problems × {branches} branches, {len(events):,} events, "
            f"{size_mb:.1f} MB (made in {time.perf_counter() - made:.1f} s)"
        )
        source = TimedReplay(trace)
        app = TimedApp(source, refresh_hz=refresh_hz)
        press_ms: list[float] = []
        after_ms: list[float] = []
        async with app.run_test(size=(160, 50)) as pilot:
            start = time.perf_counter()
            while not app.problem_list.rows and not app.source_done.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.005)  # polled: no event says the first rows are up
            pressed = 0
            while pressed < keys:
                during = not app.source_done.is_set()
                before = app.problem_list.highlighted
                t0 = time.perf_counter()
                press(app, "j")
                while app.problem_list.highlighted == before:  # until the app moved
                    await asyncio.sleep(0)
                    if time.perf_counter() - t0 > 5:
                        break
                (press_ms if during else after_ms).append((time.perf_counter() - t0) * 1000)
                pressed += 1
                await asyncio.sleep(0.02)  # a fast typist, not a key storm
            t0 = time.perf_counter()  # the keys stop: the tree follows the cursor
            while app.selected_problem != app.problem_list.highlighted:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            settled_ms = (time.perf_counter() - t0) * 1000
            await app.source_done.wait()
            took = time.perf_counter() - start
            await pilot.pause()
            applied = app.view.events
            shown = app.problem_list.highlighted
        print(
            f"replayed: {applied:,} events applied in {took:.2f} s = {applied / took:,.0f} events/s"
        )
        print(f"highlighted after {keys} × j: {shown}")
        print(f"update batches: {len(source.apply_ms)}   redraws: {len(app.redraw_ms)}")
        print(_line("update batch (apply)", source.apply_ms))
        print(_line("redraw", app.redraw_ms))
        print(_line("key j during replay", press_ms))
        if after_ms:
            print(_line("key j after replay", after_ms))
        print(f"tree shown {settled_ms:.0f} ms after the last key (it waits for keys to settle)")
        if press_ms:
            p95 = _pct(press_ms, 0.95)
            verdict = "yes" if p95 < KEY_BUDGET_MS else "NO"
            print(
                f"key presses under {KEY_BUDGET_MS:.0f} ms at p95 during replay: "
                f"{verdict} ({p95:.1f} ms)"
            )
        else:
            print("the replay ended before any key was pressed: no latency measured")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--problems", type=int, default=1000)
    parser.add_argument("--branches", type=int, default=16)
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--refresh-hz", type=float, default=15.0)
    args = parser.parse_args()
    asyncio.run(bench(args.problems, args.branches, args.keys, args.refresh_hz))


if __name__ == "__main__":
    main()

"""The live view of a run: a projection of its events. It never calls a model.

Events are applied to a :class:`~thinktree.tui.state.RunView` as fast as they come (a
worker drains the source); the widgets are redrawn on a timer from what changed, so a
burst of tokens costs one redraw, not one per token. The timer keeps drawing to a small
share of the time: when a frame (the update and the paint after it) takes long, the next
one waits longer, so key presses are never stuck behind one frame after another.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import math
import time
from collections.abc import Awaitable, Callable, Hashable
from pathlib import Path
from typing import Any, ClassVar

from anyio.streams.memory import MemoryObjectReceiveStream
from rich.text import Text
from textual import events, work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.notifications import SeverityLevel
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Footer, Tree

from thinktree.errors import RunStopping
from thinktree.hints import recorded_config, resume_command
from thinktree.orchestrator.events import Event, NodeKind, NodeStatus, RunStarted
from thinktree.orchestrator.trace import TraceError, run_folder
from thinktree.orchestrator.tree import ProblemTree
from thinktree.sanitize import clean, one_line
from thinktree.tui import render
from thinktree.tui.messages import ProblemHighlighted, ProblemOpened, UserNavigated
from thinktree.tui.quit_dialog import QuitChoice, QuitLiveRun
from thinktree.tui.sources import (
    REWRITTEN,
    FollowSource,
    LiveSource,
    ReplaySource,
    Source,
    unreadable,
)
from thinktree.tui.state import FILTERS, RunView, allowed_tokens
from thinktree.tui.widgets import DetailPane, ProblemList, ProblemTreeView, RunHeader

_FILTER_KEYS = dict(zip("12345", FILTERS, strict=True))
_FILTER_GROUP = Binding.Group("filter", compact=True)
_FREEZE_FROM = 20_000  # events applied before the first gc.freeze()
_FRAME_SHARE = 0.25  # at most this share of the time goes to drawing, when frames are slow
_SLOWEST_FRAME_GAP_S = 0.5
KEYS_SETTLE_S = 0.12  # a move this soon after the last one waits for the keys to settle
NARROW_COLUMNS = 80  # below this width one pane at a time is shown, the whole width


class ThinktreeApp(App[None]):
    """Header, problem list, the selected problem's tree, the selected node's text."""

    TITLE = "thinktree"
    CSS = """
    #body {
        height: 1fr;
    }
    #body > * {
        border: round $foreground 30%;
        border-title-color: $foreground 70%;
        height: 1fr;
    }
    #body > *:focus {
        border: round $accent;
        border-title-color: $accent;
    }
    #problems {
        width: 26;
    }
    #problems.-narrow {
        width: 1fr;
    }
    #tree {
        width: 1fr;
        overflow-x: hidden;
    }
    #detail {
        width: 1fr;
        padding: 0 1;
    }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        # Ctrl-C reaches a full-screen view as a key, not as SIGINT: it stops the run as
        # Ctrl-C stops one without the view (over the quit dialog too), never asks.
        Binding("ctrl+c", "interrupt", "Stop", show=False, priority=True),
        Binding("f", "follow", "Follow"),
        Binding("e", "expand", "Expand"),
        Binding("c", "collapse", "Collapse"),
        *(
            Binding(key, f"filter('{name}')", name, group=_FILTER_GROUP)
            for key, name in _FILTER_KEYS.items()
        ),
        Binding("space", "pause", "Pause", priority=True),
        Binding("plus,equals_sign", "faster", "Faster", key_display="+"),
        Binding("minus", "slower", "Slower", key_display="-"),
    ]

    def __init__(
        self,
        source: Source | MemoryObjectReceiveStream[Event],
        *,
        refresh_hz: float = 15.0,
    ) -> None:
        super().__init__()
        self.source: Source = (
            LiveSource(source) if isinstance(source, MemoryObjectReceiveStream) else source
        )
        self.view = RunView(work_out_budget=False)
        self.filter = "all"
        self.follow = False
        self.selected_problem: str | None = None
        self.detail_node: str | None = None
        self.engine_error: BaseException | None = None
        self.source_error: str | None = None  # why the trace could not be read to its end
        self._resume_advice: str | None = None  # how to resume a followed run that died
        self.engine_running = False
        self.quit_choice: QuitChoice | None = None
        self.detached = False  # the view has closed; a spawned run may still be going
        self.source_done = asyncio.Event()
        self._refresh_hz = refresh_hz
        self._followed: str | None = None
        self._last_event_wall = time.monotonic()
        self._source_ended_wall = self._last_event_wall  # when the source gave out
        self._rows_stale = True
        self._budget_asked = False
        self._highlighted: str | None = None  # the list's cursor, which the tree follows
        self._last_highlight = -math.inf
        self.clock: Callable[[], float] = time.monotonic  # for the key-settling rule
        self._settle_timer: Timer | None = None
        self.header = RunHeader(id="header")
        self.problem_list = ProblemList(self._problem_row, self._problem_row_key, id="problems")
        self.problem_tree = ProblemTreeView(id="tree")
        self.detail = DetailPane(id="detail")
        self._pane: Widget = self.problem_list  # the one shown on a narrow terminal
        self._narrow = False  # one pane at a time: the others' keys are left out

    # ── layout ──────────────────────────────────────────────────────────────────

    def compose(self) -> ComposeResult:
        yield self.header
        with Horizontal(id="body"):
            yield self.problem_list
            yield self.problem_tree
            yield self.detail
        yield Footer()

    def on_mount(self) -> None:
        self.problem_list.border_title = "problems"
        self.problem_tree.set_title("tree")
        self.detail.set_title("node")
        self._layout()
        self.problem_list.focus()
        self._pump()
        source = self.source
        if isinstance(source, LiveSource) and source.engine is not None:
            self.engine_running = True
            if source.spawn is not None:
                source.spawn(functools.partial(self._run_engine, source.engine))
            else:
                self.run_worker(self._run_engine(source.engine), name="engine", group="engine")
        self.refresh_view()
        self.set_timer(1 / self._refresh_hz, self._redraw, name="redraw")

    def on_resize(self, event: events.Resize) -> None:
        focused = self.focused
        if focused in (self.problem_list, self.problem_tree, self.detail):
            self._pane = focused  # it may have moved by hand (a click, tab) while wide
        self._layout(event.size.width)  # self.size is the old one until this event is done

    def _layout(self, width: int | None = None) -> None:
        """Side by side; on a narrow terminal only the pane in use, at the full width
        (three panes there would leave the text a few letters a line)."""
        narrow = (self.size.width if width is None else width) < NARROW_COLUMNS
        panes = (self.problem_list, self.problem_tree, self.detail)
        for pane in panes:
            pane.display = not narrow or pane is self._pane
        self.problem_list.set_class(narrow, "-narrow")
        self._narrow = narrow
        if self.screen_stack:
            self.refresh_bindings()  # a hidden pane's keys leave the footer

    def _show_pane(self, pane: Widget) -> None:
        """Move to ``pane`` (the only one shown, on a narrow terminal)."""
        self._pane = pane
        self._layout()
        pane.focus()

    def _redraw(self) -> None:
        """One frame, then the next one scheduled once this one is on the screen."""
        self.refresh_view()
        self.call_after_refresh(self._schedule_redraw, time.perf_counter())

    def _schedule_redraw(self, started: float) -> None:
        frame = time.perf_counter() - started
        gap = max(1 / self._refresh_hz, frame * (1 / _FRAME_SHARE - 1))
        self.set_timer(min(gap, _SLOWEST_FRAME_GAP_S), self._redraw, name="redraw")

    # ── events in ───────────────────────────────────────────────────────────────

    @work(group="pump")
    async def _pump(self) -> None:
        """Apply every event the source gives; drawing is left to the timer."""
        apply = self.view.apply_batch
        freeze_at = _FREEZE_FROM
        source = self.source
        try:
            async for batch in source.batches():
                apply(batch)
                self._last_event_wall = time.monotonic()
                if self.view.events >= freeze_at:
                    # The run's tree so far lives as long as the view: move it out of the
                    # collector's reach, so full collections do not walk a big run each
                    # time (pauses of a few hundred ms at 1,000 × 16). Doubling the mark
                    # keeps the cyclic garbage caught by a freeze to a few handfuls.
                    gc.freeze()
                    freeze_at = self.view.events * 2
        except (TraceError, OSError) as exc:
            self._source_failed(exc)
        else:
            if isinstance(source, FollowSource) and source.interrupted:
                self._interrupted(source)
            elif isinstance(source, ReplaySource | FollowSource) and self._failed_recorded(source):
                self._advise_resume(run_folder(source.path))
                self._failed_notice()
        finally:
            self._source_ended_wall = time.monotonic()
            self.source_done.set()
            if self.screen_stack:  # (none while the app closes)
                self.refresh_bindings()  # a replay's keys go once it has played
        # a resume may write the trace anew: of a run followed, or of one replayed that a
        # resume goes on with (cancelled, failed or stopped; a completed one is done)
        finished = self.view.finished
        if isinstance(source, FollowSource) or (
            isinstance(source, ReplaySource)
            and finished is not None
            and finished.status != "completed"
        ):
            await source.until_rewritten()

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = False,
    ) -> None:
        """A notice, never markup, its controls made visible: what it says holds paths and
        a run's own text, which Textual would send to the terminal as they are."""
        super().notify(
            clean(message), title=clean(title), severity=severity, timeout=timeout, markup=False
        )

    def _source_failed(self, exc: TraceError | OSError) -> None:
        """The trace could not be read on: what came before stays on view, and the error
        is said (and kept, for ``thinktree watch`` to end with once the view is closed)."""
        source = self.source
        if isinstance(exc, OSError) and isinstance(source, ReplaySource | FollowSource):
            message = unreadable(source.path, exc)
        else:
            message = str(exc) or type(exc).__name__
        self.source_error = self.view.error = message
        self.view.stop_reading()
        self.notify(
            message, title="the trace cannot be read on", severity="error", timeout=30, markup=False
        )

    def _interrupted(self, source: FollowSource) -> None:
        """The followed run's process ended before the run did: say so, and how to go on."""
        self.view.interrupt()
        self._advise_resume(source.folder)
        self.notify(
            f"its process ended before the run did; {self._resume_hint()}",
            title="the run was interrupted",
            severity="warning",
            timeout=30,
            markup=False,
        )

    def _failed_notice(self) -> None:
        """Say why the run shown failed, as its trace's end says, and how to resume it: the
        header may have no room for either (as an interrupted run's notice does)."""
        finished = self.view.finished
        why = finished.error if finished is not None and finished.error else "it failed"
        hint = self._resume_hint()
        self.notify(
            one_line(why, 300) + (f"; {hint}" if hint else ""),
            title="the run failed",
            severity="error",
            timeout=30,
            markup=False,
        )

    def _advise_resume(self, folder: Path | None) -> None:
        """Work out how to resume the run in ``folder`` (its manifest read once: the hint
        is drawn per frame)."""
        if folder is None:
            return
        try:
            config = recorded_config(folder)
        except ValueError as exc:
            self._resume_advice = f"it cannot be resumed: {exc}"
        else:
            self._resume_advice = f"resume with: {resume_command(folder, config)}"

    def _failed_recorded(self, source: Source) -> bool:
        """Whether ``source`` is a trace whose run ended failed (its files could not be
        written, its endpoint went away: a resume goes on with it)."""
        finished = self.view.finished
        return (
            isinstance(source, ReplaySource | FollowSource)
            and finished is not None
            and finished.status == "failed"
        )

    def _resume_hint(self) -> str | None:
        """How to resume the run shown, while it is interrupted or failed and not resumed
        yet."""
        source = self.source
        if isinstance(source, LiveSource):
            return self._resume_advice  # set once the run has stopped on an error
        if source.status == REWRITTEN:
            return None
        if isinstance(source, FollowSource) and source.state == source.GONE:
            return self._resume_advice
        return self._resume_advice if self._failed_recorded(source) else None

    @work(thread=True, group="budget")
    def _work_out_budget(self, started: RunStarted) -> None:
        """The run's token allowance, off the event loop (the first import is slow)."""
        tokens = allowed_tokens(started)
        with contextlib.suppress(RuntimeError):  # the app closed meanwhile
            self.call_from_thread(self._set_budget, tokens)

    def _set_budget(self, tokens: int | None) -> None:
        self.view.allowed_tokens = tokens
        self.refresh_view()

    async def _run_engine(self, engine: Callable[[], Awaitable[Any]]) -> None:
        """The run itself, as a worker: its error is kept for the caller, not raised here."""
        try:
            await engine()
        except Exception as exc:
            self.engine_error = exc
            if self.detached:
                return  # nobody left to tell: the caller raises it
            if self.view.started is None:
                self.exit()
                return
            message = one_line(str(exc) or type(exc).__name__, 200)
            finished = self.view.finished  # its end already says "run failed": not twice
            said = finished is not None and finished.status == "failed"
            self.view.error = message if said else f"run failed: {message}"
            source = self.source
            if isinstance(exc, RunStopping) and isinstance(source, LiveSource) and source.folder:
                # it stopped whole (its files cannot be written, its endpoint went away):
                # what it finished is kept, and a resume goes on once the cause is fixed
                folder = source.folder()
                if folder is not None:
                    advice = f"resume with: {resume_command(folder, source.config)}"
                    self._resume_advice = advice
                    message = f"{message}; {advice}"
            self.notify(message, title="the run failed", severity="error", timeout=30, markup=False)
        finally:
            self.engine_running = False

    # ── drawing ─────────────────────────────────────────────────────────────────

    def _problem_row(self, problem_id: str, width: int) -> Text:
        return render.problem_row(self.view.tree.problems[problem_id], width)

    def _problem_row_key(self, problem_id: str) -> Hashable:
        return render.problem_row_key(self.view.tree.problems[problem_id])

    def elapsed(self) -> float:
        """Seconds of the run shown: from event times, ticking between events when live."""
        view = self.view
        source = self.source
        if isinstance(source, ReplaySource):
            return view.elapsed if source.speed == math.inf else max(view.elapsed, source.clock)
        if view.started is None or view.finished is not None:
            return view.elapsed
        # a run that ended without its last event (its process died): the clock stops where
        # it was when that was found, not back at its last event
        now = self._source_ended_wall if self.source_done.is_set() else time.monotonic()
        return view.elapsed + max(0.0, now - self._last_event_wall)

    def source_status(self) -> str:
        status = self.source.status
        if self.engine_running:
            status = "live run"
        if not self.follow or self.source_done.is_set():  # nothing newer will come
            return status
        return "following newest" if status == "following" else f"{status} · following newest"

    def refresh_view(self) -> None:
        """Bring every widget up to date with what changed since the last call."""
        if not self.header.is_attached:
            return  # the app is closing; the timer may fire once more
        view = self.view
        changes = view.take_changes()
        if view.started is not None and not self._budget_asked:
            self._budget_asked = True
            self._work_out_budget(view.started)
        if changes.problem_list or self._rows_stale:
            self._rows_stale = False
            self._set_rows()
        if self.follow:
            self._follow_newest()
        if self.selected_problem is None and self.problem_list.highlighted is not None:
            self._select_problem(self.problem_list.highlighted)
        elif (
            self.filter != "all"  # which lists every problem started
            and self.selected_problem is not None
            and self.selected_problem not in self.problem_list.rows
        ):
            # it left the filtered list (a running problem finished): the tree follows the
            # list's cursor, or shows none where the list is empty
            self._select_problem(self.problem_list.highlighted)
        problem = self._problem()
        if problem is not None and problem.problem_id in changes.problems:
            self.problem_tree.sync(problem)
            self._show_detail()
        self.header.show(
            render.header(
                view,
                elapsed=self.elapsed(),
                source=self.source_status(),
                hint=self._resume_hint(),
            )
        )

    def _set_rows(self) -> None:
        rows = self.view.problems_in(self.filter)
        self.problem_list.set_rows(rows)
        # "all" counts the run's every problem, the ones yet to start too (not listed yet)
        count = max(self.view.total, len(rows)) if self.filter == "all" else len(rows)
        self.problem_list.border_title = f"problems · {self.filter} {count}"

    def _problem(self) -> ProblemTree | None:
        if self.selected_problem is None:
            return None
        return self.view.tree.problems.get(self.selected_problem)

    def _select_problem(self, problem_id: str | None, node_id: str | None = None) -> None:
        self.selected_problem = problem_id
        problem = self._problem()
        self.problem_tree.show(problem)
        self.problem_tree.set_title(problem_id or "tree", is_id=problem_id is not None)
        if problem is None:
            self.detail_node = None
        else:
            self.detail_node = node_id or problem.root_id
            self.problem_tree.focus_node(self.detail_node)
        self._show_detail()

    def _show_detail(self) -> None:
        problem = self._problem()
        node = None
        if problem is not None and self.detail_node is not None:
            node = problem.nodes.get(self.detail_node)
        if problem is None or node is None:
            self.detail.set_title("node")
            self.detail.show(None, Text("select a node", style="dim"), Text(""))
            return
        meta, body = render.node_detail(problem, node)
        # the problem's own node is labelled with its id
        self.detail.set_title(node.label, is_id=node.kind is NodeKind.PROBLEM)
        # following the newest node, its text is read as it arrives: open it at its end
        streaming = (
            node.status is NodeStatus.RUNNING
            and node.kind is not NodeKind.PROBLEM
            and not node.children
        )
        self.detail.show(node.id, meta, body, streaming=streaming, tail=self.follow and streaming)

    def _follow_newest(self) -> None:
        node_id = self.view.newest_node
        if node_id is None or node_id == self._followed:
            return
        self._followed = node_id
        try:
            problem_id = self.view.tree.node(node_id).problem_id
        except KeyError:
            return
        if problem_id not in self.problem_list.rows:
            self.filter = "all"
            self._set_rows()
        self.problem_list.select(problem_id)
        if problem_id != self.selected_problem:
            self._select_problem(problem_id, node_id)
            return
        problem = self._problem()
        if problem is not None:
            self.problem_tree.sync(problem)
        self.detail_node = node_id
        self.problem_tree.focus_node(node_id)
        self._show_detail()

    # ── messages from the widgets ───────────────────────────────────────────────

    def on_problem_highlighted(self, message: ProblemHighlighted) -> None:
        """The tree follows the list's cursor, once keys held down or typed fast settle.

        Moving the cursor costs two lines of the list; building and drawing a problem's
        tree costs far more, and nobody reads the trees of the problems skipped over.
        """
        self.follow = False
        self._highlighted = message.problem_id
        now = self.clock()
        settling = now - self._last_highlight < KEYS_SETTLE_S
        self._last_highlight = now
        self._cancel_settle()
        if settling:
            self._settle_timer = self.set_timer(KEYS_SETTLE_S, self._select_highlighted)
        else:
            self._select_highlighted()

    def _cancel_settle(self) -> None:
        if self._settle_timer is not None:
            self._settle_timer.stop()
            self._settle_timer = None

    def _select_highlighted(self) -> None:
        self._settle_timer = None
        if self._highlighted is not None and self._highlighted != self.selected_problem:
            self._select_problem(self._highlighted)

    def on_problem_opened(self, message: ProblemOpened) -> None:
        self._cancel_settle()
        if message.problem_id != self.selected_problem:
            self._select_problem(message.problem_id)
        self._show_pane(self.problem_tree)

    def on_tree_node_highlighted(self, message: Tree.NodeHighlighted[str]) -> None:
        node_id = message.node.data
        if node_id is not None and node_id != self.detail_node:
            self.detail_node = node_id
            self._show_detail()

    def on_tree_node_selected(self, message: Tree.NodeSelected[str]) -> None:
        node_id = message.node.data
        if node_id is not None:
            self.detail_node = node_id
            self._show_detail()
            self._show_pane(self.detail)

    def on_user_navigated(self, message: UserNavigated) -> None:
        if message.widget == "detail-back":
            self._show_pane(self.problem_tree)
        elif message.widget == "tree-back":
            self._show_pane(self.problem_list)
        else:
            self.follow = False

    # ── actions ─────────────────────────────────────────────────────────────────

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("pause", "faster", "slower"):  # while a replay has more to play
            return isinstance(self.source, ReplaySource) and not self.source_done.is_set()
        # one pane at a time (narrow): a pane's own keys only while it is the one shown
        if action == "filter":
            return not self._narrow or self._pane is self.problem_list
        if action in ("expand", "collapse"):
            return not self._narrow or self._pane is self.problem_tree
        return True

    async def action_quit(self) -> None:
        """Quit; for a live run that can go on without the view, ask first."""
        if isinstance(self.screen, QuitLiveRun):
            return
        if not self._run_can_outlive_view():
            self.exit()
            return
        config = self.source.config if isinstance(self.source, LiveSource) else None
        self.push_screen(QuitLiveRun(self._run_folder(), config), self._quit_chosen)

    def action_interrupt(self) -> None:
        """Ctrl-C: close the view; a live run is stopped (as the quit dialog's "stop")."""
        if self.engine_running:
            self.quit_choice = "stop"
        self.exit()

    def _run_can_outlive_view(self) -> bool:
        source = self.source
        return isinstance(source, LiveSource) and source.spawn is not None and self.engine_running

    def _run_folder(self) -> str | None:
        source = self.source
        if isinstance(source, LiveSource) and source.folder is not None:
            folder = source.folder()
            if folder is not None:
                return str(folder)
        if self.view.started is not None:
            return str(Path("runs") / self.view.started.run_id)
        return None

    def _quit_chosen(self, choice: QuitChoice | None) -> None:
        if choice is None:
            return  # back to the view
        self.quit_choice = choice
        self.exit()

    def action_follow(self) -> None:
        """Toggle following the newest node (its problem, its tree line, its text); one
        pane at a time (narrow), its text is shown, as it arrives."""
        self.follow = not self.follow
        self._followed = None
        if self.follow:
            self._cancel_settle()
            self._follow_newest()
            if self._narrow:
                self._show_pane(self.detail)
        self.refresh_view()

    def action_expand(self) -> None:
        """Expand the node under the cursor and everything below it."""
        (self.problem_tree.cursor_node or self.problem_tree.root).expand_all()

    def action_collapse(self) -> None:
        """Collapse everything below the node under the cursor (the root stays open)."""
        node = self.problem_tree.cursor_node or self.problem_tree.root
        if node.is_root:
            for child in node.children:
                child.collapse_all()
        else:
            node.collapse_all()

    def action_filter(self, name: str) -> None:
        """Show only the problems that are running / done / right / wrong (or all)."""
        self.filter = name
        # a move still settling would select, after the filter, a problem it leaves out
        self._cancel_settle()
        self._set_rows()
        highlighted = self.problem_list.highlighted
        if highlighted != self.selected_problem:
            self._select_problem(highlighted)
        self.refresh_view()

    def action_pause(self) -> None:
        if isinstance(self.source, ReplaySource):
            self.source.toggle_pause()
            self.refresh_view()

    def action_faster(self) -> None:
        if isinstance(self.source, ReplaySource):
            self.source.faster()
            self.refresh_view()

    def action_slower(self) -> None:
        if isinstance(self.source, ReplaySource):
            self.source.slower()
            self.refresh_view()


__all__ = ["FollowSource", "LiveSource", "ReplaySource", "ThinktreeApp"]

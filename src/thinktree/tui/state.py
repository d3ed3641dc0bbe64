"""What the view knows about a run: the RunTree plus counters, and what changed since
the screen was last drawn. Applying an event is cheap; drawing happens on a timer."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from thinktree.errors import ThinktreeError
from thinktree.metrics import tokens_allowed
from thinktree.orchestrator.events import (
    CallRetried,
    CandidateScored,
    Event,
    NodeDelta,
    NodeFailed,
    NodeFinished,
    NodeKind,
    NodeStarted,
    NodeStatus,
    ProblemFinished,
    ProblemStarted,
    RunFinished,
    RunStarted,
    VoteCast,
)
from thinktree.orchestrator.tree import ProblemTree, RunTree


class Outcome(StrEnum):
    """Where a problem stands, as the problem list shows it."""

    RUNNING = "running"
    RIGHT = "right"
    WRONG = "wrong"
    DONE = "done"  # finished, no gold to grade against
    FAILED = "failed"  # left ungraded by an error (results.json counts it as failed)
    STOPPED = "stopped"  # the run ended (stopped, cancelled, failed) before it finished


FILTERS: dict[str, frozenset[Outcome]] = {
    "all": frozenset(Outcome),
    "running": frozenset({Outcome.RUNNING}),
    "done": frozenset({Outcome.RIGHT, Outcome.WRONG, Outcome.DONE, Outcome.FAILED}),
    "right": frozenset({Outcome.RIGHT}),
    "wrong": frozenset({Outcome.WRONG}),  # as the header counts ✗; a failed one is done
}


def outcome(problem: ProblemTree) -> Outcome:
    if not problem.finished:
        stopped = problem.root.status is NodeStatus.CANCELLED
        return Outcome.STOPPED if stopped else Outcome.RUNNING
    if problem.error and problem.correct is None:  # its calls failed, or a limit came first
        return Outcome.FAILED
    if problem.correct is True:
        return Outcome.RIGHT
    if problem.correct is False:
        return Outcome.WRONG
    return Outcome.DONE


def allowed_tokens(started: RunStarted) -> int | None:
    """Completion tokens the whole run may spend, from its settings (None if unknown)."""
    if not started.settings:
        return None
    from thinktree.agents.modes import ModeSettings, build_strategy

    names = {f.name for f in dataclasses.fields(ModeSettings)}
    knobs = {k: v for k, v in started.settings.items() if k in names}
    knobs["mode"] = started.mode
    try:
        per_problem = build_strategy(ModeSettings(**knobs)).allowed_tokens()
    except (ThinktreeError, TypeError, ValueError):
        return None
    limits = started.settings
    return tokens_allowed(
        per_problem,
        started.problems,
        max_problem_tokens=_limit(limits.get("max_problem_tokens")),
        max_run_tokens=_limit(limits.get("max_run_tokens")),
    )


def _limit(value: object) -> int | None:
    """A token limit from a run's settings (None when unset or not a whole number)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(slots=True)
class Changes:
    """What changed since the last :meth:`RunView.take_changes`."""

    problems: set[str] = field(default_factory=set)  # trees with new nodes or labels
    nodes: set[str] = field(default_factory=set)  # nodes whose text or status changed
    problem_list: bool = False  # a problem appeared or finished
    header: bool = False


class RunView:
    """The run as far as the events seen so far tell it."""

    def __init__(self, *, work_out_budget: bool = True) -> None:
        """``work_out_budget=False`` leaves :attr:`allowed_tokens` to the caller (working
        it out imports the engine's strategies, which is slow the first time)."""
        self.tree = RunTree()
        self._work_out_budget = work_out_budget
        self.started: RunStarted | None = None
        self.finished: RunFinished | None = None
        self.interrupted = False  # its process ended before the run did (no RunFinished)
        self.order: list[str] = []  # problem ids, in the order they started
        self.outcomes: dict[Outcome, int] = dict.fromkeys(Outcome, 0)
        self.completion_tokens = 0
        self.prompt_tokens = 0
        self.allowed_tokens: int | None = None
        self.retries = 0  # this session's, and at the end those behind calls read back
        self.last_retry: CallRetried | None = None
        self.elapsed = 0.0  # seconds since the run started, by the latest event
        self.newest_node: str | None = None
        self.events = 0
        self.skipped = 0  # events that referred to nodes never started
        self.error: str | None = None  # the source failed (a broken trace, say)
        self._changes = Changes()

    @property
    def done(self) -> int:
        """Problems finished (right, wrong, failed or ungraded)."""
        unfinished = (Outcome.RUNNING, Outcome.STOPPED)
        return sum(n for o, n in self.outcomes.items() if o not in unfinished)

    @property
    def ended(self) -> str | None:
        """How the run ended (its RunFinished's status, or "interrupted"); None while it goes."""
        if self.finished is not None:
            return self.finished.status
        return "interrupted" if self.interrupted else None

    @property
    def total(self) -> int:
        return self.started.problems if self.started else len(self.order)

    def take_changes(self) -> Changes:
        changes, self._changes = self._changes, Changes()
        return changes

    def apply_batch(self, events: Sequence[Event]) -> None:
        """Fold ``events`` in as :meth:`apply` does, a node's streamed pieces joined first:
        added one at a time, each copied the node's text so far (minutes for megabytes)."""
        pieces: dict[str, list[NodeDelta]] = {}  # per node, those since its text was set
        for event in events:
            if type(event) is NodeDelta:
                held = pieces.setdefault(event.node_id, [])
                if event.restart and held:  # the text starts afresh: what came before goes
                    self._apply_pieces({event.node_id: held[:]})
                    held.clear()
                held.append(event)
                continue
            if pieces:
                self._apply_pieces(pieces)
            self.apply(event)
        self._apply_pieces(pieces)

    def _apply_pieces(self, pieces: dict[str, list[NodeDelta]]) -> None:
        for node_id, deltas in pieces.items():
            text = "".join(d.text for d in deltas)
            joined = NodeDelta(
                at=deltas[-1].at, node_id=node_id, text=text, restart=deltas[0].restart
            )
            skipped = self.skipped
            self.apply(joined)
            self.events += len(deltas) - 1
            if self.skipped > skipped:
                self.skipped += len(deltas) - 1
        pieces.clear()

    def apply(self, event: Event) -> None:
        """Fold one event in; events about unknown problems or nodes are counted, not fatal."""
        self.events += 1
        self.elapsed = max(self.elapsed, event.at)
        changes = self._changes
        changes.header = True
        known = self.tree.problems
        new_problem = isinstance(event, ProblemStarted) and event.problem_id not in known
        before: Outcome | None = None  # the outcome a problem event may change
        if isinstance(event, ProblemStarted | ProblemFinished) and event.problem_id in known:
            before = outcome(known[event.problem_id])
        if not self._fits(event):
            self.skipped += 1
            return
        try:
            self.tree.apply(event)
            problem_id = self._problem_of(event)
        except KeyError:
            self.skipped += 1
            return
        if problem_id is not None:
            changes.problems.add(problem_id)
        match event:
            case RunStarted():
                self.started = event
                changes.problem_list = True  # its "all" counts the run's problems
                if self._work_out_budget:
                    self.allowed_tokens = allowed_tokens(event)
            case RunFinished():
                self.finished = event
                self.retries += event.read_back_retries  # as the results count them
                if event.error and self.error is None:  # why it failed, as its trace says
                    self.error = event.error
                self._stop_unfinished()
            case CallRetried():
                self.retries += event.resent  # a wait for the endpoint sends nothing
                self.last_retry = event
            case ProblemStarted():
                if new_problem:
                    self.order.append(event.problem_id)
                self._recount(before, outcome(known[event.problem_id]))
                self.newest_node = event.node_id
                changes.nodes.add(event.node_id)
                changes.problem_list = True
            case NodeStarted():
                self.newest_node = event.node_id
                changes.nodes.add(event.node_id)
            case NodeDelta():
                changes.nodes.add(event.node_id)
            case NodeFinished() | NodeFailed():
                # the solver's, as the run's summary counts them (not its verifiers')
                if self.tree.node(event.node_id).kind != NodeKind.VERDICT:
                    self.completion_tokens += event.completion_tokens
                    self.prompt_tokens += event.prompt_tokens
                changes.nodes.add(event.node_id)
            case VoteCast():
                changes.nodes.add(event.node_id)
                if event.winner_node:
                    changes.nodes.add(event.winner_node)
            case CandidateScored():
                changes.nodes.update((event.node_id, event.candidate_node))
            case ProblemFinished():
                problem = self.tree.problems[event.problem_id]
                self._recount(before, outcome(problem))
                changes.nodes.add(problem.root_id)
                changes.problem_list = True

    def _fits(self, event: Event) -> bool:
        """Whether ``event`` fits the tree as far as it has grown. A trace not as its run
        wrote it (edited, or two runs' put together) may start a node twice, under itself
        or under a node never started, or start a problem on another one's node: applied,
        those would make a node its own ancestor, or leave one in two problems."""
        tree = self.tree
        match event:
            case NodeStarted(node_id=nid, problem_id=pid, parent_id=parent):
                problem = tree.problems.get(pid)
                return (
                    problem is not None and parent in problem.nodes and tree.problem_of(nid) is None
                )
            case ProblemStarted(node_id=nid, problem_id=pid):
                return tree.problem_of(nid) in (None, pid)
        return True

    def interrupt(self) -> None:
        """The run's process ended before the run did: nothing in it runs any more, and
        what it left open is shown stopped, as when a run ends."""
        if self.finished is None and not self.interrupted:
            self.interrupted = True
            self._changes.header = True
            self._stop_unfinished()

    def stop_reading(self) -> None:
        """The trace cannot be read on (a damaged line): nothing more will come, so what
        is open is shown stopped, not running as if more were on its way."""
        if self.finished is None:
            self._changes.header = True
            self._stop_unfinished()

    def _recount(self, before: Outcome | None, after: Outcome) -> None:
        if before is not after:
            if before is not None:
                self.outcomes[before] -= 1
            self.outcomes[after] += 1

    def _stop_unfinished(self) -> None:
        """The run has ended: nothing in it is running any more. Problems it left
        unfinished, and their nodes still open, are shown stopped, not running."""
        changes = self._changes
        for problem in self.tree.problems.values():
            open_nodes = [n for n in problem.nodes.values() if n.status is NodeStatus.RUNNING]
            if not open_nodes:
                continue
            before = outcome(problem)
            for node in open_nodes:
                node.status = NodeStatus.CANCELLED
                changes.nodes.add(node.id)
            self._recount(before, outcome(problem))
            changes.problems.add(problem.problem_id)
            changes.problem_list = True

    def _problem_of(self, event: Event) -> str | None:
        match event:
            case (
                ProblemStarted()
                | NodeStarted()
                | VoteCast()
                | ProblemFinished()
                | CandidateScored()
            ):
                return event.problem_id
            case NodeDelta() | NodeFinished() | NodeFailed():
                return self.tree.node(event.node_id).problem_id
        return None

    def problems_in(self, name: str) -> list[str]:
        """Ids of the problems the filter ``name`` shows, in start order."""
        wanted = FILTERS[name]
        problems = self.tree.problems
        return [pid for pid in self.order if outcome(problems[pid]) in wanted]

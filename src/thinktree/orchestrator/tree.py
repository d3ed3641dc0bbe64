"""The problem tree as a projection of events.

Every view of a run (results file, console table, TUI) builds its tree by applying the
same events in order, so what the user sees is exactly what the engine did.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from thinktree.orchestrator.events import (
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
    StrategyChosen,
    VoteCast,
)


@dataclass(slots=True)
class Node:
    """One step in a problem's tree."""

    id: str
    problem_id: str
    parent_id: str | None
    kind: NodeKind
    label: str
    status: NodeStatus = NodeStatus.RUNNING
    text: str = ""
    max_tokens: int | None = None
    continuation: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    answer: str | None = None
    extraction: str | None = None
    finish_reason: str | None = None
    latency_s: float = 0.0
    started_at: float = 0.0
    finished_at: float | None = None
    error: str | None = None
    call_id: str | None = None
    cue: str = ""  # what its text continues (see NodeStarted.cue)
    children: list[str] = field(default_factory=list)
    score: float | None = None  # a verdict node: its verifier's score
    scores: dict[str, float] = field(default_factory=dict)  # a candidate: score per verifier

    @property
    def combined_score(self) -> float | None:
        """A candidate's verifier score: the mean over its verifiers (None if unscored)."""
        return statistics.fmean(self.scores.values()) if self.scores else None

    def to_dict(self) -> dict[str, Any]:
        """The node as ``results.json`` holds it. Made for each node of a run as its
        results are written, so nothing is copied: its kind and status are the enums
        themselves (strings), and its children and scores the node's own."""
        latency = self.latency_s
        return {
            "id": self.id,
            "parent": self.parent_id,
            "kind": self.kind,
            "label": self.label,
            "status": self.status,
            "text": self.text,
            "max_tokens": self.max_tokens,
            "continuation": self.continuation,
            "cue": self.cue,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "answer": self.answer,
            "extraction": self.extraction,
            "finish_reason": self.finish_reason,
            # rounding is slow, and half a run's nodes (its branches) took no time
            "latency_s": round(latency, 4) if latency else latency,
            "error": self.error,
            "call_id": self.call_id,
            "children": self.children,
            "score": self.score,
            "scores": self.scores,
        }


@dataclass(slots=True)
class ProblemTree:
    """All nodes of one problem, plus its outcome once finished."""

    problem_id: str
    root_id: str
    question: str
    gold: str | None
    nodes: dict[str, Node] = field(default_factory=dict)
    answer: str | None = None
    correct: bool | None = None
    covered: bool | None = None
    error: str | None = None
    finished: bool = False
    vote: VoteCast | None = None
    verdicts: list[CandidateScored] = field(default_factory=list)
    decision: StrategyChosen | None = None  # the auto mode's choice for this problem
    options: dict[str, str] | None = None  # a choice problem's options, by letter
    stopped: str | None = None  # its own or the run's limit cut it short

    @property
    def root(self) -> Node:
        return self.nodes[self.root_id]

    def walk(self, node_id: str | None = None) -> list[Node]:
        """Nodes in depth-first order, starting at ``node_id`` (default: the root)."""
        out: list[Node] = []
        nodes = self.nodes
        stack = [node_id or self.root_id]
        while stack:
            node = nodes[stack.pop()]
            out.append(node)
            if node.children:  # most are leaves (a call's node)
                stack.extend(reversed(node.children))
        return out

    def of_kind(self, *kinds: NodeKind) -> list[Node]:
        return [n for n in self.walk() if n.kind in kinds]

    def completion_tokens(self) -> int:
        """The solver's completion tokens (its verifiers' are counted apart, as in the run's
        metrics): what the problem adds to the run's completion tokens."""
        return sum(n.completion_tokens for n in self.nodes.values() if n.kind != NodeKind.VERDICT)

    def prompt_tokens(self) -> int:
        """The solver's prompt tokens (see :meth:`completion_tokens`)."""
        return sum(n.prompt_tokens for n in self.nodes.values() if n.kind != NodeKind.VERDICT)


class RunTree:
    """Trees of every problem in a run, kept current by :meth:`apply`."""

    def __init__(self) -> None:
        self.problems: dict[str, ProblemTree] = {}
        self._node_problem: dict[str, str] = {}

    def node(self, node_id: str) -> Node:
        return self.problems[self._node_problem[node_id]].nodes[node_id]

    def problem_of(self, node_id: str) -> str | None:
        """The problem the node ``node_id`` was started in, or None for a node never seen."""
        return self._node_problem.get(node_id)

    def apply(self, event: Event) -> None:
        # Each case is an isinstance check, made in turn: a node's start and end come
        # first, being most of a run's events (no event class derives from another).
        match event:
            case NodeFinished():
                nid = event.node_id
                node = self.problems[self._node_problem[nid]].nodes[nid]
                node.status = NodeStatus.DONE
                node.text = event.text
                node.finish_reason = event.finish_reason
                node.prompt_tokens = event.prompt_tokens
                node.completion_tokens = event.completion_tokens
                node.answer = event.answer
                node.extraction = event.extraction
                node.latency_s = event.latency_s
                node.call_id = event.call_id
                node.finished_at = event.at
            case NodeStarted():
                nid, pid = event.node_id, event.problem_id
                nodes = self.problems[pid].nodes
                nodes[nid] = Node(
                    id=nid,
                    problem_id=pid,
                    parent_id=event.parent_id,
                    kind=event.kind,
                    label=event.label,
                    max_tokens=event.max_tokens,
                    continuation=event.continuation,
                    started_at=event.at,
                    cue=event.cue,
                )
                nodes[event.parent_id].children.append(nid)
                self._node_problem[nid] = pid
            case NodeDelta(node_id=nid, text=text, restart=restart):
                node = self.node(nid)
                node.text = text if restart else node.text + text
            case ProblemStarted(problem_id=pid, node_id=nid, question=q, gold=g):
                tree = ProblemTree(
                    problem_id=pid, root_id=nid, question=q, gold=g, options=event.options
                )
                tree.nodes[nid] = Node(
                    id=nid,
                    problem_id=pid,
                    parent_id=None,
                    kind=NodeKind.PROBLEM,
                    label=pid,
                    started_at=event.at,
                )
                self.problems[pid] = tree
                self._node_problem[nid] = pid
            case NodeFailed(node_id=nid, error=err):
                node = self.node(nid)
                node.status = (
                    NodeStatus.CANCELLED if err.startswith("cancelled") else NodeStatus.FAILED
                )
                node.error = err
                node.call_id = event.call_id
                node.prompt_tokens = event.prompt_tokens
                node.completion_tokens = event.completion_tokens
                node.finished_at = event.at
            case VoteCast():
                self.problems[event.problem_id].vote = event
            case CandidateScored():
                tree = self.problems[event.problem_id]
                tree.verdicts.append(event)
                if event.node_id in tree.nodes:
                    tree.nodes[event.node_id].score = event.score
                candidate = tree.nodes.get(event.candidate_node)
                if candidate is not None and event.score is not None:
                    candidate.scores[event.verifier] = event.score
            case StrategyChosen():
                self.problems[event.problem_id].decision = event
            case ProblemFinished():
                tree = self.problems[event.problem_id]
                tree.answer = event.answer
                tree.correct = event.correct
                tree.covered = event.covered
                tree.error = event.error
                tree.stopped = event.stopped
                tree.finished = True
                root = tree.root
                # failed: an error left it ungraded (as the metrics count it); one the
                # model left without an answer is graded, wrong, and done
                failed = event.error and event.correct is None
                root.status = NodeStatus.FAILED if failed else NodeStatus.DONE
                root.answer = event.answer
                root.error = event.error
                root.finished_at = event.at
            case _:
                pass

"""Typed events: every state change of a run is one of these.

The store, the trace file, the progress bar and the TUI are all subscribers of the
same events; nothing else carries state from the engine to a view.
"""

from __future__ import annotations

import copy
import dataclasses
import operator
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

from thinktree._json import dump_line


class NodeKind(StrEnum):
    """What a node in a problem's tree stands for."""

    PROBLEM = "problem"
    BRANCH = "branch"
    GENERATION = "generation"
    EXTENSION = "extension"  # "Wait" appended to reach the minimum thinking length
    STEP = "step"  # one sequential revision step
    FORCED_ANSWER = "forced-answer"
    VERDICT = "verdict"
    VOTE = "vote"


CALL_KINDS = frozenset(NodeKind) - {
    NodeKind.PROBLEM,
    NodeKind.BRANCH,
    NodeKind.VOTE,
    NodeKind.VERDICT,  # a verifier's: it may fail to score the same way every time
}
"""The nodes that are the solver's model calls."""

#: How a call's error starts when the endpoint refused its answer constraint: the answer
#: was then asked for without it, so the call is not one to send again.
CONSTRAINT_REFUSED = "refused its constraint, answered without it"
#: How a call's error starts when the endpoint refused its prompt as longer than the
#: model's context: the same request would be refused again, so no resume sends it, and
#: its line keeps the answer it had.
PAST_CONTEXT = "passed the model's context"


#: How a judge's verdict error starts when its model call failed (its retries spent):
#: not the judge's answer, so a resume sends the call again.
JUDGE_CALL_FAILED = "judge call failed: "
#: How the error of a call a token or money limit refused starts: one cut off mid-stream
#: that the limit could not send again. A resume under a higher limit asks it again, as it
#: does every call a limit stopped; not a failed call.
LIMIT_STOPPED = "run stopped"
#: How the error of a parallel branch starts when its problem's (or branch's) token limit
#: left its first call nothing: the call was never sent, so not a failed call either.
NO_TOKENS_LEFT = "no tokens left"
#: ... unless a limit refused it (a resume under a higher one asks it again anyway).
_REFUSED_BY_LIMIT = JUDGE_CALL_FAILED + LIMIT_STOPPED


def failed_call(kind: str, status: str, error: str | None) -> bool:
    """Whether a node is a model call that failed and a resume would send again: the
    solver's, or a judge's whose call (not its reading) failed."""
    if status != "failed":
        return False
    error = error or ""
    if kind == NodeKind.VERDICT:
        return error.startswith(JUDGE_CALL_FAILED) and not error.startswith(_REFUSED_BY_LIMIT)
    return kind in CALL_KINDS and not error.startswith(
        (CONSTRAINT_REFUSED, PAST_CONTEXT, LIMIT_STOPPED, NO_TOKENS_LEFT)
    )


def failed_calls_in(problems: Iterable[dict[str, Any]]) -> int:
    """How many failed solver calls (:func:`failed_call`) a results file's problems hold."""
    return requests_of(
        (str(node.get("id")), node.get("call_id"))
        for problem in problems
        for node in problem.get("nodes") or ()
        if failed_call(str(node.get("kind")), str(node.get("status")), node.get("error"))
    )


def requests_of(nodes: Iterable[tuple[str, str | None]]) -> int:
    """How many requests the (node id, call id) pairs of call nodes came from: the nodes
    of one request (n samples, a thinking and its answer) share its call id."""
    return len({call_id or node_id for node_id, call_id in nodes})


class NodeStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


_E = TypeVar("_E", bound="Event")


class _Factory:
    """The default of a field made by a factory (a new value for each event)."""

    def __repr__(self) -> str:
        return "<factory>"  # as dataclass shows it in the signature


_FACTORY: Any = _Factory()


def _slot_init(cls: type[_E]) -> type[_E]:
    """Give the frozen dataclass ``cls`` an ``__init__`` that sets each field through
    its slot's setter, and a :meth:`Event.json_line` of its own (:func:`_line_writer`).

    dataclass's own sets each field with ``object.__setattr__(self, name, value)`` (a
    frozen class's ``__setattr__`` refuses), which finds the slot by name every time: for
    events made by the thousand per second that is about 40 % of making one. This one
    takes the same keyword arguments with the same defaults, and its errors read the
    same; the fields stay frozen to everyone else.
    """
    params: list[str] = []
    body: list[str] = []
    env: dict[str, Any] = {"_FACTORY": _FACTORY}
    for f in dataclasses.fields(cls):
        name = f.name
        if not f.init:
            raise TypeError(f"{cls.__name__}.{name}: every field of an event is an argument")
        if f.default is not MISSING:
            env[f"_default_{name}"] = f.default
            params.append(f"{name}=_default_{name}")
        elif f.default_factory is not MISSING:
            env[f"_factory_{name}"] = f.default_factory
            params.append(f"{name}=_FACTORY")
            body.append(f"if {name} is _FACTORY: {name} = _factory_{name}()")
        else:
            params.append(name)
        slot = next(vars(c)[name] for c in cls.__mro__ if name in vars(c))
        env[f"_set_{name}"] = slot.__set__
        body.append(f"_set_{name}(self, {name})")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: an event has no __post_init__")
    source = f"def __init__(self, *, {', '.join(params)}):\n    " + "\n    ".join(body)
    exec(source, env)
    init = env["__init__"]
    init.__annotations__ = {f.name: f.type for f in dataclasses.fields(cls)} | {"return": None}
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    setattr(cls, "__init__", init)  # noqa: B010 (mypy refuses assigning to a method)
    if "json_line" not in vars(cls):  # a class that writes its own line keeps it
        setattr(cls, "json_line", _line_writer(cls))  # noqa: B010
    return cls


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base of all events. ``at`` is seconds since the run started."""

    type: ClassVar[str] = "event"
    at: float = 0.0

    def to_dict(self, *, copied: bool = True) -> dict[str, Any]:
        """The event's fields and its ``type``; dicts and lists inside are copies.

        ``copied=False`` shares them instead: for a reader that only serialises the dict
        at once (the trace writer), never for one that keeps or changes it.
        """
        shape = _SHAPES.get(type(self))
        if shape is None:
            shape = _SHAPES[type(self)] = _shape(type(self))
        names, values, nested = shape
        data = dict(zip(names, values(self), strict=True))
        if copied:
            for name in nested:
                data[name] = _copy(data[name])
        data["type"] = self.type
        return data

    def json_line(self) -> bytes:
        """The event as one line of JSON Lines: ``to_dict()``'s keys (``type`` first).

        Each event class gets its own, compiled (:func:`_line_writer`); this one serves a
        subclass that writes its line otherwise only in some cases (``NodeDelta``)."""
        write = _LINE_WRITERS.get(type(self))
        if write is None:
            write = _LINE_WRITERS[type(self)] = _line_writer(type(self))
        return write(self)


_LINE_WRITERS: dict[type[Event], Callable[[Any], bytes]] = {}


def _line_writer(cls: type[Event]) -> Callable[[Any], bytes]:
    """:meth:`Event.json_line` for ``cls``, compiled once: ``type``, then every field in
    order, the values shared, in one dict display written at once.

    orjson writes a slotted dataclass several times slower than a dict (it looks each
    field up by name), and building the dict any other way (``zip`` over a getter's
    values) costs more than that saves.
    """
    items = [f"{name!r}: self.{name}" for name in (f.name for f in dataclasses.fields(cls))]
    line = f"{{'type': {cls.type!r}, {', '.join(items)}}}"
    source = f"def json_line(self):\n    return _dump_line({line})"
    env: dict[str, Any] = {"_dump_line": dump_line}
    exec(source, env)
    json_line: Callable[[Any], bytes] = env["json_line"]
    json_line.__doc__ = Event.json_line.__doc__
    json_line.__qualname__ = f"{cls.__qualname__}.json_line"
    json_line.__module__ = cls.__module__
    return json_line


_Shape = tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]], tuple[str, ...]]
_SHAPES: dict[type[Event], _Shape] = {}
_SCALARS = frozenset({"str", "int", "float", "bool", "None", "NodeKind"})


def _copy(value: Any) -> Any:
    """A copy of JSON-like data (dicts, lists, scalars), far cheaper than ``deepcopy``."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_copy(v) for v in value)
    if isinstance(value, _ATOMS):
        return value
    return copy.deepcopy(value)


_ATOMS = (str, int, float, bool, type(None))


def container_fields(cls: type[Event]) -> tuple[str, ...]:
    """The fields of ``cls`` that may hold dicts or lists (the others hold scalars)."""
    shape = _SHAPES.get(cls)
    if shape is None:
        shape = _SHAPES[cls] = _shape(cls)
    return shape[2]


def _shape(cls: type[Event]) -> _Shape:
    """Field names, a getter of their values, and the fields that may hold containers."""
    fields = dataclasses.fields(cls)
    names = tuple(f.name for f in fields)
    getter = operator.attrgetter(*names)
    values = getter if len(names) > 1 else lambda event: (getter(event),)
    nested = tuple(
        f.name for f in fields if not set(str(f.type).replace(" ", "").split("|")) <= _SCALARS
    )
    return names, values, nested


@_slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RunStarted(Event):
    type: ClassVar[str] = "run-started"
    run_id: str
    mode: str
    endpoint: str
    model: str
    problems: int
    settings: dict[str, Any] = field(default_factory=dict)


@_slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class ProblemStarted(Event):
    type: ClassVar[str] = "problem-started"
    problem_id: str
    node_id: str
    question: str
    gold: str | None
    options: dict[str, str] | None = None  # a choice problem's options, by letter


@_slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStarted(Event):
    """A node begins. ``cue``: what thinktree appended to the message the call goes on
    from ("Wait", "The final answer is"), which the node's text continues; empty for a
    call that continues nothing or asks in a turn of its own (traces written before the
    field existed read as empty)."""

    type: ClassVar[str] = "node-started"
    node_id: str
    problem_id: str
    parent_id: str
    kind: NodeKind
    label: str
    max_tokens: int | None = None
    continuation: str | None = None
    cue: str = ""


@_slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class NodeDelta(Event):
    """Streamed text for a running node (subscribers coalesce these).

    ``restart``: the call was sent again after its stream was cut off, and this text
    starts the node's streamed text afresh (it replaces, not extends, what came before).
    Traces written before the field existed read as False, and a line leaves it out
    when False, so every other delta costs no more room in the trace.
    """

    type: ClassVar[str] = "node-delta"
    node_id: str
    text: str
    restart: bool = False

    def json_line(self) -> bytes:
        if self.restart:
            return Event.json_line(self)
        return dump_line(
            {"type": self.type, "at": self.at, "node_id": self.node_id, "text": self.text}
        )


@_slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class NodeFinished(Event):
    type: ClassVar[str] = "node-finished"
    node_id: str
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    answer: str | None = None
    extraction: str | None = None
    latency_s: float = 0.0
    call_id: str | None = None
    """The model call that made the node (the n nodes of one request share it)."""
    request_id: str | None = None
    """The server's own id for that call's response, to find it in the server's logs
    (servers may reuse them: ``call_id`` is what tells calls apart)."""


@_slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class NodeFailed(Event):
    type: ClassVar[str] = "node-failed"
    node_id: str
    error: str
    call_id: str | None = None
    """The request the node was sent in (shared by the nodes of one request); None for a
    node never sent."""
    prompt_tokens: int = 0
    """The prompts of its call's replies short of a choice, as their usage said (those of
    attempts cut off mid-stream are unknown: no usage came back for them)."""
    completion_tokens: int = 0
    """What its call's attempts cut off mid-stream streamed for it before the call failed,
    and what its replies short of a choice generated, as their usage said."""


@_slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class CallRetried(Event):
    """A model call failed transiently and will be sent again after ``wait_s``.

    ``attempt`` 0 is no retry but a wait: the endpoint stopped answering, and calls wait
    up to ``wait_s`` for it to come back; each call sent again after it is a retry of its own.
    """

    type: ClassVar[str] = "call-retried"
    endpoint: str
    attempt: int
    wait_s: float
    reason: str

    @property
    def resent(self) -> bool:
        """Whether a request is sent again (a retry, which the run counts), not a wait."""
        return self.attempt > 0


@_slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class VoteCast(Event):
    """The aggregator's decision for one problem."""

    type: ClassVar[str] = "vote-cast"
    problem_id: str
    node_id: str
    rule: str
    answer: str | None
    winner_node: str | None
    counts: dict[str, int]
    scores: dict[str, float] = field(default_factory=dict)  # what each answer was ranked by
    ballots: list[dict[str, Any]] = field(default_factory=list)  # every candidate, in order


@_slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class CandidateScored(Event):
    """A verifier's verdict on one candidate (its node is a child of the candidate).

    ``score`` is None when the verdict failed (``error`` says why); ``correct`` grades the
    candidate's answer against the gold (None without one) so metrics can judge the
    verifier; the verifier itself never sees the gold.
    """

    type: ClassVar[str] = "candidate-scored"
    problem_id: str
    node_id: str
    candidate_node: str
    verifier: str
    score: float | None
    answer: str | None = None
    correct: bool | None = None
    rationale: str = ""
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    model: str | None = None
    """The model its tokens were spent on (None: not known), which prices them later."""


@_slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class StrategyChosen(Event):
    """A per-problem choice of strategy (the ``auto`` mode's pilot), with its reason."""

    type: ClassVar[str] = "strategy-chosen"
    problem_id: str
    node_id: str
    mode: str
    budget: int
    reason: str
    agreement: bool | None = None
    utilisation: float | None = None


@_slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class ProblemFinished(Event):
    type: ClassVar[str] = "problem-finished"
    problem_id: str
    answer: str | None
    correct: bool | None
    covered: bool | None
    error: str | None = None
    stopped: str | None = None  # its own or the run's limit cut it short


@_slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RunFinished(Event):
    """The run's end. ``read_back_retries``: the retries the results count beside the
    session's own :class:`CallRetried`: those an earlier session of a resumed run made
    (whatever became of their calls), and those behind calls read back from another run's
    call store (a bench's); traces written before the field existed read as 0.
    ``error``: why a failed run failed, in one line (None otherwise, and in traces
    written before the field existed)."""

    type: ClassVar[str] = "run-finished"
    run_id: str
    status: str  # "completed", "failed", "cancelled"
    read_back_retries: int = 0
    error: str | None = None

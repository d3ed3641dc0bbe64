"""Strategies under limits and unhelpful models: every loop ends, every node ends, and
answers already stated survive a limit that stops the rest."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from choice_set import case_problems
from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.agents.prompts import FORCE_ANSWER_CUE, WAIT_CUE
from thinktree.errors import RecordingError
from thinktree.orchestrator.ledger import Budget
from thinktree.orchestrator.run import RunSettings, execute
from thinktree.pricing import Price
from thinktree.problems import AnswerType, Problem
from thinktree.testing.fake_server import DEFAULT_REPLY, FakeBehaviour, FakeServer

pytestmark = pytest.mark.anyio
PROBLEMS = case_problems(4)


async def run(
    tmp_path: Path,
    modes: ModeSettings,
    behaviour: FakeBehaviour,
    problems: list[Problem],
    *,
    concurrency: int = 1,
    native_n: bool = False,
    **limits: Any,
) -> dict[str, Any]:
    """One run against the fake server; its results.json (it must end within 20 s)."""
    async with FakeServer(behaviour) as server:
        cfg = EndpointConfig(
            name="fake",
            base_url=server.base_url,
            continuation="chat",
            native_n="yes" if native_n else "no",
        )
        settings = RunSettings(modes=modes, concurrency=concurrency, out=tmp_path / "run", **limits)
        with anyio.fail_after(20):
            result = await execute(problems, cfg, settings)
    results: dict[str, Any] = json.loads((result.folder / "results.json").read_text())
    return results


def nodes_of(problem: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["id"]: n for n in problem["nodes"]}


def _last_assistant(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    return str(last.get("content", "")) if last.get("role") == "assistant" else ""


@pytest.mark.parametrize("states_answer", [True, False])
async def test_a_wait_the_model_answers_with_nothing_ends_the_extending(
    tmp_path: Path, states_answer: bool
) -> None:
    """Below --min-thinking the model answers "Wait" with nothing (0 tokens): asking again
    would get nothing again, forever. One empty extension ends the extending; the thinking
    stands as it was (without the dangling "Wait"), and its answer counts or is forced."""
    sent: list[str] = []

    def reply(body: dict[str, Any], index: int) -> str:
        prefix = _last_assistant(body)
        if "Case 0?" in json.dumps(body.get("messages")):  # not the probe's
            sent.append(prefix)
        if prefix.rstrip().endswith("Wait"):
            return ""
        if prefix.endswith(FORCE_ANSWER_CUE):
            return " B"
        return "Let me think. Answer: B" if states_answer else "Let me think about it."

    modes = ModeSettings(mode="budget", budget=64, min_thinking=32, answer_tokens=8)
    results = await run(tmp_path, modes, FakeBehaviour(reply=reply), PROBLEMS[:1])
    (problem,) = results["problems"]
    assert problem["answer"] == "B" and problem["error"] is None
    nodes = nodes_of(problem)
    assert nodes["q0/wait1"]["status"] == "done" and nodes["q0/wait1"]["completion_tokens"] == 0
    assert "q0/wait2" not in nodes
    assert ("q0/answer" in nodes) is not states_answer
    assert len(sent) == (2 if states_answer else 3)
    if not states_answer:  # the answer is forced after the thinking, not after "Wait"
        assert sent[-1] == "Let me think about it." + FORCE_ANSWER_CUE


PRICES = {"fake-model": Price(prompt_per_m=0.0, completion_per_m=1000.0)}  # 12 tokens: $0.012
RUN_LIMITS = [
    pytest.param({"max_run_tokens": 36}, "token limit of 36", id="tokens"),
    pytest.param({"max_cost": 0.036, "prices": PRICES}, "money limit of $0.036", id="money"),
]


def _stopped_by_the_run(results: dict[str, Any], limit: str) -> None:
    """The run says its limit stopped it, and the problem it never reached was not run."""
    assert results["status"] == "stopped" and limit in results["stopped_by"]
    last = results["problems"][-1]
    assert (
        last["answer"] is None
        and last["error"].startswith("run stopped")
        and limit in last["error"]
    )
    # no call was sent: a parallel branch the limit refused is its first call's node, ended
    # with the reason
    calls = [n for n in last["nodes"] if n["kind"] not in ("problem", "branch")]
    assert all(
        n["status"] == "failed" and n["call_id"] is None and n["completion_tokens"] == 0
        for n in calls
    )
    assert all(limit in n["error"] for n in calls)


@pytest.mark.parametrize(("limits", "limit"), RUN_LIMITS)
async def test_a_step_the_run_limit_refuses_keeps_the_answer_stated_before(
    tmp_path: Path, limits: dict[str, Any], limit: str
) -> None:
    """Two 12-token steps for q0, then q1's first: the limit is reached, and q1's second
    step is refused. q1 keeps the answer its first step stated (it used to end with none,
    as 'run stopped'), and says the run's limit cut it short; q2 is not run."""
    modes = ModeSettings(mode="sequential", steps=2, budget=16, answer_tokens=8)
    results = await run(tmp_path, modes, FakeBehaviour(), PROBLEMS[:3], **limits)
    q0, q1, _ = results["problems"]
    assert q0["answer"] == "B" and q0["stopped"] is None
    assert q1["answer"] == "B" and q1["error"] is None and q1["correct"] is True
    assert q1["stopped"].startswith("run stopped") and limit in q1["stopped"]
    assert [n["id"] for n in q1["nodes"] if n["kind"] == "step"] == ["q1/step1"]
    _stopped_by_the_run(results, limit)


@pytest.mark.parametrize(("limits", "limit"), RUN_LIMITS)
async def test_a_wait_the_run_limit_refuses_keeps_the_thinking_and_its_answer(
    tmp_path: Path, limits: dict[str, Any], limit: str
) -> None:
    """Budget forcing below --min-thinking: q0 thinks 12 tokens and waits 12 more, q1
    thinks 12 and the limit is reached, so its "Wait" is refused (it used to drop the
    answer its thinking stated). The thinking's answer decides q1; q2 is not run."""
    modes = ModeSettings(mode="budget", budget=32, min_thinking=20, answer_tokens=8)
    results = await run(tmp_path, modes, FakeBehaviour(), PROBLEMS[:3], **limits)
    q0, q1, _ = results["problems"]
    assert q0["answer"] == "B" and q0["stopped"] is None
    assert q1["answer"] == "B" and q1["error"] is None
    assert q1["stopped"].startswith("run stopped") and limit in q1["stopped"]
    assert [n["id"] for n in q1["nodes"] if n["kind"] != "problem"] == ["q1/think"]
    _stopped_by_the_run(results, limit)


@pytest.mark.parametrize(
    ("limits", "limit"),
    [
        pytest.param({"max_run_tokens": 12}, "token limit of 12", id="tokens"),
        pytest.param({"max_cost": 0.012, "prices": PRICES}, "money limit of $0.012", id="money"),
    ],
)
async def test_a_constrained_answer_the_run_limit_refuses_leaves_the_thinking_answer(
    tmp_path: Path, limits: dict[str, Any], limit: str
) -> None:
    """With a constrained answer format the answer is always asked for in a node of its
    own; the run's limit refuses it after q0's thinking, which stated B: B decides q0."""
    modes = ModeSettings(mode="budget", budget=32, answer_tokens=8)
    results = await run(
        tmp_path, modes, FakeBehaviour(), PROBLEMS[:2], answer_format="constrained", **limits
    )
    q0, _ = results["problems"]
    assert q0["answer"] == "B" and q0["error"] is None
    assert q0["stopped"].startswith("run stopped") and limit in q0["stopped"]
    assert [n["kind"] for n in q0["nodes"] if n["kind"] != "problem"] == ["generation"]
    _stopped_by_the_run(results, limit)


class _Bus:
    """The events a strategy emits, in order."""

    def __init__(self, refuse: type[Exception] | None = None) -> None:
        self.events: list[Any] = []
        self.refuse = refuse  # raised for a branch's NodeFinished (a store that broke)

    async def emit(self, event: Any) -> None:
        if self.refuse is not None and type(event).__name__ == "NodeFinished":
            raise self.refuse("the run store stopped recording")
        self.events.append(event)

    async def emit_all(self, events: Any) -> None:
        """As the run's bus does: every one of ``events``, or (one refused) none."""
        kept = len(self.events)
        try:
            for event in events:
                await self.emit(event)
        except BaseException:
            del self.events[kept:]
            raise

    def ended(self) -> dict[str, str]:
        """Each node that ended: 'done', or its error."""
        return {
            e.node_id: getattr(e, "error", None) or "done"
            for e in self.events
            if type(e).__name__ in ("NodeFinished", "NodeFailed")
        }


class _StubSolver:
    """Calls as ``calls`` scripts them, by node: an error to raise, or (seconds, reply)."""

    def __init__(self, calls: dict[str, Any], bus: _Bus, *, native_n: bool = False) -> None:
        from thinktree.agents.capabilities import Capabilities

        self.problem = PROBLEMS[0]
        self.caps = Capabilities(native_n=native_n)
        self.constrains = False
        self.bus = bus
        self.calls = calls
        self.finished: list[str] = []  # the calls that ran to their end

    async def _call(self, branch: Any, req: Any) -> Any:
        from thinktree.agents.solver import Segment

        script = self.calls[req.node_id]
        if isinstance(script, Exception):
            raise script
        seconds, text = script
        await anyio.sleep(seconds)
        branch.assistant += text
        self.finished.append(req.node_id)
        answer = "B" if "Answer: B" in text else None
        return Segment(req.node_id, text, "stop", len(text.split()), answer)

    async def segment(self, branch: Any, req: Any) -> Any:
        return await self._call(branch, req)

    async def segments_n(self, branch: Any, reqs: list[Any]) -> list[Any]:
        out = []
        for req in reqs:
            own = branch.fork()
            out.append((await self._call(own, req), own))
        return out


class _StartRefused(_Bus):
    """A bus that raises ``error`` when ``node`` is announced (the run is stopping)."""

    def __init__(self, node: str, error: BaseException) -> None:
        super().__init__()
        self.node = node
        self.error = error

    async def emit(self, event: Any) -> None:
        if type(event).__name__ == "NodeStarted" and event.node_id == self.node:
            raise self.error
        await super().emit(event)

    def running(self) -> set[str]:
        """The nodes announced that never ended."""
        started = {e.node_id for e in self.events if type(e).__name__ == "NodeStarted"}
        return started - set(self.ended())


def _solver(bus: _Bus, **caps: Any) -> Any:
    """A real solver; its calls are never sent (nothing is opened until one is)."""
    from thinktree.agents.capabilities import Capabilities
    from thinktree.agents.endpoint import EndpointClient
    from thinktree.agents.solver import Solver

    client = EndpointClient(EndpointConfig(name="nowhere", base_url="http://127.0.0.1:9/v1"))
    found = Capabilities(continuation="chat", **caps)
    return Solver(problem=PROBLEMS[0], client=client, caps=found, bus=bus)  # type: ignore[arg-type]


STOPPING = [
    pytest.param(RecordingError("the run store stopped recording"), id="recording"),
    pytest.param(asyncio.CancelledError(), id="cancelled"),  # the run's tests run on asyncio
    pytest.param(anyio.ClosedResourceError(), id="closed"),
]
"""How announcing a call fails as the run stops."""


@pytest.mark.parametrize("error", STOPPING)
async def test_a_thinking_whose_answer_cannot_be_announced_does_not_stay_running(
    error: BaseException,
) -> None:
    """The server caps the thinking, and its one call is two nodes: announcing the answer
    fails (the run is stopping). The two are announced together or not at all, so neither
    is (the thinking used to be, and was left 'running' for good), nothing is sent, and
    the tokens both held are given back."""
    from thinktree.agents.solver import Branch
    from thinktree.agents.strategies import BudgetForcing
    from thinktree.orchestrator.ledger import Budget

    bus = _StartRefused("q0/answer", error)
    pool = Budget("q0", 40)
    solver = _solver(bus, thinking_budget="server")
    with pytest.raises(type(error)), anyio.fail_after(5):
        await BudgetForcing(budget=32, answer_tokens=8).run(solver, Branch([]), "q0", pool)
    assert bus.events == [] and not bus.running()
    assert pool.reserved == 0 and pool.used == 0


async def test_n_samples_whose_last_cannot_be_announced_leave_none_running() -> None:
    """The branches' first calls go out as one request with n choices; announcing the
    second fails: neither call is announced (they are, together or not at all), so no
    branch has a node (each is its first call's), and what they held is given back."""
    from thinktree.agents.solver import Branch
    from thinktree.agents.strategies import BudgetForcing, Parallel
    from thinktree.orchestrator.ledger import Budget

    error = RecordingError("the run store stopped recording")
    bus = _StartRefused("q0/b2", error)
    pool = Budget("q0", 80)
    solver = _solver(bus, native_n=True)
    strategy = Parallel(n=2, inner=BudgetForcing(budget=32, answer_tokens=8))
    with pytest.raises(RecordingError), anyio.fail_after(5):
        await strategy.run(solver, Branch([]), "q0", pool)
    assert bus.events == [] and not bus.running() and pool.reserved == 0


class _ClosedAtFailure(_Bus):
    """A bus closed by the time calls cut off in flight are marked failed."""

    wants_deltas = False

    async def emit(self, event: Any) -> None:
        if type(event).__name__ == "NodeFailed":
            raise anyio.ClosedResourceError
        await super().emit(event)


@pytest.mark.parametrize("fails", ["cut off", "endpoint error"])
async def test_n_samples_that_fail_give_back_every_reservation(fails: str) -> None:
    """n samples in one request are cut off in flight (the run stops) or fail on the
    endpoint, and marking the first failed finds the bus closed: every sample still gives
    back what it reserved (the later ones used to keep it, and a call waiting on the
    run's pool would wait for good)."""
    from thinktree.agents.capabilities import Capabilities
    from thinktree.agents.endpoint import EndpointClient
    from thinktree.agents.solver import Branch, Solver
    from thinktree.agents.strategies import BudgetForcing
    from thinktree.orchestrator.ledger import Budget

    bus = _ClosedAtFailure()
    pool = Budget("q0", 80)
    inner = BudgetForcing(budget=32, answer_tokens=8)
    behaviour = FakeBehaviour(delay_s=30)
    if fails == "endpoint error":
        behaviour = FakeBehaviour(reject=lambda body: "down", reject_status=500)
    async with FakeServer(behaviour) as server:
        config = EndpointConfig(
            name="slow", base_url=server.base_url, model="fake-model", max_attempts=1
        )
        client = EndpointClient(config)
        caps = Capabilities(continuation="chat", native_n=True)
        solver = Solver(problem=PROBLEMS[0], client=client, caps=caps, bus=bus)  # type: ignore[arg-type]
        reqs = [inner.first_request(f"q0/b{i}", pool.child(f"q0/b{i}", None)) for i in (1, 2)]
        try:
            with anyio.move_on_after(0.5), pytest.raises(anyio.ClosedResourceError):
                await solver.segments_n(Branch([]), reqs)
        finally:
            await client.aclose()
    assert pool.reserved == 0 and pool.used == 0


async def test_a_branch_the_run_limit_refuses_ends_itself_and_its_siblings_call_finishes() -> None:
    """b1's call is refused by the run's money limit while b2's is under way: b1 ends with
    the reason, and b2's call finishes and decides (it used to be cancelled mid-stream,
    its tokens counted 0 and paid again on resume)."""
    from thinktree.agents.solver import Branch
    from thinktree.agents.strategies import BudgetForcing, Parallel
    from thinktree.errors import RunLimitReached
    from thinktree.orchestrator.ledger import Budget

    reason = "run stopped: its money limit of $0.003 is reached ($0.004 spent)"
    bus = _Bus()
    solver = _StubSolver({"q0/b1": RunLimitReached(reason), "q0/b2": (0.2, "Hmm. Answer: B")}, bus)
    pool = Budget("q0", None, parent=Budget("run", None, stops_run=True))
    strategy = Parallel(n=2, inner=BudgetForcing(budget=32, answer_tokens=8))
    with anyio.fail_after(5):
        candidates = await strategy.run(solver, Branch([]), "q0", pool)  # type: ignore[arg-type]
    assert [(c.node_id, c.answer) for c in candidates] == [("q0/b2", "B")]
    assert solver.finished == ["q0/b2"]
    # each branch is its call's node, which the solver announces and ends: the strategy
    # announces nothing of its own (the solver's refused node is checked below)
    assert bus.events == []
    assert pool.run_stopped == reason


@pytest.mark.parametrize(
    ("pool", "error"),
    [
        pytest.param(Budget("q0", 0), "no tokens left: budget 'q0", id="problem"),
        pytest.param(
            Budget("q0", None, parent=Budget("run", 0, stops_run=True)),
            "run stopped: its token limit of 0 is reached",
            id="run",
        ),
    ],
)
async def test_a_branch_call_a_limit_refuses_still_leaves_its_node(pool: Any, error: str) -> None:
    """A branch's first call that a limit refuses before it starts: its node (which is the
    branch) is announced and ends failed with the reason, so the tree shows every branch;
    it made no call, so it is no failed call either. Another call leaves no node."""
    from thinktree.agents.solver import Branch
    from thinktree.agents.strategies import BudgetForcing
    from thinktree.errors import BudgetExhausted, RunLimitReached
    from thinktree.orchestrator.events import NodeKind, failed_call

    bus = _Bus()
    solver = _solver(bus)
    req = BudgetForcing(budget=32, answer_tokens=8).first_request("q0/b1", pool)
    req.node_id, req.parent_id, req.label, req.branch = "q0/b1", "q0", "branch 1", True
    with pytest.raises((BudgetExhausted, RunLimitReached)), anyio.fail_after(5):
        await solver.segment(Branch([]), req)
    started, failed = bus.events
    assert (started.node_id, started.parent_id, started.kind) == ("q0/b1", "q0", "generation")
    assert started.label == "branch 1" and failed.node_id == "q0/b1"
    assert failed.error.startswith(error), failed.error
    assert not failed_call(NodeKind.GENERATION, "failed", failed.error)
    bus.events.clear()
    req.branch = False  # a later call of a line (a "Wait", a forced answer)
    with pytest.raises((BudgetExhausted, RunLimitReached)), anyio.fail_after(5):
        await solver.segment(Branch([]), req)
    assert bus.events == []


async def test_a_branch_task_cancelled_before_it_ran_does_not_stay_running() -> None:
    """The branches (nodes of their own, as hybrid's are) had their first calls go out as
    one request; b1 needs more calls (a task of its own), b2 is settled at once, and
    recording b2's end fails: the problem ends with the error, and b1, whose task never
    ran, ends with it too, not left 'running'."""
    from thinktree.agents.solver import Branch
    from thinktree.agents.strategies import BudgetForcing, _Hybrid
    from thinktree.errors import RecordingError
    from thinktree.orchestrator.ledger import Budget

    bus = _Bus(refuse=RecordingError)
    solver = _StubSolver(
        {"q0/b1/think": (0, "Hmm."), "q0/b2/think": (0, "Answer: B")}, bus, native_n=True
    )
    strategy = _Hybrid(n=2, inner=BudgetForcing(budget=32, answer_tokens=8))
    with pytest.raises(BaseExceptionGroup) as raised, anyio.fail_after(5):
        await strategy.run(solver, Branch([]), "q0", Budget("q0", None))  # type: ignore[arg-type]
    assert raised.group_contains(RecordingError)
    error = "the run store stopped recording"
    assert bus.ended() == {"q0/b1": error, "q0/b2": error}


async def test_the_money_limit_reached_by_one_branch_lets_its_siblings_calls_finish(
    tmp_path: Path,
) -> None:
    """Two of four branches think 4 tokens and stop without an answer; the other two
    stream 25 slowly. $0.066 cannot hold four 32-token calls at once: calls that do not fit
    wait for those under way (none is refused, or cancelled mid-stream, while others hold
    the limit: they used to be, counted 0, and sent again by a resume), and the last gets
    what is left, which its reply still fits. Every call ends done and counts, the run
    spends at most its limit and says the limit cut a call, and a resume under a higher one
    reads every call back (the cut one's reply ended by itself: a larger grant gets it)."""
    from thinktree.orchestrator.run import load_resume

    short: dict[object, bool] = {}  # by the call's seed: a call asked again replies the same

    def reply(body: dict[str, Any], index: int) -> str:
        if _last_assistant(body) or "Case 0?" not in json.dumps(body.get("messages")):
            return "Answer: B"
        seed = body.get("seed")
        short.setdefault(seed, len(short) % 2 == 0)
        return "Hmm let me see." if short[seed] else "Let me think " + "hard " * 20 + "Answer: B"

    behaviour = FakeBehaviour(reply=reply, native_n=False, chunk_delay_s=0.02)
    modes = ModeSettings(mode="parallel", n=4, budget=32, answer_tokens=8)
    async with FakeServer(behaviour) as server:
        cfg = EndpointConfig(
            name="fake", base_url=server.base_url, continuation="chat", native_n="no"
        )
        settings = RunSettings(
            modes=modes,
            out=tmp_path / "run",
            max_cost=0.066,
            prices=PRICES,
            trace_deltas=True,
        )
        with anyio.fail_after(20):
            first = await execute(PROBLEMS[:1], cfg, settings)
        results = json.loads((first.folder / "results.json").read_text())
        (problem,) = results["problems"]
        why = "run stopped: its money limit of $0.066 cut calls short"
        assert problem["answer"] == "B" and problem["stopped"] == why
        thinking = [n for n in problem["nodes"] if n["kind"] == "generation"]
        assert all(n["status"] == "done" for n in problem["nodes"]), problem["nodes"]
        assert sorted(n["completion_tokens"] for n in thinking) == [4, 4, 25, 25]
        assert results["metrics"]["cost_usd"] <= 0.066 + 1e-12
        sent = server.requests
        state = load_resume(first.folder, prices=PRICES, new_limits=True)
        raised = dataclasses.replace(state.settings, max_cost=10.0)
        with anyio.fail_after(20):
            again = await execute(state.problems, cfg, raised, resume=state)
        assert server.requests == sent  # all read back, the call its grant cut too
    assert again.stopped_by is None and again.cached_calls == 6


async def test_adaptive_sampling_that_drew_every_sample_says_so_whatever_a_limit_refused() -> None:
    """Both samples are drawn; the run's limit then refuses b2's forced answer. The stop
    node said a limit refused more samples ("after 2 of 2"): none was left to refuse."""
    from thinktree.agents.adaptive import Adaptive
    from thinktree.agents.solver import Branch
    from thinktree.agents.strategies import BudgetForcing
    from thinktree.errors import RunLimitReached
    from thinktree.orchestrator.ledger import Budget

    reason = "run stopped: its token limit of 40 is reached (40 spent)"
    bus = _Bus()
    solver = _StubSolver(
        {
            "q0/b1": (0, "Answer: B"),
            "q0/b2": (0, "Hmm, let me think"),  # no answer: one is asked for
            "q0/b2/answer": RunLimitReached(reason),
        },
        bus,
    )
    pool = Budget("q0", None, parent=Budget("run", None, stops_run=True))
    strategy = Adaptive(n=2, wave=2, inner=BudgetForcing(budget=32, answer_tokens=8))
    with anyio.fail_after(5):
        candidates = await strategy.run(solver, Branch([]), "q0", pool)  # type: ignore[arg-type]
    assert len(candidates) == 2 and pool.run_stopped == reason
    stop = next(
        e for e in bus.events if getattr(e, "node_id", "") == "q0/stop" and hasattr(e, "text")
    )
    assert stop.text.endswith("every sample drawn"), stop.text


def _alternating(first: str, second: str) -> Any:
    """A reply that states ``first``, then ``second``, in turn (2 tokens each)."""
    said: list[str] = []

    def reply(body: dict[str, Any], index: int) -> str:
        if "Case " not in json.dumps(body.get("messages")):
            return "Answer: B"  # the probe's
        said.append(first if len(said) % 2 == 0 else second)
        return f"Answer: {said[-1]}"

    return reply


@pytest.mark.parametrize(
    ("limits", "limit", "drawn", "branches"),
    [
        pytest.param({"max_run_tokens": 6}, "token limit of 6", 3, 4, id="tokens"),
        pytest.param(
            {"max_cost": 0.006, "prices": PRICES}, "money limit of $0.006", 3, 4, id="money"
        ),
    ],
)
async def test_adaptive_sampling_the_run_limit_stops_keeps_the_samples_drawn(
    tmp_path: Path, limits: dict[str, Any], limit: str, drawn: int, branches: int
) -> None:
    """Waves of two 2-token samples: after B, A the vote is open. Under --max-tokens 6 (or
    --max-cost $0.006, $0.001 a token) the next wave gets 2 tokens for b3 and none for b4.
    The samples drawn decide (they used to be dropped), and sampling stops there, saying
    why, instead of drawing wave after wave of refused samples."""
    modes = ModeSettings(mode="adaptive", n=8, wave=2, budget=16, answer_tokens=8)
    behaviour = FakeBehaviour(reply=_alternating("B", "A"), native_n=False)
    results = await run(tmp_path, modes, behaviour, PROBLEMS[:2], **limits)
    q0, _ = results["problems"]
    assert q0["answer"] == "B" and q0["stopped"].startswith("run stopped")
    nodes = nodes_of(q0)
    # each sample is its branch's first call's node, under the problem (a refused one too)
    sampled = [n for n in nodes.values() if n["parent"] == "q0" and n["id"] != "q0/stop"]
    assert [n["id"] for n in sampled] == [f"q0/b{i}" for i in range(1, branches + 1)]
    refused = [n for n in sampled if n["status"] == "failed"]
    assert len(refused) == branches - drawn
    assert all(limit in n["error"] for n in refused)
    stop = nodes["q0/stop"]
    assert stop["finish_reason"] == "limit" and stop["label"] == f"stopped at {drawn}/8"
    assert "limit refused more samples" in stop["text"]
    _stopped_by_the_run(results, limit)


async def test_a_hybrid_branch_the_run_limit_refuses_leaves_its_sibling_to_decide(
    tmp_path: Path,
) -> None:
    """Hybrid, two branches of two 16-token steps, under --max-tokens 60: q0 spends 48;
    q1's b1 gets the 12 left for its first step (which answers B) and b2 gets nothing.
    b2 ends with the reason, b1's answer decides q1, and q2 is not run."""
    modes = ModeSettings(mode="hybrid", n=2, steps=2, total_budget=64)
    results = await run(tmp_path, modes, FakeBehaviour(), PROBLEMS[:3], max_run_tokens=60)
    q0, q1, _ = results["problems"]
    assert q0["answer"] == "B" and q0["stopped"] is None
    assert q1["answer"] == "B" and q1["error"] is None
    assert q1["stopped"].startswith("run stopped: its token limit of 60")
    nodes = nodes_of(q1)
    assert [n for n in nodes if "/step" in n] == ["q1/b1/step1"]
    assert nodes["q1/b1"]["status"] == "done"
    assert nodes["q1/b2"]["status"] == "failed" and "token limit of 60" in nodes["q1/b2"]["error"]
    _stopped_by_the_run(results, "token limit of 60")


async def test_a_pilot_that_raises_ends_its_node_with_the_reason() -> None:
    """The endpoint goes down under auto's pilot: the error stops the run, and the pilot's
    node ends failed with it (it was left 'running' in the results and the store)."""
    from thinktree.agents.auto import Auto
    from thinktree.agents.solver import Branch
    from thinktree.errors import EndpointDown
    from thinktree.orchestrator.ledger import Budget

    down = EndpointDown("the endpoint stopped answering")
    bus = _Bus()
    solver = _StubSolver({"q0/pilot/b1": down, "q0/pilot/b2": down}, bus)
    with pytest.raises(BaseExceptionGroup) as raised, anyio.fail_after(5):
        await Auto(budget=16, n=2).run(solver, Branch([]), "q0", Budget("q0", None))  # type: ignore[arg-type]
    assert raised.group_contains(EndpointDown)
    # the pilot's samples are their calls' nodes, which the solver ends (not this stub)
    assert bus.ended() == {"q0/pilot": str(down)}


@pytest.mark.parametrize(
    ("reply", "mode", "answer", "error"),
    [
        pytest.param(DEFAULT_REPLY, "parallel", "B", None, id="agree"),
        pytest.param(
            "Let me think step by step.",
            "sequential",
            None,
            # the limit stopped it before any answer: not graded, a resume goes on
            "no answer before problem stopped: its token limit of 24 cut its calls short",
            id="none",
        ),
    ],
)
async def test_when_the_pilot_spends_the_problem_limit_the_pilot_decides(
    tmp_path: Path, reply: str, mode: str, answer: str | None, error: str | None
) -> None:
    """--max-problem-tokens 24: the pilot's two samples spend it all, so the strategy
    chosen after them can make no call. The pilot's samples decide, and the problem says
    its limit stopped it (it used to fail with "budget 'q0 step 1' is spent", or end with
    no answer, and the run read 'completed')."""
    modes = ModeSettings(mode="auto", budget=16, n=2, steps=2, answer_tokens=8)
    behaviour = FakeBehaviour(reply=reply)
    results = await run(tmp_path, modes, behaviour, PROBLEMS[:2], max_problem_tokens=24)
    stopped = "problem stopped: its token limit of 24 cut its calls short"
    assert results["status"] == "stopped" and results["stopped_by"] == stopped
    for problem in results["problems"]:
        assert problem["decision"]["mode"] == mode
        assert problem["answer"] == answer and problem["stopped"] == stopped
        assert problem["error"] == error
        assert (problem["correct"] is None) == (answer is None)
        assert all(n["status"] != "running" for n in problem["nodes"])


async def test_auto_under_the_run_limit_keeps_answers_and_ends_the_pilot(tmp_path: Path) -> None:
    """--max-tokens 36: q0's pilot spends 24 and agrees, its parallel gets 12 for b1 and
    nothing for b2, so b1's answer decides q0. q1's pilot is refused whole: its node ends
    with the reason (it was left 'running'), nothing is chosen, and q1 is not run."""
    modes = ModeSettings(mode="auto", budget=16, n=2, steps=2, answer_tokens=8)
    results = await run(tmp_path, modes, FakeBehaviour(), PROBLEMS[:2], max_run_tokens=36)
    q0, q1 = results["problems"]
    assert q0["answer"] == "B" and q0["decision"]["mode"] == "parallel"
    assert q0["stopped"].startswith("run stopped: its token limit of 36")
    pilot = nodes_of(q1)["q1/pilot"]
    assert pilot["status"] == "failed" and "token limit of 36" in pilot["error"]
    assert q1["decision"] is None
    _stopped_by_the_run(results, "token limit of 36")


async def test_a_forced_answer_cut_inside_its_number_is_read_from_before_the_cut(
    tmp_path: Path,
) -> None:
    """The answer's token cap ends "X = 1.25" at "X = 1": the whole 1.2 stated before stands."""
    problem = Problem(
        id="calc", question="Compute X.", answer_type=AnswerType.NUMERIC, answer="1.2"
    )

    def reply(body: dict[str, Any], index: int) -> str:
        if FORCE_ANSWER_CUE in _last_assistant(body):  # the forced answer: cut at 10 words
            return "The answer is X = 1.2 so X = 1.25 indeed"
        return "thinking " * 40  # past the thinking budget

    modes = ModeSettings(mode="budget", budget=16, answer_tokens=10)
    results = await run(tmp_path, modes, FakeBehaviour(reply=reply), [problem])
    forced = nodes_of(results["problems"][0])["calc/answer"]
    assert forced["finish_reason"] == "length" and forced["text"].endswith("= 1.25")
    assert forced["answer"] == "1.2" and results["problems"][0]["correct"] is True


async def test_a_step_that_adds_nothing_keeps_the_answer_its_message_stands_on(
    tmp_path: Path,
) -> None:
    """Step 2 answers "Wait" with nothing: the answer standing at its end is step 1's,
    which only the last line states (an option's text), not the "Wait" cue after it."""
    problem = Problem(
        id="drug",
        question="Which drug?",
        answer_type=AnswerType.CHOICE,
        options={"A": "Aspirin", "B": "Heparin"},
        answer="B",
    )

    def reply(body: dict[str, Any], index: int) -> str:
        return "" if _last_assistant(body).endswith(WAIT_CUE) else "I would give heparin here."

    modes = ModeSettings(mode="sequential", steps=2, budget=16, answer_tokens=8)
    results = await run(tmp_path, modes, FakeBehaviour(reply=reply), [problem])
    nodes = nodes_of(results["problems"][0])
    assert nodes["drug/step1"]["answer"] == "B"
    assert nodes["drug/step2"]["text"] == "" and nodes["drug/step2"]["status"] == "done"
    assert nodes["drug/step2"]["answer"] == "B"
    assert results["problems"][0]["answer"] == "B"


async def test_a_wait_cut_inside_its_number_leaves_the_answer_stated_before(
    tmp_path: Path,
) -> None:
    """Below --min-thinking, "Wait" goes on to its cap, which ends "The answer is X = 1.25"
    at "1.25"; the forced answer states none, so the message's answer stands: 1.2, stated
    before the cut, not the number the cap may have cut short."""
    problem = Problem(
        id="calc", question="Compute X.", answer_type=AnswerType.NUMERIC, answer="1.2"
    )

    def reply(body: dict[str, Any], index: int) -> str:
        prefix = _last_assistant(body)
        if prefix.endswith(FORCE_ANSWER_CUE):
            return " unclear"
        if prefix.endswith("Wait"):  # 10 words of it are left: cut right after "1.25"
            return " a b c d The answer is X = 1.25 more"
        return "The answer is X = 1.2."

    modes = ModeSettings(mode="budget", budget=16, min_thinking=16, answer_tokens=8)
    results = await run(tmp_path, modes, FakeBehaviour(reply=reply), [problem])
    (solved,) = results["problems"]
    nodes = nodes_of(solved)
    assert nodes["calc/wait1"]["finish_reason"] == "length"
    assert nodes["calc/wait1"]["text"].endswith("X = 1.25")
    assert nodes["calc/answer"]["answer"] is None
    assert solved["answer"] == "1.2" and solved["correct"] is True

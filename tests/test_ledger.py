"""The budget ledger: grants never pass any enclosing pool."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thinktree.agents.capabilities import Capabilities
from thinktree.agents.solver import Branch, SegmentRequest, Solver
from thinktree.errors import BudgetExhausted, RunLimitReached
from thinktree.orchestrator.events import NodeKind
from thinktree.orchestrator.ledger import Budget, LimitHeld
from thinktree.pricing import MoneyLimit, Price, usd
from thinktree.problems import Problem


def _thinking_solver(bus: object, *, native_n: bool, chat: object = None) -> Solver:
    """A solver for problem q0 on a chat endpoint whose client is ``chat`` alone."""
    client = SimpleNamespace(config=SimpleNamespace(chat_template=None), chat=chat)
    return Solver(
        problem=Problem(id="q0", question="Which?", answer="B"),
        client=client,  # type: ignore[arg-type]
        caps=Capabilities(continuation="chat", native_n=native_n),
        bus=bus,  # type: ignore[arg-type]
    )


def _thinking_requests(pools: dict[str, Budget]) -> list[SegmentRequest]:
    """A 32-token thinking call under each branch (its id: its pool)."""
    return [
        SegmentRequest(
            node_id=f"{branch}/think",
            parent_id=branch,
            kind=NodeKind.GENERATION,
            label="thinking",
            budget=pool,
            max_tokens=32,
        )
        for branch, pool in pools.items()
    ]


def test_grant_is_capped_by_every_enclosing_pool() -> None:
    total = Budget("problem", 100)
    branch = total.child("branch", 60)
    step = branch.child("step", 50)
    assert step.reserve(80) == 50
    other = branch.child("step 2", 50)
    # the branch's 10 left cannot grant 50, but the call under way holds the rest and may
    # give some back: wait for it rather than take less (or give up)
    with pytest.raises(LimitHeld) as held:
        other.reserve(50)
    assert held.value.pool is branch
    step.commit(50, 45)  # a call settles, giving back 5
    assert other.reserve(50) == 15  # nobody holds any: what is left is all there is
    other.commit(15, 15)
    # spent, and nobody holds any: no waiting helps
    with pytest.raises(BudgetExhausted):
        branch.child("step 3", 50).reserve(1)


def test_cut_marks_a_limit_that_grants_less_not_one_that_makes_a_call_wait() -> None:
    problem = Budget("problem", 30)
    first = problem.child("b1", None)
    assert first.reserve(20) == 20
    second = problem.child("b2", None)
    with pytest.raises(LimitHeld):
        second.reserve(20)
    assert not problem.cut  # it waited: nothing was cut (yet)
    first.commit(20, 5)
    assert second.reserve(20) == 20 and not problem.cut  # and then got its whole ask
    # a tighter limit nobody holds grants what it has at once: waiting would not help
    narrow = problem.child("b3", 4)
    assert narrow.reserve(20) == 4 and narrow.cut and not problem.cut
    narrow.commit(4, 4)
    second.commit(20, 20)  # 29 of 30 spent, nothing held
    last = problem.child("b4", None)
    assert last.reserve(20) == 1 and problem.cut
    last.commit(1, 1)
    problem.cut = False
    with pytest.raises(BudgetExhausted):  # a call not made is cut too
        problem.child("b5", None).reserve(1)
    assert problem.cut


def test_commit_releases_the_unused_part_of_a_reservation() -> None:
    total = Budget("problem", 100)
    step = total.child("step", None)
    grant = step.reserve(70)
    step.commit(grant, 20)
    assert total.used == 20 and total.reserved == 0
    assert total.available() == 80
    assert total.utilisation == pytest.approx(0.2)


def test_unlimited_pool_grants_what_is_asked() -> None:
    assert Budget("free", None).reserve(10_000) == 10_000
    with pytest.raises(ValueError, match="at least one token"):
        Budget("free", None).reserve(0)


@given(
    limit=st.integers(1, 500),
    asks=st.lists(st.tuples(st.integers(1, 200), st.floats(0, 1)), max_size=30),
)
def test_used_never_passes_the_limit(limit: int, asks: list[tuple[int, float]]) -> None:
    root = Budget("root", limit)
    for ask, fraction in asks:
        pool = root.child("node", None)
        try:
            grant = pool.reserve(ask)
        except BudgetExhausted:
            assert root.available() == 0
            continue
        assert grant <= ask
        pool.commit(grant, int(grant * fraction))
        assert root.used <= limit
    assert root.reserved == 0


@pytest.mark.anyio
async def test_waiters_whose_asks_partly_fit_do_not_wake_each_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two requests of two samples each wait for the run's tokens a call under way holds.
    Each reserves what fits of its asks, finds the rest held, and undoes its grants: that
    must not wake the other (it finds nothing new), or the two wake each other in turn for
    as long as the call is under way."""
    import anyio

    from thinktree.agents.solver import _reserved

    waits = 0
    real_wait = LimitHeld.wait

    async def counted(self: LimitHeld) -> None:
        nonlocal waits
        waits += 1
        await real_wait(self)

    monkeypatch.setattr(LimitHeld, "wait", counted)
    run = Budget("run", 100, stops_run=True)
    under_way = run.child("q0", None)
    assert under_way.reserve(68) == 68  # 32 left: one ask of 32 fits, not two
    problems = [run.child(f"q{i}", None) for i in (1, 2)]
    grants: list[list[int]] = []

    async def request(problem: Budget) -> None:
        asks = [(problem.child(f"{problem.name}/b{i}", 32), 32) for i in (0, 1)]
        granted = await _reserved(asks)
        grants.append(granted)
        await anyio.sleep(0.05)  # its call
        for (pool, _), grant in zip(asks, granted, strict=True):
            pool.commit(grant, grant)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for problem in problems:
                tg.start_soon(request, problem)
            await anyio.sleep(0.2)  # the call under way takes a while
            assert waits <= 2  # each waiter waits once, and sleeps
            under_way.commit(68, 4)  # it settles, having used 4
    assert sorted(map(sum, grants)) == [32, 64]  # one request whole, the other shares 32
    assert waits <= 4


@pytest.mark.anyio
@pytest.mark.parametrize("native_n", [False, True])
async def test_a_call_cut_off_before_it_is_sent_gives_back_its_reservation(
    native_n: bool,
) -> None:
    """The run stops while a call is being announced (the bus full, the task cancelled):
    what it reserved goes back, or the run's pool would stay held and a call waiting on it
    would wait forever."""

    class StoppingBus:
        wants_deltas = False

        async def emit(self, event: object) -> None:
            raise RuntimeError("the run stops")

        async def emit_all(self, events: object) -> None:
            raise RuntimeError("the run stops")

    run = Budget("run", 100, stops_run=True)
    solver = _thinking_solver(StoppingBus(), native_n=native_n)
    reqs = _thinking_requests({f"q0/b{i}": run.child(f"q0/b{i}", 32) for i in range(2)})
    with pytest.raises(RuntimeError, match="the run stops"):
        if native_n:
            await solver.segments_n(Branch([]), reqs)
        else:
            await solver.segment(Branch([]), reqs[0])
    assert run.reserved == 0 and run.used == 0


def test_the_run_limit_cutting_a_call_says_so_on_the_pools_under_it() -> None:
    """The run's limit (the one that stops the run) granting less than asked marks every
    pool under it up to the call's, so the problem's pool can say the run's limit cut it;
    a narrower limit below that cuts deeper leaves them unmarked."""
    run = Budget("run", 30, stops_run=True)
    problem = run.child("q0", None)
    branch = problem.child("q0/b0", 8)
    assert branch.reserve(16) == 8  # the branch's own limit cut it, not the run's
    branch.commit(8, 8)
    assert problem.run_cut is None and branch.run_cut is None
    other = run.child("q1", None)
    step = other.child("q1/b0", None)
    assert step.reserve(40) == 22  # the run had 22 left
    assert step.run_cut == other.run_cut == "run stopped: its token limit of 30 cut calls short"
    assert run.run_cut is None and problem.run_cut is None


@pytest.mark.anyio
async def test_the_money_limit_holds_the_worst_case_and_waits_for_calls_under_way() -> None:
    """$0.001 a completion token, $0.0001 a prompt token, $0.03 in all. A call holds its
    worst case; one that finds the rest held waits for it to settle; only a limit nobody
    holds affords less (cut) or nothing (the run stops); nothing is ever spent past it."""
    import anyio

    money = MoneyLimit(0.03, Price(prompt_per_m=100.0, completion_per_m=1000.0))
    first = await money.hold(10, 16)  # 0.001 + 0.016
    assert first.max_tokens == 16 and money.held == pytest.approx(0.017)
    got: list[int] = []

    async def second() -> None:
        bill = await money.hold(10, 16)
        got.append(bill.max_tokens)
        bill.settle(8, 16)

    async with anyio.create_task_group() as tg:
        tg.start_soon(second)
        await anyio.sleep(0.05)
        assert not got  # 0.013 left of 0.03 is held by the first: it waits
        first.settle(8, 12)  # cost 0.0128: 0.0172 left, and the second gets its 16
    assert got == [16] and not money.cut
    assert money.spent == pytest.approx(0.0128 + 0.0168) and money.held == 0
    with pytest.raises(RunLimitReached, match=r"the \$0.0004 left is less than"):
        await money.hold(10, 16)  # the prompt alone may cost 0.001


@pytest.mark.anyio
async def test_the_money_limit_says_at_the_end_what_was_spent_in_all() -> None:
    """A call the limit refuses says what was spent then; a cheaper one that still fits
    goes on after it, so the run's reason, given at its end, says what it spent in all.
    Below a cent, amounts keep three figures ($0.00045, not $0.0005)."""
    money = MoneyLimit(0.0005, Price(prompt_per_m=0.0, completion_per_m=10.0))
    (await money.hold(0, 40)).settle(0, 40)  # $0.0004
    with pytest.raises(RunLimitReached) as refused:
        await money.hold(0, 40, least=20)  # 10 tokens left, fewer than the 20 it needs
    assert "($0.0004 spent; the $0.0001 left is less than the next call may cost" in str(
        refused.value
    )
    (await money.hold(0, 5)).settle(0, 5)  # a short call fits in what is left
    assert money.final_reason() == (
        "run stopped: its money limit of $0.0005 is reached ($0.00045 spent; "
        "the $0.00005 left paid for none of the calls it had left)"
    )
    assert [usd(x) for x in (0, 0.00008, 0.000247, 0.5, 0.999, 12.345)] == [
        "$0.00",
        "$0.00008",
        "$0.000247",
        "$0.50",
        "$0.999",
        "$12.35",
    ]


@pytest.mark.anyio
async def test_the_money_limit_cuts_what_it_cannot_pay_and_learns_a_longer_prompt() -> None:
    """Two samples of 16 on a prompt of at most 10 tokens: $0.02 pays for 9 each. The
    endpoint then counts 20 more prompt tokens than the bound (a chat template's own):
    the limit is passed by their cost, once; later calls are held for them too."""
    money = MoneyLimit(0.02, Price(prompt_per_m=100.0, completion_per_m=1000.0))
    bill = await money.hold(10, 16, choices=2)  # 0.001 + 2 × 16 × 0.001 > 0.02: cut to 9 each
    assert bill.max_tokens == 9 and money.cut
    bill.settle(30, 18)  # the endpoint counted 20 more prompt tokens than held for
    assert money.excess == 20 and money.spent == pytest.approx(0.021)
    money.limit = 1.0
    later = await money.hold(10, 1)
    assert later.prompt_tokens == 30 and later.held == pytest.approx(0.004)
    later.release()  # a call that failed costs nothing
    assert money.spent == pytest.approx(0.021) and money.held == 0 and money.calls == 0


@pytest.mark.anyio
async def test_n_samples_in_one_request_keep_the_smallest_grant_and_give_back_the_rest() -> None:
    """Branches whose pools grant different tokens share one request's ``max_tokens``:
    each keeps the smallest grant, gives back what it was granted past that, and spends
    what its own choice counted."""
    from thinktree.agents.endpoint import Choice, Completion
    from thinktree.orchestrator.events import NodeFinished, NodeStarted

    class Bus:
        wants_deltas = False

        def __init__(self) -> None:
            self.events: list[object] = []

        async def emit(self, event: object) -> None:
            self.events.append(event)

        async def emit_all(self, events: list[object]) -> None:
            self.events.extend(events)

    asked: list[int] = []

    async def chat(messages: Any, *, max_tokens: int, n: int = 1, **_: Any) -> Completion:
        asked.append(max_tokens)
        choices = [Choice("Answer: B", "stop", 3 + i) for i in range(n)]
        return Completion(choices, prompt_tokens=5, completion_tokens=7, latency_s=0.0)

    run = Budget("run", 100, stops_run=True)
    problem = run.child("q0", None)
    bus = Bus()
    solver = _thinking_solver(bus, native_n=True, chat=chat)
    pools = [problem.child("q0/b1", 32), problem.child("q0/b2", 8)]
    reqs = _thinking_requests({"q0/b1": pools[0], "q0/b2": pools[1]})
    grown = await solver.segments_n(Branch([]), reqs)
    assert asked == [8]
    started = [e.max_tokens for e in bus.events if isinstance(e, NodeStarted)]
    assert started == [8, 8]
    finished = [(e.node_id, e.completion_tokens) for e in bus.events if isinstance(e, NodeFinished)]
    assert finished == [("q0/b1/think", 3), ("q0/b2/think", 4)]
    assert [seg.answer for seg, _ in grown] == ["B", "B"]
    assert [(p.reserved, p.used) for p in pools] == [(0, 3), (0, 4)]
    assert (problem.reserved, problem.used) == (0, 7) and (run.reserved, run.used) == (0, 7)
    assert pools[1].cut and not pools[0].cut

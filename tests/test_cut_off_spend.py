"""Attempts cut off mid-stream and sent again: what the server generated is spent.

A server (and an API's bill) counts the prompt and every token it streamed before the
cut; the call then asks again whole. Those tokens count in the call's figures, in its
node's tokens and cost, and under the run's token and money limits, which a retry may
never take past them.
"""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path
from typing import Any

import pytest

from thinktree.agents.capabilities import Capabilities
from thinktree.agents.endpoint import EndpointClient, EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.agents.solver import _CutOffSpend
from thinktree.orchestrator.events import CALL_KINDS
from thinktree.orchestrator.ledger import Budget
from thinktree.orchestrator.run import RunResult, RunSettings, execute
from thinktree.pricing import Price
from thinktree.problems import AnswerType, Problem
from thinktree.testing.fake_server import FakeBehaviour, FakeServer, Fault

pytestmark = pytest.mark.anyio

MSGS = [{"role": "user", "content": "hi"}]
LONG = " ".join(f"w{i}" for i in range(40)) + "\nAnswer: yes"  # past every cap here
PROBLEMS = [
    Problem(id=f"q{i}", question="Q?", answer_type=AnswerType.FREE, answer="yes") for i in range(4)
]


def every_first_attempt_cut(index: int) -> Fault | None:
    """Requests 0, 2, 4...: cut off halfway through their stream (one call at a time, each
    call's first attempt)."""
    return Fault.RESET if index % 2 == 0 else None


async def run_cut(tmp_path: Path, **settings: Any) -> tuple[RunResult, dict[str, Any], FakeServer]:
    async with FakeServer(FakeBehaviour(reply=LONG), faults=every_first_attempt_cut) as server:
        endpoint = EndpointConfig(
            name="fake",
            base_url=server.base_url,
            model="fake-model",
            continuation="chat",
            max_backoff_s=0.01,
        )
        run = RunSettings(
            modes=ModeSettings(mode="parallel", n=1, budget=16),
            concurrency=1,
            out=tmp_path / "run",
            trace_deltas=True,  # streams
            **settings,
        )
        result = await execute(
            PROBLEMS, endpoint, run, capabilities=Capabilities(continuation="chat")
        )
    return result, json.loads((result.folder / "results.json").read_text()), server


async def test_a_call_cut_off_mid_stream_counts_what_the_stream_carried() -> None:
    async with FakeServer(FakeBehaviour(reply=LONG), faults=[Fault.RESET]) as server:
        cfg = EndpointConfig(
            name="fake", base_url=server.base_url, model="fake-model", max_backoff_s=0.01
        )
        client = EndpointClient(cfg)

        async def on_delta(index: int, text: str, *, first: bool) -> None:
            pass

        try:
            result = await client.chat(MSGS, max_tokens=16, on_delta=on_delta)
        finally:
            await client.aclose()
    assert result.attempts == 2
    assert result.completion_tokens == server.completion_tokens_billed == 8 + 16
    assert result.choices[0].completion_tokens == 24
    assert result.prompt_tokens == server.prompt_tokens_billed  # the prompt, twice


async def test_a_runs_figures_count_its_cut_off_attempts(tmp_path: Path) -> None:
    prices = {"fake-model": Price(prompt_per_m=100.0, completion_per_m=1000.0)}
    _, results, server = await run_cut(tmp_path, prices=prices)
    metrics = results["metrics"]
    assert metrics["completion_tokens"] == server.completion_tokens_billed
    assert metrics["prompt_tokens"] == server.prompt_tokens_billed
    billed = prices["fake-model"].cost(server.prompt_tokens_billed, server.completion_tokens_billed)
    assert metrics["cost_usd"] == pytest.approx(billed)


async def test_the_token_limit_is_never_passed_by_calls_sent_again(tmp_path: Path) -> None:
    """Each call streams 8 tokens, is cut off, and is sent again for 16: 24 a call. Under a
    limit of 60 the third call is cut to 12, streams 6, and may not be sent again (6 more
    could pass the limit): its node fails, the run stops, and the server generated 54."""
    result, results, server = await run_cut(tmp_path, max_run_tokens=60)
    assert server.completion_tokens_billed <= 60
    assert results["metrics"]["completion_tokens"] == server.completion_tokens_billed
    assert results["status"] == "stopped" and "token limit of 60" in str(result.stopped_by)
    _refused_resend_is_no_retry_and_no_failed_call(result, results, server)


def _refused_resend_is_no_retry_and_no_failed_call(
    result: RunResult, results: dict[str, Any], server: FakeServer
) -> None:
    """The call the limit would not send again was reported as retried (a retry event, a
    count) and counted as a failed call (exit 4, "send them again"); it is neither: the
    limit stopped it, as the run's status says."""
    calls = {
        n["call_id"] for p in results["problems"] for n in p["nodes"] if n["kind"] in CALL_KINDS
    }
    assert results["metrics"]["retries"] == server.requests - len(calls - {None})
    assert result.failed_requests() == 0


async def test_the_money_limit_is_never_passed_by_calls_sent_again(tmp_path: Path) -> None:
    prices = {"fake-model": Price(prompt_per_m=0.0, completion_per_m=1000.0)}
    result, results, server = await run_cut(tmp_path, max_cost=0.06, prices=prices)
    spent = prices["fake-model"].cost(0, server.completion_tokens_billed)
    assert spent <= 0.06 + 1e-12
    assert results["metrics"]["cost_usd"] == pytest.approx(spent)
    assert results["status"] == "stopped" and "money limit" in str(result.stopped_by)
    _refused_resend_is_no_retry_and_no_failed_call(result, results, server)


async def test_a_pool_counts_attempts_cut_off_on_its_members_in_the_call() -> None:
    from thinktree.agents.endpoint import PoolMember
    from thinktree.agents.pool import EndpointPool

    behaviour = FakeBehaviour(reply=LONG)
    cut = [Fault.RESET]  # each member's first: two attempts cut off, whichever goes first
    async with FakeServer(behaviour, faults=cut) as a, FakeServer(behaviour, faults=cut) as b:
        cfg = EndpointConfig(
            name="pool",
            base_url="pool:pool",
            model="fake-model",
            members=(PoolMember(a.base_url, 1), PoolMember(b.base_url, 1)),
        )
        pool = EndpointPool(cfg)

        async def on_delta(index: int, text: str, *, first: bool) -> None:
            pass

        try:
            await pool.resolve_model()
            result = await pool.chat(MSGS, max_tokens=16, on_delta=on_delta)
        finally:
            await pool.aclose()
        billed = a.completion_tokens_billed + b.completion_tokens_billed
        prompts = a.prompt_tokens_billed + b.prompt_tokens_billed
    assert billed == 8 + 8 + 16
    assert result.completion_tokens == billed
    assert result.prompt_tokens == prompts


async def test_a_call_every_attempt_of_which_is_cut_off_counts_what_they_streamed(
    tmp_path: Path,
) -> None:
    """Two attempts, both cut off at 8 tokens: the call fails, and its node, so the run's
    figures, count the 16 they streamed."""
    async with FakeServer(FakeBehaviour(reply=LONG), faults=lambda i: Fault.RESET) as server:
        endpoint = EndpointConfig(
            name="fake",
            base_url=server.base_url,
            model="fake-model",
            continuation="chat",
            max_backoff_s=0.01,
            max_attempts=2,
        )
        run = RunSettings(
            modes=ModeSettings(mode="parallel", n=1, budget=16),
            concurrency=1,
            out=tmp_path / "run",
            trace_deltas=True,
            max_run_tokens=1000,
        )
        result = await execute(
            PROBLEMS[:1], endpoint, run, capabilities=Capabilities(continuation="chat")
        )
    results = json.loads((result.folder / "results.json").read_text())
    assert server.completion_tokens_billed == 16
    assert results["metrics"]["completion_tokens"] == 16


async def test_the_call_store_keeps_what_cut_off_attempts_spent(tmp_path: Path) -> None:
    """What a resumed run reads back (and counts under its limits) is what was spent."""
    import sqlite3

    result, _, server = await run_cut(tmp_path)
    with sqlite3.connect(result.folder / "calls.sqlite") as conn:
        stored = conn.execute("SELECT sum(completion_tokens) FROM responses").fetchone()[0]
    assert stored == server.completion_tokens_billed


class ShortOnce(FakeServer):
    """Its first request of ``n`` > 1 choices is answered with one choice fewer (and the
    usage of those it sent), as a server whose sample failed answers."""

    def _plan(self, body: Any, *, chat: bool) -> Any:
        choices, prompt = super()._plan(body, chat=chat)
        if len(choices) > 1 and not getattr(self, "shorted", False):
            self.shorted = True
            return choices[:-1], prompt
        return choices, prompt


async def test_a_reply_short_of_a_choice_counts_what_it_billed(tmp_path: Path) -> None:
    """The short reply is asked again whole; what the server generated for it (its usage
    says) counts in the call's figures and under the run's limits."""
    async with ShortOnce(FakeBehaviour(reply=LONG)) as server:
        cfg = EndpointConfig(
            name="fake", base_url=server.base_url, model="fake-model", max_backoff_s=0.01
        )
        client = EndpointClient(cfg)
        try:
            result = await client.chat(MSGS, max_tokens=16, n=3)
        finally:
            await client.aclose()
    assert result.attempts == 2
    assert server.completion_tokens_billed == 2 * 16 + 3 * 16
    assert result.completion_tokens == server.completion_tokens_billed
    assert result.prompt_tokens == server.prompt_tokens_billed


class AlwaysShort(FakeServer):
    """Every request of ``n`` > 1 choices is answered with one choice fewer (and usage)."""

    def _plan(self, body: Any, *, chat: bool) -> Any:
        choices, prompt = super()._plan(body, chat=chat)
        return (choices[:-1] if len(choices) > 1 else choices), prompt


async def test_a_call_that_fails_short_of_a_choice_counts_the_prompts_it_was_billed(
    tmp_path: Path,
) -> None:
    """Every attempt's usage said its prompt's tokens, yet the failed nodes counted none
    of them (their completion tokens only): the run's prompt tokens and cost read 0."""
    problems = PROBLEMS[:2]
    async with AlwaysShort(FakeBehaviour(reply=LONG)) as server:
        endpoint = EndpointConfig(
            name="fake",
            base_url=server.base_url,
            model="fake-model",
            continuation="chat",
            native_n="yes",
            max_attempts=2,
            max_backoff_s=0.01,
        )
        prices = {"fake-model": Price(prompt_per_m=100.0, completion_per_m=1000.0)}
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=3, budget=16),
            concurrency=1,
            out=tmp_path / "r",
            prices=prices,
        )
        caps = Capabilities(continuation="chat", native_n=True)
        result = await execute(problems, endpoint, settings, capabilities=caps)
    metrics = json.loads((result.folder / "results.json").read_text())["metrics"]
    assert result.failed_requests() == len(problems)  # each call failed, short every time
    assert metrics["completion_tokens"] == server.completion_tokens_billed > 0
    assert metrics["prompt_tokens"] == server.prompt_tokens_billed > 0
    billed = prices["fake-model"].cost(server.prompt_tokens_billed, server.completion_tokens_billed)
    assert metrics["cost_usd"] == pytest.approx(billed)


async def test_a_resumed_run_reads_back_calls_sent_again_and_pays_nothing_again(
    tmp_path: Path,
) -> None:
    """Budget mode extends the thinking by what its first call left: a resumed run that
    read that call back at its cut-off attempts' tokens too would ask less, find no
    recorded call, and pay again. It asks as the first session did, counting the same."""
    from thinktree.orchestrator.run import load_resume

    short = "one two three four five six seven eight nine ten.\nAnswer: yes"
    folder = tmp_path / "run"
    async with FakeServer(FakeBehaviour(reply=short), faults=every_first_attempt_cut) as server:
        endpoint = EndpointConfig(
            name="fake",
            base_url=server.base_url,
            model="fake-model",
            continuation="chat",
            max_backoff_s=0.01,
        )
        settings = RunSettings(
            modes=ModeSettings(mode="budget", budget=64, min_thinking=40),
            concurrency=1,
            out=folder,
            trace_deltas=True,
            max_run_tokens=10_000,
        )
        # streams carry usage, as a probe found: the resumed run, which streams as its
        # first session did, has nothing to probe
        caps = Capabilities(continuation="chat", notes={"stream_usage": "probed"})
        first = await execute(PROBLEMS[:2], endpoint, settings, capabilities=caps)
        before = json.loads((folder / "results.json").read_text())["metrics"]
        sent = server.requests
        (folder / "results.json").unlink()  # as if killed before its end
        state = load_resume(folder)
        again = await execute(state.problems, endpoint, state.settings, resume=state)
    after = json.loads((folder / "results.json").read_text())["metrics"]
    assert server.requests == sent  # nothing paid for again
    assert again.cached_calls == first.metrics.calls
    assert after["completion_tokens"] == before["completion_tokens"]
    assert after["prompt_tokens"] == before["prompt_tokens"]


async def test_a_resumed_run_holds_cut_off_tokens_in_the_runs_pool_only(tmp_path: Path) -> None:
    """A recorded call's tokens are held until it is read back: all of them in the run's
    pool, and in its problem's only those of its text, as each counted them when made."""
    from thinktree.agents.endpoint import Choice, Completion
    from thinktree.orchestrator.call_cache import SqliteCallCache, solver_call
    from thinktree.orchestrator.ledger import Budget, RecordedCalls

    spent = Completion([Choice("text", "stop", 7 + 5, cut_off_tokens=5)], 20, 12, 0.1)
    cache = SqliteCallCache(tmp_path / "calls.sqlite")
    try:
        with solver_call():
            await cache.record("fp1", "chat", '{"max_tokens": 12}', spent, "q0/b1/think")
        usage = cache.recorded_usage()
    finally:
        cache.close()
    run = Budget(name="run", limit=100, stops_run=True)
    problem = run.child("q0", 50)
    recorded = RecordedCalls(usage, run)
    recorded.problem_pool("q0", problem)
    assert (run.held, problem.held) == (12, 7)
    recorded.release("q0/b1/think")
    assert (run.held, problem.held) == (0, 0)


async def test_a_stream_that_times_out_mid_way_counts_what_it_streamed() -> None:
    """Each attempt streams a token every 50 ms and times out at 0.3 s: what each streamed
    is counted (the first as the call is sent again, the last when it fails)."""
    from thinktree.agents.endpoint import CutOffs, counting_cut_offs
    from thinktree.errors import EndpointError

    resent: list[list[int]] = []

    async def on_resend(tokens: list[int]) -> None:
        resent.append(tokens)

    async with FakeServer(FakeBehaviour(reply=LONG, chunk_delay_s=0.05)) as server:
        cfg = EndpointConfig(
            name="fake",
            base_url=server.base_url,
            model="fake-model",
            max_backoff_s=0.01,
            max_attempts=2,
            timeout_s=0.3,
            outage_wait_s=0.0,
        )
        client = EndpointClient(cfg)

        async def on_delta(index: int, text: str, *, first: bool) -> None:
            pass

        tally = CutOffs(on_resend=on_resend)
        try:
            with counting_cut_offs(tally), pytest.raises(EndpointError):
                await client.chat(MSGS, max_tokens=16, on_delta=on_delta)
        finally:
            await client.aclose()
    assert len(resent) == 1 and 0 < resent[0][0] < 16
    assert tally.attempts == 1 and tally.last is not None and 0 < tally.last[0] < 16


async def test_attempts_cut_off_never_shorten_the_thinking(tmp_path: Path) -> None:
    """Budget mode extends the thinking by what its text left of the budget: a run whose
    calls were cut off mid-stream and sent again asks each extension for what a run with
    none asks."""
    short = "one two three four five six seven eight nine ten.\nAnswer: yes"

    async def asks(faults: Any, out: Path) -> list[int]:
        behaviour = FakeBehaviour(reply=short)
        async with FakeServer(behaviour, faults=faults, record_bodies=True) as server:
            endpoint = EndpointConfig(
                name="fake",
                base_url=server.base_url,
                model="fake-model",
                continuation="chat",
                max_backoff_s=0.01,
            )
            settings = RunSettings(
                modes=ModeSettings(mode="budget", budget=64, min_thinking=40),
                concurrency=1,
                out=out,
                trace_deltas=True,
            )
            caps = Capabilities(continuation="chat")
            await execute(PROBLEMS[:1], endpoint, settings, capabilities=caps)
        sent = [b["max_tokens"] for b in server.bodies]
        return [m for i, m in enumerate(sent) if i % 2 or faults == ()]  # each once

    assert await asks(every_first_attempt_cut, tmp_path / "a") == await asks((), tmp_path / "b")


async def test_a_calls_spend_is_freed_as_soon_as_it_is_dropped() -> None:
    """No reference cycle per call: reference counting frees a call's spend (and the pools
    it holds) at once, with no garbage collection to wait for."""
    spend = _CutOffSpend([Budget("problem", None)], [10], None)
    gone = weakref.ref(spend)
    gc.disable()
    try:
        del spend
        assert gone() is None
    finally:
        gc.enable()

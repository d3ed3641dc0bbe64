"""Resuming under a token or money limit that binds: what was paid for is read back.

A call's grant depends on which calls hold a shared limit when it asks, and a resumed run's
calls come in another order (those read back return at once). These runs are killed just
before their end (``results.json`` removed) and resumed: every recorded call is read back,
none is paid for again, none is dropped for a new one, and the answers stay.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.errors import ConfigError
from thinktree.orchestrator.events import NodeKind
from thinktree.orchestrator.run import RunResult, RunSettings, execute, load_resume
from thinktree.pricing import Price, usd
from thinktree.problems import AnswerType, Problem
from thinktree.testing.fake_server import FakeBehaviour, FakeServer
from thinktree.verifiers.judge import JUDGE_SYSTEM

pytestmark = pytest.mark.anyio

WORDS = (
    *("Let", "me", "weigh", "each", "option", "in", "turn", "before"),
    *("deciding", "and", "then", "some", "more", "words", "here"),
)
PRICES = {"fake-model": Price(1.0, 1000.0)}


def reply(body: dict[str, Any], index: int) -> str:
    """Replies of 4 to 15 words and answers that vary with the seed."""
    seed = int(body.get("seed") or 0) + index
    return " ".join(WORDS[: 4 + seed % 12]) + f". Answer: {'ABC'[seed % 3]}"


def problems(count: int) -> list[Problem]:
    return [
        Problem(
            id=f"q{i}",
            question=f"Which one, case {i}?",
            answer_type=AnswerType.CHOICE,
            options={"A": "alpha", "B": "beta", "C": "gamma"},
            answer="ABC"[i % 3],
        )
        for i in range(count)
    ]


def calls(result: RunResult) -> dict[str, tuple[int | None, int]]:
    """Each call node's grant and tokens."""
    return {
        n.id: (n.max_tokens, n.completion_tokens)
        for tree in result.trees
        for n in tree.walk()
        if n.kind.value in ("generation", "step", "extension", "forced-answer", "answer")
    }


def outcomes(results: dict[str, Any]) -> list[tuple[str | None, str | None]]:
    """Each problem's answer and the limit that stopped it. A money limit's refusal also
    says what was spent when it refused, which depends on the order calls settle in (a
    resumed run's read-back calls settle as they are reached): that part is left out."""
    return [
        (p["answer"], p["stopped"] and p["stopped"].split(" ($")[0]) for p in results["problems"]
    ]


async def killed_and_resumed(
    first: RunResult, cfg: EndpointConfig, prices: dict[str, Price] | None
) -> tuple[dict[str, Any], RunResult]:
    """``first`` killed just before its end (its results.json gone), then resumed with the
    same settings: the results it had, and the resumed run."""
    before = json.loads((first.folder / "results.json").read_text())
    (first.folder / "results.json").unlink()
    state = load_resume(first.folder, prices=prices)
    return before, await execute(state.problems, cfg, state.settings, resume=state)


def paid(folder: Path) -> int:
    conn = sqlite3.connect(folder / "calls.sqlite")
    try:
        return int(conn.execute("SELECT sum(completion_tokens) FROM responses").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("modes", "native", "limits"),
    [
        pytest.param(
            ModeSettings(mode="parallel", n=8, budget=12),
            False,
            {"max_problem_tokens": 70},
            id="parallel-problem-limit",
        ),
        pytest.param(
            ModeSettings(mode="adaptive", n=8, wave=4, budget=12),
            False,
            {"max_problem_tokens": 70},
            id="adaptive-problem-limit",
        ),
        pytest.param(
            ModeSettings(mode="parallel", n=8, budget=12),
            False,
            {"max_run_tokens": 400},
            id="parallel-run-limit",
        ),
        pytest.param(
            ModeSettings(mode="parallel", n=8, budget=12),
            False,
            {"max_cost": 0.4, "prices": PRICES},
            id="parallel-money-limit",
        ),
        pytest.param(
            ModeSettings(mode="parallel", n=8, budget=12),
            True,
            {"max_problem_tokens": 70},
            id="parallel-n-problem-limit",
        ),
    ],
)
async def test_a_killed_run_under_a_binding_limit_resumes_paying_nothing_again(
    tmp_path: Path, modes: ModeSettings, native: bool, limits: dict[str, Any]
) -> None:
    """Resumed with the same settings, it sends no request and ends as the uninterrupted
    run did (it re-sent 5 to 24 calls, dropped paid ones and changed answers)."""
    behaviour = FakeBehaviour(reply=reply, delay_s=0.01, native_n=native)
    async with FakeServer(behaviour) as server:
        cfg = EndpointConfig(name="fake", base_url=server.base_url, continuation="chat")
        settings = RunSettings(modes=modes, concurrency=4, seed=3, out=tmp_path / "run", **limits)
        first = await execute(problems(10), cfg, settings)
        assert first.stopped_by is not None  # the limit binds
        sent = server.requests
        before, again = await killed_and_resumed(first, cfg, limits.get("prices"))
        assert server.requests == sent
    after = json.loads((again.folder / "results.json").read_text())
    assert calls(again) == calls(first)
    assert outcomes(after) == outcomes(before)
    assert after["status"] == before["status"] == "stopped"
    assert {k: v for k, v in after["metrics"].items() if "latency" not in k} == {
        k: v for k, v in before["metrics"].items() if "latency" not in k
    }


async def test_a_raised_limit_reads_back_what_it_did_not_cut_and_is_never_passed(
    tmp_path: Path,
) -> None:
    """Sequential steps under --max-tokens 60, resumed under 64 with more problems at once:
    every step the old limit did not cut is read back (two paid steps were dropped and
    41 more tokens paid), only the cut one is asked again whole, and the new limit holds."""
    behaviour = FakeBehaviour(reply=reply, delay_s=0.01)
    async with FakeServer(behaviour, record_bodies=True) as server:
        cfg = EndpointConfig(name="fake", base_url=server.base_url, continuation="chat")
        modes = ModeSettings(mode="sequential", steps=2, budget=16)
        settings = RunSettings(
            modes=modes, concurrency=1, seed=3, out=tmp_path / "run", max_run_tokens=60
        )
        first = await execute(problems(8), cfg, settings)
        assert first.stopped_by is not None
        kept = {k: v for k, v in calls(first).items() if v[0] == 16}  # not cut
        cut = {k: v for k, v in calls(first).items() if v[0] != 16}
        sent = server.requests
        state = load_resume(first.folder, new_limits=True)
        raised = dataclasses.replace(state.settings, max_run_tokens=64, concurrency=6)
        again = await execute(state.problems, cfg, raised, resume=state)
        asked = server.bodies[sent:]
    assert {k: v for k, v in calls(again).items() if k in kept} == kept
    assert len([b for b in asked if b.get("messages")]) <= len(cut) + 1
    assert again.metrics.completion_tokens <= 64
    assert paid(again.folder) <= 64 + sum(tokens for _, tokens in cut.values())


async def test_a_limit_below_what_the_run_spent_is_refused_before_anything_changes(
    tmp_path: Path,
) -> None:
    """Resumed under --max-tokens lower than what it spent, the run went on past that limit
    and dropped answers it had paid for; now it is refused in one line, its run.json as it
    was, and no request sent. Under what it spent, it goes on."""
    async with FakeServer(FakeBehaviour(reply=reply, delay_s=0.01)) as server:
        cfg = EndpointConfig(name="fake", base_url=server.base_url, continuation="chat")
        modes = ModeSettings(mode="sequential", steps=2, budget=16)
        settings = RunSettings(modes=modes, seed=3, out=tmp_path / "run", max_run_tokens=60)
        first = await execute(problems(8), cfg, settings)
        spent = paid(first.folder)
        manifest = (first.folder / "run.json").read_text()
        sent = server.requests
        state = load_resume(first.folder, new_limits=True)
        lower = dataclasses.replace(state.settings, max_run_tokens=spent - 1)
        with pytest.raises(ConfigError) as refused:
            await execute(state.problems, cfg, lower, resume=state)
        assert server.requests == sent
        assert (first.folder / "run.json").read_text() == manifest
        enough = dataclasses.replace(state.settings, max_run_tokens=spent)
        again = await execute(state.problems, cfg, enough, resume=state)
    assert str(refused.value) == (
        f"run {first.folder} has spent {spent} completion tokens already: --max-tokens "
        f"{spent - 1} is below that; give at least {spent}, or leave --max-tokens out to "
        "keep its own"
    )
    assert again.metrics.completion_tokens <= spent
    assert [t.answer for t in again.trees] == [t.answer for t in first.trees]


async def test_a_reply_that_ended_by_itself_under_a_cut_grant_is_read_back_under_a_raised_limit(
    tmp_path: Path,
) -> None:
    """A run limit below the mode's budget grants every call less than it asks, though
    each reply ends by itself far below that: resumed under a raised limit, those calls
    were asked again whole, and paid for twice. A reply that ended by itself is the one a
    larger grant gets: it is read back, nothing is sent, and the run ends completed."""
    async with FakeServer(FakeBehaviour(reply="Weighing it. Answer: B")) as server:
        cfg = EndpointConfig(name="fake", base_url=server.base_url, continuation="chat")
        modes = ModeSettings(mode="budget")  # 1024 tokens a call, a reply takes 4
        settings = RunSettings(modes=modes, seed=3, out=tmp_path / "run", max_run_tokens=30)
        first = await execute(problems(3), cfg, settings)
        assert first.stopped_by is not None  # its grants were cut, whatever the replies did
        paid_for = paid(first.folder)
        sent = server.requests
        state = load_resume(first.folder, new_limits=True)
        raised = dataclasses.replace(state.settings, max_run_tokens=5000)
        again = await execute(state.problems, cfg, raised, resume=state)
        assert server.requests == sent
    assert paid(again.folder) == paid_for
    assert again.stopped_by is None and [t.answer for t in again.trees] == ["B"] * 3
    assert again.cached_calls == len(first.trees)


async def test_a_problem_limit_below_what_a_problem_spent_is_refused_before_anything_changes(
    tmp_path: Path,
) -> None:
    """Resumed under --max-problem-tokens lower than a problem had spent, the run kept
    that problem's calls past its limit (a utilisation above 100 %) and cut every other
    problem short; now it is refused in one line, as the run's own limits are."""
    async with FakeServer(FakeBehaviour(reply=reply, delay_s=0.01)) as server:
        cfg = EndpointConfig(name="fake", base_url=server.base_url, continuation="chat")
        modes = ModeSettings(mode="sequential", steps=2, budget=16)
        settings = RunSettings(modes=modes, seed=3, out=tmp_path / "run", max_run_tokens=60)
        first = await execute(problems(8), cfg, settings)
        spent = {t.problem_id: sum(n.completion_tokens for n in t.walk()) for t in first.trees}
        most = max(spent.values())
        manifest = (first.folder / "run.json").read_text()
        sent = server.requests
        state = load_resume(first.folder, new_limits=True)
        lower = dataclasses.replace(
            state.settings, max_problem_tokens=most - 1, max_run_tokens=None
        )
        with pytest.raises(ConfigError) as refused:
            await execute(state.problems, cfg, lower, resume=state)
        assert server.requests == sent
        assert (first.folder / "run.json").read_text() == manifest
        enough = dataclasses.replace(lower, max_problem_tokens=most)
        again = await execute(state.problems, cfg, enough, resume=state)
    which = next(p for p, tokens in spent.items() if tokens == most)
    assert str(refused.value) == (
        f"run {first.folder} has spent {most} completion tokens on problem {which!r} "
        f"already: --max-problem-tokens {most - 1} is below that; give at least {most}, or "
        "leave --max-problem-tokens out (the run has none)"
    )
    assert again.metrics.utilisation is None or again.metrics.utilisation <= 1


async def test_a_money_limit_below_what_the_run_spent_is_refused_before_anything_changes(
    tmp_path: Path,
) -> None:
    """Resumed under --max-cost lower than what its recorded calls cost, the run was
    stopped by that limit at once and dropped answers it had paid for; now it is refused
    in one line, as a --max-tokens below its spend is, with the least it may give."""
    async with FakeServer(FakeBehaviour(reply=reply, delay_s=0.01)) as server:
        cfg = EndpointConfig(name="fake", base_url=server.base_url, continuation="chat")
        modes = ModeSettings(mode="sequential", steps=2, budget=16)
        settings = RunSettings(
            modes=modes, seed=3, out=tmp_path / "run", max_cost=0.06, prices=PRICES
        )
        first = await execute(problems(8), cfg, settings)
        conn = sqlite3.connect(first.folder / "calls.sqlite")
        try:
            prompt, completion = conn.execute(
                "SELECT sum(prompt_tokens), sum(completion_tokens) FROM responses"
            ).fetchone()
        finally:
            conn.close()
        cost = PRICES["fake-model"].cost(prompt, completion)
        with pytest.raises(ConfigError, match=r"resume it with a higher --max-cost$"):
            load_resume(first.folder, prices=PRICES)  # the limit that stopped it, no other
        manifest = (first.folder / "run.json").read_text()
        sent = server.requests
        state = load_resume(first.folder, prices=PRICES, new_limits=True)
        lower = dataclasses.replace(state.settings, max_cost=cost * 0.9)
        with pytest.raises(ConfigError) as refused:
            await execute(state.problems, cfg, lower, resume=state)
        assert server.requests == sent
        assert (first.folder / "run.json").read_text() == manifest
        least = float(str(refused.value).split("give at least $")[1].split(",")[0])
        assert cost <= least < cost * 1.01
        enough = dataclasses.replace(state.settings, max_cost=least)
        again = await execute(state.problems, cfg, enough, resume=state)
    assert str(refused.value).startswith(
        f"run {first.folder} has spent {usd(cost)} already (its calls at the price of "
        f"fake-model): --max-cost {usd(cost * 0.9)} is below that; give at least $"
    )
    assert [t.answer for t in again.trees] == [t.answer for t in first.trees]


def test_a_call_store_from_before_node_keys_opens_and_holds_nothing(tmp_path: Path) -> None:
    """A store written before calls kept their node key gains the columns on opening; its
    calls still read back by fingerprint, and none is held (nothing says whose it is)."""
    from thinktree.orchestrator.call_cache import SqliteCallCache

    path = tmp_path / "calls.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE responses (fingerprint TEXT PRIMARY KEY, route TEXT NOT NULL, "
        "request TEXT NOT NULL, response TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, "
        "completion_tokens INTEGER NOT NULL, latency_s REAL NOT NULL, "
        "attempts INTEGER NOT NULL, created REAL NOT NULL)"
    )
    response = '{"choices": [], "prompt_tokens": 3, "completion_tokens": 5}'
    conn.execute(
        "INSERT INTO responses VALUES ('fp', 'chat', '{}', ?, 3, 5, 0.1, 1, 0)", (response,)
    )
    conn.commit()
    conn.close()
    cache = SqliteCallCache(path)
    try:
        assert cache.cached() == 1 and cache.recorded_usage() == {}
    finally:
        cache.close()
    conn = sqlite3.connect(path)
    columns = [r[1] for r in conn.execute("PRAGMA table_info(responses)")]
    conn.close()
    assert columns[-2:] == ["node_key", "cut"]


async def test_a_run_json_from_before_prices_were_kept_resumes_as_before(
    tmp_path: Path,
) -> None:
    """A manifest without the run's prices (written before runs recorded them) resumes at
    the prices given, as it did, nothing paid again; it records them from then on, so a
    later resume at other prices is refused."""
    behaviour = FakeBehaviour(reply=reply, delay_s=0.01)
    async with FakeServer(behaviour) as server:
        cfg = EndpointConfig(name="fake", base_url=server.base_url, continuation="chat")
        modes = ModeSettings(mode="parallel", n=4, budget=12)
        settings = RunSettings(
            modes=modes, seed=3, out=tmp_path / "run", prices=PRICES, max_cost=100.0
        )
        first = await execute(problems(3), cfg, settings)
        manifest_path = first.folder / "run.json"
        manifest = json.loads(manifest_path.read_text())
        manifest.pop("prices", None)
        manifest_path.write_text(json.dumps(manifest))
        (first.folder / "results.json").unlink()  # killed just before its end
        sent = server.requests
        doubled = {"fake-model": Price(2.0, 2000.0)}
        state = load_resume(first.folder, prices=doubled)
        again = await execute(state.problems, cfg, state.settings, resume=state)
        assert server.requests == sent
    assert first.metrics.cost_usd is not None and again.metrics.cost_usd is not None
    assert again.metrics.cost_usd == pytest.approx(2 * first.metrics.cost_usd, abs=2e-6)
    recorded = json.loads(manifest_path.read_text())["prices"]
    assert recorded == {"fake-model": {"prompt": 2.0, "completion": 2000.0}}
    (first.folder / "results.json").unlink()
    with pytest.raises(ConfigError, match="was made at other prices"):
        load_resume(first.folder, prices=PRICES)


def judged(body: dict[str, Any], index: int) -> str:
    """The judge rates answer A 9, B 5 and C 1 (in 1 to 3 tokens); the solver says `reply`."""
    messages = body.get("messages") or []
    if messages and messages[0].get("content") == JUDGE_SYSTEM:
        final = messages[-1]["content"].split("Final answer: ")[-1][:1]
        return {"A": "9 of ten", "B": "5 of", "C": "1"}[final]
    return reply(body, index)


def verdicts(result: RunResult) -> dict[str, tuple[str, str | None, float | None, int]]:
    """Each verdict node's status, error, score and tokens."""
    return {
        n.id: (n.status.value, n.error, n.score, n.completion_tokens)
        for tree in result.trees
        for n in tree.of_kind(NodeKind.VERDICT)
    }


@pytest.mark.parametrize(
    ("limits", "cut"),
    [
        pytest.param({"max_run_tokens": 400}, False, id="run-limit"),
        pytest.param({"max_run_tokens": 480}, True, id="run-limit-cut"),
        pytest.param({"max_cost": 0.4, "prices": PRICES}, False, id="money-limit"),
        pytest.param({"max_cost": 0.35, "prices": PRICES}, True, id="money-limit-cut"),
    ],
)
async def test_a_judged_run_killed_under_a_binding_limit_resumes_paying_nothing_again(
    tmp_path: Path, limits: dict[str, Any], cut: bool
) -> None:
    """A judge's calls count under the run's limits too, and are held and read back at their
    grants as the solver's are: resumed with the same settings, the run sends no request
    and ends as the uninterrupted run did (judge calls were paid again, at the fewer tokens
    the calls read back before them had left). In the "-cut" runs the limit cut some judge
    calls and refused others of the same problem: read back late, the cut ones still say
    what stopped it, as in the first run."""
    behaviour = FakeBehaviour(reply=judged, delay_s=0.01, native_n=False)
    async with FakeServer(behaviour, record_bodies=True) as server:
        cfg = EndpointConfig(name="fake", base_url=server.base_url, continuation="chat")
        modes = ModeSettings(mode="parallel", n=8, budget=12)
        settings = RunSettings(
            modes=modes,
            verifiers=("judge:score=rating",),
            concurrency=1,
            seed=3,
            out=tmp_path / "run",
            **limits,
        )
        first = await execute(problems(10), cfg, settings)
        assert first.stopped_by is not None  # the limit binds
        judging = [b for b in server.bodies if b["messages"][0]["content"] == JUDGE_SYSTEM]
        assert any(b["max_tokens"] < 8 for b in judging) == cut  # the limit cut the judge
        assert any("is reached" in str(v[1]) for v in verdicts(first).values())  # refused
        sent = server.requests
        before, again = await killed_and_resumed(first, cfg, limits.get("prices"))
        assert server.requests == sent
    after = json.loads((again.folder / "results.json").read_text())
    assert calls(again) == calls(first)
    assert verdicts(again) == verdicts(first)
    assert outcomes(after) == outcomes(before)
    assert {k: v for k, v in after["metrics"].items() if "latency" not in k} == {
        k: v for k, v in before["metrics"].items() if "latency" not in k
    }


async def test_a_judge_call_is_held_under_the_run_limits_only(tmp_path: Path) -> None:
    """A judge's recorded call is held in the run's pool until it is read back, not in its
    problem's (--max-problem-tokens never counted it), while a solver's is held in both."""
    from thinktree.agents.endpoint import Choice, Completion
    from thinktree.orchestrator.call_cache import SqliteCallCache, solver_call, verifier_call
    from thinktree.orchestrator.ledger import Budget, RecordedCalls

    def spent(tokens: int) -> Completion:
        return Completion([Choice("text", "stop", tokens)], 10, tokens, 0.1)

    cache = SqliteCallCache(tmp_path / "calls.sqlite")
    try:
        with solver_call():
            await cache.record("fp1", "chat", '{"max_tokens": 12}', spent(7), "q0/b1/think")
        with verifier_call((("run-cut", "cut short"),)):
            await cache.record("fp2", "chat", '{"max_tokens": 5}', spent(3), "q0/b1/think/judge")
        usage = cache.recorded_usage()
    finally:
        cache.close()
    assert usage["q0/b1/think/judge"].cut == (("run-cut", "cut short"),)
    run = Budget(name="run", limit=100, stops_run=True)
    problem = run.child("q0", 50)
    recorded = RecordedCalls(usage, run, same_limits=True)
    recorded.problem_pool("q0", problem)
    assert (run.held, problem.held) == (10, 7)
    assert recorded.grants("q0/b1/think/judge", 8) == [8, 5]
    assert recorded.release("q0/b1/think/judge") == (("run-cut", "cut short"),)
    assert (run.held, problem.held) == (7, 7)
    recorded.release("q0/b1/think")
    assert (run.held, problem.held) == (0, 0)

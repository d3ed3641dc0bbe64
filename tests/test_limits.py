"""Token and money limits: never passed, and a run stopped by one says so."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from choice_set import beta_problems, case_problems, write_dataset
from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.errors import ConfigError
from thinktree.orchestrator.events import NodeKind
from thinktree.orchestrator.run import RunResult, RunSettings, execute
from thinktree.pricing import Price, usd
from thinktree.problems import Problem
from thinktree.testing.fake_server import FakeBehaviour, FakeServer, fake_server_in_thread

pytestmark = pytest.mark.anyio
PROBLEMS = case_problems(10)
SLOWISH = FakeBehaviour(native_n=False, chunk_delay_s=0.002)


def store_tokens(folder: Path) -> int:
    conn = sqlite3.connect(f"file:{folder / 'run.sqlite'}?mode=ro", uri=True)
    try:
        return int(
            conn.execute("SELECT coalesce(sum(completion_tokens), 0) FROM nodes").fetchone()[0]
        )
    finally:
        conn.close()


async def run_with(tmp_path: Path, **limits: Any) -> tuple[dict[str, Any], Path]:
    async with FakeServer(SLOWISH) as server:
        cfg = EndpointConfig(
            name="fake", base_url=server.base_url, continuation="chat", native_n="no"
        )
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=4, budget=16),
            concurrency=2,
            out=tmp_path / "run",
            **limits,
        )
        result = await execute(PROBLEMS, cfg, settings)
    return json.loads((result.folder / "results.json").read_text()), result.folder


async def test_run_token_limit_is_never_passed_and_stops_the_run(tmp_path: Path) -> None:
    results, folder = await run_with(tmp_path, max_run_tokens=100)
    assert store_tokens(folder) <= 100
    assert results["metrics"]["completion_tokens"] <= 100
    assert results["status"] == "stopped"
    assert "token limit of 100" in str(results["stopped_by"])
    unfinished = [p for p in results["problems"] if p["error"]]
    # not run, or cut short with no answer stated: either way the run's limit says so
    assert unfinished and all("run stopped" in (p["stopped"] or p["error"]) for p in unfinished)
    conn = sqlite3.connect(f"file:{folder / 'run.sqlite'}?mode=ro", uri=True)
    status = conn.execute("SELECT status FROM run").fetchone()[0]
    calls = dict(
        conn.execute(
            "SELECT status, count(*) FROM nodes WHERE kind NOT IN ('problem', 'branch') "
            "AND (status != 'failed' OR call_id IS NOT NULL) GROUP BY status"
        ).fetchall()
    )
    # a branch whose first call the limit refused is a node that made no call, and says why
    refused = conn.execute(
        "SELECT label, error, completion_tokens FROM nodes WHERE status = 'failed' "
        "AND call_id IS NULL AND kind NOT IN ('problem', 'branch')"
    ).fetchall()
    assert all(
        label.startswith("branch ") and error.startswith("run stopped") and tokens == 0
        for label, error, tokens in refused
    ), refused
    running = conn.execute("SELECT count(*) FROM nodes WHERE status = 'running'").fetchone()[0]
    conn.close()
    assert status == "stopped"
    # every call ends done, or cancelled in flight (and marked so): none is left running
    assert running == 0
    assert set(calls) <= {"done", "cancelled"}, calls


async def test_problem_token_limit(tmp_path: Path) -> None:
    results, _ = await run_with(tmp_path, max_problem_tokens=20)
    for problem in results["problems"]:
        assert sum(n["completion_tokens"] for n in problem["nodes"]) <= 20


async def test_a_branch_the_problem_limit_leaves_nothing_does_not_sink_the_others(
    tmp_path: Path,
) -> None:
    """Four branches of 16 under a problem limit of 40: the fourth finds nothing left
    once the others have spent it. It ends without a candidate; the three that ran still
    decide the problem (it used to fail whole, its answered branches cancelled)."""
    results, _ = await run_with(tmp_path, max_problem_tokens=40)
    for problem in results["problems"]:
        assert sum(n["completion_tokens"] for n in problem["nodes"]) <= 40
        assert problem["answer"] == "B" and problem["error"] is None
        # each branch is its first call's node, under the problem (a starved one too)
        branches = [n for n in problem["nodes"] if n["parent"] == problem["id"]]
        assert len(branches) == 4
        assert sum(n["status"] == "done" for n in branches) >= 2
        starved = [n for n in branches if n["status"] == "failed"]
        assert all(n["error"].startswith("no tokens left") for n in starved)


async def test_money_limit_stops_the_run(tmp_path: Path) -> None:
    # 1,000 USD per million completion tokens: 12 tokens cost 0.012
    prices = {"fake-model": Price(prompt_per_m=0.0, completion_per_m=1000.0)}
    results, _ = await run_with(tmp_path, max_cost=0.05, prices=prices)
    assert results["status"] == "stopped"
    assert "money limit" in str(results["stopped_by"])
    cost = results["metrics"]["cost_usd"]
    # calls under way hold their worst case: none finishes past the line
    assert cost is not None and 0.05 - 0.016 < cost <= 0.05 + 1e-12


@pytest.mark.parametrize("price", [Price(math.nan, 1.0), Price(0.0, math.inf), Price(-1.0, 0.0)])
async def test_a_price_given_in_code_is_checked_before_the_run_folder_exists(
    tmp_path: Path, price: Price
) -> None:
    """Prices that reach a run other than through a config (the Python API; a judge's
    model is charged at them too) are checked as a config's are."""
    prices = {"fake-model": Price(0.0, 1.0), "judge-model": price}
    with pytest.raises(ConfigError, match=r'price of "judge-model": \w+ must be a number'):
        await run_with(tmp_path, max_cost=1.0, prices=prices)
    assert not (tmp_path / "run").exists()


def test_money_limit_without_a_price_is_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    with fake_server_in_thread() as server:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "thinktree.cli",
                "run",
                "--endpoint",
                server.base_url,
                "--max-cost",
                "1.5",
                "--out",
                str(tmp_path / "run"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith("error: --max-cost needs a price for model 'fake-model'")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def _cli_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    with fake_server_in_thread() as server:
        return subprocess.run(
            [sys.executable, "-m", "thinktree.cli", "run", "--endpoint", server.base_url, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )


def test_a_limit_that_lets_no_call_start_is_named_as_the_cause(tmp_path: Path) -> None:
    """Four samples cannot share three tokens: the run says its limit stopped it (nothing
    spent), not that the model stated no answer."""
    args = ["--mode", "parallel", "--n", "4", "--budget", "50", "--max-tokens", "3"]
    proc = _cli_run(tmp_path, *args, "--limit", "2", "--out", str(tmp_path / "run"))
    assert proc.returncode == 3, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "token limit of 3 is reached (0 spent" in error[0], proc.stderr
    assert f"thinktree run --resume {tmp_path / 'run'} --max-tokens" in error[0]
    assert "stated no answer" not in proc.stderr


def test_tokens_held_by_calls_under_way_do_not_stop_the_run(tmp_path: Path) -> None:
    """Calls under way reserve their whole max_tokens and give back what they do not use:
    a call that finds the rest held waits for them, and the run stops only once its
    limit cuts a call (here none is: ten problems of four 12-token samples need 480, and
    688 leaves a problem's whole ask of 4 × 64 = 256 after all but the last problem's 48).
    Two problems under way hold 2 × 4 × 64 = 512 of the 688 at once: a third waits."""
    data = write_dataset(tmp_path / "data.jsonl", beta_problems(10))
    args = ["--mode", "parallel", "--n", "4", "--budget", "64", "--max-tokens", "688"]
    proc = _cli_run(
        tmp_path, str(data), *args, "--concurrency", "3", "--out", str(tmp_path / "run")
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "completed", results.get("stopped_by")
    assert results["metrics"]["answered"] == 10
    assert results["metrics"]["completion_tokens"] == 480


async def test_a_run_its_limit_stopped_leaves_no_node_running(tmp_path: Path) -> None:
    """Problems whose n-sample call could not start once the limit was spent end their
    branches with the reason; none is left 'running' in the results."""
    async with FakeServer(FakeBehaviour()) as server:
        cfg = EndpointConfig(name="fake", base_url=server.base_url, continuation="chat")
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=4, budget=16),
            concurrency=1,
            out=tmp_path / "run",
            max_run_tokens=60,
        )
        result = await execute(PROBLEMS[:5], cfg, settings)
    results = json.loads((result.folder / "results.json").read_text())
    assert results["status"] == "stopped"
    nodes = [n for p in results["problems"] for n in p["nodes"]]
    assert not [n["id"] for n in nodes if n["status"] == "running"]
    stopped = [n for n in nodes if n["label"].startswith("branch ") and n["status"] == "failed"]
    assert stopped and all("token limit of 60" in n["error"] for n in stopped)


async def test_a_problem_its_own_limit_cut_says_so_and_goes_on_under_a_higher_one(
    tmp_path: Path,
) -> None:
    """Budget 100 under a problem limit of 60: the thinking is cut to 60 and no forced
    answer fits. The problem says its limit did it, the run is 'stopped' (not a silent
    'completed'), and a resume under a higher limit finishes it."""
    from thinktree.orchestrator.run import load_resume

    long_reply = "Answer: B. " + "word " * 300
    async with FakeServer(FakeBehaviour(reply=long_reply)) as server:
        cfg = EndpointConfig(name="fake", base_url=server.base_url, continuation="chat")
        settings = RunSettings(
            modes=ModeSettings(mode="budget", budget=100),
            out=tmp_path / "run",
            max_problem_tokens=60,
        )
        first = await execute(PROBLEMS[:2], cfg, settings)
        assert first.stopped_by == "problem stopped: its token limit of 60 cut its calls short"
        results = json.loads((first.folder / "results.json").read_text())
        assert results["status"] == "stopped"
        assert all(p["stopped"] == first.stopped_by for p in results["problems"])
        assert results["metrics"]["tokens_allowed"] == 2 * 60
        state = load_resume(first.folder, new_limits=True)
        raised = dataclasses.replace(state.settings, max_problem_tokens=500)
        again = await execute(state.problems, cfg, raised, resume=state)
    assert again.stopped_by is None
    saved = json.loads((again.folder / "results.json").read_text())
    assert saved["status"] == "completed" and saved["metrics"]["answered"] == 2
    for problem in saved["problems"]:  # the forced answer the cut left out is there now
        assert [n for n in problem["nodes"] if n["kind"] == "forced-answer"]
    assert (
        json.loads((again.folder / "run.json").read_text())["settings"]["max_problem_tokens"] == 500
    )


async def _parallel_under(tmp_path: Path, native_n: bool, **limits: Any) -> RunResult:
    """Three problems, four 16-token branches each (12-token replies), under ``limits``
    (RunSettings fields)."""
    async with FakeServer(FakeBehaviour(native_n=native_n, chunk_delay_s=0.002)) as server:
        cfg = EndpointConfig(
            name="fake",
            base_url=server.base_url,
            continuation="chat",
            native_n="yes" if native_n else "no",
        )
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=4, budget=16), out=tmp_path / "run", **limits
        )
        return await execute(PROBLEMS[:3], cfg, settings)


async def test_branches_that_wait_for_the_problem_limit_and_get_their_ask_are_not_stopped(
    tmp_path: Path,
) -> None:
    """Four branches of 16 cannot hold 52 at once: the fourth waits for its siblings to
    settle (12 tokens each), then gets its whole 16. Nothing was cut: not 'stopped'."""
    result = await _parallel_under(tmp_path, native_n=False, max_problem_tokens=52)
    assert result.stopped_by is None
    results = json.loads((result.folder / "results.json").read_text())
    assert results["status"] == "completed"
    for tree in result.trees:
        assert tree.stopped is None and tree.answer == "B"
        calls = [n for n in tree.walk() if n.kind is NodeKind.GENERATION]
        assert len(calls) == 4 and all(n.max_tokens == 16 for n in calls)
        # the last call started only once another had finished: it waited
        assert max(n.started_at for n in calls) >= min(n.finished_at or 0.0 for n in calls)
    assert all(p["stopped"] is None for p in results["problems"])


@pytest.mark.parametrize(("native_n", "limit", "least"), [(False, 48, 12), (True, 52, 13)])
async def test_branches_the_problem_limit_cuts_short_are_stopped(
    tmp_path: Path, native_n: bool, limit: int, least: int
) -> None:
    """The four branches' calls cannot all have 16: under 48 the fourth gets the 12 its
    siblings leave, and one request's 52 is shared out as 13 each. Every reply still fits
    (12 tokens), but a call got less than it asked for: the problem says its limit did it."""
    result = await _parallel_under(tmp_path, native_n=native_n, max_problem_tokens=limit)
    stopped = f"problem stopped: its token limit of {limit} cut its calls short"
    assert result.stopped_by == stopped
    results = json.loads((result.folder / "results.json").read_text())
    assert results["status"] == "stopped"
    assert all(p["stopped"] == stopped for p in results["problems"])
    for tree in result.trees:
        assert tree.answer == "B"
        calls = [n for n in tree.walk() if n.kind is NodeKind.GENERATION]
        assert len(calls) == 4 and min(n.max_tokens or 0 for n in calls) == least
        assert all(n.finish_reason == "stop" for n in calls)


async def test_a_hybrid_problem_whose_branch_shares_its_limit_cuts_is_stopped(
    tmp_path: Path,
) -> None:
    """Hybrid splits the problem's limit between its branches: 40 gives each 20, so a
    branch's second 16-token step gets 8. The problem's own pool still had room, but its
    limit cut the calls short all the same: the problem says so."""
    async with FakeServer(FakeBehaviour()) as server:
        cfg = EndpointConfig(name="fake", base_url=server.base_url, continuation="chat")
        settings = RunSettings(
            modes=ModeSettings(mode="hybrid", n=2, steps=2, total_budget=64),
            out=tmp_path / "run",
            max_problem_tokens=40,
        )
        result = await execute(PROBLEMS[:2], cfg, settings)
    stopped = "problem stopped: its token limit of 40 cut its calls short"
    assert result.stopped_by == stopped
    for tree in result.trees:
        assert tree.stopped == stopped
        steps = [n for n in tree.walk() if n.kind is NodeKind.STEP]
        assert sorted(n.max_tokens or 0 for n in steps) == [8, 8, 16, 16]


class _LedgerSolver:
    """Just what budget forcing asks of a solver: each call reserves its ask through the
    solver's own ledger rule (waiting while calls under way hold the limit), and the model
    thinks 12 tokens and stops without an answer."""

    def __init__(self, problem: Problem) -> None:
        from thinktree.agents.capabilities import Capabilities

        self.problem = problem
        self.caps = Capabilities()
        self.constrains = False
        self.asked: list[tuple[str, int]] = []  # (node, max_tokens) as each call asked
        self.granted: list[tuple[str, int]] = []

    async def segment(self, branch: Any, req: Any) -> Any:
        from thinktree.agents.solver import Segment, _reserved

        self.asked.append((req.node_id, req.max_tokens))
        (grant,) = await _reserved([(req.budget, req.max_tokens)])
        self.granted.append((req.node_id, grant))
        used = min(12, grant)
        req.budget.commit(grant, used)
        text = " thinking" * used
        branch.assistant += text
        finish = "length" if used == grant else "stop"
        return Segment(node_id=req.node_id, text=text, finish_reason=finish, completion_tokens=used)


async def test_a_wait_extension_waits_for_the_tokens_its_siblings_hold() -> None:
    """Below min_thinking, "Wait" asks for the rest of the thinking budget (20 of 32). A
    sibling's call under way holds 30 of the problem's 56, leaving 14: the extension
    waits for it to settle and then gets its whole 20, instead of 14 taken at once."""
    import anyio

    from thinktree.agents.solver import Branch
    from thinktree.agents.strategies import BudgetForcing
    from thinktree.orchestrator.ledger import Budget

    problem_pool = Budget("q0", 56)
    sibling = problem_pool.child("q0/b1", None)
    solver = _LedgerSolver(PROBLEMS[0])
    strategy = BudgetForcing(budget=32, min_thinking=20, answer_tokens=8)
    first_call_made = anyio.Event()
    real_segment = solver.segment

    async def segment(branch: Any, req: Any) -> Any:
        seg = await real_segment(branch, req)
        if not first_call_made.is_set():  # the sibling's call starts as this one ends
            sibling.reserve(30)
            first_call_made.set()
        return seg

    solver.segment = segment  # type: ignore[method-assign]

    async def sibling_settles() -> None:
        await first_call_made.wait()
        await anyio.sleep(0.1)
        sibling.commit(30, 10)

    async with anyio.create_task_group() as tg:
        tg.start_soon(sibling_settles)
        with anyio.fail_after(5):
            await strategy.run(solver, Branch([]), "q0", problem_pool)  # type: ignore[arg-type]
    assert solver.asked[:2] == [("q0/think", 32), ("q0/wait1", 20)]
    assert solver.granted[:2] == [("q0/think", 32), ("q0/wait1", 20)]
    assert not problem_pool.cut


async def test_a_wait_extension_a_spent_limit_refuses_keeps_the_thinking() -> None:
    """The problem's limit is spent after the first call: no extension is made, and the
    thinking stands as it was (the forced answer, refused too, leaves it the candidate)."""
    from thinktree.agents.solver import Branch
    from thinktree.agents.strategies import BudgetForcing
    from thinktree.orchestrator.ledger import Budget

    problem_pool = Budget("q0", 12)
    solver = _LedgerSolver(PROBLEMS[0])
    strategy = BudgetForcing(budget=32, min_thinking=20, answer_tokens=8)
    branch = Branch([])
    (candidate,) = await strategy.run(solver, branch, "q0", problem_pool)  # type: ignore[arg-type]
    assert [node for node, _ in solver.granted] == ["q0/think"]
    assert candidate.node_id == "q0/think" and candidate.revisions == 0
    assert branch.assistant == " thinking" * 12


async def _budget_under(
    tmp_path: Path, cfg: EndpointConfig, **limits: Any
) -> tuple[RunResult, dict[str, Any]]:
    """Three problems of one 16-token call each (12-token replies), one at a time."""
    settings = RunSettings(
        modes=ModeSettings(mode="budget", budget=16),
        concurrency=1,
        out=tmp_path / "run",
        **limits,
    )
    result = await execute(PROBLEMS[:3], cfg, settings)
    return result, json.loads((result.folder / "results.json").read_text())


PRICES = {"fake-model": Price(prompt_per_m=0.0, completion_per_m=1000.0)}  # 12 tokens: $0.012


@pytest.mark.parametrize(
    ("limits", "raised", "stopped"),
    [
        ({"max_run_tokens": 38}, {"max_run_tokens": 100}, "token limit of 38"),
        ({"max_cost": 0.038, "prices": PRICES}, {"max_cost": 1.0}, "money limit of $0.038"),
    ],
)
async def test_a_call_the_run_limit_cuts_short_stops_the_run_and_is_asked_again(
    tmp_path: Path, limits: dict[str, Any], raised: dict[str, Any], stopped: str
) -> None:
    """The third problem's call finds 14 of its 16 tokens left (38 tokens, or $0.038 at
    $0.001 a token): it gets 14, and its reply still fits, but the run's limit cut its
    grant. The run says so ('stopped', not 'completed'), the problem too. A resume under
    a higher limit reads all three back: the third's reply ended by itself, as it does
    under a larger grant (it was asked again whole, and paid for twice)."""
    from thinktree.orchestrator.run import load_resume

    async with FakeServer(FakeBehaviour()) as server:
        cfg = EndpointConfig(name="fake", base_url=server.base_url, continuation="chat")
        first, results = await _budget_under(tmp_path, cfg, **limits)
        why = f"run stopped: its {stopped} cut calls short"
        assert first.stopped_by == why and results["status"] == "stopped"
        assert [p["stopped"] for p in results["problems"]] == [None, None, why]
        q2 = first.trees[2].nodes["q2/think"]
        assert q2.max_tokens == 14 and q2.completion_tokens == 12
        assert results["metrics"]["completion_tokens"] == 36
        state = load_resume(first.folder, prices=PRICES, new_limits=True)
        raised_settings = dataclasses.replace(state.settings, **raised)
        again = await execute(state.problems, cfg, raised_settings, resume=state)
    assert again.stopped_by is None and again.cached_calls == 3
    saved = json.loads((again.folder / "results.json").read_text())
    assert saved["status"] == "completed" and saved["problems"][2]["stopped"] is None
    assert again.trees[2].nodes["q2/think"].max_tokens == 14


async def test_a_reply_the_run_limit_cut_at_its_grant_is_asked_again_whole(
    tmp_path: Path,
) -> None:
    """The third problem's call finds 6 of its 16 tokens left: its 12-token reply stops
    at 6. A resume under a higher limit asks that call again whole, reading the other
    two back."""
    from thinktree.orchestrator.run import load_resume

    async with FakeServer(FakeBehaviour()) as server:
        cfg = EndpointConfig(name="fake", base_url=server.base_url, continuation="chat")
        first, results = await _budget_under(tmp_path, cfg, max_run_tokens=30)
        assert results["problems"][2]["stopped"] == first.stopped_by is not None
        q2 = first.trees[2].nodes["q2/think"]
        assert (q2.max_tokens, q2.completion_tokens, q2.finish_reason) == (6, 6, "length")
        sent = server.requests
        state = load_resume(first.folder, new_limits=True)
        raised = dataclasses.replace(state.settings, max_run_tokens=100)
        again = await execute(state.problems, cfg, raised, resume=state)
        assert server.requests > sent
    assert again.stopped_by is None and again.cached_calls == 2
    assert again.trees[2].nodes["q2/think"].max_tokens == 16


async def test_n_samples_the_run_limit_shares_out_stop_the_run(tmp_path: Path) -> None:
    """One request of four samples finds 52 of the run's 148 tokens left, nobody holding
    any: each sample gets 13 of its 16. The run's limit cut them: the run says so."""
    async with FakeServer(FakeBehaviour(native_n=True)) as server:
        cfg = EndpointConfig(name="fake", base_url=server.base_url, continuation="chat")
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=4, budget=16),
            concurrency=1,
            out=tmp_path / "run",
            max_run_tokens=148,
        )
        result = await execute(PROBLEMS[:3], cfg, settings)
    why = "run stopped: its token limit of 148 cut calls short"
    assert result.stopped_by == why
    assert [t.stopped for t in result.trees] == [None, None, why]
    calls = [n for n in result.trees[2].walk() if n.kind is NodeKind.GENERATION]
    assert [n.max_tokens for n in calls] == [13] * 4


@pytest.mark.parametrize("native_n", [False, True])
async def test_the_money_limit_holds_calls_under_way_and_is_never_passed(
    tmp_path: Path, native_n: bool
) -> None:
    """Three problems of four 16-token samples at once under $0.018 (18 tokens at $0.001,
    the prompt at $0.00001 a token): calls under way used to finish far past it
    ($0.144). Now each call holds its worst case before it is sent: the run spends at most
    the limit, prompt included, and says the limit stopped it."""
    prices = {"fake-model": Price(prompt_per_m=10.0, completion_per_m=1000.0)}
    result = await _parallel_under(tmp_path, native_n, concurrency=8, max_cost=0.018, prices=prices)
    results = json.loads((result.folder / "results.json").read_text())
    assert result.stopped_by is not None
    assert results["status"] == "stopped" and "money limit of $0.018" in result.stopped_by
    assert 0 < results["metrics"]["cost_usd"] <= 0.018 + 1e-12
    # what it spent in all, as its results count it (not what it had spent when the
    # first call was refused: calls that fit in what was left went on)
    assert f"is reached ({usd(results['metrics']['cost_usd'])} spent;" in result.stopped_by


async def test_the_money_limit_s_reason_counts_what_later_calls_spent(tmp_path: Path) -> None:
    """The second problem's long prompt is more than what is left can pay: the limit
    refuses it and says what was spent then. The third's short prompt still fits, and
    spends more: the run's reason, said once it ends, counts that too."""
    long = Problem(id="long", question="Which letter? " + "Think it over. " * 300)
    problems = [PROBLEMS[0], long, PROBLEMS[1]]
    prices = {"fake-model": Price(prompt_per_m=1000.0, completion_per_m=1000.0)}
    async with FakeServer(FakeBehaviour()) as server:
        cfg = EndpointConfig(name="fake", base_url=server.base_url, continuation="chat")
        settings = RunSettings(
            modes=ModeSettings(mode="budget", budget=16),
            concurrency=1,
            out=tmp_path / "run",
            max_cost=1.5,
            prices=prices,
        )
        result = await execute(problems, cfg, settings)
    refused = result.trees[1].error or ""
    assert refused.startswith("run stopped: its money limit of $1.50 is reached (")
    cost = json.loads((result.folder / "results.json").read_text())["metrics"]["cost_usd"]
    assert result.trees[2].completion_tokens() > 0 and f"({usd(cost)} spent" not in refused
    assert result.stopped_by is not None and f"is reached ({usd(cost)} spent" in result.stopped_by


async def test_a_money_limit_that_makes_calls_wait_but_cuts_none_stops_nothing(
    tmp_path: Path,
) -> None:
    """$0.160 pays for the 144 tokens three problems of four samples need plus one
    call's 16 held: calls wait for those under way to settle, none is cut, and the run
    completes within the limit."""
    async with FakeServer(SLOWISH) as server:
        cfg = EndpointConfig(
            name="fake", base_url=server.base_url, continuation="chat", native_n="no"
        )
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=4, budget=16),
            concurrency=8,
            out=tmp_path / "run",
            max_cost=0.160,
            prices=PRICES,
        )
        result = await execute(PROBLEMS[:3], cfg, settings)
    assert result.stopped_by is None
    calls = [n for t in result.trees for n in t.walk() if n.kind is NodeKind.GENERATION]
    assert len(calls) == 12 and all(n.max_tokens == 16 for n in calls)
    assert result.metrics.cost_usd == pytest.approx(0.144)


async def test_a_constrained_call_holds_its_answer_schema_as_prompt_too() -> None:
    """An API that constrains an answer to a JSON schema adds the schema to the prompt:
    the call's prompt bound counts the schema's bytes with its messages'."""
    from thinktree.agents.capabilities import Capabilities
    from thinktree.agents.solver import Solver
    from thinktree.agents.structured import constraint_for
    from thinktree.orchestrator.ledger import Budget
    from thinktree.pricing import MESSAGE_TOKENS, TEMPLATE_TOKENS, MoneyLimit

    money = MoneyLimit(1e4, Price(prompt_per_m=1e6, completion_per_m=0.0))  # $1 a token
    solver = Solver(PROBLEMS[0], None, Capabilities(), None, money=money)  # type: ignore[arg-type]
    messages = [{"role": "user", "content": "Case 0?"}]
    constraint = constraint_for(PROBLEMS[0], "json", "json_schema")
    pool = Budget("q0", None)
    pool.reserve(8)
    _, free = await solver._afford([(pool, 8)], 1, messages, "")
    pool.reserve(8)
    _, schema = await solver._afford([(pool, 8)], 1, messages, "", constraint)
    assert free is not None and schema is not None
    assert free.prompt_tokens == len("Case 0?") + TEMPLATE_TOKENS + 2 * MESSAGE_TOKENS
    assert schema.prompt_tokens == free.prompt_tokens + len(json.dumps(constraint.fields))

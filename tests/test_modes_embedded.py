"""The four modes end to end on the real embedded model: tree shapes and token truth.

The small model is near chance on these questions, so nothing here asserts accuracy:
only the mechanics (tree shape, caps, continuation, token accounting).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import httpx
import pytest

from conftest import SHARED_DATA
from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.datasets import load_demo, load_problems
from thinktree.orchestrator.events import NodeKind
from thinktree.orchestrator.run import RunResult, RunSettings, execute
from thinktree.orchestrator.tree import ProblemTree

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

THINKING = {NodeKind.GENERATION, NodeKind.EXTENSION, NodeKind.STEP}


def _server_counts(base_url: str) -> tuple[float, float, float, float]:
    """(prompt tokens, generated tokens, finished requests, requests in flight) from
    vLLM's own Prometheus metrics."""
    text = httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=10).text

    def total(name: str) -> float:
        return sum(float(v) for v in re.findall(rf"^vllm:{name}{{[^}}]*}} (\S+)$", text, re.M))

    return (
        total("prompt_tokens_total"),
        total("generation_tokens_total"),
        total("request_success_total"),
        total("num_requests_running") + total("num_requests_waiting"),
    )


async def _run(
    url: str, tmp_path: Path, modes: ModeSettings, *, problems: int = 2, **endpoint: str
) -> RunResult:
    cfg = EndpointConfig(name="embedded", base_url=url, **endpoint)  # type: ignore[arg-type]
    settings = RunSettings(modes=modes, out=tmp_path / "run", seed=7)
    demo = load_demo()
    picked = [demo[0], demo[8], demo[14]][:problems]  # one of each answer type
    return await execute(picked, cfg, settings)


def _thinking(tree: ProblemTree, parent: str) -> int:
    return sum(n.completion_tokens for n in tree.walk(parent) if n.kind in THINKING)


async def test_budget_mode_caps_thinking_and_forces_the_answer(
    embedded_url: str, tmp_path: Path
) -> None:
    budget = 24
    result = await _run(
        embedded_url, tmp_path, ModeSettings(mode="budget", budget=budget), problems=3
    )
    assert (result.folder / "results.json").is_file()
    assert (result.folder / "trace.jsonl").is_file()
    for tree in result.trees:
        think = tree.nodes[f"{tree.problem_id}/think"]
        assert think.kind is NodeKind.GENERATION
        assert think.max_tokens == budget
        assert _thinking(tree, tree.root_id) <= budget
        if think.finish_reason == "length":
            forced = tree.of_kind(NodeKind.FORCED_ANSWER)
            assert len(forced) == 1, "a capped generation must end in a forced answer"
            assert forced[0].completion_tokens <= 64
            assert forced[0].continuation == "chat"
        assert tree.vote is not None


async def test_budget_mode_min_thinking_appends_wait(embedded_url: str, tmp_path: Path) -> None:
    result = await _run(
        embedded_url, tmp_path, ModeSettings(mode="budget", budget=200, min_thinking=150)
    )
    for tree in result.trees:
        think = tree.nodes[f"{tree.problem_id}/think"]
        total = _thinking(tree, tree.root_id)
        assert total <= 200
        if think.finish_reason == "stop" and think.completion_tokens < 150:
            waits = tree.of_kind(NodeKind.EXTENSION)
            assert waits, "stopping before min_thinking must append 'Wait' and go on"
            assert all(w.continuation == "chat" for w in waits)


async def test_sequential_continues_one_assistant_message(
    embedded_url: str, tmp_path: Path
) -> None:
    steps, per_step = 3, 16
    result = await _run(
        embedded_url, tmp_path, ModeSettings(mode="sequential", steps=steps, budget=per_step)
    )
    for tree in result.trees:
        nodes = tree.of_kind(NodeKind.STEP)
        assert [n.label for n in nodes] == [f"step {i}" for i in range(1, steps + 1)]
        assert nodes[0].continuation == "new"
        assert all(n.continuation == "chat" for n in nodes[1:])
        for before, after in itertools.pairwise(nodes):
            assert after.completion_tokens <= per_step
            # The continued prompt holds the whole message so far: it grows by at least
            # the previous step's tokens (plus the "Wait" cue).
            assert after.prompt_tokens >= before.prompt_tokens + before.completion_tokens
        # each step records the answer extracted at its end (None when it states none)
        assert all(n.extraction is not None or n.answer is None for n in nodes)


async def test_sequential_revision_steps_go_on_after_the_cue(
    embedded_url: str, tmp_path: Path
) -> None:
    """The cue invites the model to go on: after "Wait." (a finished sentence) the
    embedded model ended its message at once in all 16 of these revision steps, so they
    added nothing; after "Wait" it ends none of them at once."""
    problems = load_problems(SHARED_DATA / "medqa.sample.jsonl", limit=16)
    endpoint = EndpointConfig(name="embedded", base_url=embedded_url)
    modes = ModeSettings(mode="sequential", steps=2, budget=64)
    result = await execute(problems, endpoint, RunSettings(modes=modes, out=tmp_path / "run"))
    revisions = [tree.nodes[f"{tree.problem_id}/step2"] for tree in result.trees]
    assert all(n.continuation == "chat" for n in revisions)
    at_once = [n.id for n in revisions if n.completion_tokens <= 1]
    assert len(at_once) <= len(revisions) // 8, f"revision steps that added nothing: {at_once}"


async def test_parallel_samples_n_candidates_and_votes(embedded_url: str, tmp_path: Path) -> None:
    n = 4
    result = await _run(embedded_url, tmp_path, ModeSettings(mode="parallel", n=n, budget=16))
    assert result.capabilities.native_n
    for tree in result.trees:
        # each branch is its first call's node, under the problem
        branches = [tree.nodes[c] for c in tree.root.children]
        assert [b.id for b in branches] == [f"{tree.problem_id}/b{i}" for i in range(1, n + 1)]
        assert not tree.of_kind(NodeKind.BRANCH)
        # one request with n=4 for the first call of every branch
        assert len({b.call_id for b in branches}) == 1
        assert tree.vote is not None and tree.vote.rule == "shortest-majority"
        assert len(tree.vote.ballots) == n
        answered = [b["answer"] for b in tree.vote.ballots if b["answer"] is not None]
        assert sum(tree.vote.counts.values()) == len(answered)
        assert tree.answer == tree.vote.answer


async def test_hybrid_grows_n_by_k_within_the_total_budget(
    embedded_url: str, tmp_path: Path
) -> None:
    n, k, total = 2, 2, 96
    result = await _run(
        embedded_url, tmp_path, ModeSettings(mode="hybrid", n=n, steps=k, total_budget=total)
    )
    for tree in result.trees:
        assert len(tree.of_kind(NodeKind.BRANCH)) == n
        assert len(tree.of_kind(NodeKind.STEP)) == n * k
        assert tree.completion_tokens() <= total
        assert all(
            s.max_tokens is not None and s.max_tokens <= total // (n * k)
            for s in tree.of_kind(NodeKind.STEP)
        )


async def test_tree_tokens_match_the_servers_own_count(embedded_url: str, tmp_path: Path) -> None:
    """The tree's tokens are the server's, counted by the server itself.

    The server's counters count every client's requests: where the server is a user's
    own ``thinktree serve``, another client may use it meanwhile. A run during which the
    server finished more requests than the run made, or had others in flight, is run
    again (at most three times in all) instead of being compared.
    """
    for attempt in range(3):
        before = _server_counts(embedded_url)
        # Capabilities are given in the config, so the run makes no probe calls of its
        # own; samples fan out one request each (vLLM's counter counts an n=3 prompt
        # three times, while its usage, which is what a provider bills, counts it once).
        result = await _run(
            embedded_url,
            tmp_path / f"attempt{attempt}",
            ModeSettings(mode="parallel", n=3, budget=16),
            continuation="chat",
            native_n="no",
            thinking="cue",
        )
        after = _server_counts(embedded_url)
        alone = before[3] == after[3] == 0 and after[2] - before[2] == result.metrics.calls
        if alone:
            break
    else:
        pytest.fail(
            f"another client used the embedded server during each of 3 runs (the last: "
            f"{after[2] - before[2]:.0f} requests finished for the run's "
            f"{result.metrics.calls}, {after[3]:.0f} in flight at its end)"
        )
    assert result.metrics.calls > 0
    tree_prompt = sum(t.prompt_tokens() for t in result.trees)
    tree_completion = sum(t.completion_tokens() for t in result.trees)
    assert tree_completion == after[1] - before[1]
    assert tree_prompt == after[0] - before[0]
    assert result.metrics.completion_tokens == tree_completion


async def test_seeded_samples_of_long_prompts_in_parallel_keep_the_server_alive(
    embedded_url: str,
) -> None:
    """vLLM's CPU build died on this load while it prefilled prompts in chunks."""
    import anyio
    from openai import AsyncOpenAI

    context = " ".join(p.question for p in load_demo()) * 3  # ~1,000 tokens
    client = AsyncOpenAI(base_url=embedded_url, api_key="EMPTY", max_retries=0, timeout=300)
    failed: list[BaseException] = []

    async def one(i: int) -> None:
        try:
            await client.chat.completions.create(
                model="smollm2",
                messages=[{"role": "user", "content": f"{i}: {context}"}],
                max_tokens=4,
                temperature=0.7,
                seed=1000 + i,
                n=2,
            )
        except Exception as exc:
            failed.append(exc)

    try:
        async with anyio.create_task_group() as tg:
            for i in range(24):
                tg.start_soon(one, i)
    finally:
        await client.close()
    assert not failed, repr(failed[0])
    async with httpx.AsyncClient(timeout=10) as http:
        health = await http.get(embedded_url.removesuffix("/v1") + "/health")
    assert health.status_code == 200

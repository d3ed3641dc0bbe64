"""1,000 calls with 30 % injected faults of every kind: the run completes and accounts for each."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.orchestrator.events import NodeKind, NodeStatus
from thinktree.orchestrator.run import RunSettings, execute
from thinktree.problems import AnswerType, Problem
from thinktree.testing.fake_server import FakeBehaviour, FakeServer, Fault

pytestmark = pytest.mark.anyio

PROBLEMS = 100
SAMPLES = 10


def schedule(seed: int = 11) -> list[Fault | None]:
    rng = random.Random(seed)
    kinds = list(Fault)
    plan: list[Fault | None] = []
    for _ in range(3000):
        plan.append(rng.choice(kinds) if rng.random() < 0.3 else None)
    return plan


async def test_a_fault_storm_loses_nothing(tmp_path: Path) -> None:
    problems = [
        Problem(
            id=f"q{i:03d}",
            question=f"Case {i}?",
            answer_type=AnswerType.CHOICE,
            options={"A": "a", "B": "b", "C": "c"},
            answer="B",
        )
        for i in range(PROBLEMS)
    ]
    faults = schedule()
    async with FakeServer(
        FakeBehaviour(native_n=False), faults=faults, slow_s=8.0, retry_after_s=0.01
    ) as server:
        cfg = EndpointConfig(
            name="stormy",
            base_url=server.base_url,
            max_attempts=6,
            timeout_s=3.0,
            max_backoff_s=0.05,
            max_connections=64,
            continuation="chat",
            native_n="no",
            thinking="cue",
        )
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=SAMPLES, budget=32),
            concurrency=16,
            out=tmp_path / "run",
        )
        result = await execute(problems, cfg, settings)
        faulted = dict(server.faulted)
        answered = server.answered

    samples = [n for t in result.trees for n in t.of_kind(NodeKind.GENERATION)]
    assert len(samples) == PROBLEMS * SAMPLES
    # every model call: the samples and the answers forced after an answerless one
    calls = [
        n for t in result.trees for n in t.of_kind(NodeKind.GENERATION, NodeKind.FORCED_ANSWER)
    ]
    failed = [n for n in calls if n.status is NodeStatus.FAILED]
    done = [n for n in calls if n.status is NodeStatus.DONE]
    assert len(failed) + len(done) == len(calls)
    assert all(n.error and "attempts" in n.error for n in failed)
    # every problem ends answered, or failed with a stated reason
    for tree in result.trees:
        assert tree.finished
        assert tree.answer is not None or tree.error
    # content-filtered replies are answers (finish_reason says so), not errors to retry
    filtered = [n for n in done if n.finish_reason == "content_filter"]
    assert len(filtered) == faulted.get(Fault.CONTENT_FILTER, 0)
    retryable = sum(v for k, v in faulted.items() if k is not Fault.CONTENT_FILTER)
    assert sum(faulted.values()) >= 0.25 * len(samples)
    # each faulted request was retried, or was the last attempt of a failed node (the
    # client timeout is far above a healthy reply's latency, so only SLOW faults time out)
    store = sqlite3.connect(f"file:{result.folder / 'run.sqlite'}?mode=ro", uri=True)
    retries = store.execute("SELECT retries FROM run").fetchone()[0]
    store.close()
    assert retries == result.metrics.retries
    assert retries + len(failed) == retryable
    # paid once: every answered request is exactly one finished node (the endpoint's
    # config sets what the run needs, so the probe sends nothing)
    assert answered == len(done) - len(filtered)

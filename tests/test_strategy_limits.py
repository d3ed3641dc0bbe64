"""Strategies under limits and unhelpful models: every loop ends, every node ends, and
answers already stated survive a limit that stops the rest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.orchestrator.run import RunSettings, execute
from thinktree.pricing import Price
from thinktree.problems import AnswerType, Problem
from thinktree.testing.fake_server import FakeBehaviour, FakeServer

pytestmark = pytest.mark.anyio
PROBLEMS = [
    Problem(
        id=f"q{i}",
        question=f"Case {i}?",
        answer_type=AnswerType.CHOICE,
        options={"A": "a", "B": "b"},
        answer="B",
    )
    for i in range(4)
]


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
        if prefix.endswith("Final Answer:"):
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
        assert sent[-1] == "Let me think about it.\n\nFinal Answer:"


PRICES = {"fake-model": Price(prompt_per_m=0.0, completion_per_m=1000.0)}  # 12 tokens: $0.012
RUN_LIMITS = [
    pytest.param({"max_run_tokens": 36}, "token limit of 36", id="tokens"),
    pytest.param({"max_cost": 0.03, "prices": PRICES}, "money limit of $0.0300", id="money"),
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
    assert not [n for n in last["nodes"] if n["kind"] not in ("problem", "branch")]


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
        pytest.param({"max_cost": 0.012, "prices": PRICES}, "money limit of $0.0120", id="money"),
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

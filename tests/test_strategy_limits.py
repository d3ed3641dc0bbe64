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

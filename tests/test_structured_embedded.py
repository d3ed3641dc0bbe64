"""Constrained answers on the real embedded vLLM server: every candidate parses."""

from __future__ import annotations

from pathlib import Path

import pytest

from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.datasets import load_demo, load_problems
from thinktree.orchestrator.events import NodeKind
from thinktree.orchestrator.run import RunSettings, execute
from thinktree.problems import Problem

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


def _sample() -> list[Problem]:
    """Two problems of each answer type: from the shared benchmark samples where present."""
    if not SHARED_DATA.is_dir():
        demo = load_demo()
        return [p for t in ("choice", "yesno", "numeric") for p in demo if p.answer_type == t][:6]
    problems: list[Problem] = []
    for name in ("pubmedqa", "medqa", "medcalc_bench"):
        problems += load_problems(SHARED_DATA / f"{name}.sample.jsonl", limit=2)
    return problems


@pytest.mark.parametrize("fmt", ["constrained", "json"])
async def test_every_candidate_answers_under_the_constraint(
    embedded_url: str, tmp_path: Path, fmt: str
) -> None:
    problems = _sample()
    endpoint = EndpointConfig(name="embedded", base_url=embedded_url, model="smollm2")
    settings = RunSettings(
        modes=ModeSettings(mode="budget", budget=24), answer_format=fmt, out=tmp_path / "run"
    )
    result = await execute(problems, endpoint, settings)
    assert result.capabilities.constraints[0] == "vllm"
    for tree in result.trees:
        answers = tree.of_kind(NodeKind.FORCED_ANSWER)
        assert len(answers) == 1, tree.problem_id
        assert answers[0].extraction == "constrained (vllm)", (tree.problem_id, answers[0].text)
        assert tree.answer == answers[0].answer is not None
    assert result.metrics.answered == len(problems)

"""Accuracy and coverage count the same problems: a gold that cannot be graded is in neither."""

from __future__ import annotations

from pathlib import Path

import pytest

from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.metrics import compute
from thinktree.orchestrator.run import RunSettings, execute
from thinktree.orchestrator.tree import ProblemTree
from thinktree.problems import AnswerType, Problem
from thinktree.testing.fake_server import FakeBehaviour, FakeServer

pytestmark = pytest.mark.anyio


def _tree(pid: str, correct: bool | None, covered: bool | None) -> ProblemTree:
    return ProblemTree(
        problem_id=pid, root_id=pid, question="q", gold="1", correct=correct, covered=covered
    )


def test_accuracy_and_coverage_share_one_denominator() -> None:
    trees = [
        _tree("a", True, True),
        _tree("b", False, False),
        _tree("c", False, True),
        _tree("d", None, True),  # a gold that could not be graded, covered all the same
    ]
    metrics = compute(trees, tokens_allowed=10)
    assert metrics.graded == 3
    assert metrics.accuracy == pytest.approx(1 / 3)
    assert metrics.coverage == pytest.approx(2 / 3)


async def test_a_gold_that_cannot_be_graded_counts_in_neither_metric(tmp_path: Path) -> None:
    # datasets refuse such a gold; a problem built in code can still carry one
    ungradable = Problem.model_construct(
        id="n7",
        question="How many?",
        answer_type=AnswerType.NUMERIC,
        options=None,
        context=None,
        answer="1,5",
        lower_limit=None,
        upper_limit=None,
        benchmark=None,
        meta={},
    )
    right = Problem(id="n1", question="How many?", answer_type=AnswerType.NUMERIC, answer="15")
    wrong = Problem(id="n2", question="How many?", answer_type=AnswerType.NUMERIC, answer="3")
    async with FakeServer(FakeBehaviour(reply="Answer: 15")) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, continuation="chat")
        settings = RunSettings(modes=ModeSettings(mode="budget", budget=16), out=tmp_path / "r")
        result = await execute([right, ungradable, wrong], endpoint, settings)
    tree = result.trees[1]
    assert tree.correct is None and tree.covered is None
    assert result.metrics.graded == 2
    assert result.metrics.accuracy == result.metrics.coverage == 0.5

"""The LLM judge on the real embedded vLLM server: P("Yes") and constrained ratings."""

from __future__ import annotations

from pathlib import Path

import pytest

from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.orchestrator.events import NodeKind, NodeStatus
from thinktree.orchestrator.run import RunSettings, execute
from thinktree.orchestrator.store import StoreReader
from thinktree.problems import AnswerType, Problem

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

PROBLEMS = [
    Problem(
        id="capital",
        question="What is the capital of France?",
        answer_type=AnswerType.CHOICE,
        options={"A": "Berlin", "B": "Paris", "C": "Madrid"},
        answer="B",
    ),
    Problem(
        id="sky", question="Is the sky blue on a clear day?", answer_type="yesno", answer="yes"
    ),
]


@pytest.mark.parametrize("spec", ["judge", "judge:score=rating"])
async def test_the_judge_scores_every_candidate(
    embedded_url: str, tmp_path: Path, spec: str
) -> None:
    endpoint = EndpointConfig(name="embedded", base_url=embedded_url, model="smollm2")
    settings = RunSettings(
        modes=ModeSettings(mode="parallel", n=2, budget=24),
        answer_format="constrained",
        verifiers=(spec,),
        out=tmp_path / "run",
    )
    result = await execute(PROBLEMS, endpoint, settings)
    verdicts = [v for t in result.trees for v in t.of_kind(NodeKind.VERDICT)]
    assert len(verdicts) == 4
    for v in verdicts:
        assert v.status is NodeStatus.DONE, v.error
        assert v.score is not None and 0.0 <= v.score <= 1.0
        assert v.text.startswith('P("Yes")' if spec == "judge" else "rating ")
    m = result.metrics.verifier
    assert m is not None and m.verdicts == 4 and m.failed_verdicts == 0
    assert m.prompt_tokens > 0
    with StoreReader.open(result.folder / "run.sqlite") as store:
        assert len(store.verdicts()) == 4

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
        id="sky",
        question="Is the sky blue on a clear day?",
        answer_type=AnswerType.YESNO,
        answer="yes",
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


async def test_pairwise_knockout_on_the_embedded_judge(embedded_url: str) -> None:
    from thinktree.agents.capabilities import probe
    from thinktree.agents.endpoint import EndpointClient
    from thinktree.verifiers.base import CandidateView, VerifierSetup
    from thinktree.verifiers.pairwise import pairwise

    client = EndpointClient(EndpointConfig(name="embedded", base_url=embedded_url, model="smollm2"))
    try:
        await client.resolve_model()
        caps = await probe(client, what={"logprobs", "constraints"})
        judge = pairwise(None, VerifierSetup(client=client, caps=caps, prices={}))
        views = [
            CandidateView("c1", "A", "Berlin is the capital of Germany, not France.", 9),
            CandidateView("c2", "B", "Paris is the capital of France.", 7),
            CandidateView("c3", "C", "Madrid is in Spain.", 5),
            CandidateView("c4", "B", "The capital of France is Paris, so B.", 10),
        ]
        verdicts = await judge.verify(PROBLEMS[0], views)
    finally:
        await client.aclose()
    assert all(v.error is None for v in verdicts), [v.error for v in verdicts]
    scores = [v.score for v in verdicts]
    # three groups: two rounds (one bye); the champion scores 1, a first-round loser 0
    assert set(scores) <= {0.0, 0.5, 1.0} and scores.count(1.0) in (1, 2)
    assert scores[1] == scores[3]  # a group's members share its score
    played = [v.rationale for v in verdicts if "round 1" in v.rationale]
    assert played and "swapped" in played[0]

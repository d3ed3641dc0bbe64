"""The scheduler: problems start in the dataset's order, at most ``concurrency`` at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.orchestrator.events import Event, ProblemFinished, ProblemStarted
from thinktree.orchestrator.run import RunSettings, execute
from thinktree.problems import AnswerType, Problem
from thinktree.testing.fake_server import FakeBehaviour, FakeServer

pytestmark = pytest.mark.anyio


class OpenProblems:
    """A subscriber that follows which problems have started and not yet finished."""

    wants_deltas = False

    def __init__(self) -> None:
        self.started: list[str] = []
        self.open: set[str] = set()
        self.peak = 0

    def handle(self, event: Event) -> None:
        if isinstance(event, ProblemStarted):
            self.started.append(event.problem_id)
            self.open.add(event.problem_id)
            self.peak = max(self.peak, len(self.open))
        elif isinstance(event, ProblemFinished):
            self.open.remove(event.problem_id)

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize("concurrency", [1, 3, 50])
async def test_problems_start_in_order_and_at_most_concurrency_are_under_way(
    tmp_path: Path, concurrency: int
) -> None:
    problems = [
        Problem(id=f"q{i}", question="Q?", answer_type=AnswerType.FREE, answer="yes")
        for i in range(10)
    ]
    seen = OpenProblems()
    async with FakeServer(FakeBehaviour(native_n=False, chunk_delay_s=0.002)) as server:
        endpoint = EndpointConfig(
            name="fake", base_url=server.base_url, continuation="chat", native_n="no"
        )
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=2, budget=16),
            concurrency=concurrency,
            out=tmp_path / "run",
        )
        result = await execute(problems, endpoint, settings, subscribers=[seen])
    assert seen.started == [p.id for p in problems]
    assert seen.peak == min(concurrency, len(problems))  # every slot used, never more
    assert not seen.open
    assert [t.problem_id for t in result.trees] == seen.started
    assert all(t.finished for t in result.trees)

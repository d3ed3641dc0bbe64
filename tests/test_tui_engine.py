"""The view over the real engine: ``execute`` as a worker of the app, against the fake
OpenAI server; what the live view shows must equal the run's results and its trace."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.pilot import Pilot

from thinktree.agents.capabilities import Capabilities
from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.orchestrator.events import Event, NodeKind
from thinktree.orchestrator.run import RunResult, RunSettings, execute, load_resume
from thinktree.orchestrator.store import StoreReader
from thinktree.orchestrator.trace import read_trace
from thinktree.problems import AnswerType, Problem
from thinktree.testing.fake_server import FakeBehaviour, FakeServer, Fault
from thinktree.tui.render import header
from thinktree.tui.state import RunView
from thinktree.tui.subscriber import TuiSubscriber, watch_run
from tui_pilot import engine_ended

pytestmark = pytest.mark.anyio

PROBLEMS = [
    Problem(
        id=f"q{i}",
        question=f"Question {i}?",
        answer_type=AnswerType.CHOICE,
        options={"A": "alpha", "B": "beta", "C": "gamma"},
        answer="B",
    )
    for i in range(4)
]
REPLY = "Think [bold red]loud[/] \x1b[2J and on.\nAnswer: B"


async def test_run_watch_shows_exactly_what_the_engine_did(tmp_path: Path) -> None:
    behaviour = FakeBehaviour(reply=REPLY, chunk_delay_s=0.001)
    seen: dict[str, RunView] = {}

    async def look_then_quit(pilot: Pilot[object]) -> None:
        app = await engine_ended(pilot)
        await pilot.pause()
        assert app.engine_error is None
        assert "problems 4/4" in app.header.plain and "live run" not in app.header.plain
        app.problem_tree.focus_node("q0/b1")
        await pilot.pause()
        assert "Think [bold red]loud[/] ␛[2J and on." in app.detail.text
        seen["view"] = app.view
        await pilot.press("q")

    # requests 1-4 are the probe's (a plain chat, n, token ids, reasoning): the run's first
    # call is refused
    async with FakeServer(
        behaviour, faults=lambda i: Fault.RATE_LIMIT if i == 5 else None, retry_after_s=0.05
    ) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, continuation="chat")
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=3, budget=64), out=tmp_path / "run"
        )

        async def run(subscriber: TuiSubscriber) -> RunResult:
            return await execute(PROBLEMS, endpoint, settings, subscribers=[subscriber])

        result = await watch_run(run, headless=True, auto_pilot=look_then_quit)

    view = seen["view"]
    assert view.retries == 1
    assert view.finished is not None and view.finished.status == "completed"
    replayed = RunView()
    for event in read_trace(result.folder / "trace.jsonl"):
        replayed.apply(event)
    for tree in result.trees:
        live = view.tree.problems[tree.problem_id]
        again = replayed.tree.problems[tree.problem_id]
        assert live.answer == again.answer == tree.answer == "B"
        assert [n.to_dict() for n in live.walk()] == [n.to_dict() for n in tree.walk()]
        assert [n.to_dict() for n in again.walk()] == [n.to_dict() for n in tree.walk()]
        assert len(live.of_kind(NodeKind.GENERATION)) == 3
    assert view.completion_tokens == replayed.completion_tokens


class _Viewing:
    """A bus subscriber that folds the run's events into a view's state, as the app does."""

    wants_deltas = False

    def __init__(self) -> None:
        self.view = RunView(work_out_budget=False)

    def handle(self, event: Event) -> None:
        self.view.apply(event)

    async def aclose(self) -> None:
        return None


async def test_a_resumed_runs_view_counts_the_retries_its_results_count(tmp_path: Path) -> None:
    """results.json counts the retries behind the calls a resume reads back; so does the view."""
    folder = tmp_path / "run"
    async with FakeServer(FakeBehaviour(reply=REPLY), faults=[Fault.SERVER_ERROR]) as server:
        endpoint = EndpointConfig(
            name="fake", base_url=server.base_url, continuation="chat", max_backoff_s=0.01
        )
        settings = RunSettings(modes=ModeSettings(mode="budget", budget=32), out=folder)
        caps = Capabilities(continuation="chat")  # no probe: the run's first call gets the 500
        first = await execute(PROBLEMS, endpoint, settings, capabilities=caps)
        assert first.metrics.retries == 1
        (folder / "results.json").unlink()  # as if the run was killed before its end
        state = load_resume(folder)
        viewing = _Viewing()
        again = await execute(
            state.problems, endpoint, state.settings, resume=state, subscribers=[viewing]
        )
    assert again.cached_calls == len(PROBLEMS) and again.metrics.retries == 1
    assert viewing.view.retries == again.metrics.retries
    assert "retries 1" in header(viewing.view, elapsed=1.0, source="live").plain
    replayed = RunView(work_out_budget=False)
    for event in read_trace(folder / "trace.jsonl"):
        replayed.apply(event)
    assert replayed.retries == again.metrics.retries  # `thinktree watch` of its trace too
    with StoreReader.open(folder / "run.sqlite") as store:  # and the run store
        assert store.run_info()["retries"] == again.metrics.retries

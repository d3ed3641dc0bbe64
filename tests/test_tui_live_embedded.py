"""The live view over a real run on the embedded model: the tree grows while it goes."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.pilot import Pilot

from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.datasets import load_demo
from thinktree.orchestrator.run import RunResult, RunSettings, execute
from thinktree.tui.app import ThinktreeApp
from thinktree.tui.subscriber import TuiSubscriber, watch_run

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_tree_gains_nodes_while_the_run_goes(embedded_url: str, tmp_path: Path) -> None:
    counts: list[int] = []
    problems = load_demo()[:2]

    async def sample_then_quit(pilot: Pilot[object]) -> None:
        app = pilot.app
        assert isinstance(app, ThinktreeApp)
        while not app.source_done.is_set() or app.engine_running:
            counts.append(sum(len(t.nodes) for t in app.view.tree.problems.values()))
            await pilot.pause(0.02)
        app.refresh_view()
        await pilot.pause()
        assert "problems 2/2" in app.header.plain
        await pilot.press("q")

    async def run(subscriber: TuiSubscriber) -> RunResult:
        settings = RunSettings(
            modes=ModeSettings(mode="sequential", steps=5, budget=16), out=tmp_path / "run"
        )
        endpoint = EndpointConfig(name="embedded", base_url=embedded_url)
        return await execute(problems, endpoint, settings, subscribers=[subscriber])

    result = await watch_run(run, headless=True, auto_pilot=sample_then_quit)
    final = sum(len(t.nodes) for t in result.trees)
    growing = sorted(set(counts))
    # the view saw the tree part-built at several sizes before it was whole
    assert len([c for c in growing if 0 < c < final]) >= 3, (growing, final)
    assert counts == sorted(counts)  # it only ever grew

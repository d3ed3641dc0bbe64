"""A pool of two real llama.cpp servers survives one of them being killed mid-run.

Both serve the embedded GGUF on 127.0.0.1, each started by the launcher; once a few calls
have finished, one server's whole process group gets SIGKILL. The run's call store and
the per-server figures prove that nothing was lost (every call node is done) and nothing
was paid twice (each finished call recorded once, the run's tokens are the store's).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest

from thinktree import embedded
from thinktree.agents.endpoint import EndpointConfig, PoolMember
from thinktree.agents.modes import ModeSettings
from thinktree.datasets import load_demo
from thinktree.orchestrator.events import Event, NodeFinished, NodeKind, NodeStatus
from thinktree.orchestrator.run import RunSettings, execute
from thinktree.serving import launcher, llamacpp

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CALLS = {NodeKind.GENERATION, NodeKind.EXTENSION, NodeKind.STEP, NodeKind.FORCED_ANSWER}


class KillAfter:
    """A run subscriber that SIGKILLs a server's process group after ``calls`` finish."""

    wants_deltas = False

    def __init__(self, pgid: int, calls: int) -> None:
        self.pgid = pgid
        self.calls = calls
        self.killed_at: int | None = None
        self.finished = 0

    def handle(self, event: Event) -> None:
        if isinstance(event, NodeFinished) and event.call_id is not None:
            self.finished += 1
            if self.killed_at is None and self.finished >= self.calls:
                os.killpg(self.pgid, signal.SIGKILL)
                self.killed_at = self.finished

    async def aclose(self) -> None:
        return None


async def test_pool_survives_a_member_killed_mid_run(tmp_path: Path) -> None:
    gguf = embedded.gguf_path()
    async with AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(
                launcher.launch(
                    llamacpp.spec(gguf, "smollm2", tmp_path, n_threads=1, log_stem=f"m{i}"),
                    startup_timeout=300,
                )
            )
            for i in range(2)
        ]
        victim, survivor = servers
        assert victim.pid is not None
        cfg = EndpointConfig(
            name="pair",
            base_url="pool:pair",
            model="smollm2",
            members=tuple(PoolMember(s.base_url, 2) for s in servers),
            continuation="revision",
            native_n="no",
            thinking="cue",
            timeout_s=120,
        )
        killer = KillAfter(victim.pid, calls=3)
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=2, budget=24, answer_tokens=8),
            out=tmp_path / "run",
            concurrency=4,
            seed=11,
        )
        result = await execute(load_demo()[:5], cfg, settings, subscribers=[killer])
        with anyio.fail_after(20):
            while launcher.group_alive(victim.pid):  # noqa: ASYNC110 (a process, no event)
                await anyio.sleep(0.2)

    assert killer.killed_at is not None
    calls = [n for t in result.trees for n in t.walk() if n.kind in CALLS]
    # nothing lost: every call the run made finished, after the kill too
    assert all(n.status is NodeStatus.DONE for n in calls), [n.error for n in calls]
    assert len(calls) > killer.killed_at
    # nothing paid twice: each finished call recorded once, and the results count those
    with sqlite3.connect(result.folder / "calls.sqlite") as conn:
        stored, tokens = conn.execute(
            "SELECT count(*), sum(completion_tokens) FROM responses"
        ).fetchone()
    assert stored == len({n.call_id for n in calls}) == len(calls)
    assert tokens == sum(n.completion_tokens for n in calls) == result.metrics.completion_tokens
    results = json.loads((result.folder / "results.json").read_text())
    figures = {s["base_url"]: s for s in results["servers"]}
    lost, kept = figures[victim.base_url], figures[survivor.base_url]
    assert lost["healthy"] is False and kept["healthy"] is True
    assert lost["calls"] + kept["calls"] == len(calls)  # the probe sent nothing here
    assert kept["calls"] > lost["calls"]  # the survivor carried the rest of the run
    print(
        f"pool: {len(calls)} calls, victim answered {lost['calls']} "
        f"(failovers {lost['failovers']}), survivor {kept['calls']}"
    )

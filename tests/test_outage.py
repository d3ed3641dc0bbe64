"""An endpoint that goes down mid-run (a restarting server) is waited for, not failed past.

The endpoint is a real HTTP server on 127.0.0.1, stopped mid-run and started again on
the same port: the client sees refused connections, as from a server being restarted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from choice_set import beta_problems, write_dataset
from thinktree.agents.endpoint import Completion, EndpointClient, EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.errors import EndpointDown
from thinktree.orchestrator.events import CallRetried, Event, RunFinished, RunStarted
from thinktree.orchestrator.run import RunResult, RunSettings, execute, load_resume
from thinktree.orchestrator.store import RunStore, StoreReader, list_runs
from thinktree.orchestrator.subscribers import TreeRecorder
from thinktree.orchestrator.trace import read_trace
from thinktree.testing.fake_server import FakeBehaviour, FakeServer, fake_server_in_thread
from thinktree.tui.render import header
from thinktree.tui.state import RunView

pytestmark = pytest.mark.anyio

PROBLEMS = beta_problems(12)
BEHAVIOUR = FakeBehaviour(reply="It is beta. Answer: B", delay_s=0.05)
SETTINGS = ModeSettings(mode="budget", budget=32)


def endpoint(server: FakeServer, outage_wait_s: float) -> EndpointConfig:
    return EndpointConfig(
        name="restarting",
        base_url=server.base_url,
        continuation="chat",
        max_attempts=2,
        max_backoff_s=0.05,
        outage_wait_s=outage_wait_s,
    )


async def _until_answered(server: FakeServer, calls: int) -> None:
    with anyio.fail_after(30):
        while server.answered < calls:  # noqa: ASYNC110 (the server has no event to wait on)
            await anyio.sleep(0.01)


async def test_a_server_restarted_mid_run_is_waited_for_and_no_call_fails(
    tmp_path: Path,
) -> None:
    first = FakeServer(BEHAVIOUR)
    await first.__aenter__()
    port = first.port
    recorder = TreeRecorder()  # sees the run's events: the wait is one of them
    results: list[RunResult] = []
    try:
        async with anyio.create_task_group() as tg:
            done = anyio.Event()

            async def run() -> None:
                settings = RunSettings(modes=SETTINGS, concurrency=2, out=tmp_path / "run")
                config = endpoint(first, outage_wait_s=30)
                results.append(await execute(PROBLEMS, config, settings, subscribers=[recorder]))
                done.set()

            tg.start_soon(run)
            await _until_answered(first, 4)
            await first.__aexit__(None, None, None)  # down: connections refused
            await anyio.sleep(1.0)
            second = FakeServer(BEHAVIOUR, port=port)  # back, on the same port
            async with second:
                with anyio.fail_after(60):
                    await done.wait()
    finally:
        await first.__aexit__(None, None, None)
    (result,) = results
    assert result.metrics.answered == len(PROBLEMS)
    assert result.failed_calls() == []
    assert second.answered >= len(PROBLEMS) - first.answered  # the rest: after the restart
    assert recorder.retries >= 1  # the calls sent again once it was back


async def test_a_server_that_stays_down_stops_the_run_which_resumes_later(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "run"
    first = FakeServer(BEHAVIOUR)
    await first.__aenter__()
    port = first.port
    settings = RunSettings(modes=SETTINGS, concurrency=2, out=folder)

    async def stop_soon() -> None:
        await _until_answered(first, 4)
        await first.__aexit__(None, None, None)

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_soon)
        with pytest.raises(EndpointDown, match=r"did not come back within 1 s \(outage_wait_s\)"):
            await execute(PROBLEMS, endpoint(first, outage_wait_s=1), settings)
    assert not (folder / "results.json").exists()
    # its trace says why it failed, and a view of it (thinktree watch) shows that
    ended = json.loads((folder / "trace.jsonl").read_text().splitlines()[-1])
    assert (ended["type"], ended["status"]) == ("run-finished", "failed")
    assert "did not come back within 1 s (outage_wait_s)" in ended["error"]
    view = RunView()
    view.apply_batch(list(read_trace(folder / "trace.jsonl")))
    shown = header(view, elapsed=1.0, source="replay").plain
    assert "run failed  endpoint 'restarting'" in shown and "stopped answering" in shown, shown
    (listed,) = list_runs(folder.parent)  # and thinktree runs says why, in its note
    assert listed.status == "failed" and listed.error is not None
    assert listed.error.startswith("failed: endpoint 'restarting'"), listed.error
    assert "did not come back within 1 s (outage_wait_s)" in listed.error
    with StoreReader.open(folder / "run.sqlite") as store:  # the calls it stopped ended too
        calls = [
            n for p in store.problems() for n in store.nodes(p["id"]) if n["kind"] == "generation"
        ]
    assert calls and not [n["id"] for n in calls if n["status"] == "running"]
    assert any("did not come back" in (n["error"] or "") for n in calls)
    async with FakeServer(BEHAVIOUR, port=port) as second:
        state = load_resume(folder)
        result = await execute(PROBLEMS, endpoint(second, 1), state.settings, resume=state)
    assert result.metrics.answered == len(PROBLEMS) and result.failed_calls() == []
    # one call a problem: those answered before the outage are read back, not sent again
    assert result.cached_calls > 0
    assert second.answered == len(PROBLEMS) - result.cached_calls
    saved = json.loads((folder / "results.json").read_text())
    assert saved["metrics"]["failed"] == 0


def test_the_command_stops_in_one_line_when_the_endpoint_stays_down(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data.jsonl", PROBLEMS)
    out = tmp_path / "run"
    config = tmp_path / "thinktree.toml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    slow = FakeBehaviour(reply="It is beta. Answer: B", delay_s=0.2)
    with fake_server_in_thread(slow) as server:
        config.write_text(
            f'[endpoints.gpu]\nbase_url = "{server.base_url}"\ncontinuation = "chat"\n'
            "max_attempts = 2\noutage_wait_s = 1\n"
        )
        args = ["run", str(data), "--endpoint", "gpu", "--config", str(config)]
        args += ["--concurrency", "1", "--out", str(out)]
        proc = subprocess.Popen(
            [sys.executable, "-m", "thinktree.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        deadline = time.monotonic() + 60
        while server.answered < 6 and proc.poll() is None:  # the probe's, then the run's
            assert time.monotonic() < deadline
            time.sleep(0.01)
    # the server is gone for good
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 69, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-2].startswith("error: endpoint 'gpu' ")
    assert "stopped answering (connection failed) and did not come back within 1 s" in lines[-2]
    # the endpoint is named in the config: resuming needs it again
    hint = "once the endpoint answers again, resume with: "
    assert lines[-1] == f"{hint}thinktree run --resume {out} --config {config}"
    assert not (out / "results.json").exists()


async def test_a_call_that_waits_out_an_outage_counts_the_requests_it_sent_again() -> None:
    """Two attempts refused, a wait until the server is back, one more attempt: three
    requests sent, two of them again. The wait itself sends nothing and is no retry."""
    server = FakeServer(BEHAVIOUR)
    await server.__aenter__()
    port = server.port
    config = endpoint(server, outage_wait_s=30)
    await server.__aexit__(None, None, None)  # down before the call: connections refused
    told: list[int] = []

    async def on_retry(attempt: int, wait: float, reason: str) -> None:
        told.append(attempt)

    client = EndpointClient(dataclasses.replace(config, model="fake-model"), on_retry=on_retry)
    sent = 0
    once = client._once

    async def counted(attempt: Any, timed: bool) -> Completion:
        nonlocal sent
        sent += 1
        return await once(attempt, timed)

    client._once = counted  # type: ignore[method-assign]
    results: list[Completion] = []
    try:
        async with anyio.create_task_group() as tg:

            async def call() -> None:
                results.append(await client.chat([{"role": "user", "content": "hi"}], max_tokens=8))

            tg.start_soon(call)
            with anyio.fail_after(30):
                while 0 not in told:  # noqa: ASYNC110 (waiting on the client's own report)
                    await anyio.sleep(0.01)
            async with FakeServer(BEHAVIOUR, port=port) as back:
                with anyio.fail_after(30):
                    while not results:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
    finally:
        await client.aclose()
    (result,) = results
    assert back.answered == 1
    assert sent == 3 and result.attempts == 3
    assert len([a for a in told if a > 0]) == sent - 1  # each a request sent again


async def test_a_wait_for_the_endpoint_is_shown_but_not_counted_as_a_retry(
    tmp_path: Path,
) -> None:
    events: list[Event] = [
        RunStarted(run_id="r", mode="budget", endpoint="e", model="m", problems=1),
        CallRetried(at=0.1, endpoint="e", attempt=1, wait_s=0.1, reason="connection failed"),
        CallRetried(at=0.2, endpoint="e", attempt=0, wait_s=600, reason="endpoint not answering"),
        CallRetried(at=4.0, endpoint="e", attempt=1, wait_s=0.1, reason="connection failed"),
    ]
    recorder, view, store = TreeRecorder(), RunView(), RunStore(tmp_path / "run.sqlite")
    for event in events[:3]:
        view.apply(event)
    assert "waiting" in header(view, elapsed=1.0, source="live").plain  # shown while it waits
    view.apply(events[3])
    for event in [*events, RunFinished(at=5.0, run_id="r", status="completed")]:
        recorder.handle(event)
        store.handle(event)
    await store.aclose()
    assert recorder.retries == view.retries == 2
    with contextlib.closing(sqlite3.connect(tmp_path / "run.sqlite")) as conn:
        assert conn.execute("SELECT retries FROM run").fetchone() == (2,)

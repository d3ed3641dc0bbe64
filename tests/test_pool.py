"""Endpoint pools: routing, per-server limits, health, and failover with exact counts.

The members are real HTTP servers on 127.0.0.1 (thinktree.testing.fake_server), so the
servers' own counters say what was answered; the run's call store says what was paid for.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from thinktree.agents.endpoint import EndpointConfig, PoolMember
from thinktree.agents.modes import ModeSettings
from thinktree.agents.pool import EndpointPool, client_for
from thinktree.config import endpoint_from
from thinktree.errors import ConfigError, EndpointError
from thinktree.orchestrator.events import NodeStatus
from thinktree.orchestrator.run import RunSettings, execute
from thinktree.problems import AnswerType, Problem
from thinktree.testing.fake_server import FakeBehaviour, FakeServer, Fault

pytestmark = pytest.mark.anyio

PROBLEMS = [
    Problem(
        id=f"q{i}",
        question=f"Question {i}?",
        answer_type=AnswerType.CHOICE,
        options={"A": "alpha", "B": "beta"},
        answer="B",
    )
    for i in range(8)
]


def pool_config(*servers: FakeServer, limit: int = 4, **kw: Any) -> EndpointConfig:
    return EndpointConfig(
        name="pool",
        base_url="pool:pool",
        members=tuple(PoolMember(s.base_url, limit) for s in servers),
        **kw,
    )


def store_totals(folder: Path) -> tuple[int, int]:
    """Calls recorded in the run's call store, and their completion tokens."""
    with sqlite3.connect(folder / "calls.sqlite") as conn:
        row = conn.execute("SELECT count(*), sum(completion_tokens) FROM responses").fetchone()
    return int(row[0]), int(row[1] or 0)


async def test_least_outstanding_routing_respects_each_members_limit() -> None:
    slow = FakeBehaviour(delay_s=0.2)
    async with FakeServer(slow) as a, FakeServer(slow) as b:
        cfg = EndpointConfig(
            name="pool",
            base_url="pool:pool",
            members=(PoolMember(a.base_url, 1), PoolMember(b.base_url, 3)),
        )
        pool = EndpointPool(cfg)
        try:
            await pool.resolve_model()
            async with anyio.create_task_group() as tg:
                for _ in range(16):
                    tg.start_soon(
                        lambda: pool.chat([{"role": "user", "content": "hi"}], max_tokens=4)
                    )
        finally:
            await pool.aclose()
    figures = pool.figures()
    assert a.answered + b.answered == 16
    assert figures[0]["calls"] == a.answered and figures[1]["calls"] == b.answered
    assert figures[0]["peak_outstanding"] <= 1
    assert figures[1]["peak_outstanding"] <= 3
    # load follows capacity: the member with three slots takes most of the calls
    assert b.answered >= 2 * a.answered


async def test_failover_mid_run_loses_nothing_and_pays_once(tmp_path: Path) -> None:
    """One member dies mid-run: calls in flight on it reset, new ones are refused.

    The servers' counters and the run's call store agree: every call node is done, each
    answered once, and the tokens in the results are exactly those the servers answered.
    """
    dead = threading.Event()
    behaviour = FakeBehaviour(delay_s=0.15, native_n=False)
    a = FakeServer(behaviour, faults=lambda i: Fault.RESET if dead.is_set() else None)
    async with a, FakeServer(behaviour) as b:
        a_url, b_url = a.base_url, b.base_url
        cfg = pool_config(a, b, limit=3)
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=3, budget=32),
            out=tmp_path / "run",
            concurrency=4,
        )

        async def kill_a_after_some_answers() -> None:
            while a.answered < 4:  # noqa: ASYNC110 (the fake server has no event to wait on)
                await anyio.sleep(0.01)
            # from now on a resets every request mid-response; those it was already
            # answering finish first (a fake server that is closed answers early)
            dead.set()
            await anyio.sleep(0.5)
            await a.__aexit__(None, None, None)  # and nothing listens on its port any more

        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_a_after_some_answers)
            result = await execute(PROBLEMS, cfg, settings)
    calls = [
        n
        for t in result.trees
        for n in t.walk()
        if n.kind.value in ("generation", "forced-answer", "step", "extension")
    ]
    assert all(n.status is NodeStatus.DONE for n in calls), [n.error for n in calls]
    assert a.faulted[Fault.RESET] >= 1, "the kill must catch calls in flight"
    answered = a.answered + b.answered
    stored, stored_tokens = store_totals(result.folder)
    assert stored == len(calls)  # every call recorded once
    probes = answered - stored
    assert probes == 6, (a.answered, b.answered, stored)  # the probe's own requests
    data = json.loads((result.folder / "results.json").read_text())
    servers = {s["base_url"]: s for s in data["servers"]}
    assert servers[a_url]["calls"] + servers[b_url]["calls"] == answered
    assert servers[a_url]["failovers"] >= a.faulted[Fault.RESET]
    assert servers[a_url]["healthy"] is False
    # the tokens the run counts are those of the answers it kept, each once
    counted = sum(n.completion_tokens for n in calls)
    assert counted == data["metrics"]["completion_tokens"] == stored_tokens
    assert all(t.answer == "B" for t in result.trees)


async def test_a_dead_member_at_start_is_a_one_line_error() -> None:
    async with FakeServer() as a:
        dead = FakeServer()
        async with dead:
            dead_url = dead.base_url
        cfg = EndpointConfig(
            name="pool",
            base_url="pool:pool",
            members=(PoolMember(a.base_url), PoolMember(dead_url)),
            max_attempts=1,
        )
        pool = client_for(cfg)
        try:
            with pytest.raises(EndpointError) as info:
                await pool.resolve_model()
        finally:
            await pool.aclose()
    message = str(info.value)
    assert "\n" not in message
    assert f"member {dead_url} is not usable" in message
    assert "start it or remove it from the pool" in message


async def test_members_must_serve_the_same_model() -> None:
    async with (
        FakeServer(FakeBehaviour(model="m1")) as a,
        FakeServer(FakeBehaviour(model="m2")) as b,
    ):
        pool = EndpointPool(pool_config(a, b))
        try:
            with pytest.raises(EndpointError, match="members serve different models"):
                await pool.resolve_model()
        finally:
            await pool.aclose()


async def test_a_member_that_comes_back_gets_calls_again() -> None:
    broken = threading.Event()
    broken.set()
    a = FakeServer(faults=lambda i: Fault.RESET if broken.is_set() else None)
    async with a, FakeServer() as b:
        pool = EndpointPool(pool_config(a, b))
        try:
            await pool.resolve_model()
            for _ in range(4):
                await pool.chat([{"role": "user", "content": "hi"}], max_tokens=2)
            assert pool.figures()[0]["healthy"] is False
            assert a.faulted[Fault.RESET] == 1  # marked down on the first reset, not sent more
            broken.clear()
            await anyio.sleep(2.1)  # past the re-check interval: its health check passes
            for _ in range(6):
                await pool.chat([{"role": "user", "content": "hi"}], max_tokens=2)
            assert a.answered >= 1
            assert pool.figures()[0]["healthy"] is True
        finally:
            await pool.aclose()


@pytest.mark.parametrize(
    ("members", "needle"),
    [
        ([], "non-empty list"),
        (["ftp://x"], "is not an http(s) URL"),
        (["http://a/v1", "http://a/v1"], "listed twice"),
        (
            [{"base_url": "http://a/v1", "max_connections": 0}],
            "member http://a/v1: max_connections must be a whole number of calls from 1 to "
            "10000, not 0",
        ),
        (
            [{"base_url": "http://a/v1", "max_connections": 100_000}],
            "member http://a/v1: max_connections must be a whole number of calls from 1 to "
            "10000, not 100000: each call in flight holds a connection",
        ),
        ([{"base_url": "http://a/v1", "max_connections": True}], "not True"),
        ([{"url": "http://a/v1"}], "a URL or a table with a base_url"),
    ],
)
def test_pool_config_errors(members: list[Any], needle: str) -> None:
    config = {"endpoints": {"p": {"model": "m", "members": members}}}
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        endpoint_from("p", model=None, config=config)


def test_a_pool_with_a_base_url_too_is_refused() -> None:
    """Its calls would all go to the members while run.json named the base_url."""
    table = {"model": "m", "base_url": "http://a:1/v1", "members": ["http://b:2/v1"]}
    with pytest.raises(ConfigError, match="has both a base_url and members"):
        endpoint_from("p", model=None, config={"endpoints": {"p": table}})


def test_pool_config_with_per_member_limits() -> None:
    config = {
        "endpoints": {
            "p": {
                "model": "m",
                "max_connections": 8,
                "members": ["http://a:1/v1/", {"base_url": "http://b:2/v1", "max_connections": 2}],
            }
        }
    }
    cfg = endpoint_from("p", model=None, config=config)
    assert cfg is not None
    assert cfg.members == (PoolMember("http://a:1/v1", 8), PoolMember("http://b:2/v1", 2))
    assert cfg.base_url == "pool:p"


def test_run_on_a_pool_with_a_dead_member_fails_in_one_line(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys

    from thinktree.testing.fake_server import fake_server_in_thread

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with fake_server_in_thread() as alive:
        (tmp_path / "thinktree.toml").write_text(
            f'[endpoints.pair]\nmodel = "fake-model"\nmax_attempts = 1\n'
            f'members = ["{alive.base_url}", "{dead}"]\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "thinktree.cli",
                "run",
                "--endpoint",
                "pair",
                "--out",
                str(tmp_path / "run"),
                "--limit",
                "1",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env={**env, "COLUMNS": "300"},
        )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert f"member {dead} is not usable" in lines[0]
    assert not (tmp_path / "run").exists()


OUTAGE_PROBLEMS = PROBLEMS[:6]
OUTAGE_MODES = ModeSettings(mode="budget", budget=32)


async def _until(condition: Any, seconds: float = 30) -> None:
    with anyio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110 (the fake servers have no event to wait on)
            await anyio.sleep(0.01)


async def test_a_pool_whose_members_all_restart_is_waited_for(tmp_path: Path) -> None:
    """Every member goes down mid-run and comes back on its port: no call fails."""
    from thinktree.orchestrator.subscribers import TreeRecorder

    slow = FakeBehaviour(delay_s=0.05)
    a, b = FakeServer(slow), FakeServer(slow)
    await a.__aenter__()
    await b.__aenter__()
    ports = a.port, b.port
    # a call's own timeout is short: the outage is waited for as long as outage_wait_s
    cfg = pool_config(
        a, b, limit=1, max_attempts=2, max_backoff_s=0.05, timeout_s=1, outage_wait_s=30
    )
    recorder = TreeRecorder()
    settings = RunSettings(modes=OUTAGE_MODES, concurrency=2, out=tmp_path / "run")
    try:
        async with anyio.create_task_group() as tg:
            results: list[Any] = []

            async def run() -> None:
                results.append(
                    await execute(OUTAGE_PROBLEMS, cfg, settings, subscribers=[recorder])
                )

            tg.start_soon(run)
            await _until(lambda: a.answered + b.answered >= 6)  # the probe's and 1-2 calls
            await a.__aexit__(None, None, None)
            await b.__aexit__(None, None, None)  # every member down: connections refused
            await anyio.sleep(3.0)  # longer than a call's timeout
            async with FakeServer(slow, port=ports[0]), FakeServer(slow, port=ports[1]):
                await _until(lambda: bool(results), 60)
    finally:
        await a.__aexit__(None, None, None)
        await b.__aexit__(None, None, None)
    (result,) = results
    assert result.failed_calls() == []
    assert result.metrics.answered == len(OUTAGE_PROBLEMS)
    assert recorder.retries >= 1  # the wait was announced (progress bar, terminal view)


async def test_a_pool_that_stays_down_stops_the_run_resumably(tmp_path: Path) -> None:
    from thinktree.errors import EndpointDown
    from thinktree.orchestrator.run import load_resume

    folder = tmp_path / "run"
    slow = FakeBehaviour(delay_s=0.05)
    a, b = FakeServer(slow), FakeServer(slow)
    await a.__aenter__()
    await b.__aenter__()
    ports = a.port, b.port
    cfg = pool_config(
        a, b, limit=1, max_attempts=2, max_backoff_s=0.05, timeout_s=2, outage_wait_s=1
    )
    settings = RunSettings(modes=OUTAGE_MODES, concurrency=2, out=folder)

    async def stop_both() -> None:
        await _until(lambda: a.answered + b.answered >= 6)
        await a.__aexit__(None, None, None)
        await b.__aexit__(None, None, None)

    async with anyio.create_task_group() as tg:
        tg.start_soon(stop_both)
        pattern = r"pool 'pool': every member stopped answering .* within 1 s \(outage_wait_s\)"
        with pytest.raises(EndpointDown, match=pattern):
            await execute(OUTAGE_PROBLEMS, cfg, settings)
    assert not (folder / "results.json").exists()
    async with FakeServer(slow, port=ports[0]) as a2, FakeServer(slow, port=ports[1]) as b2:
        state = load_resume(folder)
        result = await execute(
            OUTAGE_PROBLEMS, pool_config(a2, b2, limit=1), state.settings, resume=state
        )
    assert result.failed_calls() == [] and result.metrics.answered == len(OUTAGE_PROBLEMS)
    assert result.cached_calls > 0  # those answered before the outage are not paid again


async def test_a_request_that_fails_on_answering_members_is_not_waited_for() -> None:
    """5xx on every attempt while the members answer their checks: the call fails."""
    a = FakeServer(faults=lambda i: Fault.SERVER_ERROR)
    async with a:
        pool = EndpointPool(pool_config(a, max_attempts=2, max_backoff_s=0.01, outage_wait_s=30))
        try:
            await pool.resolve_model()
            with anyio.fail_after(10), pytest.raises(EndpointError, match="kept failing"):
                await pool.chat([{"role": "user", "content": "hi"}], max_tokens=2)
        finally:
            await pool.aclose()


class Reloading(FakeServer):
    """Answers 503 to its checks (``/models``) while ``reloading``."""

    reloading = False

    async def _models(self, request: web.BaseRequest) -> web.Response:
        if self.reloading:
            return web.Response(status=503)
        return await super()._models(request)


async def test_a_call_sent_again_after_the_pool_came_back_counts_each_request() -> None:
    """Two 503s, then the member stops answering its checks too: the call waits for the
    pool and is sent once more. Three requests, two of them sent again."""
    server = Reloading(faults=[Fault.UNAVAILABLE, Fault.UNAVAILABLE])
    told: list[int] = []

    async def on_retry(attempt: int, wait: float, reason: str) -> None:
        told.append(attempt)
        if len(told) == 1:
            server.reloading = True  # the member's checks fail from its second 503 on

    async with server:
        cfg = pool_config(server, max_attempts=2, max_backoff_s=0.01, outage_wait_s=30)
        pool = EndpointPool(cfg, on_retry=on_retry)
        try:
            await pool.resolve_model()
            async with anyio.create_task_group() as tg:
                results: list[Any] = []

                async def call() -> None:
                    chat = pool.chat([{"role": "user", "content": "hi"}], max_tokens=2)
                    results.append(await chat)

                tg.start_soon(call)
                await _until(lambda: 0 in told)  # waiting for the pool
                server.reloading = False
        finally:
            await pool.aclose()
    (result,) = results
    assert server.requests == 3 and server.answered == 1
    assert result.attempts == 3
    assert len([a for a in told if a > 0]) == 2  # each a request sent again

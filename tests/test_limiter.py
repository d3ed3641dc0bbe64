"""Calls in flight back off when the endpoint rate-limits them, and grow back.

The endpoint in the run test is a real HTTP server on 127.0.0.1 that answers 429 (with
Retry-After) to a request arriving while its limit of requests is already in flight.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from choice_set import beta_problems
from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.limiter import AdaptiveLimiter
from thinktree.agents.modes import ModeSettings
from thinktree.orchestrator.run import RunSettings, execute
from thinktree.testing.fake_server import FakeBehaviour, FakeServer

pytestmark = pytest.mark.anyio


async def test_429s_halve_the_limit_once_a_round_trip_and_answers_grow_it_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])  # the clock the limiter reads
    limiter = AdaptiveLimiter(16)
    for _ in range(10):  # calls sent at the same time, refused together: one signal
        limiter.rate_limited(sent_at=99.0)
    assert limiter.limit == 8
    now[0] = 101.0
    limiter.rate_limited(sent_at=99.5)  # sent before that cut, at the old limit
    assert limiter.limit == 8
    limiter.rate_limited(sent_at=100.5)  # sent since, at the new limit: cut again
    assert limiter.limit == 4
    for _ in range(3):
        limiter.answered()
    assert limiter.limit == 4
    limiter.answered()  # as many answers as the limit allows: one more in flight
    assert limiter.limit == 5
    for _ in range(200):
        limiter.answered()
    assert limiter.limit == 16  # never above the endpoint's max_connections


async def test_waiters_are_let_in_first_come_first_served_and_a_cancelled_one_leaves() -> None:
    limiter = AdaptiveLimiter(1)
    order: list[str] = []
    await limiter.acquire()

    async def wait(name: str) -> None:
        async with limiter:
            order.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait, "a")
        await anyio.wait_all_tasks_blocked()
        with anyio.CancelScope() as gone:
            gone.cancel()
            await wait("cancelled")  # never gets in, and takes no place with it
        tg.start_soon(wait, "b")
        await anyio.wait_all_tasks_blocked()
        assert order == [] and limiter.held == 1
        limiter.release()
    assert order == ["a", "b"] and limiter.held == 0


async def test_a_run_against_a_rate_limit_converges_instead_of_failing_calls(
    tmp_path: Path,
) -> None:
    problems = beta_problems(64)
    behaviour = FakeBehaviour(reply="Beta. Answer: B", delay_s=0.02, max_in_flight=4)
    async with FakeServer(behaviour, retry_after_s=0.01) as server:
        endpoint = EndpointConfig(
            name="api",
            base_url=server.base_url,
            continuation="chat",
            max_connections=32,
            # the default: from 8 times the limit, each halving costs the unluckiest call
            # one refusal (32, 16, 8), and on a loaded machine a late refusal can put off a
            # cut by a round; 4 attempts then failed about one run in forty
            max_attempts=5,
        )
        settings = RunSettings(
            modes=ModeSettings(mode="budget", budget=32), concurrency=32, out=tmp_path / "run"
        )
        result = await execute(problems, endpoint, settings)
    assert result.failed_calls() == [] and result.metrics.answered == len(problems)
    assert server.peak_in_flight <= 4
    # 32 in flight at first meet a limit of 4: refused at first, far fewer once backed off
    assert 0 < server.rate_limited < len(problems)


async def test_a_place_freed_as_its_waiter_is_cancelled_goes_to_the_next_one() -> None:
    limiter = AdaptiveLimiter(1)
    await limiter.acquire()
    got: list[str] = []

    async def wait(name: str) -> None:
        async with limiter:
            got.append(name)

    async with anyio.create_task_group() as tg:
        scope = anyio.CancelScope()

        async def first() -> None:
            with scope:
                await wait("first")

        tg.start_soon(first)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(wait, "second")
        await anyio.wait_all_tasks_blocked()
        scope.cancel()
        limiter.release()  # in the same instant: the place passes the cancelled waiter by
    assert got == ["second"] and limiter.held == 0

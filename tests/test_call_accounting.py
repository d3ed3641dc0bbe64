"""Each call counted as the server answered it: its latency.

A call's latency is the server's time for the attempt that answered, not time
spent queued in the client.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from choice_set import beta_problems
from thinktree.agents.endpoint import (
    EndpointClient,
    EndpointConfig,
    PoolMember,
)
from thinktree.agents.pool import EndpointPool
from thinktree.testing.fake_server import FakeBehaviour, FakeServer

pytestmark = pytest.mark.anyio

MSGS = [{"role": "user", "content": "hi"}]
REPLY = "one two three four five six seven eight. Answer: B"
PROBLEMS = beta_problems(3)


def config(server: FakeServer, **kw: Any) -> EndpointConfig:
    return EndpointConfig(
        name="fake", base_url=server.base_url, model="fake-model", max_backoff_s=0.01, **kw
    )


# -- latency ---------------------------------------------------------------------------


async def test_latency_is_the_servers_time_not_the_wait_for_a_connection() -> None:
    async with FakeServer(FakeBehaviour(reply=REPLY, delay_s=0.2)) as server:
        client = EndpointClient(config(server, max_connections=1))
        latencies: list[float] = []

        async def one() -> None:
            latencies.append((await client.chat(MSGS, max_tokens=16)).latency_s)

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(one)  # one at a time on the wire: three of them queue
        finally:
            await client.aclose()
    assert len(latencies) == 4
    assert all(0.2 <= s < 0.35 for s in latencies), latencies


async def test_a_pools_latency_is_the_answering_members_too() -> None:
    async with FakeServer(FakeBehaviour(reply=REPLY, delay_s=0.2)) as server:
        member = PoolMember(server.base_url, max_connections=1)
        pool = EndpointPool(
            EndpointConfig(name="pool", base_url=server.base_url, members=(member,))
        )
        await pool.resolve_model()
        latencies: list[float] = []

        async def one() -> None:
            latencies.append((await pool.chat(MSGS, max_tokens=16)).latency_s)

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(one)
        finally:
            await pool.aclose()
    assert len(latencies) == 3
    assert all(0.2 <= s < 0.35 for s in latencies), latencies

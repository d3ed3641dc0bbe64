"""The event bus: a bounded anyio stream fanned out to subscribers in order."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Protocol, runtime_checkable

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from thinktree.orchestrator.events import Event


@runtime_checkable
class Subscriber(Protocol):
    """Receives every event of a run, in order. ``handle`` must not block for long."""

    wants_deltas: bool

    def handle(self, event: Event) -> None: ...

    async def aclose(self) -> None: ...


class EventBus:
    """Producers ``await bus.emit(event)``; one dispatcher task feeds the subscribers.

    The buffer is bounded, so a slow subscriber slows the producers instead of letting
    memory grow without limit.
    """

    def __init__(
        self,
        send: MemoryObjectSendStream[Event],
        subscribers: Sequence[Subscriber],
        started: float,
    ) -> None:
        self._send = send
        self._subscribers = list(subscribers)
        self._started = started
        self.wants_deltas = any(s.wants_deltas for s in self._subscribers)

    def clock(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self._started

    async def emit(self, event: Event) -> None:
        object.__setattr__(event, "at", round(self.clock(), 4))
        await self._send.send(event)


async def _dispatch(
    receive: MemoryObjectReceiveStream[Event], subscribers: Sequence[Subscriber]
) -> None:
    async with receive:
        async for event in receive:
            for subscriber in subscribers:
                subscriber.handle(event)


@asynccontextmanager
async def event_bus(
    subscribers: Sequence[Subscriber], *, buffer: int = 1024
) -> AsyncIterator[EventBus]:
    """Run a bus for the duration of the block; on exit every event has been delivered."""
    if buffer <= 0 or buffer == math.inf:
        raise ValueError("the event buffer must be a positive, finite size")
    send, receive = anyio.create_memory_object_stream[Event](buffer)
    bus = EventBus(send, subscribers, time.monotonic())
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_dispatch, receive, subscribers)
            try:
                yield bus
            finally:
                await send.aclose()
    finally:
        with anyio.CancelScope(shield=True):
            for subscriber in subscribers:
                await subscriber.aclose()

"""The event bus: a bounded queue fanned out to subscribers in order, in batches."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Protocol, runtime_checkable

import anyio
import anyio.lowlevel

from thinktree.orchestrator.events import Event


@runtime_checkable
class Subscriber(Protocol):
    """Receives every event of a run, in order. ``handle`` must not block for long."""

    wants_deltas: bool

    def handle(self, event: Event) -> None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class BatchSubscriber(Subscriber, Protocol):
    """A subscriber that also takes a batch of events at once, in order.

    The bus hands such a subscriber each batch in one call instead of one call per
    event: for a busy run, the per-event cost of the call is most of a cheap handler's.
    """

    def handle_batch(self, events: Sequence[Event]) -> None: ...


def _deliverer(subscriber: Subscriber) -> Callable[[Sequence[Event]], None]:
    """How the bus hands ``subscriber`` a batch."""
    if isinstance(subscriber, BatchSubscriber):
        return subscriber.handle_batch
    handle = subscriber.handle

    def deliver(events: Sequence[Event]) -> None:
        for event in events:
            handle(event)

    return deliver


_TICK_NS = 100_000  # an event's time stamp is in steps of 0.1 ms
_TICKS_PER_S = 10_000
_monotonic_ns = time.monotonic_ns
# Sets a (frozen) event's ``at`` through its slot, without object.__setattr__'s lookup.
_set_at: Callable[[Event, float], None] = vars(Event)["at"].__set__


class EventBus:
    """Producers ``await bus.emit(event)``; one dispatcher task feeds the subscribers.

    The queue is bounded: a producer that finds it full waits until the dispatcher has
    taken it, so a slow subscriber slows the producers instead of letting memory grow
    without limit. The dispatcher takes everything queued at once and hands it to the
    subscribers in order, so a busy run pays one wake-up per batch, not per event.
    """

    def __init__(self, subscribers: Sequence[Subscriber], started: float, buffer: int) -> None:
        self._subscribers = list(subscribers)
        self._deliver = [_deliverer(s) for s in self._subscribers]
        self._started = started
        # the same instant, for emit's integer clock, half a tick early: a stamp rounds
        self._rounded_from_ns = round(started * 1e9) - _TICK_NS // 2
        self._buffer = buffer
        self._queue: deque[Event] = deque()
        self._ready = anyio.Event()  # set when the queue has something (or closed)
        self._room = anyio.Event()  # set when the dispatcher has taken the queue
        self._closed = False
        self._broken = False  # a subscriber raised: the dispatcher stopped with its error
        # the dispatcher has ended (cancelled with the run, or broken): nobody makes room
        # any more, so producers queue without waiting (the bus's exit delivers the rest)
        self._stopped = False
        self.wants_deltas = any(s.wants_deltas for s in self._subscribers)

    def clock(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self._started

    async def emit(self, event: Event) -> None:
        # Seconds since the start to 4 places, worked out in whole nanoseconds: rounding a
        # float to places costs more than the rest of an emit.
        ticks = (_monotonic_ns() - self._rounded_from_ns) // _TICK_NS
        _set_at(event, ticks / _TICKS_PER_S)
        queue = self._queue
        if len(queue) >= self._buffer or self._closed:
            queue = await self._room_in_queue()
        queue.append(event)
        # The dispatcher waits on a fresh ``_ready`` only while the queue is empty, so
        # only the event that ends that wait needs to set it (the others find it set).
        if len(queue) == 1:
            self._ready.set()

    async def emit_all(self, events: Sequence[Event]) -> None:
        """Emit ``events`` in order, as one: one time stamp, one look for room.

        They go into the queue together or not at all (the bus closed, the wait for room
        cancelled), so the nodes of one request are announced, or ended, together, never
        some of them. A batch may take the queue past its bound by its own length.
        """
        if not events:
            return
        at = ((_monotonic_ns() - self._rounded_from_ns) // _TICK_NS) / _TICKS_PER_S
        for event in events:
            _set_at(event, at)
        queue = self._queue
        if len(queue) >= self._buffer or self._closed:
            queue = await self._room_in_queue()
        ready = not queue
        queue.extend(events)
        if ready:
            self._ready.set()

    async def _room_in_queue(self) -> deque[Event]:
        """Wait until the queue has room (or nobody takes it any more); the queue then.
        Raises ``ClosedResourceError`` once the bus is closed."""
        while len(self._queue) >= self._buffer and not self._stopped:
            if self._closed:
                raise anyio.ClosedResourceError
            await self._room.wait()  # the dispatcher takes the queue that was full
        if self._closed:
            raise anyio.ClosedResourceError
        return self._queue

    def _close(self) -> None:
        self._closed = True
        self._ready.set()

    async def _dispatch(self) -> None:
        try:
            await self._dispatch_until_closed()
        finally:
            # a producer waiting for room (one ending its node in a shielded scope as
            # the run is cancelled) would otherwise wait forever
            self._stopped = True
            self._room.set()

    async def _dispatch_until_closed(self) -> None:
        deliver = self._deliver
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._ready = anyio.Event()
                await self._ready.wait()
                continue
            batch, self._queue = self._queue, deque()
            room, self._room = self._room, anyio.Event()
            room.set()
            try:
                for handle_batch in deliver:
                    handle_batch(batch)
            except BaseException:
                self._broken = True
                raise
            await anyio.lowlevel.checkpoint()

    def _drain(self) -> None:
        """Deliver what is still queued, at once: the last events of a run that was
        cancelled (Ctrl-C, SIGTERM), whose dispatcher was cancelled with it."""
        if self._broken or not self._queue:
            return
        batch, self._queue = self._queue, deque()
        for handle_batch in self._deliver:
            handle_batch(batch)


@asynccontextmanager
async def event_bus(
    subscribers: Sequence[Subscriber], *, buffer: int = 1024
) -> AsyncIterator[EventBus]:
    """Run a bus for the duration of the block; on exit every event has been delivered."""
    if buffer <= 0 or buffer == math.inf:
        raise ValueError("the event buffer must be a positive, finite size")
    bus = EventBus(subscribers, time.monotonic(), buffer)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(bus._dispatch)
            try:
                yield bus
            finally:
                bus._close()
    finally:
        with anyio.CancelScope(shield=True):
            failed: BaseException | None = None
            try:
                bus._drain()
            except Exception as exc:
                failed = exc
            for subscriber in subscribers:  # each one, even after one fails to close
                try:
                    await subscriber.aclose()
                except Exception as exc:
                    failed = failed or exc
            if failed is not None:
                raise failed

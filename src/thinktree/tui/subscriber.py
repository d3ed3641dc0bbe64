"""Feeding a run in this process to the view: a bus subscriber and ``watch_run``."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from thinktree.orchestrator.events import Event, NodeDelta

if TYPE_CHECKING:
    from textual.pilot import Pilot

T = TypeVar("T")


class WatchQuit(Exception):
    """The viewer was closed before the run finished; the run was cancelled."""


class _Deltas:
    """Streamed text of one node held back while the view catches up."""

    __slots__ = ("at", "node_id", "parts", "restart")

    def __init__(self, event: NodeDelta) -> None:
        self.node_id = event.node_id
        self.parts = [event.text]
        self.at = event.at
        self.restart = event.restart  # the held text replaces what the view has

    def event(self) -> NodeDelta:
        text = "".join(self.parts)
        return NodeDelta(node_id=self.node_id, text=text, at=self.at, restart=self.restart)


class TuiSubscriber:
    """Forwards every event to the view's bounded stream without ever blocking the run.

    When the view falls behind, events wait in a backlog in order; streamed deltas of a
    node are merged there into one, and beyond ``max_held_chars`` of held text new deltas
    are dropped (the node's final text arrives with NodeFinished anyway). No other event
    is ever dropped: :meth:`aclose` delivers the backlog before closing the stream.
    """

    wants_deltas = True

    def __init__(self, send: MemoryObjectSendStream[Event], *, max_held_chars: int = 4_000_000):
        self._send = send
        self._backlog: deque[Event | _Deltas] = deque()
        self._held: dict[str, _Deltas] = {}
        self._held_chars = 0
        self._max_held_chars = max_held_chars
        self._closed = False
        self.merged = 0
        self.dropped = 0

    @classmethod
    def open(cls, buffer: int = 4096) -> tuple[TuiSubscriber, MemoryObjectReceiveStream[Event]]:
        """A subscriber and the receiving end the app drains."""
        send, receive = anyio.create_memory_object_stream[Event](buffer)
        return cls(send), receive

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    def detach(self) -> None:
        """The view is gone: from now on drop every event, and let go of what is held."""
        self._closed = True
        self._backlog.clear()
        self._held.clear()
        self._held_chars = 0

    def handle(self, event: Event) -> None:
        if self._closed:
            return
        if self._backlog:
            self._flush()
        if not self._backlog and self._offer(event):
            return
        self._hold(event)

    async def aclose(self) -> None:
        """Deliver what is held (waiting for the view), then end the stream."""
        try:
            while self._backlog and not self._closed:
                await self._send.send(self._pop())
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the view was closed: nobody left to tell
        finally:
            self._closed = True
            self._backlog.clear()
            self._held.clear()
            await self._send.aclose()

    def _offer(self, event: Event) -> bool:
        """Send without waiting; False when the stream is full."""
        try:
            self._send.send_nowait(event)
        except anyio.WouldBlock:
            return False
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._closed = True  # the view is gone; the run goes on without it
        return True

    def _hold(self, event: Event) -> None:
        if not isinstance(event, NodeDelta):
            self._backlog.append(event)
            return
        held = self._held.get(event.node_id)
        if held is not None and event.restart:  # what is held was streamed in vain
            self._held_chars -= sum(map(len, held.parts))
            held.parts = [event.text]
            held.at = event.at
            held.restart = True
            self.merged += 1
        elif held is not None:
            held.parts.append(event.text)
            held.at = event.at
            self.merged += 1
        elif self._held_chars + len(event.text) > self._max_held_chars:
            self.dropped += 1
            return
        else:
            held = self._held[event.node_id] = _Deltas(event)
            self._backlog.append(held)
        self._held_chars += len(event.text)

    def _pop(self) -> Event:
        item = self._backlog.popleft()
        if isinstance(item, _Deltas):
            del self._held[item.node_id]
            event = item.event()
            self._held_chars -= len(event.text)
            return event
        return item

    def _flush(self) -> None:
        while self._backlog and not self._closed:
            head = self._backlog[0]
            if not self._offer(head.event() if isinstance(head, _Deltas) else head):
                return
            self._pop()


async def watch_run(
    run: Callable[[TuiSubscriber], Awaitable[T]],
    *,
    buffer: int = 4096,
    headless: bool = False,
    auto_pilot: Callable[[Pilot[object]], Coroutine[Any, Any, None]] | None = None,
    folder: Callable[[], Path | None] | None = None,
    config: Path | None = None,
    on_keep: Callable[[], None] | None = None,
) -> T:
    """Run ``run(subscriber)`` beside the live view and return its result.

    The view stays open after the run ends until the user quits. Quitting while the run
    is still going asks first: keep the run going without the view (it finishes in this
    process; its result is returned then), or stop it (it is cancelled and, once wound
    down, :class:`WatchQuit` is raised). The run's own error is raised once the view has
    closed (and the terminal is restored). ``folder`` gives the run's folder once known,
    for the hint on how to resume a stopped run (else ``runs/RUN_ID`` is shown), and
    ``config`` the config file the run's endpoint was named in (the hint names it too);
    ``on_keep`` is called when the view closes and the run goes on without it.
    ``headless`` and ``auto_pilot`` are Textual's, for tests.
    """
    from thinktree.tui.app import ThinktreeApp
    from thinktree.tui.sources import LiveSource

    subscriber, receive = TuiSubscriber.open(buffer)
    engine = _Engine(run, subscriber)
    async with anyio.create_task_group() as tg:

        def spawn(task: Callable[[], Coroutine[Any, Any, Any]]) -> None:
            tg.start_soon(task)

        app = ThinktreeApp(
            LiveSource(receive, engine=engine, spawn=spawn, folder=folder, config=config)
        )
        try:
            await app.run_async(headless=headless, auto_pilot=auto_pilot)
        finally:
            # From here on the run never waits for the view, nor tells it anything.
            app.detached = True
            subscriber.detach()
            receive.close()
        if app.quit_choice != "keep":
            tg.cancel_scope.cancel()  # stopped, or the run already ended: nothing to wait for
        elif on_keep is not None and not engine.done:
            on_keep()
    if app.engine_error is not None:
        raise app.engine_error
    if not engine.done:
        raise WatchQuit("the view was closed before the run finished; the run was cancelled")
    return engine.result


class _Engine(Generic[T]):
    """The run as a zero-argument coroutine factory that keeps its result."""

    result: T

    def __init__(self, run: Callable[[TuiSubscriber], Awaitable[T]], sub: TuiSubscriber) -> None:
        self._run = run
        self._subscriber = sub
        self.done = False

    async def __call__(self) -> None:
        self.result = await self._run(self._subscriber)
        self.done = True

"""How many calls an endpoint has in flight: a limit that backs off when it is rate limited.

An API answers 429 when a run sends more than its rate limit allows. Waiting and retrying
each refused call alone keeps just as many calls in flight, so the refusals go on, and a
call refused on every attempt fails. The limit here works like TCP's congestion window:
a 429 halves it, once per round trip (refusals of calls sent before the last cut were
sent at the old limit: they are the same signal), and it grows back by one call after as
many answered calls as it allows, up to the endpoint's ``max_connections``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from types import TracebackType

import structlog

__all__ = ["AdaptiveLimiter"]

log = structlog.get_logger(__name__)


class AdaptiveLimiter:
    """At most :attr:`limit` holders at once, in arrival order; see the module docstring."""

    def __init__(self, ceiling: int, *, name: str = "") -> None:
        if ceiling < 1:
            raise ValueError("an endpoint needs room for at least one call in flight")
        self.ceiling = ceiling
        self.limit = ceiling
        self.held = 0
        self.name = name
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._answered = 0  # calls answered since the limit last changed
        self._cut_at = -1.0  # when the limit was last cut (time.monotonic())

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def try_acquire(self) -> bool:
        """Take a place if one is free and nobody waits for one (no trip through the loop)."""
        if self.held < self.limit and not self._waiting:
            self.held += 1
            return True
        return False

    async def acquire(self) -> None:
        """Take a place; waits (first come, first served) while the limit is reached."""
        if self.try_acquire():
            return
        # a bare future: a run's loop is always asyncio's (or uvloop), and this is the
        # path every call takes while the limit is reached
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled():
                self.release()  # handed a place just as it was cancelled: give it back
            elif turn in self._waiting:  # (a hand-on may have passed it over already)
                self._waiting.remove(turn)
            raise

    def release(self) -> None:
        self.held -= 1
        self._hand_on()

    def answered(self) -> None:
        """A call was answered: after :attr:`limit` of them, one more may be in flight."""
        if self.limit >= self.ceiling:
            return
        self._answered += 1
        if self._answered >= self.limit:
            self.limit += 1
            self._answered = 0
            self._hand_on()

    def rate_limited(self, sent_at: float) -> None:
        """The endpoint refused a call sent at ``sent_at`` (``time.monotonic()``) for its
        rate: halve the limit, unless the call was sent before the last cut."""
        if sent_at < self._cut_at:
            return
        self._cut_at = time.monotonic()
        self._answered = 0
        if self.limit > 1:
            self.limit = max(1, self.limit // 2)
            log.info("rate limited: fewer calls in flight", endpoint=self.name, limit=self.limit)

    def _hand_on(self) -> None:
        while self._waiting and self.held < self.limit:
            turn = self._waiting.popleft()
            if not turn.done():  # (a cancelled waiter leaves the queue itself)
                self.held += 1
                turn.set_result(None)

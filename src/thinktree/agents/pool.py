"""Endpoint pools: several servers of one model behind one name.

Each call goes to the healthy member with the fewest calls outstanding relative to its
limit (least outstanding requests), within that member's own ``max_connections``. A member
that refuses connections or times out is marked down and the call is sent again to another
member at once; a down member is checked again (``GET /v1/models``) before it gets more
calls. Retries live here, in one layer: the members make one attempt each. The pool keeps
the run's call cache itself, under the pool's name, so a call is recorded once, whichever
member answered it, and a resumed run finds it again on any member.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import openai
import structlog

from thinktree.agents.endpoint import (
    OUTAGE,
    Completion,
    DeltaHandler,
    EndpointClient,
    EndpointConfig,
    Message,
    MissingUsage,
    RetryHandler,
    RetryKind,
    before_resend,
    call_tally,
    classify,
    fingerprint,
    request_json,
    server_name,
    warn_past_cap,
)
from thinktree.agents.limiter import AdaptiveLimiter
from thinktree.errors import EndpointDown, EndpointError

log = structlog.get_logger(__name__)

_RECHECK_S = 2.0
_HEALTH_TIMEOUT_S = 5.0
_FAILOVER = {RetryKind.CONNECTION, RetryKind.TIMEOUT}


@dataclass(slots=True)
class MemberFigures:
    """What one member did during a run."""

    base_url: str
    max_connections: int
    calls: int = 0
    """Calls it answered."""
    failed_attempts: int = 0
    """Attempts that failed on it (and went elsewhere or were retried)."""
    failovers: int = 0
    """Calls in flight on it, or sent to it, when it went down, sent again elsewhere."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    busy_s: float = 0.0
    """Sum of its answered calls' latencies."""
    peak_outstanding: int = 0
    healthy: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Member:
    def __init__(self, index: int, client: EndpointClient, limit: int) -> None:
        self.index = index
        self.client = client
        self.limit = limit
        self.outstanding = 0
        self.down_since: float | None = None
        self.figures = MemberFigures(base_url=client.config.base_url, max_connections=limit)

    @property
    def load(self) -> float:
        return self.outstanding / self.limit


class EndpointPool(EndpointClient):
    """An :class:`EndpointClient` whose calls are spread over ``config.members``."""

    def __init__(
        self,
        config: EndpointConfig,
        *,
        on_retry: RetryHandler | None = None,
    ) -> None:
        if not config.members:
            raise EndpointError(f"endpoint {config.describe()} is not a pool (no members)")
        self.config = config
        self.members = [
            _Member(
                index,
                EndpointClient(
                    dataclasses.replace(
                        config,
                        name=f"{config.name}@{member.base_url}",
                        base_url=member.base_url,
                        max_connections=member.max_connections,
                        max_attempts=1,
                        members=(),
                    ),
                ),
                member.max_connections,
            )
            for index, member in enumerate(config.members)
        ]
        self.limiter = AdaptiveLimiter(sum(m.limit for m in self.members), name=config.name)
        self.on_retry = on_retry
        self.model = config.model or ""
        self.context_length: int | None = None
        self.cache = None
        # the first member's: the probe sends a few requests through it
        self.transport = self.members[0].client.transport
        self._freed = anyio.Event()
        self._turn = 0
        self._all_down_since: float | None = None  # when calls began to wait for any member
        self._pool_gave_up: EndpointDown | None = None  # the wait ran out: the run stops
        self.sent_usage = False
        self.past_cap = False  # whether a reply counted more than its max_tokens allowed

    async def aclose(self) -> None:
        for member in self.members:
            await member.client.aclose()

    # The probe's own requests go through the first member (its transport, above); each
    # member learns for itself which field takes the token cap.
    def cap_field(self) -> str:
        return self.members[0].client.cap_field()

    def chat_body(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return self.members[0].client.chat_body(kwargs)

    def _learned_max_tokens_field(self, exc: BaseException) -> bool:
        return self.members[0].client._learned_max_tokens_field(exc)

    def figures(self) -> list[dict[str, Any]]:
        """Per-member figures for the results."""
        for member in self.members:
            member.figures.healthy = member.down_since is None
        return [m.figures.to_dict() for m in self.members]

    async def count_tokens(self, text: str) -> int | None:
        for member in self.members:
            if member.down_since is None:
                return await member.client.count_tokens(text)
        return None

    async def resolve_model(self) -> str:
        """Every member must answer and serve the same model; else one line names the culprit."""
        names: set[str] = set()
        for member in self.members:
            try:
                names.add(await member.client.resolve_model())
            except EndpointError as exc:
                raise EndpointError(
                    f"pool '{self.config.name}': member {member.client.config.base_url} "
                    f"is not usable ({exc}); start it or remove it from the pool"
                ) from None
        if len(names) != 1:
            raise EndpointError(
                f"pool '{self.config.name}': members serve different models "
                f"({', '.join(sorted(names))}); a pool serves one model"
            )
        self.model = names.pop()
        for member in self.members:
            member.client.model = self.model
        lengths = [m.client.context_length for m in self.members if m.client.context_length]
        self.context_length = min(lengths) if lengths else None  # a call may go to any
        return self.model

    async def chat(
        self,
        messages: list[Message],
        *,
        max_tokens: int,
        n: int = 1,
        temperature: float = 0.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        continue_final: bool = False,
        extra: dict[str, Any] | None = None,
        on_delta: DeltaHandler | None = None,
        key: str | None = None,
        top_logprobs: int | None = None,
        token_ids: bool = False,
    ) -> Completion:
        request = {
            "messages": messages,
            "max_tokens": max_tokens,
            "n": n,
            "temperature": self.sent_temperature(temperature),
            "seed": seed,
            "stop": stop,
            "continue_final": continue_final,
            "extra": extra,
            "top_logprobs": top_logprobs,
            "token_ids": token_ids,
        }

        def call(member: EndpointClient) -> Awaitable[Completion]:
            return member.chat(
                messages,
                max_tokens=max_tokens,
                n=n,
                temperature=temperature,
                seed=seed,
                stop=stop,
                continue_final=continue_final,
                extra=extra,
                on_delta=on_delta,
                top_logprobs=top_logprobs,
                token_ids=token_ids,
            )

        return await self._pooled(call, "chat", request, key)

    async def complete(
        self,
        prompt: str,
        *,
        max_tokens: int,
        n: int = 1,
        temperature: float = 0.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        extra: dict[str, Any] | None = None,
        on_delta: DeltaHandler | None = None,
        key: str | None = None,
        token_ids: bool = False,
    ) -> Completion:
        request = {
            "prompt": prompt,
            "max_tokens": max_tokens,
            "n": n,
            "temperature": self.sent_temperature(temperature),
            "seed": seed,
            "stop": stop,
            "extra": extra,
            "token_ids": token_ids,
        }

        def call(member: EndpointClient) -> Awaitable[Completion]:
            return member.complete(
                prompt,
                max_tokens=max_tokens,
                n=n,
                temperature=temperature,
                seed=seed,
                stop=stop,
                extra=extra,
                on_delta=on_delta,
                token_ids=token_ids,
            )

        return await self._pooled(call, "completions", request, key)

    async def _pooled(
        self,
        call: Callable[[EndpointClient], Awaitable[Completion]],
        route: str,
        request: dict[str, Any],
        key: str | None,
    ) -> Completion:
        cache = self.cache if key is not None else None
        fp = text = ""
        if cache is not None and key is not None:
            text = request_json({**request, "model": self.model})
            fp = fingerprint(server_name(self.config), self.model, route, text, key)
            hit = await cache.lookup(fp)
            if hit is not None:
                return hit
        with call_tally() as tally:
            result = await self._route(call)
            if tally is not None:
                tally.add_to(result)
                if not self.past_cap:  # once: it is the servers' way, not one call's
                    self.past_cap = warn_past_cap(result, request, self.config.name)
        if cache is not None:
            await cache.record(fp, route, text, result, key)
        return result

    async def _route(self, call: Callable[[EndpointClient], Awaitable[Completion]]) -> Completion:
        """The call on the members, sent again (elsewhere, or after a wait) as it fails; its
        latency is the answering member's for its one attempt."""
        attempts = 0
        failovers = 0
        sent = 0  # requests sent for the call, over the wait too
        waited = False  # for the pool to come back, once, after every attempt failed
        limit = self.config.max_attempts + len(self.members)
        while True:
            member = await self._pick()
            if sent:  # a cut-off attempt counts before the call is sent again (see CutOffs)
                await before_resend()
            if waited and attempts == 0 and sent:  # the pool is back: sent again after it
                await self._retried(sent, 0.0, "sent again after the pool came back")
            attempts += 1
            sent += 1
            member.outstanding += 1
            figures = member.figures
            figures.peak_outstanding = max(figures.peak_outstanding, member.outstanding)
            try:
                result = await call(member.client)
            except EndpointError as exc:
                cause = exc.__cause__ or exc
                kind = classify(cause)
                figures.failed_attempts += 1
                if kind is None or (isinstance(cause, MissingUsage) and not self.sent_usage):
                    raise  # not worth sending again (see EndpointClient._worth_retrying)
                if kind in _FAILOVER:
                    self._mark_down(member, kind)
                    figures.failovers += 1
                    failovers += 1
                if attempts >= limit or (attempts - failovers) >= self.config.max_attempts:
                    if not waited and kind in OUTAGE and not await self._any_healthy():
                        # nothing answers a check: an outage, not this request's fault;
                        # the next pick waits for a member to come back, then sends again
                        waited, attempts, failovers = True, 0, 0
                        continue
                    raise EndpointError(
                        f"pool '{self.config.name}' kept failing ({kind}) after {attempts} "
                        f"attempts on its members"
                    ) from cause
                wait = 0.0 if kind in _FAILOVER else _backoff(cause, attempts - failovers)
                await before_resend()  # where a limit refuses it, no retry is reported
                await self._retried(attempts, wait, f"{kind} on {member.client.config.base_url}")
                if wait:
                    await anyio.sleep(wait)
                continue
            finally:
                member.outstanding -= 1
                self._freed.set()
                self._freed = anyio.Event()
            figures.calls += 1
            figures.prompt_tokens += result.prompt_tokens
            figures.completion_tokens += result.completion_tokens
            figures.busy_s += result.latency_s
            result.attempts = sent
            self.sent_usage = True
            return result

    async def _retried(self, attempt: int, wait: float, reason: str) -> None:
        log.warning("pool retry", pool=self.config.name, attempt=attempt, reason=reason)
        if self.on_retry is not None:
            await self.on_retry(attempt, wait, reason)

    def _mark_down(self, member: _Member, kind: RetryKind) -> None:
        if member.down_since is None:
            log.warning(
                "pool member down",
                pool=self.config.name,
                member=member.client.config.base_url,
                reason=str(kind),
            )
            member.down_since = time.monotonic()

    async def _pick(self) -> _Member:
        """The least loaded healthy member with a free slot; waits while all are busy, and
        while all are down, up to ``outage_wait_s`` (then :class:`EndpointDown`).

        A down member is checked again (by one caller) once its re-check interval is over.
        """
        while True:
            now = time.monotonic()
            for member in self.members:
                if member.down_since is not None and now - member.down_since >= _RECHECK_S:
                    member.down_since = now  # this caller checks; the others wait for it
                    if await self._healthy(member):
                        log.info(
                            "pool member back",
                            pool=self.config.name,
                            member=member.client.config.base_url,
                        )
                        member.down_since = None
                    else:
                        member.down_since = time.monotonic()
            healthy = [m for m in self.members if m.down_since is None]
            if healthy:
                self._all_down_since = None
            free = [m for m in healthy if m.outstanding < m.limit]
            if free:  # ties go round the members in turn
                self._turn += 1
                size = len(self.members)
                return min(free, key=lambda m: (m.load, (m.index - self._turn) % size))
            if healthy:  # all busy: wait for a slot to free anywhere
                with anyio.move_on_after(_RECHECK_S):
                    await self._freed.wait()
                continue
            await self._wait_for_any()

    async def _wait_for_any(self) -> None:
        """A short wait while every member is down; the first caller announces the outage,
        and a caller past ``outage_wait_s`` since it began stops the run."""
        if self._pool_gave_up is not None:
            raise self._pool_gave_up
        now = time.monotonic()
        patience = self.config.outage_wait_s
        if self._all_down_since is None:
            self._all_down_since = now
            reason = f"every member of pool '{self.config.name}' is down"
            log.warning("pool down", pool=self.config.name, wait_s=patience)
            if self.on_retry is not None:  # attempt 0: a wait, no request sent
                await self.on_retry(0, patience, reason)
        elif now - self._all_down_since > patience:
            urls = ", ".join(m.client.config.base_url for m in self.members)
            self._pool_gave_up = EndpointDown(
                f"pool '{self.config.name}': every member stopped answering ({urls}) and "
                f"none came back within {patience:.0f} s (outage_wait_s)"
            )
            raise self._pool_gave_up
        await anyio.sleep(min(_RECHECK_S / 4, max(patience, 0.01)))

    async def _any_healthy(self) -> bool:
        """Whether some member answers a check now; those that do not are marked down."""
        answering = False
        for member in self.members:
            if await self._healthy(member):
                answering = True
            elif member.down_since is None:
                self._mark_down(member, RetryKind.TRANSIENT)
        return answering

    async def _healthy(self, member: _Member) -> bool:
        url = f"{member.client.config.base_url}/models"
        try:
            async with httpx.AsyncClient(timeout=_HEALTH_TIMEOUT_S) as client:
                return (await client.get(url)).status_code == 200
        except httpx.HTTPError:
            return False


def _backoff(exc: BaseException, attempt: int) -> float:
    """Retry-After where the server sent one, else jittered exponential backoff."""
    if isinstance(exc, openai.APIStatusError):
        after = exc.response.headers.get("retry-after")
        if after:
            try:
                return min(max(float(after), 0.0), 60.0)
            except ValueError:
                pass
    base: float = min(0.5 * 2 ** (attempt - 1), 30.0)
    return base + random.uniform(0, 0.5)


def client_for(config: EndpointConfig) -> EndpointClient:
    """A pool for a config with members, else a plain client."""
    if config.members:
        return EndpointPool(config)
    return EndpointClient(config)

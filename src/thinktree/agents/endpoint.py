"""The endpoint layer: one OpenAI-compatible server, its limits, retries and calls.

One :class:`openai.AsyncOpenAI` per endpoint with the SDK's own retries off: tenacity
owns retries here (429 honours ``Retry-After``; 5xx, timeouts and connection errors
back off with jitter; other 4xx never retry). A :class:`anyio.Semaphore` bounds
calls in flight, and every call has its own timeout.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterator
from contextlib import aclosing, contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Literal, Protocol, TypeGuard, TypeVar
from urllib.parse import urlsplit

import anyio
import httpx
import openai
import structlog
from openai.types import Completion as TextCompletion
from openai.types import CompletionChoice, CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from thinktree._json import dumps_sorted, loads
from thinktree.agents.limiter import AdaptiveLimiter
from thinktree.agents.transport import Transport, parse
from thinktree.errors import ContextExceeded, EndpointDown, EndpointError, ThinktreeError

T = TypeVar("T")
log = structlog.get_logger(__name__)


MOST_USAGE_TOKENS = 10**9
"""The most tokens a reply's usage may count in one field: a hundred times the longest
context window served today, so no true count comes near it, and a run's totals of such
counts stay far inside the 64-bit integers of its JSON and SQLite."""


def is_token_count(value: object) -> TypeGuard[int]:
    """Whether ``value`` is a count of tokens one reply may report: a whole number (not a
    bool) from 0 to :data:`MOST_USAGE_TOKENS`."""
    return type(value) is int and 0 <= value <= MOST_USAGE_TOKENS


class _Usage(CompletionUsage):
    """A reply's usage with its counts as the server wrote them (the SDK's own type reads
    ``true`` as 1 and ``"12"`` as 12): :func:`_assemble` checks them."""

    prompt_tokens: Any = None
    completion_tokens: Any = None


# the SDK's response types, with the usage as the server wrote it
class _ChatCompletion(ChatCompletion):
    usage: _Usage | None = None


class _ChatCompletionChunk(ChatCompletionChunk):
    usage: _Usage | None = None


class _TextCompletion(TextCompletion):
    usage: _Usage | None = None


class _TextChunkChoice(CompletionChoice):
    """A streamed choice of ``/v1/completions``: unfinished until its last chunk."""

    finish_reason: Literal["stop", "length", "content_filter"] | None = None  # type: ignore[assignment]


class _TextCompletionChunk(_TextCompletion):
    """One event of a ``/v1/completions`` stream (the SDK has no type of its own for it:
    its ``Completion`` requires a finish reason that every chunk but the last lacks)."""

    choices: list[_TextChunkChoice]  # type: ignore[assignment]


Message = dict[str, str]


class DeltaHandler(Protocol):
    """Takes each piece of streamed ``text`` of choice ``index`` as it arrives.

    ``first`` marks a choice's first piece in one attempt at the call. A call whose stream
    was cut off and was sent again (a retry, the max_tokens field resent, another server
    of a pool) streams its text again from the start: from a piece marked ``first`` on,
    what an earlier attempt streamed for that choice is void.
    """

    def __call__(self, index: int, text: str, *, first: bool) -> Awaitable[None]: ...


RetryHandler = Callable[[int, float, str], Awaitable[None]]
"""Told ``(attempt, wait_s, reason)`` before a call is sent again after ``wait_s``; an
``attempt`` of 0 is a wait for an endpoint that stopped answering, which sends nothing."""


class RetryKind(StrEnum):
    RATE_LIMIT = "rate limited"
    TRANSIENT = "server error"
    TIMEOUT = "timed out"
    CONNECTION = "connection failed"
    MALFORMED = "malformed response"


_EVERY_KIND = frozenset(RetryKind)
# what a server that is down (restarting, unreachable) answers, unlike one that is up
OUTAGE = frozenset({RetryKind.CONNECTION, RetryKind.TIMEOUT, RetryKind.TRANSIENT})
"""Failures that may mean the server is down (restarting), not that the request is bad."""
_OUTAGE_POLL_S = 5.0
# OpenAI's refusal of any temperature but a reasoning model's own: "Unsupported value:
# 'temperature' does not support 0.7 with this model. Only the default (1) value is supported."
_ONLY_TEMPERATURE = re.compile(r"only the default \(([\d.]+)\)", re.IGNORECASE)
# How servers refuse a prompt longer than the model's context: vLLM and OpenAI ("This
# model's maximum context length is ...", code context_length_exceeded), vLLM's V1 engine
# ("... is longer than the maximum model length of ..."), llama.cpp ("the request exceeds
# the available context size", exceed_context_size_error), TGI ("`inputs` tokens +
# `max_new_tokens` must be <= ...") and others ("prompt is too long", "context window").
_PAST_CONTEXT = re.compile(
    r"maximum context length|context_length_exceeded|longer than the maximum model length"
    r"|exceeds? the available context|exceed_context_size|`inputs` tokens \+ `max_new_tokens`"
    r"|(?:prompt|input) is too long|(?:exceeds?|longer than) the (?:model's )?context window",
    re.IGNORECASE,
)
# the statuses servers refuse such a prompt with (TGI: 422)
_PAST_CONTEXT_STATUS: Final = frozenset({400, 413, 422})


def classify(exc: BaseException) -> RetryKind | None:
    """Which kind of retry an error deserves, or None when retrying cannot help."""
    if isinstance(exc, openai.RateLimitError):
        return RetryKind.RATE_LIMIT
    if isinstance(exc, openai.APIStatusError):  # as the openai SDK retries: 408, 409, 5xx
        code = exc.status_code
        return RetryKind.TRANSIENT if code >= 500 or code in (408, 409) else None
    if isinstance(exc, openai.APITimeoutError | TimeoutError):
        return RetryKind.TIMEOUT
    if isinstance(exc, openai.APIConnectionError):
        return RetryKind.CONNECTION
    if isinstance(
        exc, IncompleteResponse | json.JSONDecodeError | openai.APIResponseValidationError
    ):
        return RetryKind.MALFORMED
    return None


class CallCache(Protocol):
    """Keeps finished calls (the run store) so a resumed run never pays for one twice."""

    async def lookup(self, fingerprint: str) -> Completion | None: ...

    async def record(
        self,
        fingerprint: str,
        route: str,
        request: str,
        completion: Completion,
        key: str | None = None,
    ) -> None: ...


def request_json(request: dict[str, Any]) -> str:
    """The request as canonical JSON, without its streaming options (they change no answer).

    Made once per call: the fingerprint hashes it and the call store keeps it.
    """
    return dumps_sorted({k: v for k, v in request.items() if k not in ("stream", "stream_options")})


def server_name(config: EndpointConfig) -> str:
    """What names the server(s) of ``config`` in call fingerprints: its ``cache_as``, or
    its URL (a pool: its name). A resumed run keeps the name its calls were made under."""
    if config.cache_as:
        return config.cache_as
    return f"pool:{config.name}" if config.members else config.base_url


def fingerprint(where: str, model: str, route: str, request: str, key: str) -> str:
    """A stable hash of everything that decides a call's answer, and the node(s) it is for.

    ``where`` names the server (its URL, or a stable name), ``request`` is
    :func:`request_json` of the request.
    """
    head = dumps_sorted([where, model, route, key])
    return hashlib.blake2b(f"{head}\n{request}".encode(), digest_size=16).hexdigest()


class IncompleteResponse(Exception):
    """The server ended a response without its choices or its usage."""


class ShortReply(IncompleteResponse):
    """A reply that finished fewer choices than asked for: ``tokens``, per choice, what its
    usage says the server generated for it (nothing where it carried no usage)."""

    def __init__(self, message: str, tokens: list[int], prompt_tokens: int = 0) -> None:
        super().__init__(message)
        self.tokens = tokens
        self.prompt_tokens = prompt_tokens
        """The prompt's tokens, as its usage says (0 where it carried none)."""


class MissingUsage(IncompleteResponse):
    """A reply without token usage: its tokens cannot be counted (never taken as 0)."""


class UnusableUsage(MissingUsage):
    """A reply whose usage is no count of tokens: a count that is not a whole number, is
    below 0 or is past :data:`MOST_USAGE_TOKENS` (never taken as it comes, nor as 0)."""


@dataclass(frozen=True, slots=True)
class PoolMember:
    """One server of an endpoint pool and its own limit on calls in flight."""

    base_url: str
    max_connections: int = 32


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """Where and how to reach one OpenAI-compatible server."""

    name: str
    base_url: str
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    max_connections: int = 32
    timeout_s: float = 600.0
    max_attempts: int = 5
    max_backoff_s: float = 60.0
    continuation: Literal["auto", "chat", "completions", "revision"] = "auto"
    native_n: Literal["auto", "yes", "no"] = "auto"
    chat_template: str | None = None
    think_end: str = "</think>"
    """A reasoning model's end-of-thinking marker."""
    thinking: Literal["auto", "server", "marker", "cue"] = "auto"
    """How budget mode ends the thinking (see :mod:`.capabilities`); "auto" probes."""
    members: tuple[PoolMember, ...] = ()
    """Several servers of the same model behind this one name (see :mod:`.pool`)."""
    cache_as: str | None = None
    """What names this server in call fingerprints instead of its URL: the embedded
    server gets a new port on every start, and a resumed run must still find its calls."""
    http_client: Literal["auto", "aiohttp"] = "auto"
    """"auto": a plain ``http://`` server gets the lean HTTP/1.1 client
    (:mod:`.http1`), any other aiohttp; "aiohttp": aiohttp for every server."""
    max_tokens_field: Literal["auto", "max_tokens", "max_completion_tokens"] = "auto"
    """The field a chat request's token cap goes in. "auto": ``max_tokens`` (what vLLM,
    llama.cpp and most servers read) until the server rejects it and names
    ``max_completion_tokens`` (OpenAI's reasoning models), then that one."""
    check_timeout_s: float = 30.0
    """How long the ``/models`` listing before a run waits for an answer, at most
    ``timeout_s``: a server that takes the connection and never answers (not an
    OpenAI-compatible server) fails in one line in seconds, not after a call's timeout.
    The probe's own requests wait as calls do: on a busy server they queue behind its
    generations."""
    outage_wait_s: float = 600.0
    """How long a call whose retries all failed because the endpoint did not answer
    (refused connections, timeouts, 5xx) waits for it to answer again (a restarting
    server), asking every few seconds, before the run stops (resumable)."""
    temperature: float | None = None
    """The temperature every call to this endpoint is sent with, whatever the run or a
    verifier asks: for a model that takes only one (OpenAI's reasoning models take only
    1). A run on this endpoint records it as its temperature. None: as asked."""

    def describe(self) -> str:
        """The endpoint in a message: its name, and its URL where the name is another."""
        same = self.name.rstrip("/") == self.base_url.rstrip("/")
        return f"'{self.name}'" if same else f"'{self.name}' ({self.base_url})"


# Choice and Completion keep their fields in a __dict__ (no slots): orjson writes such a
# dataclass from its __dict__, several times faster than one with slots, and every call
# is written to the call store (``call_cache.completion_to_json``), the same bytes either way.
@dataclass
class Choice:
    text: str
    finish_reason: str | None
    completion_tokens: int
    reasoning: str = ""
    top_logprobs: dict[str, float] | None = None
    """The first token's most likely alternatives and their logprobs, when asked for
    (``chat(top_logprobs=k)``): what a judge reads its P("Yes") from."""
    cut_off_tokens: int = 0
    """Of ``completion_tokens``, those its call's attempts cut off mid-stream streamed
    (see :class:`CutOffs`): spent, but no part of its text."""


@dataclass  # no slots: see Choice
class Completion:
    """One model call's result: its choices and the server's usage."""

    choices: list[Choice]
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    """What the server took for the attempt that answered, from sending it to its last
    byte: not the time the call queued for a connection, backed off or waited out an
    outage in the client."""
    attempts: int = 1
    """Requests sent for the call: its retries plus one."""
    request_id: str | None = None
    """The server's own id for its response (what its logs name it by). Servers may reuse
    them (Ollama's come from a few hundred values): :attr:`call_id` tells calls apart."""
    reasoning_tokens: int | None = None
    """Of the completion tokens, those spent thinking, where the server says (vLLM with a
    reasoning parser does)."""
    call_id: str | None = None
    """The call's own id, unique to it (its n choices share it): made when the call is
    made and kept with it in the call store, so a resumed run reads the same id back."""


_CALLS_MADE = itertools.count(1)
_THIS_PROCESS = uuid.uuid4().hex[:16]  # random per process: a resumed run's ids are new


def new_call_id() -> str:
    """A fresh id for a call just made (see :attr:`Completion.call_id`): this process's
    random prefix and a count (a uuid per call read the OS's randomness every time,
    a tenth of the client's time per call)."""
    return f"{_THIS_PROCESS}-{next(_CALLS_MADE)}"


@dataclass(slots=True)
class CutOffs:
    """What the attempts at one call that were cut off mid-stream spent.

    The server generated (and an API bills) the prompt and every token it streamed before
    the cut, and the call is sent again whole: each such attempt counts its prompt (the
    one the answering attempt's usage counts) and the tokens its stream carried (each
    choice's token ids or logprobs where sent, else one per chunk of text: a server
    streams a token a chunk). So does a reply short of a choice (:class:`ShortReply`),
    at what its usage says. An attempt that failed before any text came back (an error
    status, a timeout before the first token, a reply read whole) counts at nothing.

    ``on_resend`` is told the tokens of a cut-off attempt, per choice, before the call is
    sent again: it counts them (they are spent), or raises where a limit could not hold
    both them and another attempt, and the call is not sent again.
    """

    on_resend: Callable[[list[int]], Awaitable[None]] | None = None
    attempts: int = 0
    """Cut-off attempts counted so far (each was sent again)."""
    tokens: list[int] = field(default_factory=list)
    """Per choice, the tokens of the attempts counted so far."""
    last: list[int] | None = None
    """Per choice, the tokens of the latest cut-off attempt, until it is sent again: where
    the call ends without that, what its caller counts on top."""
    open: bool = False
    """Whether a call counts in it now (a pool's attempts add to their call's)."""
    failed_prompts: int = 0
    """The prompt tokens the usage of its attempts short of a choice said: what a call
    that fails in the end spent on prompts (one that answers counts each attempt's prompt
    at its answering attempt's; a stream cut off carries no usage)."""

    def cut(self, tokens: list[int], prompt_tokens: int = 0) -> None:
        """An attempt was cut off after streaming ``tokens`` (per choice), its usage saying
        ``prompt_tokens`` where it had one."""
        self.failed_prompts += prompt_tokens
        if any(tokens):
            self.last = tokens

    async def resend(self) -> None:
        """Before the call is sent again: count the latest cut-off attempt (``on_resend``
        first, which may refuse it)."""
        last = self.last
        if last is None:
            return
        if self.on_resend is not None:
            await self.on_resend(last)
        self.last = None
        self.attempts += 1
        padded = self.tokens + [0] * (len(last) - len(self.tokens))
        self.tokens = [a + b for a, b in zip(padded, last + [0] * len(padded), strict=False)]

    def add_to(self, result: Completion) -> None:
        """Count the attempts counted so far in the call's ``result`` (its answering
        attempt's): its prompt once more for each, their tokens in its choices'."""
        if not self.attempts:
            return
        result.prompt_tokens += self.attempts * result.prompt_tokens
        result.completion_tokens += sum(self.tokens)
        choices = result.choices
        for i, extra in enumerate(self.tokens):
            if choices:  # a choice the answer lacks: its tokens go to the last one
                choice = choices[min(i, len(choices) - 1)]
                choice.completion_tokens += extra
                choice.cut_off_tokens += extra


_CUT_OFFS: ContextVar[CutOffs | None] = ContextVar("thinktree_cut_offs", default=None)


class counting_cut_offs:  # lower case: used as a function, ``with counting_cut_offs(t):``
    """The call made inside counts its cut-off attempts in ``tally`` (see :class:`CutOffs`).

    A class, not a generator: it is entered on every model call, where
    :func:`contextlib.contextmanager`'s generator costs several times as much.
    """

    __slots__ = ("_tally", "_token")

    def __init__(self, tally: CutOffs) -> None:
        self._tally = tally

    def __enter__(self) -> CutOffs:
        self._token = _CUT_OFFS.set(self._tally)
        return self._tally

    def __exit__(self, *_: object) -> None:
        _CUT_OFFS.reset(self._token)


class call_tally:  # lower case: used as a function, ``with call_tally() as tally:``
    """The tally of a call being made (its caller's, see :func:`counting_cut_offs`, or a
    new one), which its result counts; None where the call is one attempt of an outer
    call (a pool's), whose result counts it."""

    __slots__ = ("_tally", "_token")

    def __enter__(self) -> CutOffs | None:
        tally = _CUT_OFFS.get()
        self._token: Token[CutOffs | None] | None = None
        if tally is not None and tally.open:
            self._tally = None
            return None
        if tally is None:  # a call of no caller's tally (a judge's, the probe's): its own
            tally = CutOffs()
            self._token = _CUT_OFFS.set(tally)
        self._tally = tally
        tally.open = True
        return tally

    def __exit__(self, *_: object) -> None:
        tally = self._tally
        if tally is not None:
            tally.open = False
        if self._token is not None:
            _CUT_OFFS.reset(self._token)


def note_cut_off(tokens: list[int], prompt_tokens: int = 0) -> None:
    """An attempt of the call being made was cut off after streaming ``tokens`` (a reply
    short of a choice: generating them, its usage says, for a prompt of ``prompt_tokens``)."""
    tally = _CUT_OFFS.get()
    if tally is not None:
        tally.cut(tokens, prompt_tokens)


async def before_resend() -> None:
    """The call being made is about to be sent again (see :meth:`CutOffs.resend`)."""
    tally = _CUT_OFFS.get()
    if tally is not None:
        await tally.resend()


class EndpointClient:
    """Calls one endpoint. Create inside a run and close with ``aclose``.

    Every request goes through :class:`~thinktree.agents.transport.Transport` (a lean
    HTTP/1.1 client or aiohttp, with the openai SDK's response types and errors).
    """

    def __init__(
        self,
        config: EndpointConfig,
        *,
        on_retry: RetryHandler | None = None,
    ) -> None:
        self.config = config
        self.transport = Transport(
            config.base_url,
            config.api_key or "EMPTY",
            timeout_s=config.timeout_s,
            max_connections=config.max_connections,
            lean=config.http_client == "auto",
        )
        self.limiter = AdaptiveLimiter(config.max_connections, name=config.name)
        self.on_retry = on_retry
        self.model: str = config.model or ""
        self.context_length: int | None = None
        """The model's context in tokens, where its ``/models`` entry says (vLLM's does)."""
        self.cache: CallCache | None = None
        self._outage = anyio.Lock()  # one call at a time waits for the endpoint to come back
        self._answered_at = 0.0  # when the endpoint last answered such a wait's check
        self._gave_up: tuple[float, EndpointDown] | None = None  # when a wait ran out
        self.sent_usage = False  # whether any reply has come back (each carries usage)
        self.past_cap = False  # whether a reply counted more than its max_tokens allowed
        self._cap_field = (
            "max_tokens" if config.max_tokens_field == "auto" else config.max_tokens_field
        )

    async def aclose(self) -> None:
        await self.transport.aclose()

    def check_timeout_s(self) -> float:
        """How long the ``/models`` check before a run waits (see ``check_timeout_s``)."""
        return min(self.config.check_timeout_s, self.config.timeout_s)

    def _slow_hint(self) -> str:
        """What to raise for a server that is just slow to answer a check."""
        key = "check_timeout_s"
        if self.config.timeout_s < self.config.check_timeout_s:  # the call's limit bounds it
            key = "timeout_s"
        return f"raise {key} in its [endpoints.NAME] table in thinktree.toml"

    async def _silence(self, limit: float) -> EndpointError:
        """The error for ``/models`` unanswered within ``limit``: the server took the
        connection and said nothing, or no connection was made at all."""
        where = self.config.describe()
        if not await self._connects():
            return EndpointError(
                f"cannot connect to endpoint {where}: no connection within {limit:g} s; is the "
                "host reachable and the URL right?"
            )
        return EndpointError(
            f"endpoint {where} accepted the connection but sent no answer to /models within "
            f"{limit:g} s: is it an OpenAI-compatible server? If it is just slow, "
            f"{self._slow_hint()}"
        )

    def _v1_hint(self, exc: openai.APIStatusError, otherwise: str) -> str:
        """What to fix: for a 404 from a URL that does not end in /v1, where
        OpenAI-compatible servers serve their API, that URL first; then ``otherwise``."""
        base = self.config.base_url.rstrip("/")
        if exc.status_code != 404 or base.endswith("/v1"):
            return otherwise.removeprefix("else ")
        return f"an OpenAI-compatible API's URL usually ends in /v1 (is it {base}/v1?); {otherwise}"

    async def _connects(self) -> bool:
        """Whether a TCP connection to the endpoint's host opens (within a few seconds)."""
        parts = urlsplit(self.config.base_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if parts.hostname is None:
            return False
        with anyio.move_on_after(5.0):
            try:
                stream = await anyio.connect_tcp(parts.hostname, port)
            except OSError:
                return False
            await stream.aclose()
            return True
        return False

    async def resolve_model(self) -> str:
        """The model to call: the configured one (checked to be served) or the only one."""
        limit = self.check_timeout_s()
        try:
            with anyio.fail_after(limit):
                listing = await self.transport.get("models")
            contexts = _listed(listing)
            served = list(contexts)
        except (TimeoutError, openai.APITimeoutError):  # a connection error, but a timeout
            raise await self._silence(limit) from None
        except ValueError:
            raise EndpointError(
                f"endpoint {self.config.describe()} answered /models with something that is "
                "not a list of models: is the URL an OpenAI-compatible /v1?"
            ) from None
        except openai.APIStatusError as exc:
            if self.config.model:  # some APIs do not list models; trust the config
                self.model = self.config.model
                return self.model
            raise EndpointError(
                f"endpoint {self.config.describe()} cannot list its models "
                f"(HTTP {exc.status_code}); {self._v1_hint(exc, 'else pass --model')}"
            ) from None
        except openai.APIConnectionError:
            raise EndpointError(
                f"cannot connect to endpoint {self.config.describe()}: is the server running "
                "and the URL right?"
            ) from None
        if self.config.model:
            if served and self.config.model not in served:
                raise EndpointError(
                    f"model '{self.config.model}' is not served by endpoint "
                    f"{self.config.describe()}; it serves: {', '.join(served)}"
                )
            self.model = self.config.model
        elif len(served) == 1:
            self.model = served[0]
        else:
            listed = ", ".join(served) if served else "none"
            raise EndpointError(
                f"endpoint {self.config.describe()} serves {listed}; choose one with --model"
            )
        self.context_length = contexts.get(self.model)
        return self.model

    def cap_field(self) -> str:
        """The field a chat request's token cap goes in (``max_tokens`` unless the server
        asked for ``max_completion_tokens``, or the config says so)."""
        return self._cap_field

    def chat_body(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """A chat request's body as sent: ``extra_body`` merged in, the token cap in the
        field this endpoint reads (:attr:`EndpointConfig.max_tokens_field`) and the
        endpoint's own temperature, if it has one."""
        body = _wire(kwargs)
        fixed = self.config.temperature
        if fixed is not None and body.get("temperature", fixed) != fixed:
            body = {**body, "temperature": fixed}
        if self._cap_field != "max_tokens" and "max_tokens" in body:
            body = dict(body)
            body[self._cap_field] = body.pop("max_tokens")
        return body

    def sent_temperature(self, asked: float) -> float:
        """The temperature a call that asks for ``asked`` is sent with."""
        fixed = self.config.temperature
        return asked if fixed is None else fixed

    def _learned_max_tokens_field(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a server's refusal of ``max_tokens`` that names the field to
        use instead (only in "auto"); that field is then used from now on.

        True also for calls sent before another call taught it: each is sent again once.
        """
        if (
            self.config.max_tokens_field != "auto"
            or not isinstance(exc, openai.BadRequestError)
            or "max_completion_tokens" not in str(exc.message)
            # vLLM's "'max_tokens' or 'max_completion_tokens' is too large: ... maximum
            # context length ...": the cap passes the context, the field is fine
            or _PAST_CONTEXT.search(str(exc.message))
        ):
            return False
        if self._cap_field == "max_tokens":
            self._cap_field = "max_completion_tokens"
            log.info(
                "endpoint takes max_completion_tokens, not max_tokens",
                endpoint=self.config.name,
            )
        return True

    async def count_tokens(self, text: str) -> int | None:
        """Tokens in ``text`` by the server's own tokenizer (vLLM's ``/tokenize``), or None."""
        url = self.config.base_url.removesuffix("/v1") + "/tokenize"
        body = {"model": self.model, "prompt": text, "add_special_tokens": False}
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                response = await client.post(url, json=body)
            count = response.json().get("count") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return count if isinstance(count, int) else None

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
        """A chat completion; with ``continue_final`` the last assistant message is extended.

        ``key`` names the node(s) the call is for; with a cache, a call already made for
        the same key and request is read back instead of sent. ``top_logprobs``: each
        choice also carries its first token's ``top_logprobs`` most likely alternatives
        (the reply is then read whole, not streamed). ``token_ids``: with ``n`` > 1, each
        choice's tokens are counted from the token ids the server returns (vLLM's
        ``return_token_ids``) instead of from per-token logprobs, which cost the server and
        the reply far more (see :attr:`Capabilities.token_ids`).
        """
        if top_logprobs:
            on_delta = None  # the alternatives are read from the whole reply
        body: dict[str, Any] = dict(extra or {})
        if continue_final:
            body.update(continue_final_message=True, add_generation_prompt=False)
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": self.sent_temperature(temperature),
            **_streaming(on_delta),
        }
        if n > 1:  # usage is only a total: count each choice's tokens
            kwargs["n"] = n
            if token_ids:
                body["return_token_ids"] = True
            else:
                kwargs["logprobs"] = True
        if top_logprobs:
            kwargs.update(logprobs=True, top_logprobs=top_logprobs)
        if seed is not None:
            kwargs["seed"] = seed
        if stop:
            kwargs["stop"] = stop
        if body:
            kwargs["extra_body"] = body
        if on_delta is None:  # nobody watches the text grow: one parse, not one per token
            return await self._call(
                lambda: self._plain_chat(kwargs, n), "chat", kwargs, key, timed=False
            )
        return await self._call(lambda: self._stream_chat(kwargs, n, on_delta), "chat", kwargs, key)

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
        """A raw text completion (``/v1/completions``); ``token_ids`` as for :meth:`chat`."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": self.sent_temperature(temperature),
            **_streaming(on_delta),
        }
        body: dict[str, Any] = dict(extra or {})
        if n > 1:  # usage is only a total: count each choice's tokens
            kwargs["n"] = n
            if token_ids:
                body["return_token_ids"] = True
            else:
                kwargs["logprobs"] = 0
        if seed is not None:
            kwargs["seed"] = seed
        if stop:
            kwargs["stop"] = stop
        if body:
            kwargs["extra_body"] = body
        if on_delta is None:
            return await self._call(
                lambda: self._plain_completion(kwargs, n), "completions", kwargs, key, timed=False
            )
        return await self._call(
            lambda: self._stream_completion(kwargs, n, on_delta), "completions", kwargs, key
        )

    async def _call(
        self,
        attempt: Callable[[], Awaitable[Completion]],
        route: str,
        request: dict[str, Any],
        key: str | None,
        *,
        timed: bool = True,
    ) -> Completion:
        """Make (or read back) one call. ``timed=False``: the transport's own timeout bounds
        it (a whole plain request), so no second deadline is kept here."""
        cache = self.cache if key is not None else None
        fp = text = ""
        if cache is not None and key is not None:
            text = request_json(request)
            fp = fingerprint(server_name(self.config), self.model, route, text, key)
            hit = await cache.lookup(fp)
            if hit is not None:
                return hit
        with call_tally() as tally:
            result = await self._attempts(attempt, timed=timed)
            if tally is not None:
                tally.add_to(result)
                if not self.past_cap:  # once: it is the server's way, not one call's
                    self.past_cap = warn_past_cap(result, request, self.config.name)
        result.call_id = new_call_id()
        if cache is not None:
            await cache.record(fp, route, text, result, key)
        return result

    async def _attempts(
        self,
        attempt: Callable[[], Awaitable[Completion]],
        *,
        timed: bool = True,
        resent: bool = False,
    ) -> Completion:
        """One attempt; only when it fails in a way worth retrying, the retry loop.

        A call refused for its ``max_tokens`` is sent again once (``resent``) in the field
        the server named, before any retry.
        """
        try:
            result = await self._once(attempt, timed)
            result.attempts = 1
        except Exception as exc:
            if not resent and self._learned_max_tokens_field(exc):
                return await self._attempts(attempt, timed=timed, resent=True)
            if not self._worth_retrying(exc):
                raise self._user_error(exc) from exc
            result = await self._retry(attempt, exc, timed)
        return result

    def _worth_retrying(self, exc: BaseException) -> bool:
        """Whether a call whose first attempt failed with ``exc`` is sent again.

        A reply without usage is, only from an endpoint that has sent usage before: one
        that never has is taken to send none, and fails at once (the probe's first request
        refuses it before a run).
        """
        if classify(exc) is None or self.config.max_attempts <= 1:
            return False
        return self.sent_usage or not isinstance(exc, MissingUsage)

    async def _once(self, attempt: Callable[[], Awaitable[Completion]], timed: bool) -> Completion:
        """One request, once a connection slot is free; its latency is the request's own."""
        limiter = self.limiter
        if not limiter.try_acquire():
            await limiter.acquire()
        sent_at = time.monotonic()
        try:
            if not timed:
                result = await attempt()
            else:
                with anyio.fail_after(self.config.timeout_s):
                    result = await attempt()
        except openai.RateLimitError:
            limiter.rate_limited(sent_at)  # fewer calls in flight, not just a later retry
            raise
        finally:
            limiter.release()
        result.latency_s = time.monotonic() - sent_at
        limiter.answered()
        self.sent_usage = True  # every answer carries usage (see _assemble)
        return result

    async def _retry(
        self,
        attempt: Callable[[], Awaitable[Completion]],
        first_error: BaseException,
        timed: bool,
        *,
        sent: int = 1,
        waited: bool = False,
    ) -> Completion:
        """Retry a failed call (``sent`` requests sent for it so far). When every attempt
        failed because the endpoint did not answer and it does not answer a check either,
        wait for it (:meth:`_wait_until_back`) and retry once more (``waited``)."""
        # The last failed attempt is replayed (its error, no new request), so tenacity
        # waits before the next one and reports it like any other: each report is
        # followed by a request sent again.
        replay: list[BaseException] = [first_error]

        async def again() -> Completion:
            nonlocal sent
            if replay:
                raise replay.pop()
            await before_resend()  # counted before its retry was reported: nothing left
            sent += 1
            return await self._once(attempt, timed)

        try:
            async for trial in self._retrying():
                with trial:
                    result = await again()
                    result.attempts = sent
                    return result
        except ThinktreeError:  # a limit refused to send it again (see CutOffs)
            raise
        except Exception as exc:
            if waited or classify(exc) not in OUTAGE:
                raise self._user_error(exc) from exc
            failed_at = time.monotonic()
            if await self._reachable():  # the server is up: this request is what fails
                raise self._user_error(exc) from exc
            await self._wait_until_back(failed_at, exc)
            return await self._retry(attempt, exc, timed, sent=sent, waited=True)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _reachable(self) -> bool:
        """Whether the endpoint answers at all: ``/models`` gets any answer but a 5xx."""
        try:
            with anyio.fail_after(min(10.0, self.config.timeout_s)):
                await self.transport.get("models")
        except openai.APIStatusError as exc:
            return exc.status_code < 500
        except (openai.APIConnectionError, TimeoutError):
            return False
        return True

    async def _wait_until_back(self, failed_at: float, exc: BaseException) -> None:
        """Wait for the endpoint to answer again, at most ``outage_wait_s`` (one call asks,
        the others wait for its answer); :class:`EndpointDown` when it does not."""
        async with self._outage:
            if self._answered_at > failed_at:
                return  # it came back while this call waited for the lock
            if self._gave_up is not None and self._gave_up[0] > failed_at:
                raise self._gave_up[1]  # another call waited as long as allowed, in vain
            patience = self.config.outage_wait_s
            reason = f"endpoint not answering ({classify(exc)})"
            log.warning("endpoint not answering", endpoint=self.config.name, wait_s=patience)
            if self.on_retry is not None:  # attempt 0: a wait, no request sent
                await self.on_retry(0, patience, reason)
            deadline = time.monotonic() + patience
            while time.monotonic() < deadline:
                pause = min(_OUTAGE_POLL_S, patience / 10, deadline - time.monotonic())
                await anyio.sleep(max(0.0, pause))
                if await self._reachable():
                    self._answered_at = time.monotonic()
                    log.info("endpoint answering again", endpoint=self.config.name)
                    return
            down = EndpointDown(
                f"endpoint {self.config.describe()} stopped answering ({classify(exc)}) and did "
                f"not come back within {patience:.0f} s (outage_wait_s)"
            )
            self._gave_up = (time.monotonic(), down)
            raise down

    async def retried(
        self, request: Callable[[], Awaitable[T]], *, kinds: Collection[RetryKind] = _EVERY_KIND
    ) -> T:
        """``request`` (one made outside :meth:`chat` and :meth:`complete`: a probe's) with
        the endpoint's retries for the errors of ``kinds``; the SDK's error otherwise.

        A request refused for its ``max_tokens`` is made once more: ``request`` builds its
        body (:meth:`chat_body`) when called, so the cap goes in the field the server named.
        """
        try:
            return await self._with_retries(request, kinds)
        except openai.BadRequestError as exc:
            if not self._learned_max_tokens_field(exc):
                raise
            return await self._with_retries(request, kinds)

    async def _with_retries(
        self, request: Callable[[], Awaitable[T]], kinds: Collection[RetryKind]
    ) -> T:
        async for trial in self._retrying(kinds):
            with trial:
                return await request()
        raise AssertionError("unreachable")  # pragma: no cover

    def _retrying(self, kinds: Collection[RetryKind] = _EVERY_KIND) -> AsyncRetrying:
        """The endpoint's retry policy (how long to wait, how often) for errors of ``kinds``."""

        async def before_sleep(state: RetryCallState) -> None:
            # a cut-off attempt counts before the call is sent again, where a limit may
            # refuse to: then it is not sent, and no retry is reported
            await before_resend()
            exc = state.outcome.exception() if state.outcome else None
            kind = classify(exc) if exc else None
            wait = state.next_action.sleep if state.next_action else 0.0
            reason = str(kind) if kind else "error"
            # a run shows each retry (progress bar, terminal view) and records it (trace,
            # store): a warning line per retry would only crowd the terminal beside it
            logged = log.info if self.on_retry is not None else log.warning
            logged(
                "call retry",
                endpoint=self.config.name,
                attempt=state.attempt_number,
                wait_s=round(wait, 2),
                reason=reason,
            )
            if self.on_retry is not None:
                await self.on_retry(state.attempt_number, wait, reason)

        return AsyncRetrying(
            retry=retry_if_exception(lambda e: classify(e) in kinds),
            wait=_RetryAfterOrBackoff(self.config.max_backoff_s),
            stop=stop_after_attempt(max(1, self.config.max_attempts)),
            before_sleep=before_sleep,
            reraise=True,
        )

    def _user_error(self, exc: BaseException) -> EndpointError:
        where = self.config.describe()
        kind = classify(exc)
        if isinstance(exc, openai.NotFoundError):
            return EndpointError(
                f"endpoint {where} answered 404 for model '{self.model}': "
                + self._v1_hint(exc, "else check --model and the URL")
            )
        if isinstance(exc, openai.AuthenticationError):
            return EndpointError(f"endpoint {where} rejected the API key (401): check the key")
        if isinstance(exc, openai.APIStatusError) and exc.status_code in _PAST_CONTEXT_STATUS:
            detail = _status_detail(exc)
            if _PAST_CONTEXT.search(detail):
                return ContextExceeded(
                    f"endpoint {where} refused a prompt longer than the model's context "
                    f"({exc.status_code}): {detail}"
                )
        if isinstance(exc, openai.BadRequestError):
            detail = _status_detail(exc)
            said = f"endpoint {where} rejected the request (400): {detail}"
            return EndpointError(said + self._temperature_hint(detail))
        if isinstance(exc, UnusableUsage):
            return EndpointError(
                f"endpoint {where} answered with impossible token usage ({exc}), so the "
                "call's tokens cannot be counted; thinktree needs a server that reports "
                "true usage"
            )
        if isinstance(exc, MissingUsage):
            return EndpointError(
                f"endpoint {where} answered without token usage, so the call's tokens cannot "
                "be counted; thinktree needs an OpenAI-compatible server that reports usage"
            )
        if kind is RetryKind.CONNECTION:
            return EndpointError(
                f"cannot connect to endpoint {where} after {self.config.max_attempts} attempts: "
                "is the server running?"
            )
        if kind is not None:
            return EndpointError(
                f"endpoint {where} kept failing ({kind}) after {self.config.max_attempts} attempts"
            )
        if isinstance(exc, openai.APIStatusError):
            said = f"endpoint {where} answered HTTP {exc.status_code}"
            detail = _status_detail(exc)
            return EndpointError(f"{said}: {detail}" if detail else said)
        return EndpointError(f"call to endpoint {where} failed: {_one_line(repr(exc))}")

    def _temperature_hint(self, detail: str) -> str:
        """What to change when a server refuses the temperature it was sent."""
        if "temperature" not in detail.lower():
            return ""
        if self.config.temperature is not None:
            return f" (the endpoint's temperature = {self.config.temperature:g} in thinktree.toml)"
        only = _ONLY_TEMPERATURE.search(detail)
        value = only.group(1) if only else "<the one it takes>"
        return (
            f"; this model takes only its own temperature: set temperature = {value} for "
            f"endpoint '{self.config.name}' in thinktree.toml"
        )

    async def _plain_chat(self, kwargs: dict[str, Any], n: int) -> Completion:
        raw = await self.transport.post("chat/completions", self.chat_body(kwargs))
        counted = [0] * n
        want_tops = "top_logprobs" in kwargs  # asked once here, not once per choice
        if n > 1:  # count each choice's tokens, then drop what they were counted from
            data = loads(raw)
            data.pop("prompt_token_ids", None)
            for choice in data.get("choices") or []:
                i, logprobs = choice.get("index"), choice.get("logprobs")
                ids = choice.pop("token_ids", None)
                if isinstance(i, int) and 0 <= i < n:
                    if isinstance(ids, list):
                        counted[i] = len(ids)
                    elif isinstance(logprobs, dict):
                        counted[i] = len(logprobs.get("content") or ())
                if not want_tops:
                    choice["logprobs"] = None
            resp = parse(_ChatCompletion, data, self.transport.base_url)
        else:
            resp = parse(_ChatCompletion, raw, self.transport.base_url)
        texts, reasoning = [""] * n, [""] * n
        finish: list[str | None] = [None] * n
        tops: list[dict[str, float] | None] = [None] * n
        for choice in resp.choices or []:
            i = choice.index
            if i >= n:
                continue
            message = choice.message
            if message is not None:
                texts[i] = message.content or ""
                think = _reasoning_of(message)
                if isinstance(think, str):
                    reasoning[i] = think
            finish[i] = choice.finish_reason
            if want_tops:
                tops[i] = _first_token_tops(choice.logprobs)
        try:
            result = _assemble(texts, reasoning, counted, finish, resp.usage, resp.id, n)
        except ShortReply as exc:
            note_cut_off(exc.tokens, exc.prompt_tokens)
            raise
        if want_tops:  # the choices made are those that finished, in order
            made = [top for top, f in zip(tops, finish, strict=True) if f is not None]
            for c, top in zip(result.choices, made, strict=True):
                c.top_logprobs = top
        return result

    async def _plain_completion(self, kwargs: dict[str, Any], n: int) -> Completion:
        raw = await self.transport.post("completions", _wire(kwargs))
        resp = parse(_TextCompletion, raw, self.transport.base_url)
        texts, counted = [""] * n, [0] * n
        finish: list[str | None] = [None] * n
        for choice in resp.choices or []:
            i = choice.index
            if i >= n:
                continue
            texts[i] = choice.text or ""
            counted[i] = _tokens_of(choice)
            finish[i] = choice.finish_reason
        try:
            return _assemble(texts, [""] * n, counted, finish, resp.usage, resp.id, n)
        except ShortReply as exc:
            note_cut_off(exc.tokens, exc.prompt_tokens)
            raise

    async def _stream_chat(
        self, kwargs: dict[str, Any], n: int, on_delta: DeltaHandler | None
    ) -> Completion:
        texts = [""] * n
        reasoning = [""] * n
        counted = [0] * n
        finish: list[str | None] = [None] * n
        usage = None
        request_id = None
        pieces = [0] * n  # chunks that carried text, per choice
        stream = self.transport.stream("chat/completions", self.chat_body(kwargs))
        with _NotingCutOff(counted, pieces):
            async with aclosing(stream):
                async for data in stream:
                    chunk = parse(_ChatCompletionChunk, data, self.transport.base_url)
                    request_id = request_id or chunk.id
                    if chunk.usage is not None:
                        usage = chunk.usage
                    for choice in chunk.choices:
                        i = choice.index
                        if i >= n:
                            continue
                        delta = choice.delta
                        if delta is not None:
                            think = _reasoning_of(delta)
                            if isinstance(think, str) and think:
                                reasoning[i] += think
                                pieces[i] += 1
                            if delta.content:
                                first = not texts[i]
                                texts[i] += delta.content
                                pieces[i] += not think
                                if on_delta is not None:
                                    await on_delta(i, delta.content, first=first)
                        counted[i] += _tokens_of(choice)
                        if choice.finish_reason:
                            finish[i] = choice.finish_reason
            return _assemble(texts, reasoning, counted, finish, usage, request_id, n)

    async def _stream_completion(
        self, kwargs: dict[str, Any], n: int, on_delta: DeltaHandler | None
    ) -> Completion:
        texts = [""] * n
        counted = [0] * n
        finish: list[str | None] = [None] * n
        usage = None
        request_id = None
        pieces = [0] * n  # chunks that carried text, per choice
        stream = self.transport.stream("completions", _wire(kwargs))
        with _NotingCutOff(counted, pieces):
            async with aclosing(stream):
                async for data in stream:
                    chunk = parse(_TextCompletionChunk, data, self.transport.base_url)
                    request_id = request_id or chunk.id
                    if chunk.usage is not None:
                        usage = chunk.usage
                    for choice in chunk.choices:
                        i = choice.index
                        if i >= n:
                            continue
                        if choice.text:
                            first = not texts[i]
                            texts[i] += choice.text
                            pieces[i] += 1
                            if on_delta is not None:
                                await on_delta(i, choice.text, first=first)
                        counted[i] += _tokens_of(choice)
                        if choice.finish_reason:
                            finish[i] = choice.finish_reason
            return _assemble(texts, [""] * n, counted, finish, usage, request_id, n)


class _NotingCutOff:
    """Around a stream: where it ends without a whole reply, what it carried so far is
    noted as the attempt's (:func:`note_cut_off`), per choice its token ids or logprobs
    (``counted``) or, where it sent none, its chunks of text (``pieces``); a reply short of
    a choice, at what its usage says."""

    __slots__ = ("_counted", "_pieces")

    def __init__(self, counted: list[int], pieces: list[int]) -> None:
        self._counted = counted
        self._pieces = pieces

    def __enter__(self) -> None:
        return None

    def __exit__(self, _: object, exc: BaseException | None, __: object) -> None:
        if isinstance(exc, ShortReply):
            note_cut_off(exc.tokens, exc.prompt_tokens)
        elif exc is not None:
            note_cut_off([max(c, p) for c, p in zip(self._counted, self._pieces, strict=True)])


def warn_past_cap(result: Completion, request: dict[str, Any], endpoint: str) -> bool:
    """Warn where the server counted more completion tokens than the request's
    ``max_tokens`` allowed its choices (a server whose cap leaves its thinking out): the
    run's token and money limits, which grant each call its ``max_tokens``, cannot hold
    such calls, and the run's figures show them passed. Whether it warned."""
    cap = request.get("max_tokens")
    if type(cap) is not int:
        return False
    allowed = cap * int(request.get("n") or 1)
    counted = 0
    for choice in result.choices:  # a loop: this runs on every call
        counted += choice.completion_tokens - choice.cut_off_tokens
    if counted > allowed:
        log.warning(
            "the endpoint counted more completion tokens than max_tokens allowed; the run's "
            "token and money limits cannot hold its calls",
            endpoint=endpoint,
            counted=counted,
            allowed=allowed,
        )
        return True
    return False


def _tokens_of(choice: Any) -> int:
    """The tokens a parsed choice (or a streamed chunk of one) carries: its ``token_ids``
    where the server returns them, else its per-token logprobs (chat or text)."""
    ids = getattr(choice, "token_ids", None)
    if isinstance(ids, list):
        return len(ids)
    logprobs = choice.logprobs
    if logprobs is None:
        return 0
    tokens = getattr(logprobs, "content", None) or getattr(logprobs, "tokens", None)
    return len(tokens or ())


def _first_token_tops(logprobs: Any) -> dict[str, float]:
    """The first generated token's alternatives (token -> logprob); empty when not sent."""
    content = getattr(logprobs, "content", None) if logprobs is not None else None
    if not content:
        return {}
    return {top.token: float(top.logprob) for top in content[0].top_logprobs or ()}


def _listed(raw: bytes) -> dict[str, int | None]:
    """The ids in a ``/models`` answer, each with its context length where the entry says
    it (vLLM's ``max_model_len``, others' ``context_length``); a ValueError when it is
    no such answer."""
    data = json.loads(raw).get("data")
    if not isinstance(data, list):
        raise ValueError("no model list")
    listed: dict[str, int | None] = {}
    for entry in data:
        if isinstance(entry, dict) and "id" in entry:
            length = entry.get("max_model_len", entry.get("context_length"))
            listed[str(entry["id"])] = length if is_token_count(length) and length else None
    return listed


def _wire(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The request body as sent: the SDK-style ``extra_body`` merged into the rest."""
    if "extra_body" not in kwargs:
        return kwargs
    body = {k: v for k, v in kwargs.items() if k != "extra_body"}
    body.update(kwargs["extra_body"])
    return body


def _streaming(on_delta: DeltaHandler | None) -> dict[str, Any]:
    """Stream (with usage at the end) only when someone watches the text arrive."""
    if on_delta is None:
        return {"stream": False}
    return {"stream": True, "stream_options": {"include_usage": True}}


_SHORT_REPLIES: ContextVar[bool] = ContextVar("thinktree_short_replies", default=False)


@contextmanager
def short_replies() -> Iterator[None]:
    """Replies with fewer choices than asked for are taken as they come (a probe of ``n``
    asks to see them); elsewhere such a reply is incomplete."""
    token = _SHORT_REPLIES.set(True)
    try:
        yield
    finally:
        _SHORT_REPLIES.reset(token)


def _assemble(
    texts: list[str],
    reasoning: list[str],
    counted: list[int],
    finish: list[str | None],
    usage: Any,
    request_id: str | None,
    n: int,
) -> Completion:
    got = len(finish) - finish.count(None)  # the choices that finished
    if got == 0:
        raise IncompleteResponse("the stream ended without a finished choice")
    if got < n and not _SHORT_REPLIES.get():
        # a sample short: asked again whole, never recorded short (or shifted onto the
        # wrong node by the choices that follow it); what it generated was spent
        done = getattr(usage, "completion_tokens", None)
        spent = [0] * n
        if is_token_count(done):
            spent = counted if sum(counted) == done else _apportion(done, counted, texts)
        prompt = getattr(usage, "prompt_tokens", None)
        raise ShortReply(
            f"the reply finished {got} of the {n} choices asked for",
            spent,
            prompt if is_token_count(prompt) else 0,
        )
    if usage is None:  # the prompt's tokens are unknown, and never counted as 0
        raise MissingUsage("the reply carried no token usage")
    prompt_tokens = _count(usage, "prompt_tokens")
    completion_tokens = _count(usage, "completion_tokens")
    details = getattr(usage, "completion_tokens_details", None)
    thought = getattr(details, "reasoning_tokens", None)
    if isinstance(thought, int) and not is_token_count(thought):
        raise UnusableUsage(_not_a_count("reasoning_tokens", thought))
    if n == 1:
        per_choice = [completion_tokens]
    elif sum(counted) >= completion_tokens:  # never fewer than the choices were sent with
        if sum(counted) > completion_tokens:
            log.warning(
                "the reply's usage counts fewer tokens than its choices carry; counted those",
                usage=completion_tokens,
                carried=sum(counted),
            )
        per_choice = counted
        completion_tokens = sum(counted)
    else:
        per_choice = _apportion(completion_tokens, counted, texts)
    # positional (text, finish_reason, completion_tokens, reasoning): n objects a call
    choices = [
        Choice(text, reason, tokens, thought)
        for text, reason, tokens, thought in zip(texts, finish, per_choice, reasoning, strict=True)
        if reason is not None
    ]
    return Completion(
        choices=choices,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        latency_s=0.0,
        request_id=request_id,
        reasoning_tokens=int(thought) if isinstance(thought, int) else None,
    )


def _count(usage: Any, name: str) -> int:
    """The count ``name`` of a reply's usage (:class:`UnusableUsage` where it is none)."""
    value = getattr(usage, name, None)
    if not is_token_count(value):
        raise UnusableUsage(_not_a_count(name, value))
    return value


def _not_a_count(name: str, value: object) -> str:
    """Why ``value``, the usage's ``name``, is no count of tokens."""
    shown = "missing or null" if value is None else json.dumps(value)[:40]
    return f"{name} is {shown}, not a whole number from 0 to {MOST_USAGE_TOKENS:,}"


def _apportion(total: int, counted: list[int], texts: list[str]) -> list[int]:
    """Split ``total`` over choices in proportion to what was seen, summing exactly."""
    weights = counted if sum(counted) > 0 else [max(len(t), 1) for t in texts]
    scale = total / sum(weights)
    shares = [int(w * scale) for w in weights]
    for i in sorted(range(len(shares)), key=lambda i: -(weights[i] * scale - shares[i])):
        if sum(shares) >= total:
            break
        shares[i] += 1
    return shares


class _RetryAfterOrBackoff:
    """Wait what the server's ``Retry-After`` says, else jittered exponential backoff."""

    def __init__(self, max_wait: float) -> None:
        self.max_wait = max_wait
        self.backoff = wait_exponential_jitter(multiplier=0.5, max=max_wait, jitter=0.5)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, openai.APIStatusError):
            after = _retry_after(exc.response.headers.get("retry-after"))
            if after is not None:
                return min(after, self.max_wait)
        return float(self.backoff(state))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(when.timestamp() - time.time(), 0.0)


def _status_detail(exc: openai.APIStatusError) -> str:
    """What the server said with an error status, on one line, without the SDK's
    "Error code: N - " before it (the line names the status already)."""
    detail = str(exc.message).removeprefix(f"Error code: {exc.status_code}")
    return _one_line(detail.strip().removeprefix("-").strip())


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 200 else line[:197] + "..."


def _reasoning_of(message: Any) -> object:
    """A message's reasoning text (``reasoning_content`` or ``reasoning``), if the server sent it.

    Read from the model's extra fields: ``getattr`` on a missing pydantic field takes a slow
    path (an exception inside) on every choice of every call.
    """
    if message is None:
        return None
    declared = message.__dict__  # a later SDK may declare them
    think = declared.get("reasoning_content") or declared.get("reasoning")
    if think:
        return think
    extra = message.__pydantic_extra__  # what ``model_extra`` returns, without its property
    if extra:
        think = extra.get("reasoning_content") or extra.get("reasoning")
        if think:
            return think
    return None

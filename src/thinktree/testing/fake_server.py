"""A scripted OpenAI-compatible HTTP server on 127.0.0.1, for tests and benchmarks.

It speaks ``/v1/chat/completions`` and ``/v1/completions`` (plain and SSE streaming),
``/v1/models`` and ``/health``; it is deterministic, fast enough to be the "instant
server" of a throughput benchmark, and misbehaves on a schedule (:class:`Fault`).

Token accounting: one token is one whitespace-separated word of the reply; the
streamed pieces carry their leading whitespace, so joining them gives the text back.
Prompt tokens of a chat request are the words of every message content, plus 4 per
message, plus 3 for the generation prompt. With ``continue_final_message`` (and
``FakeBehaviour.continuation``) the 3 are dropped and the last message is left open
(one token less).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from types import TracebackType
from typing import Any

from aiohttp import web

__all__ = [
    "DEFAULT_REPLY",
    "FakeBehaviour",
    "FakeServer",
    "Fault",
    "fake_server_in_thread",
    "split_tokens",
]

Body = dict[str, Any]

_dumps: Callable[[Any], bytes]
_dump_str: Callable[[str], bytes]
_loads: Callable[[bytes], Any]
try:  # orjson is optional: use it when present, it is several times faster.
    _orjson = importlib.import_module("orjson")
    _dumps = _orjson.dumps
    _dump_str = _orjson.dumps
    _loads = _orjson.loads
except ImportError:
    _encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    _encode_str: Callable[[str], str] = json.encoder.encode_basestring

    def _dumps(obj: Any) -> bytes:
        return _encode(obj).encode()

    def _dump_str(text: str) -> bytes:
        return _encode_str(text).encode()

    _loads = json.loads

DEFAULT_REPLY = "Let me think step by step. The answer is B.\nAnswer: B"
_PIECE = re.compile(r"\s*\S+(?:\s+\Z)?")
_DONE = b"data: [DONE]\n\n"
_JSON = "application/json"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_LOGPROB = -0.1
_CREATED = 1_700_000_000  # a fixed timestamp keeps responses byte-for-byte reproducible


@lru_cache(maxsize=1024)
def split_tokens(text: str) -> tuple[str, ...]:
    """Split ``text`` into word tokens that join back to it exactly.

    Each piece is one word with its leading whitespace; trailing whitespace goes to the
    last piece, and a whitespace-only text is a single piece.
    """
    pieces = tuple(_PIECE.findall(text))
    if not pieces and text:
        return (text,)
    return pieces


def _words(content: Any) -> int:
    """Word count of a message content: a string, or a list of ``{"text": ...}`` parts."""
    if isinstance(content, str):
        return len(content.split())
    if isinstance(content, list):
        return sum(
            len(part["text"].split())
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return 0


@dataclass
class FakeBehaviour:
    """What a healthy fake server answers."""

    model: str = "fake-model"
    max_model_len: int | None = None
    """The model's context, listed in ``/models`` as vLLM lists it (None: not listed)."""
    native_n: bool = True
    """False: ignore ``n`` and return one choice (like llama.cpp)."""
    continuation: bool = True
    """False: ignore ``continue_final_message`` (the assistant turn is closed)."""
    usage_in_stream: bool = True
    """False: streams carry no usage chunk, even when asked for."""
    reply: Callable[[Body, int], str] | str = DEFAULT_REPLY
    """The text of each choice, or a function of (request body, choice index)."""
    delay_s: float = 0.0
    """Latency before the first byte."""
    tokens_per_chunk: int = 1
    """Tokens per streamed content chunk."""
    chunk_delay_s: float = 0.0
    """Pause between streamed events (0: the whole stream goes out in one write)."""
    reject: Callable[[Body], str | None] | None = None
    """A request for which this returns a message is answered 400 with it (a refused field)."""
    reject_status: int = 400
    """The status ``reject`` answers with (some servers answer a field they do not know
    with a 500)."""
    token_ids: bool = True
    """False: ignore ``return_token_ids`` (choices carry no token ids, as before vLLM 0.10)."""
    max_in_flight: int | None = None
    """A rate limit: a generation request arriving while this many are being answered gets
    a 429 (with ``retry_after_s``), as an API's concurrency limit answers."""


class Fault(StrEnum):
    """A scheduled misbehaviour of one generation request."""

    RATE_LIMIT = "429"
    REQUEST_TIMEOUT = "408"
    CONFLICT = "409"
    SERVER_ERROR = "500"
    BAD_GATEWAY = "502"
    UNAVAILABLE = "503"
    RESET = "reset"
    """Close the connection mid-response."""
    SLOW = "slow"
    """Sleep ``slow_s`` (longer than the client's timeout) before answering."""
    TRUNCATED = "truncated"
    """Stream: cut before finish_reason and [DONE]. Plain: half the JSON body."""
    INVALID_JSON = "invalid-json"
    EMPTY_CHOICES = "empty-choices"
    CONTENT_FILTER = "content-filter"
    """Half the reply, with finish_reason ``content_filter``."""


_STATUS: dict[Fault, tuple[int, str, str]] = {
    Fault.RATE_LIMIT: (429, "RateLimitError", "Rate limit reached (fake)."),
    Fault.REQUEST_TIMEOUT: (408, "RequestTimeout", "Request timed out (fake)."),
    Fault.CONFLICT: (409, "ConflictError", "Conflict (fake)."),
    Fault.SERVER_ERROR: (500, "InternalServerError", "Internal server error (fake)."),
    Fault.BAD_GATEWAY: (502, "BadGateway", "Bad gateway (fake)."),
    Fault.UNAVAILABLE: (503, "ServiceUnavailableError", "Service unavailable (fake)."),
}


class _BadRequest(Exception):
    """A request the server answers with 400."""


@dataclass(slots=True)
class _Choice:
    index: int
    pieces: Sequence[str]
    finish: str


def _error(
    status: int, message: str, kind: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    return web.Response(status=status, body=_dumps(body), content_type=_JSON, headers=headers)


class FakeServer:
    """A scripted OpenAI-compatible server; ``async with FakeServer() as s: s.base_url``.

    ``faults[i]`` (or ``faults(i)``) applies to the i-th generation request; requests
    beyond a sequence's end are healthy. A request for another model gets a 404 and
    no fault.
    """

    def __init__(
        self,
        behaviour: FakeBehaviour | None = None,
        *,
        faults: Sequence[Fault | None] | Callable[[int], Fault | None] = (),
        retry_after_s: float = 0.0,
        slow_s: float = 30.0,
        record_bodies: bool = False,
        id_prefix: str = "fake",
        port: int = 0,
    ) -> None:
        self.behaviour = behaviour or FakeBehaviour()
        self._bind_port = port
        """The port to listen on (0: a free one); a server stopped and started again on its
        old port is one that went down and came back."""
        self.id_prefix = id_prefix
        """Response ids are ``chatcmpl-PREFIX-N``: give servers of one pool their own, as
        real servers' ids never collide."""
        self._faults = faults if callable(faults) else tuple(faults)
        self.retry_after_s = retry_after_s
        self.slow_s = slow_s
        self.record_bodies = record_bodies
        self.requests = 0
        """Generation requests received."""
        self.answered = 0
        """Generation requests answered successfully (faulted ones excluded)."""
        self.faulted: Counter[Fault] = Counter()
        self.prompt_tokens_billed = 0
        """Prompt tokens of the requests it began to answer (an API bills them, even for a
        reply cut off or never read), counted as its usage counts them."""
        self.completion_tokens_billed = 0
        """Completion tokens it generated: a plain reply's all (sent whole or not), a
        stream's those it sent before it was cut off."""
        self.in_flight = 0
        """Generation requests being answered now."""
        self.peak_in_flight = 0
        self.rate_limited = 0
        """Requests refused by ``behaviour.max_in_flight``."""
        self.bodies: list[Body] = []
        """Request bodies received, when ``record_bodies``."""
        self._created = _CREATED
        self._runner: web.ServerRunner | None = None
        self._closing: asyncio.Event | None = None
        self._port = 0
        self._routes: dict[tuple[str, str], Callable[[web.BaseRequest], Any]] = {
            ("GET", "/health"): self._health,
            ("GET", "/v1/models"): self._models,
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._completions,
        }

    # -- lifecycle -------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (after ``__aenter__``)."""
        if not self._port:
            raise RuntimeError("the fake server is not running")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> FakeServer:
        if self._runner is not None:
            raise RuntimeError("the fake server is already running")
        self._closing = asyncio.Event()
        server = web.Server(self._dispatch, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self._bind_port))
            site = web.SockSite(runner, sock, backlog=1024)
            await site.start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = sock.getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._closing is not None:
            self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        self._port = 0

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the server is shutting down."""
        assert self._closing is not None
        if self._closing.is_set():
            return
        with suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    # -- routing ---------------------------------------------------------------------

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            if any(path == request.path for _, path in self._routes):
                return _error(405, f"Method {request.method} not allowed.", "MethodNotAllowed")
            return _error(404, f"Not found: {request.path}", "NotFoundError")
        response: web.StreamResponse = await handler(request)
        return response

    async def _health(self, request: web.BaseRequest) -> web.Response:
        return web.Response(status=200)

    async def _models(self, request: web.BaseRequest) -> web.Response:
        model: dict[str, Any] = {"id": self.behaviour.model, "object": "model", "owned_by": "fake"}
        if self.behaviour.max_model_len is not None:
            model["max_model_len"] = self.behaviour.max_model_len
        body = {"object": "list", "data": [model]}
        return web.Response(body=_dumps(body), content_type=_JSON)

    async def _chat(self, request: web.BaseRequest) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _completions(self, request: web.BaseRequest) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    # -- generation ------------------------------------------------------------------

    def _fault(self, index: int) -> Fault | None:
        faults = self._faults
        if callable(faults):
            return faults(index)
        return faults[index] if index < len(faults) else None

    async def _generate(self, request: web.BaseRequest, *, chat: bool) -> web.StreamResponse:
        cap = self.behaviour.max_in_flight
        if cap is not None and self.in_flight >= cap:
            self.requests += 1
            self.rate_limited += 1
            headers = {"Retry-After": f"{self.retry_after_s:g}"}
            message = "Rate limit reached: too many requests in flight."
            return _error(429, message, "RateLimitError", headers)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._generate_one(request, chat=chat)
        finally:
            self.in_flight -= 1

    async def _generate_one(self, request: web.BaseRequest, *, chat: bool) -> web.StreamResponse:
        index = self.requests
        self.requests += 1
        try:
            body = _loads(await request.content.read())
        except ValueError:
            return _error(400, "The request body is not valid JSON.", "BadRequestError")
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.", "BadRequestError")
        if self.record_bodies:
            self.bodies.append(body)
        behaviour = self.behaviour
        model = body.get("model")
        if model != behaviour.model:
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
        refused = behaviour.reject(body) if behaviour.reject is not None else None
        if refused:
            kind = "BadRequestError" if behaviour.reject_status < 500 else "InternalServerError"
            return _error(behaviour.reject_status, refused, kind)
        try:
            choices, prompt_tokens = self._plan(body, chat=chat)
        except (_BadRequest, TypeError, ValueError, KeyError) as exc:
            return _error(400, f"Invalid request: {exc}", "BadRequestError")

        fault = self._fault(index)
        if fault is not None:
            self.faulted[fault] += 1
        if behaviour.delay_s > 0:
            await self._pause(behaviour.delay_s)
        if fault is not None:
            if fault in _STATUS:
                status, kind, message = _STATUS[fault]
                headers = None
                if fault is Fault.RATE_LIMIT:
                    headers = {"Retry-After": f"{self.retry_after_s:g}"}
                return _error(status, message, kind, headers)
            if fault is Fault.SLOW:
                await self._pause(self.slow_s)
            elif fault is Fault.CONTENT_FILTER:
                choices = [
                    _Choice(c.index, c.pieces[: len(c.pieces) // 2], "content_filter")
                    for c in choices
                ]
            elif fault is Fault.EMPTY_CHOICES:
                choices = []

        completion_tokens = sum(len(c.pieces) for c in choices)
        self.prompt_tokens_billed += prompt_tokens
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{self.id_prefix}-{index}"
        if body.get("stream"):
            head, content, tail, sizes = self._events(body, rid, choices, usage, chat=chat)
            return await self._send_stream(request, head, content, tail, fault, sizes)
        self.completion_tokens_billed += completion_tokens
        payload = self._response(body, rid, choices, usage, chat=chat)
        return await self._send_plain(request, payload, fault)

    def _plan(self, body: Body, *, chat: bool) -> tuple[list[_Choice], int]:
        """The choices (text already limited by max_tokens) and the prompt token count."""
        behaviour = self.behaviour
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list):
                raise _BadRequest("`messages` must be a list")
            prompt_tokens = sum(
                _words(m.get("content")) + 4 for m in messages if isinstance(m, dict)
            )
            if behaviour.continuation and body.get("continue_final_message") and messages:
                prompt_tokens -= 1  # the final message is left open, no generation prompt
            else:
                prompt_tokens += 3
            prompts = 1
        else:
            prompt = body.get("prompt")
            if prompt is None:
                raise _BadRequest("`prompt` is required")
            if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
                prompt = [prompt]
            prompts = max(len(prompt), 1)
            prompt_tokens = sum(_words(p) if isinstance(p, str) else len(p) for p in prompt)
        n = int(body.get("n") or 1) if behaviour.native_n else 1
        if n < 1:
            raise _BadRequest("`n` must be at least 1")
        limit = body.get("max_completion_tokens") if chat else None
        if limit is None:
            limit = body.get("max_tokens")
        if limit is not None:
            limit = int(limit)
            if limit < 0:
                raise _BadRequest("`max_tokens` must not be negative")
        reply = behaviour.reply
        choices: list[_Choice] = []
        for i in range(prompts * n):
            pieces: Sequence[str] = split_tokens(
                reply if isinstance(reply, str) else reply(body, i)
            )
            finish = "stop"
            if limit is not None and len(pieces) > limit:
                pieces, finish = pieces[:limit], "length"
            choices.append(_Choice(i, pieces, finish))
        return choices, prompt_tokens

    def _with_token_ids(self, body: Body) -> bool:
        return self.behaviour.token_ids and body.get("return_token_ids") is True

    def _response(
        self, body: Body, rid: str, choices: list[_Choice], usage: dict[str, int], *, chat: bool
    ) -> bytes:
        """A non-streaming response body."""
        model = self.behaviour.model
        out: list[dict[str, Any]] = []
        with_ids = self._with_token_ids(body)
        if chat:
            want_logprobs = bool(body.get("logprobs"))
            for c in choices:
                message = {"role": "assistant", "content": "".join(c.pieces)}
                top = int(body.get("top_logprobs") or 0)
                logprobs = _chat_logprobs(c.pieces, top) if want_logprobs else None
                out.append(
                    {
                        "index": c.index,
                        "message": message,
                        "logprobs": logprobs,
                        "finish_reason": c.finish,
                        **({"token_ids": _token_ids(c.pieces)} if with_ids else {}),
                    }
                )
            obj = "chat.completion"
        else:
            want_logprobs = body.get("logprobs") is not None
            for c in choices:
                logprobs = _text_logprobs(c.pieces, 0) if want_logprobs else None
                out.append(
                    {
                        "index": c.index,
                        "text": "".join(c.pieces),
                        "logprobs": logprobs,
                        "finish_reason": c.finish,
                        **({"token_ids": _token_ids(c.pieces)} if with_ids else {}),
                    }
                )
            obj = "text_completion"
        return _dumps(
            {
                "id": rid,
                "object": obj,
                "created": self._created,
                "model": model,
                "system_fingerprint": "fake",
                "choices": out,
                "usage": usage,
            }
        )

    def _events(
        self, body: Body, rid: str, choices: list[_Choice], usage: dict[str, int], *, chat: bool
    ) -> tuple[list[bytes], list[bytes], list[bytes], list[int]]:
        """SSE events of a stream: the opening, the content and the closing events, and the
        tokens each content event carries.

        Chunks are assembled from byte templates (only the texts are JSON-encoded per
        chunk); this is the hot path of a streaming benchmark.
        """
        behaviour = self.behaviour
        options = body.get("stream_options")
        with_usage = (
            behaviour.usage_in_stream
            and isinstance(options, dict)
            and bool(options.get("include_usage"))
        )
        kind = b"chat.completion.chunk" if chat else b"text_completion"
        meta = (
            b'data: {"id":%s,"object":"%s","created":%d,"model":%s,"system_fingerprint":"fake",'
            % (
                _dumps(rid),
                kind,
                self._created,
                _dumps(behaviour.model),
            )
        )
        prefix = meta + (b'"usage":null,"choices":[' if with_usage else b'"choices":[')
        step = max(behaviour.tokens_per_chunk, 1)
        groups = [[c.pieces[k : k + step] for k in range(0, len(c.pieces), step)] for c in choices]
        rounds = max(map(len, groups), default=0)
        head: list[bytes] = []
        content: list[bytes] = []
        sizes: list[int] = []
        tail: list[bytes] = []
        with_ids = self._with_token_ids(body)

        def ids(group: Sequence[str]) -> bytes:
            return b'"token_ids":%s,' % _dumps(_token_ids(group)) if with_ids else b""

        if chat:
            want_logprobs = bool(body.get("logprobs"))
            for c in choices:
                head.append(
                    prefix + b'{"index":%d,"delta":{"role":"assistant","content":""},'
                    b'"logprobs":null,"finish_reason":null}]}\n\n' % c.index
                )
            for k in range(rounds):
                for c, cg in zip(choices, groups, strict=True):
                    if k < len(cg):
                        group = cg[k]
                        logprobs = _dumps(_chat_logprobs(group)) if want_logprobs else b"null"
                        sizes.append(len(group))
                        content.append(
                            prefix + b'{"index":%d,"delta":{"content":%s},"logprobs":%s,%s'
                            b'"finish_reason":null}]}\n\n'
                            % (c.index, _dump_str("".join(group)), logprobs, ids(group))
                        )
            for c in choices:
                tail.append(
                    prefix
                    + b'{"index":%d,"delta":{},"logprobs":null,"finish_reason":"%s"}]}\n\n'
                    % (c.index, c.finish.encode())
                )
        else:
            want_logprobs = body.get("logprobs") is not None
            offsets = [0] * len(choices)
            for k in range(rounds):
                for j, (c, cg) in enumerate(zip(choices, groups, strict=True)):
                    if k < len(cg):
                        group = cg[k]
                        text = "".join(group)
                        logprobs = (
                            _dumps(_text_logprobs(group, offsets[j])) if want_logprobs else b"null"
                        )
                        offsets[j] += len(text)
                        sizes.append(len(group))
                        content.append(
                            prefix
                            + b'{"index":%d,"text":%s,"logprobs":%s,%s"finish_reason":null}]}\n\n'
                            % (c.index, _dump_str(text), logprobs, ids(group))
                        )
            for c in choices:
                tail.append(
                    prefix
                    + b'{"index":%d,"text":"","logprobs":null,"finish_reason":"%s"}]}\n\n'
                    % (c.index, c.finish.encode())
                )
        if not choices:
            content.append(prefix + b"]}\n\n")
            sizes.append(0)
        if with_usage:
            tail.append(meta + b'"choices":[],"usage":%s}\n\n' % _dumps(usage))
        tail.append(_DONE)
        return head, content, tail, sizes

    # -- sending ---------------------------------------------------------------------

    async def _send_plain(
        self, request: web.BaseRequest, payload: bytes, fault: Fault | None
    ) -> web.StreamResponse:
        if fault is Fault.RESET:
            response = web.StreamResponse(headers={"Content-Type": _JSON})
            response.content_length = len(payload)
            await response.prepare(request)
            await response.write(payload[: len(payload) // 2])
            return self._abort(request, response)
        if fault is Fault.TRUNCATED:
            payload = payload[: len(payload) // 2]
        elif fault is Fault.INVALID_JSON:
            payload = b'{"id": "fake", "choices": [ this is not JSON'
        elif fault is None:
            self.answered += 1
        return web.Response(body=payload, content_type=_JSON)

    async def _send_stream(
        self,
        request: web.BaseRequest,
        head: list[bytes],
        content: list[bytes],
        tail: list[bytes],
        fault: Fault | None,
        sizes: list[int],
    ) -> web.StreamResponse:
        if fault is Fault.INVALID_JSON:
            content, sizes = [b'data: {"id": "fake", "choices": [ this is not JSON\n\n'], [0]
        if fault in (Fault.TRUNCATED, Fault.RESET):
            content = content[: (len(content) + 1) // 2]
            tail = []
        self.completion_tokens_billed += sum(sizes[: len(content)])
        events = head + content + tail
        delay = self.behaviour.chunk_delay_s
        if fault is not Fault.RESET and delay <= 0:
            if fault is None:
                self.answered += 1
            return web.Response(body=b"".join(events), headers=_SSE_HEADERS)
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        for i, chunk in enumerate(events):
            if i and delay > 0:
                await self._pause(delay)
            await response.write(chunk)
        if fault is Fault.RESET:
            return self._abort(request, response)
        if fault is None:
            self.answered += 1
        return response

    @staticmethod
    def _abort(request: web.BaseRequest, response: web.StreamResponse) -> web.StreamResponse:
        """Drop the connection without finishing the response."""
        transport = request.transport
        if transport is not None:
            transport.abort()
        return response


def _token_ids(pieces: Sequence[str]) -> list[int]:
    """Made-up token ids, one per token (what vLLM's ``return_token_ids`` adds to a choice)."""
    return [1000 + len(piece) for piece in pieces]


def _chat_logprobs(pieces: Sequence[str], top: int = 0) -> dict[str, Any]:
    """Each token's logprob; with ``top``, the token itself as its one top alternative."""
    return {
        "content": [
            {
                "token": w,
                "logprob": _LOGPROB,
                "bytes": None,
                "top_logprobs": [{"token": w, "logprob": _LOGPROB, "bytes": None}][:top],
            }
            for w in pieces
        ]
    }


def _text_logprobs(pieces: Sequence[str], offset: int) -> dict[str, Any]:
    offsets: list[int] = []
    for w in pieces:
        offsets.append(offset)
        offset += len(w)
    return {
        "tokens": list(pieces),
        "token_logprobs": [_LOGPROB] * len(pieces),
        "top_logprobs": None,
        "text_offset": offsets,
    }


@contextmanager
def fake_server_in_thread(
    behaviour: FakeBehaviour | None = None, **kw: Any
) -> Iterator[FakeServer]:
    """Run a :class:`FakeServer` on its own event loop in a daemon thread.

    For sync tests, and for benchmarks whose client must not share the server's loop.
    Keyword arguments go to :class:`FakeServer`.
    """
    server = FakeServer(behaviour, **kw)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(server.__aenter__())
            except BaseException as exc:
                failure.append(exc)
                return
            finally:
                started.set()
            loop.run_forever()
            loop.run_until_complete(server.__aexit__(None, None, None))
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="fake-openai-server", daemon=True)
    thread.start()
    started.wait()
    if failure:
        thread.join()
        raise failure[0]
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)

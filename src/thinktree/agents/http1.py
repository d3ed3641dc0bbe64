"""A lean HTTP/1.1 client for plain-``http`` endpoints: keep-alive connections, parsed in C.

aiohttp spends about 75 µs of CPU on one small POST and its answer: against a local
model server at thousands of calls a second, more than the rest of a run spends on the
call. This client does only what :class:`~thinktree.agents.transport.Transport` needs
(a GET or a POST with a bytes body; the answer whole, or streamed) over a pool of
keep-alive connections, and llhttp (``httptools``, the parser uvicorn uses) reads the
answers. It spends about a third of aiohttp's CPU per call. TLS endpoints stay on
aiohttp.

Failures are ``OSError``s: :class:`ConnectionError` for a refused, reset or closed
connection or a malformed answer, :class:`TimeoutError` when ``timeout_s`` runs out
(it covers the whole exchange, waiting for a free connection included, like aiohttp's
``total`` timeout). A connection is reused only after an answer that ended cleanly and
allows it; one lost before answering a reused connection's request (the server closed
it while idle) is replaced by a new connection once.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Protocol, cast
from urllib.parse import urlsplit

import httptools

__all__ = ["Answer", "ConnectionPool", "MalformedAnswer", "handles"]

_PAUSE_AT: Final = 1 << 20  # bytes of a streamed answer not yet read: stop reading the socket
_DRAIN_S: Final = 1.0  # how long a stream left at its last event may take to end


class MalformedAnswer(ConnectionError):
    """The server's answer is not HTTP/1.1 this client can read."""


class _LostBeforeAnswer(ConnectionError):
    """The connection closed before any byte of the answer came (a stale keep-alive)."""


def handles(url: str) -> bool:
    """Whether this client can talk to ``url``: plain http, a host, no query or credentials."""
    parts = urlsplit(url)
    return (
        parts.scheme == "http"
        and bool(parts.hostname)
        and not parts.query
        and not parts.fragment
        and parts.username is None
        and parts.password is None
    )


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole answer: its status, headers (names in lower case) and body."""

    status: int
    headers: dict[str, str]
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection: sends a request, collects its answer through llhttp."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._error: BaseException | None = None
        self._busy = False  # a request was sent and its answer has not ended yet
        self._received = False  # a byte of the current answer came
        self._headers_done = False
        self._keep_alive = False
        self._wake_on_body = False  # streaming: wake the reader on each piece of body
        self._paused = False
        self._buffered = 0
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.complete = False
        self.lost = False

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if not self._busy:  # bytes nobody asked for: the connection is not sane
            self._fail(MalformedAnswer("the server sent bytes before any request"))
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(MalformedAnswer("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(MalformedAnswer(f"malformed HTTP answer: {exc}"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        closed_here = self.lost  # close() marks the connection before it aborts it
        self.lost = True
        self._cancel_timer()
        if not self._busy or self._error is not None:
            return
        if closed_here:
            self._fail(ConnectionError("the connection was closed before the answer ended"))
        elif self._headers_done and exc is None and self._until_eof():
            self.on_message_complete()  # a body that ends where the connection does
        elif not self._received:
            self._fail(_LostBeforeAnswer("the server closed the connection before answering"))
        else:
            reason = f": {exc}" if exc else ""
            self._fail(ConnectionError(f"the server closed the connection mid-answer{reason}"))

    # --- llhttp's callbacks -----------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive()  # llhttp forgets it at the end
        self._headers_done = True
        if self._wake_on_body:
            self._wake()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        if self._wake_on_body:
            self._buffered += len(body)
            if self._buffered > _PAUSE_AT and not self._paused and self._transport is not None:
                self._paused = True
                self._transport.pause_reading()
            self._wake()

    def on_message_complete(self) -> None:
        self.complete, self._busy = True, False
        self._cancel_timer()
        self._wake()

    # --- the pool's side ----------------------------------------------------------------

    def send(self, request: bytes, deadline: float, *, stream: bool) -> None:
        """Write ``request``; its answer must end by ``deadline`` (the loop's clock)."""
        self._busy, self._received = True, False
        self._headers_done = self._keep_alive = False
        self._wake_on_body, self._buffered = stream, 0
        self.status, self.headers, self.body, self.complete = 0, {}, [], False
        self._error = None
        self._timer = self._loop.call_at(deadline, self._time_out)
        assert self._transport is not None
        self._transport.write(request)

    async def wait(self) -> None:
        """Until the next piece of the answer, or its failure."""
        if self._error is not None:
            raise self._error
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    async def ended(self) -> None:
        """Until the answer has ended."""
        while not self.complete:
            await self.wait()

    async def headers_arrived(self) -> None:
        while not self._headers_done and not self.complete:
            await self.wait()

    def take(self) -> list[bytes]:
        """The pieces of body that came since the last take (streaming)."""
        pieces, self.body, self._buffered = self.body, [], 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return pieces

    def reusable(self) -> bool:
        """Whether the last answer ended cleanly on a connection that stays open."""
        if not self.complete or self.lost or self._transport is None:
            return False
        return not self._transport.is_closing() and self._keep_alive

    def close(self) -> None:
        self._cancel_timer()
        if not self.lost:
            self.lost = True
            if self._transport is not None:
                self._transport.abort()

    # --- inside -------------------------------------------------------------------------

    def _until_eof(self) -> bool:
        """Whether the answer's body runs to the end of the connection (no length given)."""
        if "content-length" in self.headers:
            return False
        return "chunked" not in self.headers.get("transfer-encoding", "").lower()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        self._error = error
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)
        self.close()

    def _time_out(self) -> None:
        self._timer = None
        self._fail(TimeoutError("the server did not answer in time"))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class ConnectionPool:
    """Keep-alive connections to the host of one ``http://`` base URL, at most ``limit``.

    Create and use it inside one event loop; :meth:`aclose` closes every connection.
    """

    def __init__(
        self, base_url: str, *, headers: Mapping[str, str], limit: int, timeout_s: float
    ) -> None:
        if not handles(base_url):
            raise ValueError(f"not a plain http URL this client handles: {base_url}")
        parts = urlsplit(base_url)
        assert parts.hostname is not None
        self._host, self._port = parts.hostname, parts.port or 80
        self._prefix = parts.path.rstrip("/")
        fields = {"Host": parts.netloc, **headers, "Accept-Encoding": "identity"}
        self._fields = "".join(f"{k}: {v}\r\n" for k, v in fields.items()).encode("latin-1")
        self._timeout_s = timeout_s
        self._limit = limit
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()

    async def request(self, method: str, route: str, body: bytes | None = None) -> Answer:
        """Send one request; its whole answer."""
        deadline = asyncio.get_running_loop().time() + self._timeout_s
        request = self._request(method, route, body)
        slots = await self._acquire(deadline)
        try:
            conn = await self._exchange(request, deadline, stream=False)
            answer = Answer(conn.status, conn.headers, b"".join(conn.body))
            self._release(conn)
        finally:
            slots.release()
        decoder = _decoder(answer.headers)
        if decoder is None:
            return answer
        return Answer(answer.status, answer.headers, _decode(decoder, answer.body, final=True))

    def stream(self, method: str, route: str, body: bytes | None = None) -> Streamed:
        """Send one request and read its answer as it comes: ``async with pool.stream(...)``."""
        return Streamed(self, self._request(method, route, body))

    async def aclose(self) -> None:
        """Close every connection; the pool may be used again, in this loop or another."""
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()
        self._slots = asyncio.Semaphore(self._limit)  # one that waited is bound to its loop

    # --- the connections --------------------------------------------------------------

    def _request(self, method: str, route: str, body: bytes | None) -> bytes:
        start = f"{method} {self._prefix}/{route} HTTP/1.1\r\n".encode("latin-1")
        if body is None:
            return start + self._fields + b"\r\n"
        return b"".join((start, self._fields, b"Content-Length: %d\r\n\r\n" % len(body), body))

    async def _exchange(self, request: bytes, deadline: float, *, stream: bool) -> _Connection:
        """A connection that sent ``request`` and has its answer (its head, for a stream).

        A kept connection the server closed unanswered is replaced once by a new one.
        """
        loop = asyncio.get_running_loop()
        conn, reused = await self._connection(loop, deadline)
        while True:
            try:
                conn.send(request, deadline, stream=stream)
                await (conn.headers_arrived() if stream else conn.ended())
                return conn
            except _LostBeforeAnswer:
                self._drop(conn)
                if not reused:
                    raise
                conn, reused = await self._connect(loop, deadline), False
            except BaseException:
                self._drop(conn)
                raise

    async def _acquire(self, deadline: float) -> asyncio.Semaphore:
        """A slot, by ``deadline``; release it on the semaphore returned (aclose makes a
        new one, which slots taken before must not be released to)."""
        slots = self._slots
        if not slots.locked():
            await slots.acquire()  # a free slot: no wait, no timer
            return slots
        async with asyncio.timeout_at(deadline):
            await slots.acquire()
        return slots

    async def _connection(
        self, loop: asyncio.AbstractEventLoop, deadline: float
    ) -> tuple[_Connection, bool]:
        """An open idle connection (reused: True), or a new one."""
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable():
                return conn, True
            self._drop(conn)
        return await self._connect(loop, deadline), False

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        async with asyncio.timeout_at(deadline):
            _, conn = await loop.create_connection(
                lambda: _Connection(loop), self._host, self._port
            )
        self._all.add(conn)
        return conn

    def _release(self, conn: _Connection) -> None:
        if conn.reusable():
            self._idle.append(conn)
        else:
            self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._all.discard(conn)


class Streamed:
    """An answer read as it comes. ``status`` and ``headers`` are there once entered."""

    def __init__(self, pool: ConnectionPool, request: bytes) -> None:
        self._pool = pool
        self._request = request
        self._conn: _Connection | None = None
        self._slots: asyncio.Semaphore | None = None
        self._rest = b""
        self._decoder: _Decoder | None = None
        self.status = 0
        self.headers: dict[str, str] = {}

    async def __aenter__(self) -> Streamed:
        pool = self._pool
        deadline = asyncio.get_running_loop().time() + pool._timeout_s
        slots = await pool._acquire(deadline)
        try:
            conn = await pool._exchange(self._request, deadline, stream=True)
            self._decoder = _decoder(conn.headers)
        except BaseException:
            slots.release()
            raise
        self._conn, self._slots = conn, slots
        self.status, self.headers = conn.status, conn.headers
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, slots, self._conn, self._slots = self._conn, self._slots, None, None
        if conn is None or slots is None:
            return
        keep = False
        try:
            if exc_type is None and not conn.complete:
                # left at the stream's last event: its end is on its way
                with contextlib.suppress(OSError):  # late or lost: not reused
                    async with asyncio.timeout(_DRAIN_S):
                        await conn.ended()
            keep = exc_type is None and conn.complete
        finally:
            if keep:
                self._pool._release(conn)
            else:  # left before the answer ended: the connection cannot be reused
                self._pool._drop(conn)
            slots.release()

    async def read(self) -> bytes:
        """The rest of the body, whole."""
        conn = self._conn
        assert conn is not None, "read inside `async with`"
        await conn.ended()
        data = b"".join(conn.take())
        return data if self._decoder is None else _decode(self._decoder, data, final=True)

    async def lines(self) -> list[bytes]:
        """The body's next whole lines (without their ``\\n``) as they come; [] at its end.

        A last line with no ``\\n`` comes alone, just before the end.
        """
        conn = self._conn
        assert conn is not None, "read inside `async with`"
        while True:
            pieces = conn.take()
            if pieces:
                data = b"".join(pieces)
                if self._decoder is not None:
                    data = _decode(self._decoder, data, final=False)
                lines = (self._rest + data).split(b"\n")
                self._rest = lines.pop()
                if lines:
                    return lines
            elif conn.complete:
                rest, self._rest = self._rest, b""
                return [rest] if rest else []
            else:
                await conn.wait()


class _Decoder(Protocol):
    """A zlib decompressobj."""

    def decompress(self, data: bytes, /) -> bytes: ...
    def flush(self) -> bytes: ...


def _decoder(headers: Mapping[str, str]) -> _Decoder | None:
    """What undoes the answer's ``Content-Encoding``; None for none.

    Requests ask for no encoding, but a server may send gzip or deflate all the same.
    """
    coding = headers.get("content-encoding", "").strip().lower()
    if coding in ("", "identity"):
        return None
    if coding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if coding == "deflate":
        return zlib.decompressobj()
    raise MalformedAnswer(
        f"the answer comes in the {coding!r} encoding, which this client does not read: "
        'set http_client = "aiohttp" for this endpoint'
    )


def _decode(decoder: _Decoder, data: bytes, *, final: bool) -> bytes:
    try:
        return decoder.decompress(data) + (decoder.flush() if final else b"")
    except zlib.error as exc:
        raise MalformedAnswer(f"the answer's encoded body does not decode: {exc}") from None

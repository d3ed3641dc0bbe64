"""The lean HTTP/1.1 client against real servers on 127.0.0.1 that answer as each test says.

Every test runs on asyncio's own loop and on uvloop (the loop the CLI runs on).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import openai
import pytest

from thinktree.agents import http1
from thinktree.agents.endpoint import EndpointClient, EndpointConfig, RetryKind, classify
from thinktree.agents.transport import Transport
from thinktree.errors import EndpointError

pytestmark = pytest.mark.anyio
E = TypeVar("E", bound=Exception)


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


Handler = Callable[["Conn", bytes, bytes], Awaitable[bool]]  # False: close the connection


@dataclass
class Conn:
    """One connection the server accepted: its index, and the requests it has read."""

    index: int
    writer: asyncio.StreamWriter
    requests: int = 0


@dataclass
class Server:
    handler: Handler
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    heads: list[bytes] = field(default_factory=list)
    url: str = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Conn(self.connections, writer)
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.heads.append(head)
                conn.requests += 1
                if not await self.handler(conn, head, body):
                    return
        finally:
            self.open_now -= 1
            with contextlib.suppress(ConnectionError):
                writer.close()


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[Server]:
    server = Server(handler)
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield server
    finally:
        listener.close()


def ok(body: bytes, *extra: bytes) -> bytes:
    head = [b"HTTP/1.1 200 OK", b"Content-Type: application/json", *extra]
    head.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def echo(conn: Conn, head: bytes, body: bytes) -> bool:
    """Answers each request with its own body and the connection's index."""
    conn.writer.write(ok(b'{"conn": %d, "got": %s}' % (conn.index, body or b"null")))
    await conn.writer.drain()
    return True


def slow(
    delay_s: float, *, first_only: bool = False, arrived: asyncio.Event | None = None
) -> Handler:
    """Echoes after ``delay_s`` (only on the first connection, with ``first_only``); sets
    ``arrived`` when a request has come."""

    async def answer(conn: Conn, head: bytes, body: bytes) -> bool:
        if arrived is not None:
            arrived.set()
        if conn.index == 0 or not first_only:
            await asyncio.sleep(delay_s)
        return await echo(conn, head, body)

    return answer


def pool(url: str, *, limit: int = 4, timeout_s: float = 5.0) -> http1.ConnectionPool:
    return http1.ConnectionPool(url, headers={"X-Test": "yes"}, limit=limit, timeout_s=timeout_s)


async def post_fails(url: str, error: type[E], *, timeout_s: float = 5) -> E:
    """The SDK error a POST through the lean transport raises."""
    transport = Transport(url, "EMPTY", timeout_s=timeout_s, max_connections=2)
    assert transport.lean
    try:
        with pytest.raises(error) as caught:
            await transport.post("chat/completions", {"a": 1})
    finally:
        await transport.aclose()
    return caught.value


async def test_requests_reuse_one_keep_alive_connection() -> None:
    async with serving(echo) as server:
        client = pool(server.url)
        try:
            answers = [
                await client.request("POST", "chat/completions", b"%d" % i) for i in range(5)
            ]
            got = await client.request("GET", "models")
        finally:
            await client.aclose()
    assert [a.body for a in answers] == [b'{"conn": 0, "got": %d}' % i for i in range(5)]
    assert got.body == b'{"conn": 0, "got": null}'
    assert {a.status for a in answers} == {200}
    assert answers[0].headers["content-type"] == "application/json"
    assert server.connections == 1
    first = server.heads[0].decode()
    assert first.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
    port = server.url.split(":")[2].split("/")[0]
    for line in (f"Host: 127.0.0.1:{port}", "X-Test: yes", "Content-Length: 1"):
        assert line in first.split("\r\n")
    assert server.heads[-1].startswith(b"GET /v1/models HTTP/1.1\r\n")
    assert b"Content-Length" not in server.heads[-1]


async def test_chunked_and_until_close_bodies_are_read_whole() -> None:
    async def answer(conn: Conn, head: bytes, body: bytes) -> bool:
        if b"chunked" in head:
            pieces = [b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"]
            conn.writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in pieces:
                conn.writer.write(piece)
                await conn.writer.drain()
                await asyncio.sleep(0.01)
            return True
        conn.writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end")
        await conn.writer.drain()
        return False  # the body ends where the connection does

    async with serving(answer) as server:
        client = pool(server.url)
        try:
            chunked = [await client.request("POST", "chunked", b"{}") for _ in range(2)]
            to_close = [await client.request("POST", "close", b"{}") for _ in range(2)]
        finally:
            await client.aclose()
    assert [a.body for a in chunked] == [b"hello world"] * 2
    assert [a.body for a in to_close] == [b"to the end"] * 2
    # chunked answers keep the connection; each answer that ends it takes one
    assert server.connections == 2


async def test_a_kept_connection_the_server_dropped_is_replaced_once() -> None:
    async def answer(conn: Conn, head: bytes, body: bytes) -> bool:
        if conn.requests > 1:
            return False  # a keep-alive timeout that meets the next request: no answer
        return await echo(conn, head, body)

    async with serving(answer) as server:
        client = pool(server.url)
        try:
            answers = [await client.request("POST", "x", b"%d" % i) for i in range(3)]
        finally:
            await client.aclose()
    assert [a.body for a in answers] == [b'{"conn": %d, "got": %d}' % (i, i) for i in range(3)]
    assert server.connections == 3


async def test_a_new_connection_closed_unanswered_is_a_connection_error() -> None:
    async def never(conn: Conn, head: bytes, body: bytes) -> bool:
        return False

    async with serving(never) as server:
        client = pool(server.url)
        try:
            with pytest.raises(ConnectionError, match="before answering"):
                await client.request("POST", "x", b"{}")
        finally:
            await client.aclose()
    assert server.connections == 1  # not retried: the server really does not answer


async def test_a_malformed_answer_becomes_the_sdks_connection_error() -> None:
    async def garbage(conn: Conn, head: bytes, body: bytes) -> bool:
        conn.writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await conn.writer.drain()
        return True

    async with serving(garbage) as server:
        client = pool(server.url)
        try:
            with pytest.raises(http1.MalformedAnswer, match="malformed HTTP answer"):
                await client.request("POST", "x", b"{}")
        finally:
            await client.aclose()
        error = await post_fails(server.url, openai.APIConnectionError)
    assert classify(error) is RetryKind.CONNECTION


async def test_a_silent_server_times_out_and_its_connection_is_not_reused() -> None:
    async with serving(slow(2, first_only=True)) as server:
        client = pool(server.url, timeout_s=0.3)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(TimeoutError):
                await client.request("POST", "x", b"1")
            assert loop.time() - started < 1.5
            answer = await client.request("POST", "x", b"2")
        finally:
            await client.aclose()
        assert answer.body == b'{"conn": 1, "got": 2}'
        server.connections = 0  # the transport's first connection is slow again
        error = await post_fails(server.url, openai.APITimeoutError, timeout_s=0.3)
    assert classify(error) is RetryKind.TIMEOUT


async def test_a_cancelled_request_drops_its_connection() -> None:
    arrived = asyncio.Event()
    async with serving(slow(0.5, first_only=True, arrived=arrived)) as server:
        client = pool(server.url, limit=1)
        try:
            task = asyncio.ensure_future(client.request("POST", "x", b"1"))
            await asyncio.wait_for(arrived.wait(), 5)  # sent, its answer not yet come
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # the one slot is free again, and the late answer is never read as this one's
            answer = await client.request("POST", "x", b"2")
        finally:
            await client.aclose()
    assert answer.body == b'{"conn": 1, "got": 2}'


async def test_no_more_connections_than_the_limit() -> None:
    async with serving(slow(0.05)) as server:
        client = pool(server.url, limit=2)
        try:
            answers = await asyncio.gather(
                *(client.request("POST", "x", b"%d" % i) for i in range(6))
            )
        finally:
            await client.aclose()
    assert sorted(a.body[-2:-1] for a in answers) == [b"%d" % i for i in range(6)]
    assert server.most_open == 2
    assert server.connections == 2


def sse(*events: bytes) -> list[bytes]:
    return [b"data: " + e + b"\n\n" for e in events]


async def test_stream_lines_cut_anywhere_come_whole() -> None:
    events = sse(b'{"i": 0}', b'{"i": 1, "long": "' + b"x" * 3000 + b'"}', b'{"i": 2}', b"[DONE]")
    stream = b"".join(events)
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(stream), stream)

    async def trickle(conn: Conn, head: bytes, body: bytes) -> bool:
        conn.writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked"
            b"\r\n\r\n"
        )
        end = len(chunked) - 5  # the last chunk, sent late: a reader at [DONE] waits for it
        for start in range(0, end, 7):  # cuts lines, the chunk's size line and its end
            conn.writer.write(chunked[start : min(start + 7, end)])
            await conn.writer.drain()
            if start % 140 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        conn.writer.write(chunked[end:])
        return True

    async with serving(trickle) as server:
        client = pool(server.url)
        try:
            async with client.stream("POST", "x", b"{}") as answer:
                assert answer.status == 200
                lines: list[bytes] = []
                while batch := await answer.lines():
                    lines.extend(batch)
            transport = Transport(server.url, "EMPTY", timeout_s=5, max_connections=1)
            try:
                # it stops at [DONE], and waits for the end to keep the connection
                data = [d async for d in transport.stream("chat/completions", {})]
                again = [d async for d in transport.stream("chat/completions", {})]
            finally:
                await transport.aclose()
        finally:
            await client.aclose()
    assert lines == stream.split(b"\n")[:-1]
    assert data == again == [e[6:-2] for e in events[:-1]]
    assert server.connections == 2  # one for the pool, one for the transport's two streams


async def test_a_stream_left_early_frees_its_slot_and_drops_its_connection() -> None:
    async def endless(conn: Conn, head: bytes, body: bytes) -> bool:
        if conn.index > 0:
            return await echo(conn, head, body)
        conn.writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            for i in range(200):
                line = b"data: %d\n" % i
                conn.writer.write(b"%x\r\n%s\r\n" % (len(line), line))
                await conn.writer.drain()
                await asyncio.sleep(0.01)
        return False

    async with serving(endless) as server:
        client = pool(server.url, limit=1)
        try:
            async with client.stream("POST", "x", b"{}") as answer:
                first = await answer.lines()
            answer_after = await client.request("POST", "x", b"7")
        finally:
            await client.aclose()
    assert first[0] == b"data: 0"
    assert answer_after.body == b'{"conn": 1, "got": 7}'


async def test_error_statuses_keep_their_body_and_headers() -> None:
    async def limited(conn: Conn, head: bytes, body: bytes) -> bool:
        error = b'{"error": {"message": "slow down"}}'
        conn.writer.write(
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: %d\r\n\r\n%s"
            % (len(error), error)
        )
        await conn.writer.drain()
        return True

    async with serving(limited) as server:
        transport = Transport(server.url, "EMPTY", timeout_s=5, max_connections=1)
        try:
            with pytest.raises(openai.RateLimitError) as whole:
                await transport.post("chat/completions", {})
            with pytest.raises(openai.RateLimitError) as streamed:
                async for _ in transport.stream("chat/completions", {}):
                    pass
        finally:
            await transport.aclose()
    for caught in (whole, streamed):
        assert caught.value.response.headers["retry-after"] == "3"
        assert "slow down" in caught.value.message
    assert server.connections == 1


async def test_a_redirect_is_an_error_that_says_where_to_point_the_endpoint() -> None:
    """The lean client follows no redirect: a POST cannot be replayed safely after one."""

    async def moved(conn: Conn, head: bytes, body: bytes) -> bool:
        conn.writer.write(
            b"HTTP/1.1 301 Moved Permanently\r\n"
            b"Location: https://models.example.org/v1/chat/completions\r\n"
            b"Content-Length: 0\r\n\r\n"
        )
        await conn.writer.drain()
        return True

    async with serving(moved) as server:
        error = await post_fails(server.url, openai.APIStatusError)
        client = EndpointClient(EndpointConfig(name="moved", base_url=server.url, model="m"))
        try:
            with pytest.raises(EndpointError) as caught:
                await client.chat([{"role": "user", "content": "hi"}], max_tokens=2)
        finally:
            await client.aclose()
    assert error.status_code == 301
    assert classify(error) is None  # never retried
    for message in (error.message, str(caught.value)):
        assert "redirects to https://models.example.org/v1/chat/completions" in message
        assert "base_url" in message
    assert str(caught.value).endswith(
        "answered HTTP 301: the server redirects to https://"
        "models.example.org/v1/chat/completions: set the "
        "endpoint's base_url to it"
    )
    assert "\n" not in str(caught.value)
    assert len(server.heads) == 2  # one request each, no retry


@pytest.mark.parametrize(
    ("url", "lean"),
    [
        ("http://127.0.0.1:8000/v1", True),
        ("http://localhost/v1/", True),
        ("http://[::1]:8000", True),
        ("https://api.openai.com/v1", False),
        ("http://example.org/v1?api-version=1", False),
        ("http://user:secret@example.org/v1", False),
        ("unix:///tmp/socket", False),
    ],
)
def test_which_endpoints_the_lean_client_takes(url: str, lean: bool) -> None:
    assert http1.handles(url) is lean
    assert Transport(url, "EMPTY", timeout_s=1, max_connections=1).lean is lean
    assert Transport(url, "EMPTY", timeout_s=1, max_connections=1, lean=False).lean is False


async def test_a_stream_cut_by_its_timeout_or_a_close_fails_rather_than_ends() -> None:
    async def stall(conn: Conn, head: bytes, body: bytes) -> bool:
        # no length and not chunked: the body would end where the connection does
        conn.writer.write(b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\ndata: {"i": 0}\n\n')
        await conn.writer.drain()
        await asyncio.sleep(2)
        return False

    async with serving(stall) as server:
        transport = Transport(server.url, "EMPTY", timeout_s=0.3, max_connections=1)
        got: list[bytes] = []
        try:
            with pytest.raises(openai.APITimeoutError):
                async for data in transport.stream("chat/completions", {}):
                    got.append(data)
        finally:
            await transport.aclose()
        client = pool(server.url)
        try:
            async with client.stream("POST", "x", b"{}") as answer:
                first = await answer.lines()
                await client.aclose()  # the run closes while the stream is being read
                with pytest.raises(ConnectionError, match="closed before the answer ended"):
                    await answer.lines()
        finally:
            await client.aclose()
    assert got == [b'{"i": 0}']
    assert first == [b'data: {"i": 0}', b""]


def test_a_closed_pool_serves_another_event_loop() -> None:
    results: list[list[bytes]] = []

    async def busy_round(client: http1.ConnectionPool) -> list[bytes]:
        # more requests than connections: the pool's slots wait, which binds them to a loop
        answers = await asyncio.gather(*(client.request("POST", "x", b"1") for _ in range(4)))
        await client.aclose()
        return [a.body for a in answers]

    async def serve_two_loops() -> None:
        async with serving(echo) as server:
            client = pool(server.url, limit=1)
            results.append(await busy_round(client))
            # a second loop, in a thread, while this one serves
            second = await asyncio.to_thread(asyncio.run, busy_round(client))
            results.append(second)

    asyncio.run(serve_two_loops())
    assert results == [[b'{"conn": 0, "got": 1}'] * 4, [b'{"conn": 1, "got": 1}'] * 4]


async def test_an_answer_encoded_all_the_same_is_decoded() -> None:
    whole = b'{"choices": []}'
    stream = b"".join(sse(b'{"i": 0}', b'{"i": 1}', b"[DONE]"))

    async def encoded(conn: Conn, head: bytes, body: bytes) -> bool:
        assert b"Accept-Encoding: identity" in head  # asked for none
        if b"/stream" in head.split(b"\r\n")[0]:
            packed = gzip.compress(stream)
            conn.writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            for start in range(0, len(packed), 5):
                piece = packed[start : start + 5]
                conn.writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await conn.writer.drain()
            conn.writer.write(b"0\r\n\r\n")
        elif b"/br" in head.split(b"\r\n")[0]:
            conn.writer.write(ok(b"xx", b"Content-Encoding: br"))
        else:
            conn.writer.write(ok(zlib.compress(whole), b"Content-Encoding: deflate"))
        await conn.writer.drain()
        return True

    async with serving(encoded) as server:
        client = pool(server.url)
        try:
            answer = await client.request("POST", "whole", b"{}")
            async with client.stream("POST", "stream", b"{}") as streamed:
                lines: list[bytes] = []
                while batch := await streamed.lines():
                    lines.extend(batch)
            with pytest.raises(http1.MalformedAnswer, match=r"'br' encoding.*http_client"):
                await client.request("POST", "br", b"{}")
        finally:
            await client.aclose()
    assert answer.body == whole
    assert lines == stream.split(b"\n")[:-1]


async def test_closing_the_pool_mid_flight_fails_what_it_cut_and_keeps_its_limit() -> None:
    arrived = asyncio.Event()
    async with serving(slow(0.1, arrived=arrived)) as server:
        client = pool(server.url, limit=1)
        try:
            cut = asyncio.ensure_future(client.request("POST", "x", b"1"))
            waiting = asyncio.ensure_future(client.request("POST", "x", b"2"))
            await asyncio.wait_for(arrived.wait(), 5)  # one sent, one waiting for the slot
            await client.aclose()
            with pytest.raises(ConnectionError, match="closed before the answer ended"):
                await cut
            # the waiting one gets the slot the cut one let go of
            answer = await asyncio.wait_for(waiting, 5)
            before = server.connections
            later = await asyncio.gather(*(client.request("POST", "x", b"3") for _ in range(3)))
        finally:
            await client.aclose()
    assert answer.body.endswith(b'"got": 2}')
    assert [a.body[-2:] for a in later] == [b"3}"] * 3
    assert server.connections == before  # one at a time, on the connection kept

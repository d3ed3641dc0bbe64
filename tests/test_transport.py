"""The lean transport, the group-committing call store and the batched bus, on real parts."""

from __future__ import annotations

import json
import socket
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import openai
import pytest

from thinktree.agents.endpoint import (
    Choice,
    Completion,
    EndpointClient,
    EndpointConfig,
    RetryKind,
    classify,
)
from thinktree.agents.transport import Transport, parse
from thinktree.errors import RecordingError
from thinktree.orchestrator.bus import BatchSubscriber, EventBus, event_bus
from thinktree.orchestrator.call_cache import SqliteCallCache
from thinktree.orchestrator.events import Event, NodeDelta, RunFinished
from thinktree.orchestrator.subscribers import TraceWriter
from thinktree.testing.fake_server import FakeBehaviour, FakeServer, Fault

pytestmark = pytest.mark.anyio
BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


LEAN = pytest.mark.parametrize("lean", [True, False], ids=["lean", "aiohttp"])


@LEAN
@pytest.mark.parametrize(
    ("fault", "error", "kind"),
    [
        (Fault.RATE_LIMIT, openai.RateLimitError, RetryKind.RATE_LIMIT),
        (Fault.SERVER_ERROR, openai.InternalServerError, RetryKind.TRANSIENT),
        (Fault.UNAVAILABLE, openai.InternalServerError, RetryKind.TRANSIENT),
    ],
)
async def test_http_errors_become_the_sdks_exceptions(
    fault: Fault, error: type[Exception], kind: RetryKind, lean: bool
) -> None:
    async with FakeServer(faults=[fault], retry_after_s=2.0) as server:
        transport = Transport(server.base_url, "EMPTY", timeout_s=10, max_connections=4, lean=lean)
        assert transport.lean is lean
        try:
            with pytest.raises(error) as caught:
                await transport.post("chat/completions", BODY)
        finally:
            await transport.aclose()
    assert classify(caught.value) is kind
    assert isinstance(caught.value, openai.APIStatusError)
    if fault is Fault.RATE_LIMIT:
        assert caught.value.response.headers.get("Retry-After") is not None


@LEAN
async def test_a_bad_request_keeps_the_servers_message(lean: bool) -> None:
    async with FakeServer() as server:
        transport = Transport(server.base_url, "EMPTY", timeout_s=10, max_connections=4, lean=lean)
        try:
            with pytest.raises(openai.BadRequestError) as caught:
                await transport.post("chat/completions", {**BODY, "messages": "not a list"})
        finally:
            await transport.aclose()
    assert caught.value.status_code == 400
    assert "messages" in caught.value.message
    assert classify(caught.value) is None  # never retried


@LEAN
async def test_no_server_is_a_connection_error(lean: bool) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    transport = Transport(url, "EMPTY", timeout_s=5, max_connections=4, lean=lean)
    try:
        with pytest.raises(openai.APIConnectionError) as caught:
            await transport.post("chat/completions", BODY)
    finally:
        await transport.aclose()
    assert classify(caught.value) is RetryKind.CONNECTION


async def test_the_lean_and_aiohttp_paths_read_the_same_answers() -> None:
    body = {**BODY, "n": 2}
    seen: dict[bool, tuple[list[Any], list[Any]]] = {}
    async with FakeServer() as server:
        for lean in (True, False):
            transport = Transport(
                server.base_url, "EMPTY", timeout_s=10, max_connections=4, lean=lean
            )
            try:
                whole = json.loads(await transport.post("chat/completions", body))
                events = [
                    json.loads(data)
                    async for data in transport.stream("chat/completions", {**body, "stream": True})
                ]
                models = json.loads(await transport.get("models"))
            finally:
                await transport.aclose()
            assert [m["id"] for m in models["data"]] == ["fake-model"]
            seen[lean] = (whole["choices"], [e["choices"] for e in events])
    assert seen[True] == seen[False]
    assert len(seen[True][0]) == 2
    assert len(seen[True][1]) > 2  # streamed in pieces


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/v1",
        "http://127.0.0.1:{port}/v1/",
        "http://127.0.0.1:{port}/v1?api-version=1",
        "http://127.0.0.1:{port}/v1?",
        "http://127.0.0.1:{port}/v1#frag",
        "http://user:secret@127.0.0.1:{port}/v1",
        "http://token@127.0.0.1:{port}/v1",
    ],
)
async def test_the_endpoint_urls_the_config_takes_are_those_the_transport_reaches(
    url: str,
) -> None:
    """A base URL that ``check_url`` takes gets each route at the end of its path, with the
    key as a bearer token, on both clients; each one it refuses would not on one client at
    least: the route goes into the query or is cut off by the fragment, or no request is
    sent at all (aiohttp refuses credentials in the URL beside the bearer token)."""
    from aiohttp import web

    from thinktree.config import check_url
    from thinktree.errors import ConfigError

    seen: list[tuple[str, str | None]] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append((request.path_qs, request.headers.get("Authorization")))
        return web.json_response({"object": "list", "data": []})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    base = url.format(port=port).rstrip("/")  # as endpoint_from passes it on
    reached: list[bool] = []
    try:
        for lean in (True, False):
            seen.clear()
            transport = Transport(base, "KEY", timeout_s=5, max_connections=2, lean=lean)
            try:
                await transport.get("models")
            except Exception:  # any failure is not reaching it
                reached.append(False)
            else:
                reached.append(seen == [("/v1/models", "Bearer KEY")])
            finally:
                await transport.aclose()
    finally:
        await runner.cleanup()
    try:
        check_url(base, "url")
    except ConfigError:
        taken = False
    else:
        taken = True
    assert all(reached) is taken, (base, reached)  # "…/v1?" reaches it on the lean client only


def test_a_body_that_is_no_completion_is_a_validation_error() -> None:
    from openai.types.chat import ChatCompletion

    with pytest.raises(openai.APIResponseValidationError) as caught:
        parse(ChatCompletion, b'{"id": "x", "choices": [ not json')
    assert classify(caught.value) is RetryKind.MALFORMED
    good = parse(
        ChatCompletion,
        b'{"id":"x","object":"chat.completion","created":1,"model":"m","choices":'
        b'[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"hi",'
        b'"reasoning_content":"hmm"}}]}',
    )
    assert isinstance(good, ChatCompletion)
    assert good.choices[0].message.content == "hi"
    assert getattr(good.choices[0].message, "reasoning_content", None) == "hmm"


@pytest.mark.parametrize("token_ids", [False, True], ids=["logprobs", "token-ids"])
@pytest.mark.parametrize("route", ["chat", "completions"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_per_choice_tokens_of_an_n_request_sum_to_the_usage(
    token_ids: bool, route: str, stream: bool
) -> None:
    # splitting the usage by text length would give [2, 4, 1]: only a real count gives this
    replies = ["a b c d", "abcdefghijklmnop", "x y"]
    behaviour = FakeBehaviour(reply=lambda body, i: replies[i])
    async with FakeServer(behaviour, record_bodies=True) as server:
        client = EndpointClient(
            EndpointConfig(name="fake", base_url=server.base_url, model="fake-model")
        )
        seen: list[str] = []

        async def on_delta(index: int, text: str, *, first: bool) -> None:
            seen.append(text)

        options: dict[str, Any] = {
            "max_tokens": 8,
            "n": 3,
            "token_ids": token_ids,
            "on_delta": on_delta if stream else None,
        }
        try:
            if route == "chat":
                result = await client.chat(BODY["messages"], **options)  # type: ignore[arg-type]
            else:
                result = await client.complete("Say something.", **options)
        finally:
            await client.aclose()
        (body,) = server.bodies
    assert [c.completion_tokens for c in result.choices] == [4, 1, 2]
    assert result.completion_tokens == 7
    assert [c.text for c in result.choices] == replies
    assert bool(seen) is stream
    # token ids replace the logprobs, which were asked for only to be counted
    assert body.get("return_token_ids", False) is token_ids
    assert ("logprobs" in body) is not token_ids


# -- the call store: group commit --------------------------------------------------------


def _completion(i: int) -> Completion:
    return Completion(
        choices=[Choice(text=f"answer {i}", finish_reason="stop", completion_tokens=i)],
        prompt_tokens=3,
        completion_tokens=i,
        latency_s=0.01,
        call_id=f"call-{i}",
    )


async def test_concurrent_records_are_all_committed_before_they_return(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite"
    cache = SqliteCallCache(path)
    committed: list[int] = []

    async def one(i: int) -> None:
        await cache.record(f"fp{i}", "chat", f'{{"i":{i}}}', _completion(i))
        # durable before it counts: another connection sees the row already
        conn = sqlite3.connect(path)
        try:
            row = conn.execute("SELECT response FROM responses WHERE fingerprint = ?", (f"fp{i}",))
            assert row.fetchone() is not None
        finally:
            conn.close()
        committed.append(i)

    try:
        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(one, i)
        assert sorted(committed) == list(range(200))
        assert cache.cached() == 200
        hit = await cache.lookup("fp7")
        assert hit == _completion(7)
        assert await cache.lookup("never") is None
    finally:
        cache.close()
    reopened = SqliteCallCache(path)  # a resumed run finds every call
    try:
        assert await reopened.lookup("fp199") == _completion(199)
    finally:
        reopened.close()


async def test_a_failed_commit_fails_every_caller_of_its_batch(tmp_path: Path) -> None:
    cache = SqliteCallCache(tmp_path / "calls.sqlite")
    cache.close()  # every commit now fails
    failures: list[BaseException] = []

    async def one(i: int) -> None:
        try:
            await cache.record(f"fp{i}", "chat", "{}", _completion(i))
        except RecordingError as exc:  # the run stops: it cannot keep what it pays for
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, i)
    assert len(failures) == 20


def test_a_call_store_closed_aside_is_closed_once_close_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a run's end: finish() closes the store in a thread while the results are made, and
    # close() waits for it, with the run's retries written and the WAL folded in
    cache = SqliteCallCache(tmp_path / "calls.sqlite")
    cache.session_retries = lambda: 3
    cache.finish()
    cache.close()
    assert not cache.closing and not (tmp_path / "calls.sqlite-wal").exists()
    reopened = SqliteCallCache(tmp_path / "calls.sqlite")
    assert reopened.retries_before == 3
    reopened.close()
    # what closing it aside raised is raised by the close() that waits for it, once
    failing = SqliteCallCache(tmp_path / "calls.sqlite")

    def fails() -> None:
        raise RecordingError("the disk is full")

    monkeypatch.setattr(failing, "_close", fails)
    failing.finish()
    with pytest.raises(RecordingError, match="the disk is full"):
        failing.close()
    failing.close()


# -- the bus: order, bounds, delivery ------------------------------------------------------


class _Slow:
    wants_deltas = False

    def __init__(self) -> None:
        self.seen: list[Event] = []

    def handle(self, event: Event) -> None:
        self.seen.append(event)

    async def aclose(self) -> None:
        return None


async def test_the_bus_delivers_everything_in_order_and_bounds_its_queue() -> None:
    sub = _Slow()
    events = [RunFinished(run_id=str(i), status="completed") for i in range(5000)]
    longest = 0
    async with event_bus([sub], buffer=64) as bus:
        for event in events:
            await bus.emit(event)
            longest = max(longest, len(bus._queue))
    assert [e.run_id for e in sub.seen] == [e.run_id for e in events]  # type: ignore[attr-defined]
    assert longest <= 64


async def test_events_emitted_together_keep_their_order_among_others_and_one_time() -> None:
    # a request's n nodes: queued together, in order, among events emitted one by one,
    # with one time stamp; the queue is bounded but for the last batch let in
    sub = _Slow()
    events = [RunFinished(run_id=str(i), status="completed") for i in range(5000)]
    longest = 0
    async with event_bus([sub], buffer=64) as bus:
        for start in range(0, len(events), 20):
            await bus.emit(events[start])
            await bus.emit_all(events[start + 1 : start + 20])
            longest = max(longest, len(bus._queue))
    assert sub.seen == events
    assert longest < 64 + 19
    assert all(len({e.at for e in events[s + 1 : s + 20]}) == 1 for s in range(0, 5000, 20))


async def test_events_emitted_together_go_in_all_or_none() -> None:
    # the run stops while the batch waits for room, or the bus is closed: none of them is
    # queued (the nodes of one request are never announced in part)
    bus = EventBus([_Slow()], time.monotonic(), buffer=1)  # no dispatcher takes its queue
    first = RunFinished(run_id="0", status="completed")
    batch = [RunFinished(run_id=str(i), status="completed") for i in (1, 2)]
    await bus.emit(first)
    with anyio.move_on_after(0.1) as waited:
        await bus.emit_all(batch)
    assert waited.cancelled_caught and list(bus._queue) == [first]
    bus._close()
    with pytest.raises(anyio.ClosedResourceError):
        await bus.emit_all(batch)
    assert list(bus._queue) == [first]


class _Batches(_Slow):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def handle_batch(self, events: Sequence[Event]) -> None:
        self.calls += 1
        self.seen.extend(events)


async def test_a_batch_subscriber_gets_batches_beside_one_that_takes_events_one_by_one() -> None:
    plain, batches = _Slow(), _Batches()
    assert isinstance(batches, BatchSubscriber) and not isinstance(plain, BatchSubscriber)
    events = [RunFinished(run_id=str(i), status="completed") for i in range(5000)]
    async with event_bus([plain, batches], buffer=256) as bus:
        for event in events:
            await bus.emit(event)
    assert plain.seen == events and batches.seen == events
    assert batches.calls < len(events)  # what was queued together came in one call


async def test_the_trace_writes_streamed_text_only_when_asked(tmp_path: Path) -> None:
    events: list[Event] = [
        NodeDelta(node_id="p1/b1/think", text="Let me"),
        RunFinished(run_id="r", status="completed"),
    ]
    for deltas, expected in ((False, ["run-finished"]), (True, ["node-delta", "run-finished"])):
        path = tmp_path / f"trace-{deltas}.jsonl"
        # another subscriber (the live view) may want deltas when the trace does not
        async with event_bus([TraceWriter(path, deltas=deltas), _Slow()]) as bus:
            for event in events:
                await bus.emit(event)
        lines = path.read_text().splitlines()
        assert [json.loads(line)["type"] for line in lines] == expected


async def test_nodes_ended_as_the_run_is_cancelled_never_wait_for_a_gone_dispatcher() -> None:
    # Ctrl-C with many calls in flight: the dispatcher is cancelled with the run, while each
    # call ends its node in a shielded scope; more of them than the queue holds used to
    # wait forever for room nobody would make.
    sub = _Slow()
    events = [RunFinished(run_id=str(i), status="completed") for i in range(10)]
    with anyio.CancelScope() as run:
        async with event_bus([sub], buffer=2) as bus:
            try:
                run.cancel()
                await anyio.sleep(1)
            finally:
                with anyio.CancelScope(shield=True), anyio.fail_after(5):
                    for event in events:
                        await bus.emit(event)
    assert run.cancelled_caught
    assert sub.seen == events  # the bus's exit delivered what was queued

"""Each call counted as the server answered it: its tokens, its latency and its identity.

A reply without token usage is never counted as 0 tokens, nor one with impossible usage
(below 0, past any context window, no whole number) as it came; a call's latency is the
server's time for the attempt that answered, not time spent queued in the client; and
calls are told apart by ids of their own, not by the server's response ids.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from choice_set import beta_problems
from thinktree.agents.capabilities import Capabilities
from thinktree.agents.endpoint import (
    Choice,
    Completion,
    EndpointClient,
    EndpointConfig,
    PoolMember,
)
from thinktree.agents.modes import ModeSettings
from thinktree.agents.pool import EndpointPool
from thinktree.errors import EndpointError
from thinktree.orchestrator.call_cache import completion_from_json, completion_to_json
from thinktree.orchestrator.events import Event, NodeFinished
from thinktree.orchestrator.run import RunSettings, execute, load_resume
from thinktree.orchestrator.store import StoreReader
from thinktree.testing.fake_server import FakeBehaviour, FakeServer

pytestmark = pytest.mark.anyio

MSGS = [{"role": "user", "content": "hi"}]
REPLY = "one two three four five six seven eight. Answer: B"
PROBLEMS = beta_problems(3)


def config(server: FakeServer, **kw: Any) -> EndpointConfig:
    return EndpointConfig(
        name="fake", base_url=server.base_url, model="fake-model", max_backoff_s=0.01, **kw
    )


# -- usage -----------------------------------------------------------------------------


class NoUsage(FakeServer):
    """Plain replies carry no ``usage``: all of them, or those of the requests in ``bare``."""

    def __init__(self, *args: Any, bare: Collection[int] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.bare = bare

    def _response(
        self, body: Any, rid: str, choices: Any, usage: dict[str, int], *, chat: bool
    ) -> bytes:
        data = orjson.loads(super()._response(body, rid, choices, usage, chat=chat))
        if self.bare is None or self.requests - 1 in self.bare:
            del data["usage"]
        return orjson.dumps(data)


async def test_an_endpoint_that_reports_no_usage_is_refused_before_the_run(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    async with NoUsage(FakeBehaviour(reply=REPLY)) as server:
        settings = RunSettings(modes=ModeSettings(mode="budget", budget=32), out=folder)
        with pytest.raises(EndpointError, match="answers without token usage") as caught:
            await execute(PROBLEMS, config(server), settings)
        asked = server.requests
    assert "\n" not in str(caught.value)
    assert not folder.exists()
    assert asked == 1  # the probe's plain chat check, not sent again: no usage is its way


async def test_a_reply_without_usage_mid_run_is_sent_again_not_counted_as_zero() -> None:
    async with NoUsage(FakeBehaviour(reply=REPLY), bare={1}) as server:
        client = EndpointClient(config(server))
        try:
            first = await client.chat(MSGS, max_tokens=16)
            second = await client.chat(MSGS, max_tokens=16)  # its first reply had no usage
        finally:
            await client.aclose()
    assert first.completion_tokens == second.completion_tokens == len(REPLY.split())
    assert second.prompt_tokens > 0
    assert second.attempts == 2 and server.requests == 3


async def test_a_call_whose_replies_never_carry_usage_fails_in_one_line() -> None:
    async with NoUsage(FakeBehaviour(reply=REPLY), bare=range(1, 100)) as server:
        client = EndpointClient(config(server, max_attempts=3))
        try:
            await client.chat(MSGS, max_tokens=16)
            with pytest.raises(EndpointError, match="answered without token usage"):
                await client.chat(MSGS, max_tokens=16)
        finally:
            await client.aclose()
    assert server.requests == 1 + 3


class OddUsage(FakeServer):
    """Plain replies whose usage has ``value`` for its ``field``: all of them, or those of
    the requests in ``odd``."""

    def __init__(
        self, *args: Any, field: str, value: object, odd: Collection[int] | None = None, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self.field, self.value, self.odd = field, value, odd

    def _response(
        self, body: Any, rid: str, choices: Any, usage: dict[str, int], *, chat: bool
    ) -> bytes:
        data = orjson.loads(super()._response(body, rid, choices, usage, chat=chat))
        if self.odd is None or self.requests - 1 in self.odd:
            data["usage"][self.field] = self.value
        return json.dumps(data).encode()  # orjson writes no integer past 64 bits


# what no server that counts tokens reports: below 0, past any context window, no number
IMPOSSIBLE = [
    pytest.param("completion_tokens", -5, id="negative-completion"),
    pytest.param("prompt_tokens", -100, id="negative-prompt"),
    pytest.param("completion_tokens", 10**20, id="huge-past-64-bits"),
    pytest.param("completion_tokens", 10**15, id="huge"),
    pytest.param("completion_tokens", True, id="bool"),
    pytest.param("prompt_tokens", "12", id="string"),
    pytest.param("completion_tokens", 3.7, id="fraction"),
    pytest.param("prompt_tokens", None, id="null"),
]


class OneSamplesUsage(FakeServer):
    """Replies of n samples whose usage counts the first sample's tokens only."""

    def _response(
        self, body: Any, rid: str, choices: Any, usage: dict[str, int], *, chat: bool
    ) -> bytes:
        data = orjson.loads(super()._response(body, rid, choices, usage, chat=chat))
        if len(choices) > 1:
            data["usage"]["completion_tokens"] = len(choices[0].pieces)
        return orjson.dumps(data)


@pytest.mark.parametrize("token_ids", [False, True])
async def test_usage_that_counts_fewer_tokens_than_the_samples_carry_is_not_taken(
    token_ids: bool,
) -> None:
    """Each of the 3 samples carries 10 tokens (its token ids or logprobs count them); the
    usage says 10 in all. The call counts the 30 it was sent, not a third of each."""
    async with OneSamplesUsage(FakeBehaviour(reply=REPLY)) as server:
        client = EndpointClient(config(server))
        try:
            result = await client.chat(MSGS, max_tokens=16, n=3, token_ids=token_ids)
        finally:
            await client.aclose()
    assert [c.completion_tokens for c in result.choices] == [len(REPLY.split())] * 3
    assert result.completion_tokens == server.completion_tokens_billed == 3 * len(REPLY.split())


class TenfoldUsage(FakeServer):
    """Replies whose usage counts ten times the tokens they carry."""

    def _response(
        self, body: Any, rid: str, choices: Any, usage: dict[str, int], *, chat: bool
    ) -> bytes:
        data = orjson.loads(super()._response(body, rid, choices, usage, chat=chat))
        data["usage"]["completion_tokens"] *= 10
        return orjson.dumps(data)


async def test_usage_past_what_max_tokens_allowed_is_said_not_passed_over() -> None:
    """A server that counts more than ``max_tokens`` let it generate (one whose cap leaves
    its thinking out) takes the run past its limits: the run says so, it is not silent."""
    from structlog.testing import capture_logs

    async with TenfoldUsage(FakeBehaviour(reply=REPLY)) as server:
        client = EndpointClient(config(server))
        try:
            with capture_logs() as logs:
                within = await client.chat(MSGS, max_tokens=100)
                assert not [e for e in logs if "max_tokens allowed" in e["event"]]
                past = await client.chat(MSGS, max_tokens=16, n=2)
                await client.chat(MSGS, max_tokens=16, n=2)  # said once, not per call
        finally:
            await client.aclose()
    assert within.completion_tokens == 10 * len(REPLY.split())
    assert past.completion_tokens == 2 * 10 * len(REPLY.split())
    warned = [e for e in logs if "max_tokens allowed" in e["event"]]
    assert [(e["counted"], e["allowed"]) for e in warned] == [(past.completion_tokens, 32)]


@pytest.mark.parametrize(("field", "value"), IMPOSSIBLE)
async def test_an_endpoint_that_reports_impossible_usage_is_refused_before_the_run(
    tmp_path: Path, field: str, value: object
) -> None:
    folder = tmp_path / "run"
    async with OddUsage(FakeBehaviour(reply=REPLY), field=field, value=value) as server:
        settings = RunSettings(modes=ModeSettings(mode="budget", budget=32), out=folder)
        with pytest.raises(EndpointError, match="answers with impossible token usage") as caught:
            await execute(PROBLEMS, config(server), settings)
        asked = server.requests
    assert "\n" not in str(caught.value)
    assert f"{field} is " in str(caught.value)  # it says which count is wrong
    assert not folder.exists()
    assert asked == 1  # as for a reply without usage: the probe's first request says it


@pytest.mark.parametrize(("field", "value"), IMPOSSIBLE)
async def test_a_reply_with_impossible_usage_mid_run_is_sent_again_then_fails_in_one_line(
    field: str, value: object
) -> None:
    reply = FakeBehaviour(reply=REPLY)
    async with OddUsage(reply, field=field, value=value, odd={1, *range(3, 100)}) as server:
        client = EndpointClient(config(server, max_attempts=3))
        try:
            await client.chat(MSGS, max_tokens=16)
            second = await client.chat(MSGS, max_tokens=16)  # its first reply was odd
            with pytest.raises(EndpointError, match="answered with impossible token usage") as e:
                await client.chat(MSGS, max_tokens=16)  # every reply odd
        finally:
            await client.aclose()
    assert second.attempts == 2
    assert second.completion_tokens == len(REPLY.split()) and second.prompt_tokens > 0
    assert "\n" not in str(e.value) and f"{field} is " in str(e.value)
    assert server.requests == 3 + 3


@pytest.mark.parametrize(("field", "value"), IMPOSSIBLE[:3])
async def test_a_run_whose_replies_turn_impossible_ends_with_those_calls_failed(
    tmp_path: Path, field: str, value: object
) -> None:
    """Every reply after the first has impossible usage: the run ends, its results written,
    those calls failed, no count below 0 and none stored."""
    folder = tmp_path / "run"
    reply = FakeBehaviour(reply=REPLY)
    async with OddUsage(reply, field=field, value=value, odd=range(1, 10**6)) as server:
        modes = ModeSettings(mode="parallel", n=3, budget=32)
        settings = RunSettings(modes=modes, out=folder)
        caps = Capabilities(continuation="chat")
        result = await execute(PROBLEMS, config(server), settings, capabilities=caps)
    saved = json.loads((folder / "results.json").read_text())
    nodes = [n for p in saved["problems"] for n in p["nodes"]]
    failed = [n for n in nodes if n["status"] == "failed"]
    assert failed and result.metrics.failed > 0
    assert all("impossible token usage" in n["error"] for n in failed)
    assert all(n["prompt_tokens"] >= 0 and n["completion_tokens"] >= 0 for n in nodes)
    assert 0 < result.metrics.completion_tokens <= 32 and result.metrics.prompt_tokens > 0
    with sqlite3.connect(folder / "calls.sqlite") as db:
        stored = db.execute("SELECT prompt_tokens, completion_tokens FROM responses").fetchall()
    ((prompt, done),) = stored  # the first call's, the one that counted
    assert prompt > 0 and 0 < done <= 32


async def test_a_stored_call_with_impossible_usage_is_asked_again_on_resume(
    tmp_path: Path,
) -> None:
    """A call store written before usage was checked may hold a call counted below 0: a
    resumed run takes it as never recorded and makes that call again."""
    folder = tmp_path / "run"
    async with FakeServer(FakeBehaviour(reply=REPLY)) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url)
        modes = ModeSettings(mode="parallel", n=3, budget=32)
        settings = RunSettings(modes=modes, out=folder)
        caps = Capabilities(continuation="chat")
        await execute(PROBLEMS, endpoint, settings, capabilities=caps)
        with sqlite3.connect(folder / "calls.sqlite") as db:
            db.execute(
                "UPDATE responses SET completion_tokens = -5, "
                "response = json_set(response, '$.completion_tokens', -5, "
                "'$.choices[0].completion_tokens', -5) "
                "WHERE rowid = (SELECT min(rowid) FROM responses)"
            )
        db.close()
        (folder / "results.json").unlink()  # as if killed before its end
        state = load_resume(folder)
        before = server.requests
        again = await execute(state.problems, endpoint, state.settings, resume=state)
        asked = server.requests - before
    assert asked == 1  # that call, made again; the others read back
    assert again.metrics.failed == 0
    saved = json.loads((folder / "results.json").read_text())
    nodes = [n for p in saved["problems"] for n in p["nodes"]]
    assert all(n["completion_tokens"] >= 0 for n in nodes)
    with sqlite3.connect(folder / "calls.sqlite") as db:
        lowest = db.execute("SELECT min(completion_tokens) FROM responses").fetchone()[0]
    db.close()
    assert lowest > 0  # recorded anew over the old row


class Watching:
    """A subscriber that wants the text as it streams (as ``--watch`` does)."""

    wants_deltas = True

    def handle(self, event: Event) -> None:
        pass

    def handle_batch(self, events: Sequence[Event]) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def test_a_resume_that_streams_asks_whether_streams_carry_usage(tmp_path: Path) -> None:
    """The first session did not stream, so its probe never asked; the resumed one shows
    live text on a server whose streams carry no usage: it asks, and does not stream."""
    folder = tmp_path / "run"
    behaviour = FakeBehaviour(reply=REPLY, usage_in_stream=False)
    async with FakeServer(behaviour) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url)
        modes = ModeSettings(mode="sequential", steps=2, budget=16)
        settings = RunSettings(modes=modes, out=folder, max_run_tokens=20)
        first = await execute(PROBLEMS, endpoint, settings)
        assert first.stopped_by is not None
        assert "stream_usage" not in first.capabilities.notes
        state = load_resume(folder, new_limits=True)
        unlimited = dataclasses.replace(state.settings, max_run_tokens=None)
        again = await execute(
            state.problems, endpoint, unlimited, resume=state, subscribers=[Watching()]
        )
    assert again.capabilities.stream_usage is False
    calls = [n for t in again.trees for n in t.nodes.values() if n.call_id is not None]
    assert calls and all(n.completion_tokens > 0 and n.prompt_tokens > 0 for n in calls)
    assert again.metrics.failed == 0
    assert again.metrics.completion_tokens == sum(n.completion_tokens for n in calls)


# -- latency ---------------------------------------------------------------------------


async def test_latency_is_the_servers_time_not_the_wait_for_a_connection() -> None:
    async with FakeServer(FakeBehaviour(reply=REPLY, delay_s=0.2)) as server:
        client = EndpointClient(config(server, max_connections=1))
        latencies: list[float] = []

        async def one() -> None:
            latencies.append((await client.chat(MSGS, max_tokens=16)).latency_s)

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(one)  # one at a time on the wire: three of them queue
        finally:
            await client.aclose()
    assert len(latencies) == 4
    assert all(0.2 <= s < 0.35 for s in latencies), latencies


async def test_a_pools_latency_is_the_answering_members_too() -> None:
    async with FakeServer(FakeBehaviour(reply=REPLY, delay_s=0.2)) as server:
        member = PoolMember(server.base_url, max_connections=1)
        pool = EndpointPool(
            EndpointConfig(name="pool", base_url=server.base_url, members=(member,))
        )
        await pool.resolve_model()
        latencies: list[float] = []

        async def one() -> None:
            latencies.append((await pool.chat(MSGS, max_tokens=16)).latency_s)

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(one)
        finally:
            await pool.aclose()
    assert len(latencies) == 3
    assert all(0.2 <= s < 0.35 for s in latencies), latencies


# -- call ids --------------------------------------------------------------------------


class SameIds(FakeServer):
    """Every response has the same id, as a server whose ids come from a few values."""

    def _response(
        self, body: Any, rid: str, choices: Any, usage: dict[str, int], *, chat: bool
    ) -> bytes:
        return super()._response(body, "chatcmpl-7", choices, usage, chat=chat)


class Finished:
    """Keeps every NodeFinished of a run."""

    wants_deltas = False

    def __init__(self) -> None:
        self.nodes: list[NodeFinished] = []

    def handle(self, event: Event) -> None:
        if isinstance(event, NodeFinished):
            self.nodes.append(event)

    def handle_batch(self, events: Sequence[Event]) -> None:
        for event in events:
            self.handle(event)

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("native_n", [False, True])
async def test_calls_are_told_apart_when_the_server_reuses_its_ids(
    tmp_path: Path, native_n: bool
) -> None:
    folder = tmp_path / "run"
    seen = Finished()
    async with SameIds(FakeBehaviour(reply=REPLY, native_n=native_n)) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url)
        settings = RunSettings(modes=ModeSettings(mode="parallel", n=4, budget=32), out=folder)
        result = await execute(PROBLEMS, endpoint, settings, subscribers=[seen])
    requests = len(PROBLEMS) * (1 if native_n else 4)
    assert result.metrics.calls == requests
    with StoreReader.open(folder / "run.sqlite") as store:
        assert len(store.calls()) == requests
    calls = [n for n in seen.nodes if n.call_id is not None]
    assert len({n.call_id for n in calls}) == requests  # the n of one request share one
    assert {n.request_id for n in calls} == {"chatcmpl-7"}  # the server's own, kept


async def test_a_resumed_run_reads_back_the_ids_its_calls_had(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    async with SameIds(FakeBehaviour(reply=REPLY)) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url)
        settings = RunSettings(modes=ModeSettings(mode="budget", budget=32), out=folder)
        caps = Capabilities(continuation="chat")
        await execute(PROBLEMS, endpoint, settings, capabilities=caps)
        before = _call_ids(folder)
        (folder / "results.json").unlink()  # as if killed before its end
        state = load_resume(folder)
        again = await execute(state.problems, endpoint, state.settings, resume=state)
    assert again.cached_calls == len(set(before.values())) >= len(PROBLEMS)
    assert _call_ids(folder) == before


def _call_ids(folder: Path) -> dict[str, str]:
    saved = json.loads((folder / "results.json").read_text())
    return {n["id"]: n["call_id"] for p in saved["problems"] for n in p["nodes"] if n["call_id"]}


def test_a_call_recorded_before_calls_had_ids_reads_back_with_its_fingerprint() -> None:
    made = Completion([Choice("B", "stop", 3)], 10, 3, 0.1, request_id="chatcmpl-7")
    old = json.loads(completion_to_json(made))
    del old["call_id"]  # as an earlier thinktree wrote it
    read = completion_from_json(json.dumps(old), "fp-1")
    assert read.call_id == "fp-1" and read.request_id == "chatcmpl-7"

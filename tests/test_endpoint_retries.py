"""The endpoint layer's single retry layer, against a real misbehaving HTTP server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from thinktree.agents.endpoint import EndpointClient, EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.errors import EndpointError
from thinktree.orchestrator.events import NodeKind, NodeStatus
from thinktree.orchestrator.run import RunSettings, execute
from thinktree.problems import AnswerType, Problem
from thinktree.testing.fake_server import FakeBehaviour, FakeServer, Fault

pytestmark = pytest.mark.anyio
MSGS = [{"role": "user", "content": "hi"}]


def client_for(server: FakeServer, **kw: float) -> tuple[EndpointClient, list[tuple[int, str]]]:
    seen: list[tuple[int, str]] = []

    async def on_retry(attempt: int, wait: float, reason: str) -> None:
        seen.append((attempt, reason))

    cfg = EndpointConfig(
        name="fake",
        base_url=server.base_url,
        model="fake-model",
        max_attempts=int(kw.get("max_attempts", 4)),
        timeout_s=kw.get("timeout_s", 10.0),
        max_backoff_s=0.2,
    )
    return EndpointClient(cfg, on_retry=on_retry), seen


@pytest.mark.parametrize(
    "fault",
    [
        Fault.RATE_LIMIT,
        Fault.REQUEST_TIMEOUT,
        Fault.CONFLICT,
        Fault.SERVER_ERROR,
        Fault.BAD_GATEWAY,
        Fault.UNAVAILABLE,
        Fault.RESET,
        Fault.TRUNCATED,
        Fault.INVALID_JSON,
    ],
)
async def test_transient_faults_are_retried_then_succeed(fault: Fault) -> None:
    async with FakeServer(faults=[fault, fault]) as server:
        client, seen = client_for(server)
        try:
            result = await client.chat(MSGS, max_tokens=8)
        finally:
            await client.aclose()
        assert result.attempts == 3
        assert [a for a, _ in seen] == [1, 2]
        assert server.faulted[fault] == 2
        assert server.answered == 1  # paid once


async def test_retry_after_is_honoured() -> None:
    async with FakeServer(faults=[Fault.RATE_LIMIT], retry_after_s=1.0) as server:
        client, seen = client_for(server)
        client.config = EndpointConfig(
            name="fake", base_url=server.base_url, model="fake-model", max_backoff_s=5.0
        )
        start = time.monotonic()
        try:
            await client.chat(MSGS, max_tokens=4)
        finally:
            await client.aclose()
        assert time.monotonic() - start >= 0.95
        assert seen == [(1, "rate limited")]


async def test_slow_response_times_out_and_is_retried() -> None:
    async with FakeServer(faults=[Fault.SLOW], slow_s=5.0) as server:
        client, seen = client_for(server, timeout_s=0.5)
        try:
            result = await client.chat(MSGS, max_tokens=4)
        finally:
            await client.aclose()
        assert result.attempts == 2
        assert seen[0][1] in ("timed out", "connection failed")


async def test_other_4xx_is_never_retried() -> None:
    async with FakeServer() as server:
        client, seen = client_for(server)
        client.model = "no-such-model"
        with pytest.raises(EndpointError, match="404"):
            await client.chat(MSGS, max_tokens=4)
        await client.aclose()
        assert seen == []
        assert server.requests == 1


async def test_attempts_are_bounded_and_the_error_is_one_line() -> None:
    async with FakeServer(faults=lambda i: Fault.UNAVAILABLE) as server:
        client, seen = client_for(server, max_attempts=3)
        with pytest.raises(EndpointError) as info:
            await client.chat(MSGS, max_tokens=4)
        await client.aclose()
        assert "after 3 attempts" in str(info.value)
        assert "\n" not in str(info.value)
        assert server.requests == 3 and len(seen) == 2


async def test_a_failed_branch_never_crashes_the_problem(tmp_path: Path) -> None:
    # every third generation request fails for good; the others answer B
    problem = Problem(
        id="q",
        question="Q?",
        answer_type=AnswerType.CHOICE,
        options={"A": "a", "B": "b"},
        answer="B",
    )

    def schedule(i: int) -> Fault | None:
        return Fault.SERVER_ERROR if i >= 1 and i % 2 == 1 else None

    async with FakeServer(FakeBehaviour(native_n=False), faults=schedule) as server:
        cfg = EndpointConfig(
            name="fake",
            base_url=server.base_url,
            max_attempts=1,
            continuation="chat",
            native_n="no",
        )
        result = await execute(
            [problem],
            cfg,
            RunSettings(modes=ModeSettings(mode="parallel", n=4, budget=32), out=tmp_path / "run"),
        )
    tree = result.trees[0]
    thinks = tree.of_kind(NodeKind.GENERATION)
    failed = [t for t in thinks if t.status is NodeStatus.FAILED]
    assert failed and len(failed) < len(thinks)
    assert all("after 1 attempts" in (t.error or "") for t in failed)
    assert tree.answer == "B" and tree.error is None


@pytest.mark.parametrize(("cache_as", "paid_again"), [("embedded:vllm", 0), (None, 1)])
async def test_a_call_store_finds_a_call_made_on_the_same_model_at_another_port(
    tmp_path: Path, cache_as: str | None, paid_again: int
) -> None:
    """The embedded server comes back on a new port: a resumed run must not pay again."""
    from thinktree.orchestrator.call_cache import SqliteCallCache

    cache = SqliteCallCache(tmp_path / "calls.sqlite")
    try:
        answers = []
        for _ in range(2):  # one server, then another (a restart on a free port)
            async with FakeServer() as server:
                cfg = EndpointConfig(
                    name="embedded", base_url=server.base_url, model="fake-model", cache_as=cache_as
                )
                client = EndpointClient(cfg)
                client.cache = cache
                try:
                    answers.append(await client.chat(MSGS, max_tokens=8, key="p1/b1/think"))
                finally:
                    await client.aclose()
                requests = server.requests
        assert requests == paid_again
        assert answers[0].choices[0].text == answers[1].choices[0].text
    finally:
        cache.close()


@pytest.mark.parametrize("fault", [Fault.TRUNCATED, Fault.RESET])
async def test_a_retried_stream_marks_where_its_text_starts_again(fault: Fault) -> None:
    async with FakeServer(FakeBehaviour(reply="one two three four five six"), faults=[fault]) as s:
        client, seen = client_for(s)
        pieces: list[tuple[str, bool]] = []

        async def on_delta(index: int, text: str, *, first: bool) -> None:
            pieces.append((text, first))

        try:
            result = await client.chat(MSGS, max_tokens=16, on_delta=on_delta)
        finally:
            await client.aclose()
    assert [a for a, _ in seen] == [1]
    starts = [i for i, (_, first) in enumerate(pieces) if first]
    assert len(starts) == 2 and starts[0] == 0  # the cut-off attempt, then the retry
    assert "".join(text for text, _ in pieces[: starts[1]])  # text the first attempt streamed
    assert "".join(text for text, _ in pieces[starts[1] :]) == result.choices[0].text


async def test_a_retried_calls_node_streams_its_text_afresh(tmp_path: Path) -> None:
    from thinktree.orchestrator.events import NodeDelta, NodeFinished
    from thinktree.orchestrator.trace import read_trace
    from thinktree.orchestrator.tree import RunTree

    problem = Problem(id="q1", question="Q?", answer_type=AnswerType.FREE, answer="yes")
    reply = "Let me think about it step by step.\nAnswer: yes"
    # requests 1-4 are the probe's: the run's first call is cut off mid-stream, then retried
    faults = lambda i: Fault.TRUNCATED if i == 5 else None  # noqa: E731
    async with FakeServer(FakeBehaviour(reply=reply), faults=faults) as server:
        endpoint = EndpointConfig(
            name="fake", base_url=server.base_url, continuation="chat", max_backoff_s=0.1
        )
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=1, budget=64),
            out=tmp_path / "run",
            trace_deltas=True,
        )
        result = await execute([problem], endpoint, settings)
    events = list(read_trace(result.folder / "trace.jsonl"))
    deltas = [e for e in events if isinstance(e, NodeDelta)]
    assert [e.restart for e in deltas].count(True) == 1
    node_id = deltas[0].node_id
    tree = RunTree()
    for event in events:
        if isinstance(event, NodeFinished) and event.node_id == node_id:
            break
        tree.apply(event)
    streamed = tree.node(node_id).text
    assert streamed == next(e.text for e in events if isinstance(e, NodeFinished))


def test_checks_before_a_run_wait_seconds_not_a_calls_timeout() -> None:
    url = "http://127.0.0.1:9/v1"
    assert EndpointClient(EndpointConfig(name="x", base_url=url)).check_timeout_s() == 30
    short = EndpointConfig(name="x", base_url=url, timeout_s=5)
    assert EndpointClient(short).check_timeout_s() == 5  # never past a call's own limit


@pytest.mark.parametrize("http_client", ["auto", "aiohttp"])
async def test_a_server_that_takes_the_connection_and_never_answers_fails_in_seconds(
    silent_url: str, http_client: str
) -> None:
    cfg = EndpointConfig(
        name=silent_url,
        base_url=silent_url,
        model="fake-model",
        check_timeout_s=0.5,
        http_client=http_client,  # type: ignore[arg-type]
    )
    client = EndpointClient(cfg)
    started = time.monotonic()
    try:
        with pytest.raises(EndpointError) as caught:
            await client.resolve_model()
    finally:
        await client.aclose()
    assert time.monotonic() - started < 8  # not the call's timeout (600 s)
    said = str(caught.value)
    assert said.startswith(f"endpoint '{silent_url}' accepted the connection but sent no answer")
    assert "to /models within 0.5 s" in said and "raise check_timeout_s" in said
    assert "cannot connect" not in said


async def test_no_connection_within_the_check_says_it_cannot_connect(
    silent_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def never(self: EndpointClient) -> bool:
        return False  # as a host that drops every packet does

    monkeypatch.setattr(EndpointClient, "_connects", never)
    cfg = EndpointConfig(name="x", base_url=silent_url, model="m", check_timeout_s=0.3)
    client = EndpointClient(cfg)
    try:
        with pytest.raises(EndpointError, match=r"^cannot connect to endpoint .*within 0\.3 s"):
            await client.resolve_model()
    finally:
        await client.aclose()


async def test_the_probe_and_the_calls_wait_as_long_as_a_call_may() -> None:
    """Only /models has the check's short limit: a probe request (or a call) on a busy
    server queues behind its generations, and is not refused for it."""
    from thinktree.agents.capabilities import probe

    async with FakeServer(FakeBehaviour(delay_s=0.6)) as server:
        cfg = EndpointConfig(
            name="x", base_url=server.base_url, model="fake-model", check_timeout_s=0.3
        )
        client = EndpointClient(cfg)
        try:
            await client.resolve_model()
            caps = await probe(client, what={"n"})
            done = await client.chat(MSGS, max_tokens=4)
        finally:
            await client.aclose()
    assert caps.native_n and done.choices


def test_a_reply_short_of_a_choice_is_incomplete_and_retried() -> None:
    """n=3 asked, the middle choice never finished: the reply is incomplete (retried, then
    the call fails and a resume asks it again) rather than recorded with two choices
    that the solver would have given to the first two branches, shifting the third's
    text onto the second."""
    from types import SimpleNamespace

    from thinktree.agents.endpoint import IncompleteResponse, RetryKind, _assemble, classify

    usage = SimpleNamespace(prompt_tokens=5, completion_tokens=6, completion_tokens_details=None)
    with pytest.raises(IncompleteResponse, match="finished 2 of the 3 choices") as caught:
        _assemble(["a", "", "c"], [""] * 3, [3, 0, 3], ["stop", None, "stop"], usage, "id", 3)
    assert classify(caught.value) == RetryKind.MALFORMED
    whole = _assemble(["a", "b", "c"], [""] * 3, [2, 2, 2], ["stop"] * 3, usage, "id", 3)
    assert [c.text for c in whole.choices] == ["a", "b", "c"]

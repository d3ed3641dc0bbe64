"""The scripted fake OpenAI server, driven by the real openai SDK."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from thinktree.testing.fake_server import (
    DEFAULT_REPLY,
    FakeBehaviour,
    FakeServer,
    Fault,
    fake_server_in_thread,
    split_tokens,
)

pytestmark = pytest.mark.anyio

MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Pick A or B, please."},
]
REPLY_TOKENS = len(DEFAULT_REPLY.split())


def client(server: FakeServer, **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0, **kw)


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    async with FakeServer() as s:
        yield s


def test_split_tokens_round_trips() -> None:
    for text in [DEFAULT_REPLY, "  lead and trail \n", "one", "", "   "]:
        assert "".join(split_tokens(text)) == text
    assert len(split_tokens(DEFAULT_REPLY)) == REPLY_TOKENS


async def test_chat_non_stream(server: FakeServer) -> None:
    async with client(server) as c:
        r = await c.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert r.choices[0].message.content == DEFAULT_REPLY
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None
    assert r.usage.completion_tokens == REPLY_TOKENS
    # 3 + 5 words, 4 per message, 3 for the generation prompt
    assert r.usage.prompt_tokens == 8 + 2 * 4 + 3
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert (server.requests, server.answered) == (1, 1)


async def test_chat_stream_with_usage_and_logprobs(server: FakeServer) -> None:
    async with client(server) as c:
        stream = await c.chat.completions.create(
            model="fake-model",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            logprobs=True,
        )
        text, finish, usage, tokens = "", None, None, []
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for ch in chunk.choices:
                text += ch.delta.content or ""
                finish = ch.finish_reason or finish
                if ch.logprobs and ch.logprobs.content:
                    tokens += [t.token for t in ch.logprobs.content]
    assert text == DEFAULT_REPLY
    assert "".join(tokens) == DEFAULT_REPLY
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == REPLY_TOKENS
    assert server.answered == 1


async def test_stream_without_usage_chunk() -> None:
    behaviour = FakeBehaviour(usage_in_stream=False, tokens_per_chunk=3)
    async with FakeServer(behaviour) as s, client(s) as c:
        stream = await c.chat.completions.create(
            model="fake-model",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None for chunk in chunks)
    contents = [ch.delta.content for chunk in chunks for ch in chunk.choices if ch.delta.content]
    assert len(contents) == -(-REPLY_TOKENS // 3)
    assert "".join(contents) == DEFAULT_REPLY


def reply_by_index(body: dict[str, Any], i: int) -> str:
    return " ".join(["word"] * (i + 1))


@pytest.mark.parametrize("native_n", [True, False])
async def test_n_choices(native_n: bool) -> None:
    behaviour = FakeBehaviour(native_n=native_n, reply=reply_by_index)
    async with FakeServer(behaviour) as s, client(s) as c:
        r = await c.chat.completions.create(model="fake-model", messages=MESSAGES, n=3)
        stream = await c.chat.completions.create(
            model="fake-model",
            messages=MESSAGES,
            n=3,
            stream=True,
            stream_options={"include_usage": True},
        )
        texts: dict[int, str] = {}
        usage = None
        async for chunk in stream:
            usage = chunk.usage or usage
            for ch in chunk.choices:
                texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
    expected = [reply_by_index({}, i) for i in range(3 if native_n else 1)]
    assert [ch.message.content for ch in r.choices] == expected
    assert [texts[i] for i in sorted(texts)] == expected
    counts = sum(len(t.split()) for t in expected)
    assert r.usage is not None and r.usage.completion_tokens == counts
    assert usage is not None and usage.completion_tokens == counts


async def test_max_tokens_truncates(server: FakeServer) -> None:
    async with client(server) as c:
        r = await c.chat.completions.create(model="fake-model", messages=MESSAGES, max_tokens=4)
        comp = await c.completions.create(model="fake-model", prompt="Q: a or b?", max_tokens=4)
    assert r.choices[0].message.content == "Let me think step"
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 4
    assert comp.choices[0].text == "Let me think step"
    assert comp.choices[0].finish_reason == "length"
    assert comp.usage is not None
    assert (comp.usage.prompt_tokens, comp.usage.completion_tokens) == (4, 4)


async def test_completions_stream_with_logprobs(server: FakeServer) -> None:
    async with client(server) as c:
        stream = await c.completions.create(
            model="fake-model",
            prompt="Q",
            stream=True,
            logprobs=1,
            stream_options={"include_usage": True},
        )
        text, finish, usage, offsets = "", None, None, []
        async for chunk in stream:
            usage = chunk.usage or usage
            for ch in chunk.choices:
                text += ch.text
                finish = ch.finish_reason or finish
                if ch.logprobs and ch.logprobs.text_offset:
                    offsets += ch.logprobs.text_offset
    assert text == DEFAULT_REPLY
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == REPLY_TOKENS
    pieces = split_tokens(DEFAULT_REPLY)
    assert offsets == [len("".join(pieces[:i])) for i in range(len(pieces))]


@pytest.mark.parametrize("continuation", [True, False])
async def test_continue_final_message(continuation: bool) -> None:
    messages = [*MESSAGES, {"role": "assistant", "content": "The answer"}]
    async with FakeServer(FakeBehaviour(continuation=continuation)) as s, client(s) as c:
        plain = await c.chat.completions.create(model="fake-model", messages=messages)
        cont = await c.chat.completions.create(
            model="fake-model", messages=messages, extra_body={"continue_final_message": True}
        )
    assert plain.usage is not None and cont.usage is not None
    shorter = plain.usage.prompt_tokens - cont.usage.prompt_tokens
    assert shorter == (4 if continuation else 0)


async def test_wrong_model_is_not_found(server: FakeServer) -> None:
    async with client(server) as c:
        with pytest.raises(openai.NotFoundError) as info:
            await c.chat.completions.create(model="nope", messages=MESSAGES)
        models = await c.models.list()
    assert "The model `nope` does not exist." in str(info.value)
    assert [m.id for m in models.data] == ["fake-model"]
    assert (server.requests, server.answered) == (1, 0)


async def test_status_faults_and_counters() -> None:
    faults = [Fault.RATE_LIMIT, None, Fault.SERVER_ERROR, Fault.BAD_GATEWAY, Fault.UNAVAILABLE]
    async with FakeServer(faults=faults, retry_after_s=2) as s, client(s) as c:

        async def ask() -> None:
            await c.chat.completions.create(model="fake-model", messages=MESSAGES)

        with pytest.raises(openai.RateLimitError) as limited:
            await ask()
        assert limited.value.response.headers["retry-after"] == "2"
        await ask()
        for _ in range(3):
            with pytest.raises(openai.InternalServerError):
                await ask()
        await ask()  # the schedule is over
    assert s.requests == 6
    assert s.answered == 2
    assert s.faulted == Counter(f for f in faults if f is not None)


@pytest.mark.parametrize("stream", [False, True])
async def test_reset(stream: bool) -> None:
    async with FakeServer(faults=[Fault.RESET]) as s, client(s) as c:
        with pytest.raises(openai.APIConnectionError):
            r = await c.chat.completions.create(
                model="fake-model", messages=MESSAGES, stream=stream
            )
            if stream:
                async for _ in r:  # type: ignore[union-attr]
                    pass
        ok = await c.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert ok.choices[0].message.content == DEFAULT_REPLY
    assert (s.requests, s.answered, s.faulted[Fault.RESET]) == (2, 1, 1)


async def test_slow_times_out() -> None:
    # time enough for the request to reach the server on a busy machine (at 0.3 s it once
    # timed out before the server had read it), far less than the server waits
    async with FakeServer(faults=[Fault.SLOW], slow_s=5) as s, client(s, timeout=1.0) as c:
        with pytest.raises(openai.APITimeoutError):
            await c.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert (s.answered, s.faulted[Fault.SLOW]) == (0, 1)


async def test_truncated_stream_has_no_finish_reason() -> None:
    async with FakeServer(faults=[Fault.TRUNCATED]) as s, client(s) as c:
        stream = await c.chat.completions.create(model="fake-model", messages=MESSAGES, stream=True)
        chunks = [chunk async for chunk in stream]
    assert chunks
    assert all(ch.finish_reason is None for chunk in chunks for ch in chunk.choices)
    text = "".join(ch.delta.content or "" for chunk in chunks for ch in chunk.choices)
    assert DEFAULT_REPLY.startswith(text) and text != DEFAULT_REPLY
    assert s.answered == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_invalid_json(stream: bool) -> None:
    async with FakeServer(faults=[Fault.INVALID_JSON]) as s, client(s) as c:
        with pytest.raises((openai.APIError, json.JSONDecodeError)):
            r = await c.chat.completions.create(
                model="fake-model", messages=MESSAGES, stream=stream
            )
            if stream:
                async for _ in r:  # type: ignore[union-attr]
                    pass
    assert s.faulted[Fault.INVALID_JSON] == 1


async def test_empty_choices_and_content_filter() -> None:
    faults = [Fault.EMPTY_CHOICES, Fault.CONTENT_FILTER]
    async with FakeServer(faults=faults) as s, client(s) as c:
        empty = await c.chat.completions.create(model="fake-model", messages=MESSAGES)
        filtered = await c.chat.completions.create(model="fake-model", messages=MESSAGES)
    assert empty.choices == []
    assert filtered.choices[0].finish_reason == "content_filter"
    assert filtered.usage is not None
    assert filtered.usage.completion_tokens == REPLY_TOKENS // 2
    assert (s.requests, s.answered) == (2, 0)


async def test_record_bodies() -> None:
    async with FakeServer(record_bodies=True) as s, client(s) as c:
        await c.chat.completions.create(model="fake-model", messages=MESSAGES, seed=7)
    assert s.bodies[0]["seed"] == 7
    assert s.bodies[0]["messages"] == MESSAGES


def test_in_thread_from_sync_code() -> None:
    with fake_server_in_thread(FakeBehaviour(model="m")) as s:
        root = s.base_url.removesuffix("/v1")
        assert httpx.get(root + "/health").status_code == 200
        assert httpx.get(s.base_url + "/models").json()["data"][0]["id"] == "m"
        r = httpx.post(
            s.base_url + "/chat/completions",
            json={"model": "m", "messages": MESSAGES},
        )
        assert r.json()["choices"][0]["message"]["content"] == DEFAULT_REPLY
        assert s.answered == 1


async def test_every_event_is_json_with_tricky_text() -> None:
    tricky = 'Say "hi"\\n \u00e9t\u00e9 \U0001f600 </s>\n\tend  '
    behaviour = FakeBehaviour(reply=tricky, tokens_per_chunk=2, chunk_delay_s=0.001)
    async with FakeServer(behaviour) as s, httpx.AsyncClient(base_url=s.base_url) as http:
        for route, extra in [
            ("/chat/completions", {"messages": MESSAGES, "logprobs": True}),
            ("/completions", {"prompt": ["a", "b c"], "logprobs": 0}),
        ]:
            body = {"model": "fake-model", "stream": True, "n": 2, **extra}
            body["stream_options"] = {"include_usage": True}
            r = await http.post(route, json=body)
            events = [e.removeprefix("data: ") for e in r.text.split("\n\n") if e]
            assert events[-1] == "[DONE]"
            chunks = [json.loads(e) for e in events[:-1]]
            texts: dict[int, str] = {}
            for chunk in chunks:
                for ch in chunk["choices"]:
                    piece = ch["delta"].get("content", "") if "delta" in ch else ch["text"]
                    texts[ch["index"]] = texts.get(ch["index"], "") + piece
            n_choices = 2 if route == "/chat/completions" else 4  # completions: 2 prompts x n
            assert texts == dict.fromkeys(range(n_choices), tricky)
            assert chunks[-1]["usage"]["completion_tokens"] == n_choices * len(tricky.split())
    assert s.answered == 2

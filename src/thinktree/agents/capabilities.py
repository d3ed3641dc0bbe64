"""What an endpoint can do, found out by trying it with tiny requests."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

import anyio
import openai
import structlog

from thinktree._json import loads
from thinktree.agents.chat_template import generation_opener, render_prompt
from thinktree.agents.constraint_probe import try_constraints
from thinktree.agents.endpoint import (
    EndpointClient,
    MissingUsage,
    RetryKind,
    UnusableUsage,
    is_token_count,
    short_replies,
)
from thinktree.errors import EndpointError

log = structlog.get_logger(__name__)
T = TypeVar("T")

Continuation = Literal["chat", "completions", "revision"]
ThinkingBudget = Literal["server", "marker", "cue"]
"""How budget mode ends the thinking: the server's ``thinking_token_budget``; the client
writing the model's own end-of-thinking marker; or, for a model that does not think
apart, an answer cue."""


@dataclass(slots=True)
class Capabilities:
    """The probe's findings for one endpoint and model."""

    native_n: bool = False
    token_ids: bool = False
    """Whether ``n`` choices come with their token ids (vLLM's ``return_token_ids``): each
    choice's tokens are then counted from those, not from per-token logprobs."""
    continuation: Continuation = "revision"
    completions: bool = False
    logprobs: bool = False
    seed: bool = False
    reasoning: Literal["field", "tags", "none"] = "none"
    constraints: list[str] = field(default_factory=list)  # dialects honoured, best first
    stream_usage: bool = True
    """Whether streams end with token usage (llama.cpp's do not: it is not streamed there).
    Probed only for a run that streams; ``notes`` has no "stream_usage" where it was not."""
    thinking_budget: ThinkingBudget = "cue"
    think_end: str = ""
    """The model's end-of-thinking marker (``</think>``) where it has one."""
    notes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_PROBE_USER = "Count from one to ten in words, separated by spaces."
_PROBE_PREFIX = "one two three"


async def check_generates(client: EndpointClient) -> None:
    """One line (EndpointError) for an endpoint that cannot answer a plain chat request,
    or answers it without token usage (or with usage that counts no tokens).

    Every capability would read "no" from such a server, and a run on it would pay for
    nothing but failed calls: it is refused before anything starts. A run on one that
    reports no usage could count neither its tokens nor its cost, nor keep its limits.
    """
    try:
        await client.chat([{"role": "user", "content": _PROBE_USER}], max_tokens=4)
    except EndpointError as exc:
        url = client.config.base_url
        if isinstance(exc.__cause__, UnusableUsage):
            raise EndpointError(
                f"{url} answers with impossible token usage ({exc.__cause__}), so thinktree "
                "can count neither a run's tokens nor its cost; use a server that reports "
                "true usage"
            ) from None
        if isinstance(exc.__cause__, MissingUsage):
            raise EndpointError(
                f'{url} answers without token usage (no "usage" in its replies), so '
                "thinktree can count neither a run's tokens nor its cost; use a server "
                "that reports usage"
            ) from None
        raise EndpointError(f"{url} failed a plain chat request: {exc}") from None


async def probe_unprobed(
    client: EndpointClient, caps: Capabilities, what: set[str]
) -> Capabilities:
    """``caps`` (a resumed run's, from its manifest) with what ``what`` needs that they
    never probed: whether streams carry usage, for a run that streams now (``--watch``,
    ``--trace-deltas``) where it did not before. Without it a stream with no usage
    would be taken to have one."""
    if "stream_usage" not in what or "stream_usage" in caps.notes:
        return caps
    await check_generates(client)
    msgs = [{"role": "user", "content": _PROBE_USER}]
    usable, note = await _try_stream_usage(client, msgs)
    log.info("probed endpoint", endpoint=client.config.name, stream_usage=usable)
    return dataclasses.replace(
        caps, stream_usage=usable, notes={**caps.notes, "stream_usage": note}
    )


async def probe(client: EndpointClient, *, what: set[str] | None = None) -> Capabilities:
    """Try each capability for real (a few requests of a few tokens each).

    ``what`` limits the probe to some of "n", "continuation", "completions", "logprobs",
    "seed", "reasoning", "constraints", "thinking" (how budget mode ends the thinking),
    "stream_usage"; settings forced in the endpoint's config are taken as given.

    After a plain chat request (:func:`check_generates`), what needs no other finding is
    asked at once, in two rounds (the continuation decides how the reasoning and the
    constraints are asked); a round trip to a remote API costs the same for five requests
    as for one. The seed (first) and the thinking budget (last) are asked alone: each
    compares two replies, which a server that batches requests together (vLLM's CPU
    build) may answer differently when other requests share their batch.
    """
    want = what or {
        "n",
        "continuation",
        "completions",
        "logprobs",
        "seed",
        "reasoning",
        "constraints",
        "stream_usage",
    }
    checked = False

    async def asked(steps: list[Callable[[], Awaitable[None]]]) -> None:
        """``steps``, at once: the first of the probe's requests go after the plain chat
        check (a probe whose every answer is set in the endpoint's config sends nothing
        at all)."""
        nonlocal checked
        if not steps:
            return
        if not checked:
            await check_generates(client)
            checked = True
        await _at_once(steps)

    caps = Capabilities()
    cfg = client.config
    if "thinking" in want and cfg.thinking == "auto":
        want = want | {"reasoning", "continuation"}
    msgs = [{"role": "user", "content": _PROBE_USER}]
    if "seed" in want:
        # alone, and right after the plain check: a server that caches prompts (llama.cpp)
        # then answers both requests from the same cache, as it does the check's prompt

        async def seed() -> None:
            caps.seed, caps.notes["seed"] = await _try_seed(client, msgs)

        await asked([seed])
    first: list[Callable[[], Awaitable[None]]] = []

    if "completions" in want or cfg.continuation in ("auto", "completions"):

        async def completions() -> None:
            caps.completions, caps.notes["completions"] = await _try_completions(client)

        first.append(completions)

    if "n" in want:

        async def n() -> None:
            if cfg.native_n == "auto":
                caps.native_n, caps.notes["n"] = await _try_n(client, msgs)
            if caps.native_n:
                caps.token_ids, caps.notes["token_ids"] = await _try_token_ids(client, msgs)

        if cfg.native_n != "auto":
            caps.native_n = cfg.native_n == "yes"
            caps.notes["n"] = "set in the endpoint config"
        if cfg.native_n == "auto" or caps.native_n:
            first.append(n)

    chat_continues: list[tuple[bool, str]] = []
    if "continuation" in want:
        if cfg.continuation != "auto":
            caps.continuation = cfg.continuation
            caps.notes["continuation"] = "set in the endpoint config"
        else:

            async def continuation() -> None:
                chat_continues.append(await _try_chat_continuation(client, msgs))

            first.append(continuation)

    if "stream_usage" in want:

        async def stream_usage() -> None:
            caps.stream_usage, caps.notes["stream_usage"] = await _try_stream_usage(client, msgs)

        first.append(stream_usage)
    if "logprobs" in want:

        async def logprobs() -> None:
            caps.logprobs, caps.notes["logprobs"] = await _try_logprobs(client, msgs)

        first.append(logprobs)
    await asked(first)

    if chat_continues:
        ((chat_ok, note),) = chat_continues
        if chat_ok:
            caps.continuation = "chat"
        elif caps.completions and cfg.chat_template:
            caps.continuation = "completions"
            note += "; using /v1/completions with the configured chat template"
        else:
            caps.continuation = "revision"
            note += "; sequential revision falls back to a new user turn"
        caps.notes["continuation"] = note

    second: list[Callable[[], Awaitable[None]]] = []
    budget_set = False
    if "thinking" in want and cfg.thinking != "auto":
        budget_set = True
        caps.thinking_budget = cfg.thinking
        caps.think_end = cfg.think_end if cfg.thinking != "cue" else ""
        caps.notes["thinking"] = "set in the endpoint config"
    elif "reasoning" in want:

        async def reasoning() -> None:
            caps.reasoning, caps.notes["reasoning"] = await _try_reasoning(client, caps)
            if caps.reasoning != "none":
                caps.think_end = cfg.think_end

        second.append(reasoning)
    if "constraints" in want:

        async def constraints() -> None:
            # answers go where the continuation does: over /v1/completions, that path must
            # honour the constraint too
            caps.constraints, caps.notes["constraints"] = await try_constraints(
                client,
                lambda path, body: _post(client, body, path=path),
                over_completions=caps.continuation == "completions",
            )

        second.append(constraints)
    await asked(second)

    if not budget_set and "reasoning" in want and ("thinking" in want or what is None):

        async def thinking() -> None:
            caps.thinking_budget, caps.notes["thinking"] = await try_thinking_budget(client, caps)

        await asked([thinking])
    # the notes in one order, whichever request answered first
    caps.notes = {key: caps.notes[key] for key in _NOTE_ORDER if key in caps.notes}
    found = caps.to_dict()
    log.info(
        "probed endpoint",
        endpoint=cfg.name,
        **{name: found[name] for name, keys in _NOTED_BY.items() if keys & caps.notes.keys()},
        unprobed=[name for name, keys in _NOTED_BY.items() if not keys & caps.notes.keys()],
    )
    return caps


_NOTED_BY = {
    "native_n": {"n"},
    "token_ids": {"token_ids"},
    "continuation": {"continuation"},
    "completions": {"completions"},
    "logprobs": {"logprobs"},
    "seed": {"seed"},
    "reasoning": {"reasoning"},
    "constraints": {"constraints"},
    "stream_usage": {"stream_usage"},
    "thinking_budget": {"thinking"},
    "think_end": {"reasoning", "thinking"},
}
"""Each finding and the notes that say it was probed (or set in the endpoint's config):
one without them holds its default, which the log names as unprobed, not as found."""


_NOTE_ORDER = (
    "completions",
    "n",
    "token_ids",
    "continuation",
    "stream_usage",
    "logprobs",
    "seed",
    "reasoning",
    "thinking",
    "constraints",
)


async def _at_once(steps: list[Callable[[], Awaitable[None]]]) -> None:
    """Run ``steps`` at once. One that fails raises its own exception (not a group of
    them), as it would have alone, once the others have ended."""
    if len(steps) == 1:
        await steps[0]()
        return
    failed: list[Exception] = []

    async def run(step: Callable[[], Awaitable[None]]) -> None:
        try:
            await step()
        except Exception as exc:  # raised again below, unwrapped
            failed.append(exc)

    async with anyio.create_task_group() as tg:
        for step in steps:
            tg.start_soon(run, step)
    if failed:
        raise failed[0]


async def _try_n(client: EndpointClient, msgs: list[dict[str, str]]) -> tuple[bool, str]:
    try:
        with short_replies():  # how many it returns is the answer
            result = await client.chat(msgs, max_tokens=4, n=3, temperature=1.0)
    except EndpointError as exc:
        return False, f"n=3 refused: {exc}"
    got = len(result.choices)
    if got == 3:
        return True, "n=3 returned 3 choices in one request"
    return False, f"n=3 returned {got} choice(s); samples fan out as separate requests"


async def _try_token_ids(client: EndpointClient, msgs: list[dict[str, str]]) -> tuple[bool, str]:
    """Whether the server returns each choice's token ids, which count its tokens exactly.

    Otherwise every choice's per-token logprobs are asked for, only to be counted: for long
    outputs that is most of the reply, and costs the server the logprobs of every token.
    Sent on the run's own transport (no SDK client is made for it).
    """
    body = {
        "model": client.model,
        "messages": msgs,
        "max_tokens": 4,
        "n": 2,
        "temperature": 1.0,
        "return_token_ids": True,
    }
    try:
        data = await _post(client, body)
    except (openai.APIError, ValueError) as exc:
        return (
            False,
            f"return_token_ids refused ({type(exc).__name__}); choices counted by logprobs",
        )
    choices = data.get("choices") if isinstance(data, dict) else None
    usage = data.get("usage") if isinstance(data, dict) else None
    ids = [c.get("token_ids") for c in choices or () if isinstance(c, dict)]
    counted = sum(len(i) for i in ids if isinstance(i, list))
    total = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if ids and all(isinstance(i, list) for i in ids) and counted == total:
        return True, "choices carry their token ids: counted from those, not from logprobs"
    return False, "no token ids in the choices; choices are counted by their logprobs"


async def _try_chat_continuation(
    client: EndpointClient, msgs: list[dict[str, str]]
) -> tuple[bool, str]:
    """Continuation is honoured when the continued prompt is shorter than a closed turn.

    A server that ignores ``continue_final_message`` closes the assistant message and
    opens a new one, which costs extra prompt tokens; one that honours it does not.
    """
    convo = [*msgs, {"role": "assistant", "content": _PROBE_PREFIX}]
    try:
        closed = await client.chat(convo, max_tokens=2)
        cont = await client.chat(convo, max_tokens=2, continue_final=True)
    except EndpointError as exc:
        return False, f"continue_final_message refused: {exc}"
    if closed.prompt_tokens == 0 or cont.prompt_tokens == 0:
        return False, "no usage reported, so continuation cannot be verified"
    if cont.prompt_tokens < closed.prompt_tokens:
        return True, (
            f"continue_final_message honoured ({cont.prompt_tokens} prompt tokens "
            f"vs {closed.prompt_tokens} for a closed turn)"
        )
    return False, "continue_final_message ignored (the assistant turn was closed)"


async def _try_completions(client: EndpointClient) -> tuple[bool, str]:
    try:
        await client.complete("The capital of France is", max_tokens=2)
    except EndpointError as exc:
        return False, f"/v1/completions unavailable: {exc}"
    return True, "/v1/completions answers"


async def _try_logprobs(client: EndpointClient, msgs: list[dict[str, str]]) -> tuple[bool, str]:
    body = {
        "model": client.model,
        "messages": msgs,
        "max_tokens": 2,
        "logprobs": True,
        "top_logprobs": 2,
    }
    try:
        data = await _post(client, body)
    except (openai.APIError, ValueError) as exc:
        return False, f"logprobs refused: {type(exc).__name__}"
    choices = data.get("choices") if isinstance(data, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
    ok = isinstance(logprobs, dict) and bool(logprobs.get("content"))
    return ok, "token logprobs returned" if ok else "no logprobs in the response"


async def _post(
    client: EndpointClient, body: dict[str, Any], path: str = "chat/completions"
) -> Any:
    """A probe's request on the run's own transport (no SDK client is made for it).

    A chat body is built on each try, so a token cap the server refused goes in the field
    it named (see :meth:`EndpointClient.retried`).
    """
    request = client.transport.post
    if path != "chat/completions":
        return loads(await _asked(client, lambda: request(path, body)))
    return loads(await _asked(client, lambda: request(path, client.chat_body(body))))


async def _asked(client: EndpointClient, request: Callable[[], Awaitable[T]]) -> T:
    """``request`` with the endpoint's retries for what says nothing about the feature (a
    rate limit, a lost connection, a timeout), and one more try after a 5xx.

    Some servers answer a field they do not know with a 5xx, so a second one in a row is
    the server's answer: the feature is off. One alone may be a server busy for a moment,
    and a feature switched off for it would stay off for the whole run.
    """
    try:
        return await client.retried(request, kinds=_PASSING)
    except openai.InternalServerError as exc:
        log.info("probe: asking again after a server error", status=exc.status_code)
        await anyio.sleep(_SECOND_ASK_S)
        return await client.retried(request, kinds=_PASSING)


_PASSING = (RetryKind.RATE_LIMIT, RetryKind.CONNECTION, RetryKind.TIMEOUT)
_SECOND_ASK_S = 0.5


async def _try_seed(client: EndpointClient, msgs: list[dict[str, str]]) -> tuple[bool, str]:
    try:
        a = await client.chat(msgs, max_tokens=8, temperature=1.0, seed=1234)
        b = await client.chat(msgs, max_tokens=8, temperature=1.0, seed=1234)
    except EndpointError as exc:
        return False, f"seed refused: {exc}"
    same = a.choices[0].text == b.choices[0].text
    return same, "same seed, same sample" if same else "same seed gave different samples"


async def _try_stream_usage(client: EndpointClient, msgs: list[dict[str, str]]) -> tuple[bool, str]:
    body = {
        "model": client.model,
        "messages": msgs,
        "max_tokens": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }

    async def usage_of_a_stream() -> Any:
        usage = None
        sent = client.chat_body(body)
        async with aclosing(client.transport.stream("chat/completions", sent)) as events:
            async for data in events:
                chunk = loads(data)
                if isinstance(chunk, dict) and chunk.get("usage"):
                    usage = chunk["usage"]
        return usage

    try:
        usage = await _asked(client, usage_of_a_stream)
    except (openai.APIError, ValueError) as exc:
        return False, f"streaming refused ({type(exc).__name__}); calls are not streamed"
    done = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if is_token_count(done) and done:  # one that counts nothing (or is none) is no usage
        return True, "streams end with token usage"
    return False, "streams carry no usage: calls are not streamed, so token counts stay exact"


_REASONING_ASK = [{"role": "user", "content": "Is 17 a prime number? Think briefly."}]


def client_template(client: EndpointClient, caps: Capabilities) -> str | None:
    """The chat template every call is rendered with on the client, when there is one."""
    if caps.continuation == "completions" and client.config.chat_template:
        return client.config.chat_template
    return None


async def _try_reasoning(
    client: EndpointClient, caps: Capabilities
) -> tuple[Literal["field", "tags", "none"], str]:
    template = client_template(client, caps)
    if template is not None:
        opener = generation_opener(template, _REASONING_ASK)
        if "<think>" in opener:
            return "tags", "the chat template opens the thinking with <think>"
        try:
            result = await client.complete(render_prompt(template, _REASONING_ASK), max_tokens=32)
        except EndpointError as exc:
            return "none", f"could not ask: {exc}"
    else:
        try:
            result = await client.chat(_REASONING_ASK, max_tokens=32)
        except EndpointError as exc:
            return "none", f"could not ask: {exc}"
    choice = result.choices[0]
    if choice.reasoning:
        return "field", "reasoning text arrives in a separate field (reasoning_content)"
    if "<think>" in choice.text:
        return "tags", "reasoning text arrives inside <think> tags"
    return "none", "no separate reasoning text seen (not a reasoning model, or none emitted)"


_PROBE_BUDGET = 4


async def try_thinking_budget(
    client: EndpointClient, caps: Capabilities
) -> tuple[ThinkingBudget, str]:
    """Whether the server caps the thinking itself (vLLM's ``thinking_token_budget``).

    Asked for a 4-token thinking budget, a server configured for it (a reasoning parser)
    ends the thinking there, so greedy thinking comes out shorter than uncapped; one that
    is not answers 400 (or ignores it), and the client writes the end marker itself.
    """
    if caps.reasoning == "none":
        return "cue", "not a reasoning model: the thinking ends with an answer cue"
    marker = client.config.think_end
    template = client_template(client, caps)

    async def thinking(extra: dict[str, Any] | None) -> str:
        if template is not None:
            prompt = render_prompt(template, _REASONING_ASK)
            done = await client.complete(prompt, max_tokens=24, extra=extra)
        else:
            done = await client.chat(_REASONING_ASK, max_tokens=24, extra=extra)
        choice = done.choices[0]
        return choice.reasoning or choice.text.partition(marker)[0]

    try:
        capped = await thinking({"thinking_token_budget": _PROBE_BUDGET})
    except EndpointError as exc:
        return "marker", (
            f"the server refused thinking_token_budget ({exc}); the client ends the "
            f"thinking with {marker}"
        )
    try:
        free = await thinking(None)
    except EndpointError as exc:
        return "marker", f"could not compare with an uncapped request ({exc})"
    if len(capped) < len(free) and free.startswith(capped.strip()[:8]):
        return "server", (
            f"thinking_token_budget={_PROBE_BUDGET} honoured (the thinking stopped early): "
            "the server ends the thinking"
        )
    return "marker", (
        f"thinking_token_budget={_PROBE_BUDGET} accepted but not enforced; "
        f"the client ends the thinking with {marker}"
    )

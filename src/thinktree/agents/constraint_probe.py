"""Which constraint dialects an endpoint honours, tried for real.

Each dialect is asked for an answer no model would give unprompted (a made-up token)
under a constraint that admits only that token; the dialect counts as honoured only
when the reply is exactly it. Servers that ignore a field they do not know are caught,
and so are servers that refuse it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import anyio
import openai
from pydantic import BaseModel

from thinktree.agents.endpoint import EndpointClient
from thinktree.agents.structured import DIALECTS, Dialect
from thinktree.errors import EndpointError

_TOKEN = "kiwi-42"
_MESSAGES = [{"role": "user", "content": "Name a colour."}]


class _Probe(BaseModel):
    answer: Literal["kiwi-42"]


def _fields(dialect: Dialect) -> dict[str, Any]:
    from outlines.models.openai import OpenAITypeAdapter
    from outlines.models.vllm import VLLMTypeAdapter

    if dialect == "vllm":
        return VLLMTypeAdapter().format_output_type(Literal["kiwi-42"])
    if dialect == "json_schema":
        return OpenAITypeAdapter().format_output_type(_Probe)
    if dialect == "gbnf":
        return {"grammar": f'root ::= "{_TOKEN}"'}
    return {"response_format": {"type": "json_object", "schema": _Probe.model_json_schema()}}


def _honoured(dialect: Dialect, text: str) -> bool:
    text = text.strip()
    if dialect in ("vllm", "gbnf"):
        return text == _TOKEN
    try:
        return bool(json.loads(text).get("answer") == _TOKEN)
    except (ValueError, AttributeError):
        return False


Post = Callable[[str, dict[str, Any]], Awaitable[Any]]


async def try_constraints(
    client: EndpointClient, post: Post, *, over_completions: bool = False
) -> tuple[list[str], str]:
    """The dialects ``client``'s endpoint honours (best first) and what was seen.

    ``post(path, body)`` sends one probe request (the probe's own retries) and returns its
    JSON. With ``over_completions`` (answers continue over ``/v1/completions``) a dialect
    counts only when that path honours it too: some servers constrain chat requests only.
    """
    # outlines takes about a second to import: not on the event loop, where the probe's
    # other requests are under way
    fields = await anyio.to_thread.run_sync(lambda: {d: _fields(d) for d in DIALECTS})
    verdicts: dict[str, str] = {}

    async def one(dialect: Dialect) -> None:
        paths = ["chat/completions", "completions"] if over_completions else ["chat/completions"]
        for path in paths:
            body: dict[str, Any] = {"model": client.model, "max_tokens": 24, "temperature": 0.0}
            if path == "completions":
                body["prompt"] = _PROMPT
            else:
                body["messages"] = _MESSAGES
            try:
                data = await post(path, {**body, **fields[dialect]})
            except (openai.APIError, EndpointError, ValueError) as exc:
                verdicts[dialect] = f"{dialect} refused{_on(path)} ({_reason(exc)})"
                return
            text = _text(data, path)
            if not _honoured(dialect, text):
                verdicts[dialect] = f"{dialect} ignored{_on(path)} (got {text[:30]!r})"
                return

    # each dialect on its own, all at once (a made-up token cannot come out by chance,
    # however the server batches them)
    async with anyio.create_task_group() as tg:
        for dialect in DIALECTS:
            tg.start_soon(one, dialect)
    honoured: list[str] = [d for d in DIALECTS if d not in verdicts]
    seen = [verdicts.get(d, f"{d} honoured") for d in DIALECTS]
    return honoured, "; ".join(seen)


_PROMPT = "Name a colour.\n"


def _on(path: str) -> str:
    return " over /v1/completions" if path == "completions" else ""


def _reason(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _text(data: Any, path: str) -> str:
    """The first choice's text of a chat or a completions reply (empty when it has none)."""
    choices = data.get("choices") if isinstance(data, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, dict):
        return ""
    if path == "completions":
        text = choice.get("text")
    else:
        message = choice.get("message")
        text = message.get("content") if isinstance(message, dict) else None
    return text if isinstance(text, str) else ""

"""Which constraint dialects an endpoint honours, tried for real.

Each dialect is asked for an answer no model would give unprompted (a made-up token)
under a constraint that admits only that token; the dialect counts as honoured only
when the reply is exactly it. Servers that ignore a field they do not know are caught,
and so are servers that refuse it.
"""

from __future__ import annotations

import json
from typing import Any, Literal

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
    return {"response_format": {"type": "json_object", "schema": _Probe.model_json_schema()}}


def _honoured(dialect: Dialect, text: str) -> bool:
    text = text.strip()
    if dialect == "vllm":
        return text == _TOKEN
    try:
        return bool(json.loads(text).get("answer") == _TOKEN)
    except (ValueError, AttributeError):
        return False


async def try_constraints(client: EndpointClient) -> tuple[list[str], str]:
    """The dialects ``client``'s endpoint honours (best first) and what was seen."""
    honoured: list[str] = []
    seen: list[str] = []
    for dialect in DIALECTS:
        try:
            result = await client.chat(
                _MESSAGES, max_tokens=24, temperature=0.0, extra=_fields(dialect)
            )
        except EndpointError as exc:
            seen.append(f"{dialect} refused ({exc})")
            continue
        text = result.choices[0].text if result.choices else ""
        if _honoured(dialect, text):
            honoured.append(dialect)
            seen.append(f"{dialect} honoured")
        else:
            seen.append(f"{dialect} ignored (got {text[:30]!r})")
    return honoured, "; ".join(seen)

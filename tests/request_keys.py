"""What identifies a model request in tests: the same on the server's log and in a call store.

``reply`` is a fake server reply that is deterministic per request and seed (two runs get
the very same answers) and logs each request's key in ``SEEN``, so a test can count what
was paid for.
"""

from __future__ import annotations

import json
from typing import Any

SEEN: list[str] = []


def request_key(body: dict[str, Any]) -> str:
    """What identifies a request on both sides (the run's record and the server's log)."""
    extra = body.get("extra_body") or {}
    return json.dumps(
        [
            body.get("messages"),
            body.get("prompt"),
            body.get("max_tokens"),
            body.get("seed"),
            body.get("n", 1),
            body.get("continue_final_message", extra.get("continue_final_message")),
        ],
        sort_keys=True,
    )


def reply(body: dict[str, Any], index: int) -> str:
    """A reply per request and seed; the request's key goes to ``SEEN`` once."""
    if index == 0:
        SEEN.append(request_key(body))
    seed = int(body.get("seed") or 0) + index
    return "Let me think it over. " * (1 + seed % 3) + f"Answer: {'ABC'[seed % 3]}"

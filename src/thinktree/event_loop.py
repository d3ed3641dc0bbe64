"""The event loop a run's process uses: uvloop where it is installed, else asyncio's own.

uvloop is an asyncio event loop written in C: the same asyncio API (anyio, aiohttp and
Textual run on it unchanged), with a cheaper turn of the loop and cheaper sockets, which
is most of what a run spends per model call beyond its own bookkeeping. Set
``THINKTREE_EVENT_LOOP=asyncio`` to run on the standard loop instead.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

__all__ = ["loop_name", "run"]

T = TypeVar("T")

ENV = "THINKTREE_EVENT_LOOP"


def loop_name() -> str:
    """``"uvloop"`` or ``"asyncio"``: the loop :func:`run` starts."""
    wanted = os.environ.get(ENV, "").strip().lower()
    if wanted == "asyncio":
        return "asyncio"
    if importlib.util.find_spec("uvloop") is None:
        return "asyncio"
    return "uvloop"


def run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``anyio.run(fn, *args)`` on the asyncio backend with :func:`loop_name`'s loop."""
    options = {"use_uvloop": loop_name() == "uvloop"}
    return anyio.run(fn, *args, backend="asyncio", backend_options=options)

"""JSON on the hot path (request bodies, fingerprints, the trace, the stores) via orjson.

orjson writes what ``json.dumps(..., ensure_ascii=False, separators=(",", ":"))`` writes
for the JSON types, several times faster; keys that are not strings are written as
strings, and anything else JSON cannot hold is written as its ``str()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["dump_bytes", "dump_bytes_via", "dump_line", "dumps", "dumps_sorted", "loads"]

_OPTS = orjson.OPT_NON_STR_KEYS
_LINE = _OPTS | orjson.OPT_APPEND_NEWLINE
_SORTED = _OPTS | orjson.OPT_SORT_KEYS

loads = orjson.loads


def dump_bytes(obj: Any) -> bytes:
    """``obj`` as compact UTF-8 JSON bytes."""
    return orjson.dumps(obj, default=str, option=_OPTS)


def dump_bytes_via(obj: Any, convert: Callable[[Any], Any]) -> bytes:
    """``obj`` as compact UTF-8 JSON bytes, with every dataclass, and anything else JSON
    cannot hold, written as what ``convert`` returns for it.

    Each replacement is built only while it is written, so a large document (a run's every
    node) is never held as a second tree of dicts.
    """
    return orjson.dumps(obj, default=convert, option=_OPTS | orjson.OPT_PASSTHROUGH_DATACLASS)


def dump_line(obj: Any) -> bytes:
    """``obj`` as one line of JSON Lines: :func:`dump_bytes` and a newline."""
    return orjson.dumps(obj, default=str, option=_LINE)


def dumps(obj: Any) -> str:
    """``obj`` as compact JSON text."""
    return orjson.dumps(obj, default=str, option=_OPTS).decode()


def dumps_sorted(obj: Any) -> str:
    """``obj`` as compact JSON text with every object's keys sorted (canonical)."""
    return orjson.dumps(obj, default=str, option=_SORTED).decode()

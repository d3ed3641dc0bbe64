"""JSON on the hot path (request bodies, fingerprints, the trace, the stores) via orjson.

orjson writes what ``json.dumps(..., ensure_ascii=False, separators=(",", ":"))`` writes
for the JSON types, several times faster; keys that are not strings are written as
strings, and anything else JSON cannot hold is written as its ``str()``.

orjson's option for keys that are not strings slows the writing of every dict by about a
third, and nearly every document has string keys only: each is written without it first,
and only one that orjson then refuses is written again with it. The bytes are the same
either way (a document refused for another reason is refused again, with its error).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["dump_bytes", "dump_bytes_via", "dump_line", "dumps", "dumps_sorted", "loads"]

_NON_STR = orjson.OPT_NON_STR_KEYS
_LINE = orjson.OPT_APPEND_NEWLINE
_VIA = orjson.OPT_PASSTHROUGH_DATACLASS

loads = orjson.loads


def _dump(obj: Any, default: Callable[[Any], Any], option: int) -> bytes:
    """orjson's bytes for ``obj``, with the option for keys that are not strings only
    where it is needed (see the module's docstring)."""
    try:
        return orjson.dumps(obj, default=default, option=option)
    except orjson.JSONEncodeError:
        return orjson.dumps(obj, default=default, option=option | _NON_STR)


def dump_bytes(obj: Any) -> bytes:
    """``obj`` as compact UTF-8 JSON bytes."""
    return _dump(obj, str, 0)


def dump_bytes_via(obj: Any, convert: Callable[[Any], Any]) -> bytes:
    """``obj`` as compact UTF-8 JSON bytes, with every dataclass, and anything else JSON
    cannot hold, written as what ``convert`` returns for it.

    Each replacement is built only while it is written, so a large document (a run's every
    node) is never held as a second tree of dicts.
    """
    return _dump(obj, convert, _VIA)


def dump_line(obj: Any) -> bytes:
    """``obj`` as one line of JSON Lines: :func:`dump_bytes` and a newline."""
    # :func:`_dump` written out: a trace writes several lines per sample
    try:
        return orjson.dumps(obj, default=str, option=_LINE)
    except orjson.JSONEncodeError:
        return orjson.dumps(obj, default=str, option=_LINE | _NON_STR)


def dumps(obj: Any) -> str:
    """``obj`` as compact JSON text."""
    return _dump(obj, str, 0).decode()


def dumps_sorted(obj: Any) -> str:
    """``obj`` as compact JSON text with every object's keys sorted (canonical)."""
    return _dump(obj, str, orjson.OPT_SORT_KEYS).decode()

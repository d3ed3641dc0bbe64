"""Reading ``trace.jsonl``: events back from their JSON lines, also while still written."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import sys
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from thinktree.orchestrator.events import Event, RunFinished


def _event_types() -> dict[str, type[Event]]:
    """Every event class by its ``type``, new ones in events.py included."""
    found: dict[str, type[Event]] = {}
    stack = list(Event.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        # A slots dataclass replaces its class; the replaced one may linger until
        # collected, so only the class its module actually exports counts.
        module = sys.modules.get(cls.__module__)
        if getattr(module, cls.__qualname__, None) is cls:
            found[cls.type] = cls
    return found


EVENT_TYPES = _event_types()
TRACE_NAME = "trace.jsonl"
RUN_MANIFEST = "run.json"  # what makes a folder a run folder (orchestrator.run writes it first)
_CHUNK = 1 << 20
#: Bytes a line of a trace may hold: a reader holds a line whole until its newline comes,
#: and a node's whole text (a megabyte or so at most) is its longest.
MAX_LINE = 64 << 20


class TraceError(ValueError):
    """A line of a trace that is not an event (and not merely still being written).

    ``events``: those of the lines before it in the chunk :meth:`TraceDecoder.feed` was
    given, which a reader shows before it reports the broken line.
    """

    def __init__(self, message: str, events: list[Event] | None = None) -> None:
        super().__init__(message)
        self.events: list[Event] = events or []


class UnknownEventType(ValueError):
    """An event type this version does not know (a newer writer); readers skip it."""


def _identity(value: Any) -> Any:
    return value


#: What parsing a line of JSON raises for one that is not: json recurses into nested
#: lists and objects, so a line nested deeply enough raises RecursionError, not ValueError.
JSON_ERRORS = (ValueError, RecursionError)

_JSON_KINDS: dict[type, str] = {
    str: "text",
    int: "a number",
    float: "a number",
    bool: "true or false",
    type(None): "null",
    dict: "an object",
    list: "a list",
}


def _json_kind(value: Any) -> str:
    """What a JSON value is, in words (for a message)."""
    return next((w for t, w in reversed(_JSON_KINDS.items()) if isinstance(value, t)), "?")


def _converter(hint: Any) -> Callable[[Any], Any]:
    """How to restore a field from JSON: enums (also inside ``X | None``) by value."""
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        enum_type = hint
        return lambda value: enum_type(value)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if isinstance(arg, type) and issubclass(arg, enum.Enum):
                optional = arg
                return lambda value: None if value is None else optional(value)
    return _identity


def _json_types(hint: Any) -> tuple[type, ...] | None:
    """The Python types JSON gives for a value of type ``hint``; None: any (or not known)."""
    if hint is Any:
        return None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        found: list[type] = []
        for arg in typing.get_args(hint):
            inner = _json_types(arg)
            if inner is None:
                return None
            found.extend(inner)
        return tuple(found)
    origin = typing.get_origin(hint) or hint
    if origin in (int, float):
        return (int, float)  # a number is a number: what reads it takes either
    if origin in (str, bool, dict, list, type(None)):
        return (origin,)
    return None  # an enum: its converter checks it


class _Decoding(typing.NamedTuple):
    """How to make an event of one class from its JSON (worked out once per class)."""

    names: frozenset[str]  # its init fields
    required: frozenset[str]  # those without a default
    converters: tuple[tuple[str, Callable[[Any], Any]], ...]  # those that need restoring
    types: dict[str, tuple[type, ...]]  # the types a field's value may be (checked ones)
    inner: tuple[tuple[str, tuple[type, ...]], ...]  # the types of a dict's values/list's items


_DECODINGS: dict[type[Event], _Decoding] = {}


def _items(hint: Any) -> Any | None:
    """The type of the values in a dict (or list) of type ``hint`` (also ``dict[...] | None``)."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    for arm in typing.get_args(hint) if union else (hint,):
        if typing.get_origin(arm) in (dict, list):
            return typing.get_args(arm)[-1]  # a dict's keys are text in JSON
    return None


def _decoding(cls: type[Event]) -> _Decoding:
    """How to decode an event of class ``cls`` (worked out on its first event)."""
    found = _DECODINGS.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        fields = [f for f in dataclasses.fields(cls) if f.init]
        required = frozenset(
            f.name
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        converters = ((f.name, _converter(hints[f.name])) for f in fields)
        checked = {f.name: t for f in fields if (t := _json_types(hints[f.name])) is not None}
        inner = [
            (name, item_types)
            for name in checked
            if (item := _items(hints[name])) is not None
            and (item_types := _json_types(item)) is not None
        ]
        found = _Decoding(
            frozenset(f.name for f in fields),
            required,
            tuple(c for c in converters if c[1] is not _identity),
            checked,
            tuple(inner),
        )
        _DECODINGS[cls] = found
    return found


def _wrong_inside(data: Mapping[str, Any], decoding: _Decoding) -> str | None:
    """The first field of ``data`` holding a value (a dict's, a list's) of the wrong type."""
    for name, accepted in decoding.inner:
        value = data.get(name)
        for item in value.values() if isinstance(value, dict) else value or ():
            if not isinstance(item, accepted):
                return f"{name} holds {_json_kind(item)}, not {_kinds(accepted)}"
    return None


def _kinds(accepted: tuple[type, ...]) -> str:
    """``accepted`` in words (JSON's: a number, text, an object…)."""
    return " or ".join(dict.fromkeys(_JSON_KINDS[t] for t in accepted))


def event_from_dict(data: Mapping[str, Any]) -> Event:
    """The event that ``to_dict`` wrote as ``data`` (keys it does not know are ignored).

    Raises ValueError for one with a field missing or of the wrong type (an event a
    reader would trip over later), UnknownEventType for a type this version does not know.
    """
    kind = data.get("type")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None and isinstance(kind, str):
        EVENT_TYPES.update(_event_types())  # an event class defined since import
        cls = EVENT_TYPES.get(kind)
    if cls is None:
        raise UnknownEventType(f"unknown event type {kind!r}")
    decoding = _decoding(cls)
    kwargs = dict(data)
    del kwargs["type"]
    if not kwargs.keys() <= decoding.names:
        kwargs = {name: value for name, value in kwargs.items() if name in decoding.names}
    types = decoding.types
    for name, value in kwargs.items():  # for every line of a trace: kept a plain loop
        if not isinstance(value, types.get(name, object)):
            raise ValueError(
                f"bad {kind} event: {name} is {_json_kind(value)}, not {_kinds(types[name])}"
            )
    if decoding.inner and (inside := _wrong_inside(kwargs, decoding)) is not None:
        raise ValueError(f"bad {kind} event: {inside}")
    if not math.isfinite(kwargs.get("at", 0.0)):  # json reads NaN, Infinity, 1e999 as floats
        raise ValueError(f"bad {kind} event: at is {kwargs['at']}, not a time")
    try:
        for name, convert in decoding.converters:
            if name in kwargs:
                kwargs[name] = convert(kwargs[name])
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        missing = sorted(decoding.required - kwargs.keys())
        why = f"no {', '.join(missing)}" if missing else str(exc)
        raise ValueError(f"bad {kind} event: {why}") from None


class TraceDecoder:
    """Turns chunks of a growing trace file into events; keeps the unfinished last line."""

    def __init__(self, name: str = TRACE_NAME) -> None:
        self._name = name
        self._partial: list[bytes] = []  # the unfinished last line, in the pieces it came in
        self._held = 0  # its bytes
        self.line = 0
        self.skipped = 0

    def feed(self, chunk: bytes) -> list[Event]:
        """Events of every line completed by ``chunk``.

        Raises :class:`TraceError` for a complete line that is not an event, with the
        events of the lines before it in ``chunk``, and for a line past :data:`MAX_LINE`
        bytes, whole or not.
        """
        if b"\n" not in chunk:
            if chunk:  # a long line, still coming: joined once it is whole, not per chunk
                self._partial.append(chunk)
                self._held += len(chunk)
                self._check_length(self._held, self.line + 1)
            return []
        lines = chunk.split(b"\n")
        if self._partial:
            self._partial.append(lines[0])
            lines[0] = b"".join(self._partial)
        last = lines.pop()
        self._partial = [last] if last else []
        self._held = len(last)
        events: list[Event] = []
        for raw in lines:
            self.line += 1
            try:
                self._check_length(len(raw), self.line)
                event = self._decode(raw)
            except TraceError as exc:
                exc.events = events
                raise
            if event is not None:
                events.append(event)
        return events

    def _check_length(self, size: int, line: int) -> None:
        if size > MAX_LINE:
            limit = f"{MAX_LINE / (1 << 20):g} MiB"
            raise TraceError(f"{self._name}:{line}: a line over {limit} long, not an event")

    def finish(self) -> list[Event]:
        """The last line if it is a whole event; a line still being written is dropped."""
        raw, self._partial, self._held = b"".join(self._partial), [], 0
        try:
            event = self._decode(raw, line=self.line + 1)
        except TraceError:
            return []
        return [] if event is None else [event]

    def _decode(self, raw: bytes, line: int | None = None) -> Event | None:
        if not raw.strip():
            return None
        where = f"{self._name}:{line or self.line}"
        try:
            data = json.loads(raw)
        except JSON_ERRORS:
            raise TraceError(f"{where}: not a JSON event") from None
        if not isinstance(data, dict):
            raise TraceError(f"{where}: not a JSON object")
        try:
            return event_from_dict(data)
        except UnknownEventType:
            self.skipped += 1
            return None
        except ValueError as exc:
            raise TraceError(f"{where}: {exc}") from None


def read_trace(path: Path) -> Iterator[Event]:
    """Every event in ``path``, in order, tolerating a last line still being written.

    Raises :class:`TraceError` for a complete line that is not an event; events of a
    type this version does not know are skipped.
    """
    decoder = TraceDecoder(str(path))
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            try:
                events = decoder.feed(chunk)
            except TraceError as exc:
                yield from exc.events
                raise
            yield from events
    yield from decoder.finish()


def resolve_trace(path: Path) -> Path:
    """The trace file ``path`` names: a trace, a run folder, or a folder of runs.

    A run still going lives in a hidden ``.NAME.*.partial`` folder beside its final
    name, so ``runs/ID`` finds it while it is written; a folder of runs gives its
    newest run (finished or not).
    """
    if path.is_file():
        return path
    if (path / TRACE_NAME).is_file():
        return path / TRACE_NAME
    candidates: list[Path] = []
    if path.is_dir():
        candidates = [p / TRACE_NAME for p in path.iterdir() if (p / TRACE_NAME).is_file()]
    if not candidates and path.parent.is_dir():
        candidates = [
            p / TRACE_NAME
            for p in path.parent.glob(f".{path.name}.*.partial")
            if (p / TRACE_NAME).is_file()
        ]
    if candidates:
        return max(candidates, key=lambda p: p.stat().st_mtime)
    if path.is_dir():
        raise FileNotFoundError(f"no {TRACE_NAME} in {path} nor in a run folder in it")
    if path.exists():  # a FIFO, a device: nothing a trace is read from
        raise FileNotFoundError(f"{path} is not a run folder or a trace")
    raise FileNotFoundError(
        f"no run folder at {path}; give a run folder, its {TRACE_NAME} or a folder of runs"
    )


def run_folder(trace: Path) -> Path | None:
    """The run folder ``trace`` is the trace of, or None for a trace on its own."""
    folder = trace.parent
    return folder if (folder / RUN_MANIFEST).is_file() else None


def is_trace(path: Path) -> bool:
    """Whether ``path`` reads as a trace: its first line is an event. In a run folder a
    trace may have no whole line yet (the run has just started): that one is a trace too."""
    with path.open("rb") as file:
        head = file.read(_CHUNK)
    line, newline, _ = head.partition(b"\n")
    if not newline and run_folder(path) is not None:
        return True
    try:
        data = json.loads(line)
    except JSON_ERRORS:
        return False
    kind = data.get("type") if isinstance(data, dict) else None
    return isinstance(kind, str) and kind in EVENT_TYPES


def trace_finished(path: Path) -> bool:
    """Whether the trace's last complete line is the run's end (its writer is done)."""
    with path.open("rb") as file:
        size = file.seek(0, 2)
        file.seek(max(size - 65536, 0))
        tail = file.read()
    for raw in reversed(tail.split(b"\n")):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except JSON_ERRORS:
            return False
        return isinstance(data, dict) and data.get("type") == RunFinished.type
    return False

"""Reading ``trace.jsonl``: events back from their JSON lines, also while still written."""

from __future__ import annotations

import dataclasses
import enum
import json
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


class TraceError(ValueError):
    """A line of a trace that is not an event (and not merely still being written)."""


class UnknownEventType(ValueError):
    """An event type this version does not know (a newer writer); readers skip it."""


def _identity(value: Any) -> Any:
    return value


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


_Decoding = tuple[frozenset[str], tuple[tuple[str, Callable[[Any], Any]], ...]]
_DECODINGS: dict[type[Event], _Decoding] = {}


def _decoding(cls: type[Event]) -> _Decoding:
    """The init fields of ``cls``, and those that need restoring, with how (once per class)."""
    found = _DECODINGS.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        fields = [f.name for f in dataclasses.fields(cls) if f.init]
        converters = ((name, _converter(hints[name])) for name in fields)
        found = (frozenset(fields), tuple(c for c in converters if c[1] is not _identity))
        _DECODINGS[cls] = found
    return found


def event_from_dict(data: Mapping[str, Any]) -> Event:
    """The event that ``to_dict`` wrote as ``data`` (keys it does not know are ignored)."""
    kind = data.get("type")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None and isinstance(kind, str):
        EVENT_TYPES.update(_event_types())  # an event class defined since import
        cls = EVENT_TYPES.get(kind)
    if cls is None:
        raise UnknownEventType(f"unknown event type {kind!r}")
    names, converters = _decoding(cls)
    kwargs = dict(data)
    del kwargs["type"]
    if not kwargs.keys() <= names:
        kwargs = {name: value for name, value in kwargs.items() if name in names}
    for name, convert in converters:
        if name in kwargs:
            kwargs[name] = convert(kwargs[name])
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad {kind} event: {exc}") from None


class TraceDecoder:
    """Turns chunks of a growing trace file into events; keeps the unfinished last line."""

    def __init__(self, name: str = TRACE_NAME) -> None:
        self._name = name
        self._partial = b""
        self.line = 0
        self.skipped = 0

    def feed(self, chunk: bytes) -> list[Event]:
        """Events of every line completed by ``chunk``."""
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        events: list[Event] = []
        for raw in lines:
            self.line += 1
            event = self._decode(raw)
            if event is not None:
                events.append(event)
        return events

    def finish(self) -> list[Event]:
        """The last line if it is a whole event; a line still being written is dropped."""
        raw, self._partial = self._partial, b""
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
        except ValueError:
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
            yield from decoder.feed(chunk)
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
    if not candidates:
        raise FileNotFoundError(f"no {TRACE_NAME} at {path}")
    return max(candidates, key=lambda p: p.stat().st_mtime)


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
    except ValueError:
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
        except ValueError:
            return False
        return isinstance(data, dict) and data.get("type") == RunFinished.type
    return False

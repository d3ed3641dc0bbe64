"""The run store: one SQLite database per run (``run.sqlite``), written from its events.

:class:`RunStore` is a bus subscriber. ``handle`` only appends the event to an
in-memory queue; one writer thread drains the queue and commits each batch in a single
transaction, so the store never holds up the run. The database keeps the run's config,
every problem, every node of every tree, every model call, the votes and the outcomes,
the run's status, and the events no table holds whole (verifier verdicts, strategy
choices, retries, votes, the run's start and end). The run's complete event log is its
``trace.jsonl``: a node's start and finish live in its row, not twice.

Readers open the file read-only (:meth:`RunStore.open_readonly`, :func:`list_runs`) and
may do so while the run is still being written. A run whose store never saw
``RunFinished`` reads as ``"interrupted"`` once its writer is gone: the writer holds an
exclusive ``flock`` on ``run.sqlite-lock`` for as long as it lives, so a crashed writer
is told from a live one without any clock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import itertools
import json
import math
import operator
import os
import re
import sqlite3
import stat
import threading
import time
import types
import typing
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote

import anyio
import structlog

from thinktree import __version__
from thinktree._files import held, in_use
from thinktree._json import dumps
from thinktree.errors import ThinktreeError
from thinktree.orchestrator.events import (
    Event,
    NodeDelta,
    NodeFailed,
    NodeFinished,
    NodeKind,
    NodeStarted,
    ProblemFinished,
    ProblemStarted,
    failed_call,
)
from thinktree.pricing import Price

log = structlog.get_logger(__name__)

__all__ = [
    "SCHEMA_VERSION",
    "STORE_NAME",
    "RunStore",
    "RunSummary",
    "StoreError",
    "StoreReader",
    "is_secret",
    "list_runs",
    "redact",
    "scrub",
]

STORE_NAME: Final = "run.sqlite"
SCHEMA_VERSION: Final = 1
REDACTED: Final = "[redacted]"
LOCK_SUFFIX: Final = "-lock"

_SQLITE_MAGIC = b"SQLite format 3\x00"
_TABLES = ("meta", "run", "problems", "nodes", "calls", "votes", "events")
_SCHEMA: tuple[str, ...] = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    """CREATE TABLE run (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        run_id TEXT,
        mode TEXT,
        endpoint TEXT,
        model TEXT,
        problems_total INTEGER,
        settings TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL DEFAULT 'running',
        retries INTEGER NOT NULL DEFAULT 0,
        created_utc TEXT NOT NULL,
        started_utc TEXT,
        finished_utc TEXT,
        finished_at REAL
    )""",
    """CREATE TABLE problems (
        id TEXT PRIMARY KEY,
        node_id TEXT NOT NULL,
        question TEXT NOT NULL,
        gold TEXT,
        status TEXT NOT NULL DEFAULT 'running',
        answer TEXT,
        correct INTEGER,
        covered INTEGER,
        error TEXT,
        started_at REAL NOT NULL,
        finished_at REAL
    )""",
    """CREATE TABLE nodes (
        id TEXT PRIMARY KEY,
        problem_id TEXT NOT NULL REFERENCES problems (id),
        parent_id TEXT REFERENCES nodes (id),
        kind TEXT NOT NULL,
        label TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'running',
        text TEXT NOT NULL DEFAULT '',
        max_tokens INTEGER,
        continuation TEXT,
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        answer TEXT,
        extraction TEXT,
        finish_reason TEXT,
        latency_s REAL NOT NULL DEFAULT 0,
        call_id TEXT,
        error TEXT,
        started_at REAL NOT NULL,
        finished_at REAL
    )""",
    "CREATE INDEX nodes_problem ON nodes (problem_id)",
    """CREATE TABLE calls (
        call_id TEXT PRIMARY KEY,
        problem_id TEXT,
        node_ids TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        latency_s REAL NOT NULL,
        finished_at REAL NOT NULL
    )""",
    """CREATE TABLE votes (
        problem_id TEXT PRIMARY KEY REFERENCES problems (id),
        node_id TEXT NOT NULL,
        rule TEXT NOT NULL,
        answer TEXT,
        winner_node TEXT,
        counts TEXT NOT NULL,
        at REAL NOT NULL
    )""",
    # ``id`` is the rowid, so the table itself is the index on events(id).
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        type TEXT NOT NULL,
        at REAL NOT NULL,
        payload TEXT NOT NULL
    )""",
)

_NODE_COLUMNS = (
    "id",
    "problem_id",
    "parent_id",
    "kind",
    "label",
    "status",
    "text",
    "max_tokens",
    "continuation",
    "prompt_tokens",
    "completion_tokens",
    "answer",
    "extraction",
    "finish_reason",
    "latency_s",
    "call_id",
    "error",
    "started_at",
    "finished_at",
)
_PROBLEM_COLUMNS = (
    "id",
    "node_id",
    "question",
    "gold",
    "status",
    "answer",
    "correct",
    "covered",
    "error",
    "started_at",
    "finished_at",
)
_CALL_COLUMNS = (
    "call_id",
    "problem_id",
    "node_ids",
    "prompt_tokens",
    "completion_tokens",
    "latency_s",
    "finished_at",
)
_EVENT_COLUMNS = ("type", "at", "payload")
_VOTE_COLUMNS = ("problem_id", "node_id", "rule", "answer", "winner_node", "counts", "at")
_RUN_COLUMNS = (
    "run_id",
    "mode",
    "endpoint",
    "model",
    "problems_total",
    "settings",
    "status",
    "retries",
    "started_utc",
    "finished_utc",
    "finished_at",
)


_VARIABLES = 999  # the lowest limit on ? per statement that any SQLite build has


@functools.cache
def _insert_sql(table: str, columns: tuple[str, ...], rows: int, upsert: bool) -> str:
    """INSERT of ``rows`` whole rows; with ``upsert``, a row whose key exists is updated."""
    one = f"({', '.join('?' * len(columns))})"
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([one] * rows)}"
    if upsert:
        update = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
        sql += f" ON CONFLICT ({columns[0]}) DO UPDATE SET {update}"
    return sql


def _insert(
    conn: sqlite3.Connection,
    table: str,
    columns: tuple[str, ...],
    rows: Sequence[Iterable[Any]],
    *,
    upsert: bool = True,
) -> None:
    """Insert ``rows`` with few statements (each statement lets go of the GIL once).

    Rows go in chunks whose sizes are powers of two, so a handful of statements cover
    every batch size and stay in the connection's statement cache.
    """
    size = 1 << ((_VARIABLES // len(columns)).bit_length() - 1)
    start = 0
    while start < len(rows):
        while size > len(rows) - start:
            size >>= 1
        chunk = rows[start : start + size]
        conn.execute(_insert_sql(table, columns, size, upsert), list(_flat(chunk)))
        start += size


# A node's row is written with its rowid: the order nodes started in, whenever the row
# itself is written (a quick child's row goes in before its parent's).
_NODE_WRITE = (*_NODE_COLUMNS, "rowid")
_PROBLEM_ROW = operator.itemgetter(*_PROBLEM_COLUMNS)
_CALL_ROW = operator.itemgetter(*_CALL_COLUMNS)
_VOTE_ROW = operator.itemgetter(*_VOTE_COLUMNS)
_UPDATE_RUN = f"UPDATE run SET {', '.join(f'{c} = :{c}' for c in _RUN_COLUMNS)} WHERE id = 1"

_dumps = dumps
_flat = itertools.chain.from_iterable


class StoreError(ThinktreeError):
    """A run store that cannot be created, opened or read; the message says why."""


# --- redaction ---------------------------------------------------------------------------

_SECRET_KEY = re.compile(
    r"api_?key|authori[sz]ation|secret|passw(?:or)?d|credential|private_?key|cookie"
    r"|(?:^|_)(?:token|auth|bearer)$",
    re.IGNORECASE,
)
_SECRET_TEXT: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 " + REDACTED),
    (re.compile(r"\b(sk|hf|ghp|xox[abp])([-_])[A-Za-z0-9_-]{8,}"), r"\1\2" + REDACTED),
    (
        re.compile(
            r"(?i)([?&](?:api[_-]?key|key|token|access_token|auth|secret|password)=)[^&#\s]+"
        ),
        r"\1" + REDACTED,
    ),
    (re.compile(r"(://[^/\s:@]+:)[^/\s@]+@"), r"\1" + REDACTED + "@"),
)
_TEXT_FIELDS = frozenset({"error", "reason", "endpoint"})
# What the model said and how it was counted (a vote's counts, scores and ballots): kept
# as said, like a node's text; scrubbing every ballot cost more than the rest of a vote.
_MODEL_OUTPUT_FIELDS = frozenset({"counts", "scores", "ballots"})


def scrub(text: str) -> str:
    """``text`` with anything shaped like a credential (bearer token, sk-…, ?key=) masked."""
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text


def is_secret(key: object, value: object) -> bool:
    """Whether ``value`` under ``key`` is a credential to mask (numbers never are)."""
    if not isinstance(key, str) or value is None or isinstance(value, bool | int | float):
        return False
    return _SECRET_KEY.search(key.replace("-", "_")) is not None


def redact(value: Any) -> Any:
    """A copy of ``value`` with credential-like keys masked and credential-like text scrubbed.

    Keys named like api_key, authorization, secret, password or token lose their value
    (numbers are kept: ``max_tokens`` is data, not a credential).
    """
    if isinstance(value, Mapping):
        return {k: REDACTED if is_secret(k, v) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return scrub(value)
    return value


_PLAIN = (str, int, float, bool, type(None))


def _plain(hint: Any) -> bool:
    """Whether a field of this type can only hold a scalar (nothing to redact inside)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return all(_plain(arg) for arg in typing.get_args(hint))
    return isinstance(hint, type) and issubclass(hint, _PLAIN)


@dataclass(frozen=True, slots=True)
class _Shape:
    """How to turn one event class into its stored payload, worked out once."""

    kind: str
    names: tuple[str, ...]
    values: Callable[[Event], tuple[Any, ...]]
    redact: tuple[int, ...]  # fields that may hold dicts or lists
    scrub: tuple[int, ...]  # free-text fields that may quote a credential

    @classmethod
    def of(cls, event_type: type[Event]) -> _Shape:
        try:
            hints = typing.get_type_hints(event_type)
        except (NameError, TypeError):
            hints = {}
        fields = dataclasses.fields(event_type)
        names = tuple(f.name for f in fields)
        getter = operator.attrgetter(*names)
        values = getter if len(names) > 1 else lambda event: (getter(event),)
        return cls(
            kind=event_type.type,
            names=names,
            values=values,
            redact=tuple(
                i
                for i, n in enumerate(names)
                if n not in _MODEL_OUTPUT_FIELDS and not _plain(hints.get(n, object))
            ),
            scrub=tuple(i for i, n in enumerate(names) if n in _TEXT_FIELDS),
        )


_SHAPES: dict[type[Event], _Shape] = {}


def _payload(event: Event) -> dict[str, Any]:
    """The event as ``to_dict`` gives it, redacted, without deep-copying every field."""
    shape = _SHAPES.get(type(event))
    if shape is None:
        shape = _SHAPES[type(event)] = _Shape.of(type(event))
    data = dict(zip(shape.names, shape.values(event), strict=True))
    for i in shape.redact:
        name = shape.names[i]
        data[name] = redact(data[name])
    for i in shape.scrub:
        name = shape.names[i]
        if isinstance(data[name], str):
            data[name] = scrub(data[name])
    data["type"] = shape.kind
    return data


# --- shared helpers ----------------------------------------------------------------------


def _now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + LOCK_SUFFIX)


def _writer_alive(path: Path) -> bool:
    """Whether a live writer holds the store's lock (read-only: takes no lasting lock)."""
    return held(_lock_path(path))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return " ".join(str(exc).split()) or type(exc).__name__


def _open_checked(path: Path) -> sqlite3.Connection:
    """A read-only connection to ``path`` after checking it is a store this version reads.

    Nothing is written to ``path`` (nor beside it) on any of the ways this can fail.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise StoreError(f"no run store at {path}") from None
    except OSError as exc:
        raise StoreError(f"cannot read run store {path}: {_reason(exc)}") from None
    if not stat.S_ISREG(info.st_mode):
        raise StoreError(f"{path} is not a file, so not a run store")
    if info.st_size == 0:
        raise StoreError(f"{path} is an empty file, not a run store")
    try:
        with path.open("rb") as file:
            head = file.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise StoreError(f"cannot read run store {path}: {_reason(exc)}") from None
    if head != _SQLITE_MAGIC:
        raise StoreError(f"{path} is not a SQLite database, so not a run store")
    # A store with no -wal beside it is closed: read it as immutable, so that SQLite does
    # not leave a -wal and a -shm behind. With a -wal, a writer is live (or died): read
    # through the WAL as any reader would.
    live = os.path.lexists(f"{path}-wal")
    uri = f"file:{quote(str(path.absolute()))}?mode=ro{'' if live else '&immutable=1'}"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5.0, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open run store {path}: {_reason(exc)}") from None
    try:
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if "meta" not in tables:
            raise StoreError(f"{path} is a SQLite database without thinktree's run schema")
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        try:
            version = int(str(meta["schema_version"]))
        except (KeyError, ValueError):
            raise StoreError(
                f"{path} is a SQLite database without thinktree's run schema (no schema_version)"
            ) from None
        writer = meta.get("thinktree_version", "?")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{path} was written by a newer thinktree ({writer}, store schema {version}); "
                f"this one reads schema {SCHEMA_VERSION}: upgrade thinktree"
            )
        if version < SCHEMA_VERSION:
            raise StoreError(
                f"{path} was written by an older thinktree ({writer}, store schema {version}); "
                f"this one reads schema {SCHEMA_VERSION}"
            )
        missing = [t for t in _TABLES if t not in tables]
        if missing:
            raise StoreError(f"{path} is a damaged run store: no {', '.join(missing)} table")
    except StoreError:
        conn.close()
        raise
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"{path} cannot be read as a run store: {_reason(exc)}") from None
    return conn


# --- the writer --------------------------------------------------------------------------

_Row = dict[str, Any]


# Events the tables hold whole (every field is a column): the ``events`` table leaves them
# out. A run's complete event log is its trace.jsonl.
_TABLED: frozenset[type[Event]] = frozenset(
    {NodeStarted, NodeFinished, NodeFailed, ProblemStarted, ProblemFinished}
)
# A node still running is written once it has run this long (seconds), so a reader sees
# slow calls live; a quick node is written once, when it ends.
LIVE_AFTER_S: Final = 1.0


# A node's row as it starts: every column of _NODE_WRITE, in its order (those that name
# the node, None here, are filled in for each node). Every node row in memory is a copy
# of this one or read back in this order (see _Projection._node), and only ever has its
# values changed, so its values() are its INSERT's values, in order.
_NEW_NODE: Final[_Row] = {
    "id": None,
    "problem_id": None,
    "parent_id": None,
    "kind": None,
    "label": None,
    "status": "running",
    "text": "",
    "max_tokens": None,
    "continuation": None,
    "prompt_tokens": 0,
    "completion_tokens": 0,
    "answer": None,
    "extraction": None,
    "finish_reason": None,
    "latency_s": 0.0,
    "call_id": None,
    "error": None,
    "started_at": None,
    "finished_at": None,
    "rowid": None,
}


class _Projection:
    """The writer thread's side: events in, rows out, one transaction per batch.

    Rows that may still change (those of problems not finished yet) are kept in memory
    and written whole, each at most once per batch, by a few multi-row INSERTs per table;
    a row no longer in memory is read back from the database when a late event needs it.
    A node's row is written when it ends, or once it has been running for
    :data:`LIVE_AFTER_S`, or when the store closes. An event that does not fit the tree
    so far (a node of an unknown problem or parent) is skipped by the tables, and counted
    in :attr:`skipped`.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.skipped = 0
        self.run_finished = False
        self.run: _Row = {c: None for c in _RUN_COLUMNS}
        self.run.update(settings="{}", status="running", retries=0)
        self.problems: dict[str, _Row] = {}
        self.nodes: dict[str, _Row] = {}
        self.calls: dict[str, _Row] = {}
        self.problem_nodes: dict[str, list[str]] = {}
        self.problem_calls: dict[str, list[str]] = {}
        self.call_ids: set[str] = set()  # every call written so far (a miss is a new call)
        self._run_dirty = False
        self._problems_dirty: dict[str, _Row] = {}
        self._nodes_dirty: dict[str, _Row] = {}  # rows to write with the next batch
        # Running nodes whose rows are not written yet, oldest first: when first seen, row.
        self._unwritten: dict[str, tuple[float, _Row]] = {}
        self._started = 0  # nodes started so far: the next one's rowid
        self._now = 0.0  # time.monotonic() as the batch being written began
        self._calls_dirty: dict[str, _Row] = {}
        self._votes: dict[str, _Row] = {}
        self._done: list[str] = []

    def write(self, events: list[Event], *, final: bool = False) -> None:
        """Store ``events`` and their effect on the tables in one transaction.

        ``final``: the last write; every node is written as it stands.
        """
        # when this batch's nodes were first seen: a batch is written in milliseconds, so one
        # reading serves them all (LIVE_AFTER_S is a second)
        self._now = time.monotonic()
        logged: list[tuple[Any, ...]] = []
        node_started, node_finished = self._node_started, self._node_finished
        for event in events:
            if isinstance(event, NodeStarted):
                node_started(event)
            elif isinstance(event, NodeFinished):
                node_finished(event)
            else:
                payload = _payload(event)
                self._apply(payload)
                if type(event) not in _TABLED:
                    logged.append((payload["type"], payload["at"], _dumps(payload)))
        nodes = self._due_nodes(final)
        tables = (self._problems_dirty, self._calls_dirty, self._votes)
        if not (logged or nodes or self._run_dirty or any(tables)):
            return  # quick nodes still running: nothing to commit yet
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            _insert(conn, "events", _EVENT_COLUMNS, logged, upsert=False)
            problems = self._problems_dirty.values()
            _insert(conn, "problems", _PROBLEM_COLUMNS, list(map(_PROBLEM_ROW, problems)))
            _insert(conn, "nodes", _NODE_WRITE, list(map(dict.values, nodes)))
            calls = [{**c, "node_ids": _dumps(c["node_ids"])} for c in self._calls_dirty.values()]
            _insert(conn, "calls", _CALL_COLUMNS, list(map(_CALL_ROW, calls)))
            _insert(conn, "votes", _VOTE_COLUMNS, list(map(_VOTE_ROW, self._votes.values())))
            if self._run_dirty:
                conn.execute(_UPDATE_RUN, self.run)
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            self._run_dirty = False
            self._problems_dirty.clear()
            self._calls_dirty.clear()
            self._votes.clear()
        for pid in self._done:  # a finished problem's rows are final: let them go
            self.problems.pop(pid, None)
            for nid in self.problem_nodes.pop(pid, ()):
                self.nodes.pop(nid, None)
            for cid in self.problem_calls.pop(pid, ()):
                self.calls.pop(cid, None)
        self._done.clear()

    @property
    def waiting(self) -> bool:
        """Whether node rows wait to be written (a quick running node, see ``write``)."""
        return bool(self._nodes_dirty or self._unwritten)

    def _due_nodes(self, final: bool) -> list[_Row]:
        """The node rows to write now: those that changed since written, and running nodes
        that have run :data:`LIVE_AFTER_S`, belong to a finished problem, or ``final``."""
        due = list(self._nodes_dirty.values())
        self._nodes_dirty = {}
        unwritten = self._unwritten
        if final:
            due.extend(row for _, row in unwritten.values())
            unwritten.clear()
            return due
        for pid in self._done:  # its rows leave memory after this batch: write them all
            for nid in self.problem_nodes.get(pid, ()):
                left = unwritten.pop(nid, None)
                if left is not None:
                    due.append(left[1])
        cutoff = time.monotonic() - LIVE_AFTER_S
        while unwritten:  # oldest first: stop at the first one still quick
            nid = next(iter(unwritten))
            since, row = unwritten[nid]
            if since > cutoff:
                break
            del unwritten[nid]
            due.append(row)
        return due

    def _node_started(self, e: NodeStarted) -> None:
        pid, parent = e.problem_id, e.parent_id
        if pid not in self.problems and self._problem(pid) is None:
            return self._skip(e.type, f"no problem {pid}")
        if parent is None or (parent not in self.nodes and self._node(parent) is None):
            return self._skip(e.type, f"no parent node {parent}")
        self._new_node(
            e.at, e.node_id, pid, parent, str(e.kind), e.label, e.max_tokens, e.continuation
        )
        return None

    def _node_finished(self, e: NodeFinished) -> None:
        nid = e.node_id
        row = self.nodes.get(nid) or self._node(nid)  # read back only if not in memory
        if row is None:
            return self._skip(e.type, f"no node {nid}")
        row["text"] = e.text
        row["finish_reason"] = e.finish_reason
        row["prompt_tokens"] = e.prompt_tokens
        row["completion_tokens"] = e.completion_tokens
        row["answer"] = e.answer
        row["extraction"] = e.extraction
        row["latency_s"] = e.latency_s
        row["call_id"] = e.call_id
        row["status"] = "done"
        row["finished_at"] = e.at
        self._nodes_dirty[nid] = row  # as _ended does
        self._unwritten.pop(nid, None)
        if e.call_id is not None or row["kind"] not in _STRUCTURAL:
            self._add_call(e.call_id or nid, row["problem_id"], nid, e)
        return None

    def _ended(self, nid: str, row: _Row) -> None:
        """Write a node's row with the next batch, whether or not it was ever running."""
        self._nodes_dirty[nid] = row
        self._unwritten.pop(nid, None)

    def interrupted(self) -> None:
        """Record that the writer stops before the run finished."""
        if not self.run_finished:
            self.conn.execute(
                "UPDATE run SET status = 'interrupted', finished_utc = ? "
                "WHERE id = 1 AND status = 'running'",
                (_now_utc(),),
            )

    # -- rows, from memory or read back --

    def _load(self, table: str, key: str, value: str, columns: Sequence[str] = ()) -> _Row | None:
        """The row whose ``key`` is ``value``, with ``columns`` in their order (every
        column, after the rowid, when none are named), or None."""
        names = ", ".join(columns) if columns else "rowid AS rowid, *"
        cursor = self.conn.execute(f"SELECT {names} FROM {table} WHERE {key} = ?", (value,))
        row = cursor.fetchone()
        if row is None:
            return None
        return dict(zip([d[0] for d in cursor.description], row, strict=True))

    def _problem(self, pid: str) -> _Row | None:
        row = self.problems.get(pid)
        if row is None and (row := self._load("problems", "id", pid)) is not None:
            self.problems[pid] = row
        return row

    def _node(self, nid: str) -> _Row | None:
        row = self.nodes.get(nid)
        if row is None and (row := self._load("nodes", "id", nid, _NODE_WRITE)) is not None:
            self.nodes[nid] = row
            self.problem_nodes.setdefault(row["problem_id"], []).append(nid)
        return row

    def _call(self, cid: str) -> _Row | None:
        row = self.calls.get(cid)
        if (
            row is None
            and cid in self.call_ids
            and (row := self._load("calls", "call_id", cid)) is not None
        ):
            row["node_ids"] = json.loads(row["node_ids"])
            self.calls[cid] = row
            self.problem_calls.setdefault(row["problem_id"], []).append(cid)
        return row

    def _skip(self, event_type: str, why: str) -> None:
        self.skipped += 1
        log.warning("run store: event does not fit the tree so far", event_type=event_type, why=why)

    def _new_node(
        self,
        at: float,
        nid: str,
        pid: str,
        parent: str | None,
        kind: str,
        label: str,
        max_tokens: int | None = None,
        continuation: str | None = None,
    ) -> None:
        self._started += 1
        row = _NEW_NODE.copy()  # a copy of a dict is one block copied, not 20 insertions
        row["id"] = nid
        row["problem_id"] = pid
        row["parent_id"] = parent
        row["kind"] = kind
        row["label"] = label
        row["max_tokens"] = max_tokens
        row["continuation"] = continuation
        row["started_at"] = at
        row["rowid"] = self._started
        nodes = self.nodes
        if nid not in nodes:
            if (siblings := self.problem_nodes.get(pid)) is None:
                self.problem_nodes[pid] = [nid]
            else:
                siblings.append(nid)
        nodes[nid] = row
        self._unwritten[nid] = (self._now, row)

    # -- events --

    def _apply(self, p: _Row) -> None:
        match p["type"]:
            case "node-failed":
                row = self._node(p["node_id"])
                if row is None:
                    return self._skip(p["type"], f"no node {p['node_id']}")
                error = str(p["error"])
                status = "cancelled" if error.startswith("cancelled") else "failed"
                row.update(
                    status=status,
                    error=error,
                    finished_at=p["at"],
                    call_id=p.get("call_id"),
                    prompt_tokens=p.get("prompt_tokens") or 0,
                    completion_tokens=p.get("completion_tokens") or 0,
                )
                self._ended(p["node_id"], row)
            case "problem-started":
                pid, nid = p["problem_id"], p["node_id"]
                problem: _Row = dict.fromkeys(_PROBLEM_COLUMNS)
                problem.update(
                    id=pid,
                    node_id=nid,
                    question=p["question"],
                    gold=p["gold"],
                    status="running",
                    started_at=p["at"],
                )
                self.problems[pid] = self._problems_dirty[pid] = problem
                self._new_node(p["at"], nid, pid, None, "problem", pid)
            case "vote-cast":
                pid = p["problem_id"]
                if self._problem(pid) is None:
                    return self._skip(p["type"], f"no problem {pid}")
                self._votes[pid] = {c: p[c] for c in _VOTE_COLUMNS if c != "counts"}
                self._votes[pid]["counts"] = _dumps(p["counts"])
            case "problem-finished":
                pid = p["problem_id"]
                problem_row = self._problem(pid)
                if problem_row is None:
                    return self._skip(p["type"], f"no problem {pid}")
                status = "failed" if p["error"] else "done"
                outcome = {"answer": p["answer"], "error": p["error"], "finished_at": p["at"]}
                problem_row.update(outcome, status=status)
                problem_row.update(correct=p["correct"], covered=p["covered"])
                self._problems_dirty[pid] = problem_row
                root = self._node(problem_row["node_id"])
                if root is not None:
                    root.update(outcome, status=status)
                    self._ended(root["id"], root)
                self._done.append(pid)
            case "call-retried":
                self.run["retries"] += p["attempt"] > 0  # attempt 0: a wait, nothing sent
                self._run_dirty = True
            case "run-started":
                self.run.update(
                    run_id=p["run_id"],
                    mode=p["mode"],
                    endpoint=p["endpoint"],
                    model=p["model"],
                    problems_total=p["problems"],
                    settings=_dumps(p["settings"]),
                    status="running",
                    started_utc=_now_utc(),
                )
                self._run_dirty = True
            case "run-finished":
                self.run_finished = True
                self.run.update(status=p["status"], finished_at=p["at"], finished_utc=_now_utc())
                # the retries behind calls read back, as results.json counts them
                self.run["retries"] += p.get("read_back_retries", 0)
                self._run_dirty = True
            case _:
                pass
        return None

    def _add_call(self, cid: str, pid: str, nid: str, e: NodeFinished) -> None:
        """Count a finished node's tokens into its call (one call may serve n nodes)."""
        at = e.at
        call = self.calls.get(cid) or self._call(cid)  # read back only if not in memory
        if call is None:
            call = {  # every column of _CALL_COLUMNS
                "call_id": cid,
                "problem_id": pid,
                "node_ids": [],
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "latency_s": 0.0,
                "finished_at": at,
            }
            self.calls[cid] = call
            self.call_ids.add(cid)
            self.problem_calls.setdefault(pid, []).append(cid)
        node_ids = call["node_ids"]
        if nid not in node_ids:
            node_ids.append(nid)
            call["prompt_tokens"] += e.prompt_tokens
            call["completion_tokens"] += e.completion_tokens
        # the later and the longer, as max() keeps them (the first of equals)
        if e.latency_s > call["latency_s"]:
            call["latency_s"] = e.latency_s
        if at > call["finished_at"]:
            call["finished_at"] = at
        self._calls_dirty[cid] = call


# Nodes that only group others: their NodeFinished is no model call unless it names one.
_STRUCTURAL = frozenset(
    str(k) for k in (NodeKind.PROBLEM, NodeKind.BRANCH, NodeKind.VOTE, NodeKind.VERDICT)
)


class RunStore:
    """Writes a run's events into a new ``run.sqlite``: a bus subscriber that never blocks.

    ``handle`` appends to a queue; a writer thread commits the queue in batches, one
    transaction per batch, at least every ``interval_s`` or as soon as ``batch_events``
    are waiting. A store that fails while the run goes on (a full disk) logs it once,
    keeps the message in :attr:`error`, and drops what follows: its run then reads as
    ``"interrupted"``. Nothing here raises into the run after creation.
    """

    wants_deltas: bool = False

    def __init__(self, path: Path, *, interval_s: float = 0.2, batch_events: int = 2000) -> None:
        """Create the store at ``path`` (which must not exist yet) and start its writer.

        Raises :class:`StoreError` when ``path`` exists (the file is left untouched) or
        cannot be created (missing or read-only folder, full disk).
        """
        self.path = Path(path)
        self.error: str | None = None
        self._interval = interval_s
        self._batch_events = max(1, batch_events)
        self._queue: deque[Event | threading.Event] = deque()
        self._wake = threading.Event()
        self._closed = False
        self._stopping = False
        self._lock_fd, self._conn = self._create()
        self._projection = _Projection(self._conn)
        self._thread = threading.Thread(target=self._run, name="thinktree-store", daemon=True)
        self._thread.start()

    @staticmethod
    def open_readonly(path: Path) -> StoreReader:
        """Open an existing store for reading (also while its run is written)."""
        return StoreReader.open(path)

    @property
    def skipped(self) -> int:
        """Events stored but left out of the tables because they did not fit the tree."""
        return self._projection.skipped

    def _create(self) -> tuple[int, sqlite3.Connection]:
        path = self.path
        if os.path.lexists(path):
            with contextlib.closing(_open_checked(path)):
                pass
            raise StoreError(f"run store {path} already exists; a run writes a new store")
        if not path.parent.is_dir():
            raise StoreError(f"cannot create run store {path}: folder {path.parent} does not exist")
        lock = _lock_path(path)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot create run store {path}: {_reason(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # another writer is creating this very store: leave its files be
            raise StoreError(f"run store {path} is being written by another process") from None
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"the file system does not allow WAL ({mode})")
            conn.execute("PRAGMA synchronous=NORMAL")
            # No foreign-key enforcement: a node's row may be written before its parent's
            # (a quick child ends first); the projection itself keeps every row in a tree.
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("schema_version", str(SCHEMA_VERSION)), ("thinktree_version", __version__)],
            )
            conn.execute("INSERT INTO run (id, created_utc) VALUES (1, ?)", (_now_utc(),))
            conn.execute("COMMIT")
        except (OSError, sqlite3.Error) as exc:
            if conn is not None:
                conn.close()
            for leftover in (path, *(Path(f"{path}{s}") for s in ("-wal", "-shm", "-journal"))):
                leftover.unlink(missing_ok=True)
            lock.unlink(missing_ok=True)
            os.close(fd)
            raise StoreError(f"cannot create run store {path}: {_reason(exc)}") from None
        return fd, conn

    # -- the subscriber side (the event loop's thread) --

    def handle(self, event: Event) -> None:
        """Queue ``event`` for the writer (streamed deltas are not stored)."""
        self.handle_batch((event,))

    def handle_batch(self, events: Sequence[Event]) -> None:
        """Queue ``events`` for the writer, in order (streamed deltas are not stored)."""
        if self._closed:
            return
        queue = self._queue
        queue.extend([e for e in events if type(e) is not NodeDelta])
        if len(queue) >= self._batch_events and not self._wake.is_set():
            self._wake.set()

    async def flush(self) -> None:
        """Wait until every event handled so far is committed (or dropped after a failure)."""
        if self._closed:
            await anyio.to_thread.run_sync(self._thread.join)
            return
        marker = threading.Event()
        self._queue.append(marker)
        self._wake.set()
        await anyio.to_thread.run_sync(self._wait, marker)

    def _wait(self, marker: threading.Event) -> None:
        while not marker.wait(0.1):
            if not self._thread.is_alive():
                return

    def close(self) -> None:
        """Commit everything queued, mark an unfinished run interrupted, and close."""
        if not self._closed:
            self._closed = True
            self._stopping = True
            self._wake.set()
        self._thread.join()

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop."""
        await anyio.to_thread.run_sync(self.close)

    def __enter__(self) -> RunStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the writer thread --

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(self._interval)
                self._wake.clear()
                stopping = self._stopping
                batch: list[Event | threading.Event] = []
                queue = self._queue
                while queue:
                    batch.append(queue.popleft())
                if batch or self._projection.waiting:
                    self._write(batch, final=stopping)
                if stopping and not queue:
                    break
            if self.error is None:
                self._projection.interrupted()
        except BaseException as exc:  # the writer must never die quietly
            self._fail(exc)
        finally:
            self._release()

    def _write(self, batch: list[Event | threading.Event], *, final: bool) -> None:
        events = [item for item in batch if isinstance(item, Event)]
        if self.error is None:
            try:  # a flush (a marker in the batch) writes every node as it stands
                self._projection.write(events, final=final or len(events) < len(batch))
            except Exception as exc:
                self._fail(exc)
        if len(events) < len(batch):  # flush markers to set (no event is one)
            for item in batch:
                if isinstance(item, threading.Event):
                    item.set()

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = f"run store {self.path} stopped recording: {_reason(exc)}"
            log.error("run store failed; the run goes on without it", error=self.error)

    def _release(self) -> None:
        """Close the database, then the lock: from here on readers see the final status.

        The WAL is checkpointed first, so run.sqlite alone holds the whole run even when
        a reader still has it open (and SQLite therefore keeps the -wal file).
        """
        try:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
        except sqlite3.Error as exc:
            self._fail(exc)
        finally:
            self._closed = True
            for item in list(self._queue):
                if isinstance(item, threading.Event):
                    item.set()
            _lock_path(self.path).unlink(missing_ok=True)
            os.close(self._lock_fd)


# --- the reader --------------------------------------------------------------------------


def _rows(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


class StoreReader:
    """Read-only access to one run store; safe to use while the run is still written."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._lock = threading.Lock()
        # what counts as a failed call is said once, in Python
        conn.create_function("failed_call", 3, failed_call, deterministic=True)

    @classmethod
    def open(cls, path: Path) -> StoreReader:
        """Open ``path`` read-only; :class:`StoreError` if it is not a store this reads."""
        path = Path(path)
        return cls(path, _open_checked(path))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> StoreReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            try:
                return _rows(self._conn.execute(sql, params))
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read run store {self.path}: {_reason(exc)}") from None

    def status(self) -> str:
        """running, completed, failed, cancelled or interrupted (ended without RunFinished)."""
        rows = self._query("SELECT status FROM run WHERE id = 1")
        stored = rows[0]["status"] if rows else "running"
        if stored == "running" and not _writer_alive(self.path):
            return "interrupted"
        return str(stored)

    def run_info(self) -> dict[str, Any]:
        """The run's identity, config and status, plus the store's versions."""
        rows = self._query("SELECT * FROM run WHERE id = 1")
        info: dict[str, Any] = dict(rows[0]) if rows else {}
        info.pop("id", None)
        info["settings"] = json.loads(info.get("settings") or "{}")
        info["status"] = self.status()
        meta = {r["key"]: r["value"] for r in self._query("SELECT key, value FROM meta")}
        info["schema_version"] = int(meta["schema_version"])
        info["thinktree_version"] = meta.get("thinktree_version")
        return info

    def problems(self) -> list[dict[str, Any]]:
        """Every problem in start order, with its outcome and vote (None until cast)."""
        rows = self._query(
            """SELECT p.*, v.node_id AS vote_node, v.rule AS vote_rule,
                v.answer AS vote_answer, v.winner_node AS vote_winner, v.counts AS vote_counts
            FROM problems AS p LEFT JOIN votes AS v ON v.problem_id = p.id
            ORDER BY p.rowid"""
        )
        out = []
        for row in rows:
            counts = row.pop("vote_counts")
            vote = {
                "node_id": row.pop("vote_node"),
                "rule": row.pop("vote_rule"),
                "answer": row.pop("vote_answer"),
                "winner_node": row.pop("vote_winner"),
                "counts": None if counts is None else json.loads(counts),
            }
            row["vote"] = None if counts is None else vote
            row["correct"] = _bool(row["correct"])
            row["covered"] = _bool(row["covered"])
            out.append(row)
        return out

    def nodes(self, problem_id: str) -> list[dict[str, Any]]:
        """The nodes of one problem in the order they started (the root first)."""
        return self._query("SELECT * FROM nodes WHERE problem_id = ? ORDER BY rowid", (problem_id,))

    def calls(self) -> list[dict[str, Any]]:
        """Every model call, in the order its first result arrived."""
        rows = self._query("SELECT * FROM calls ORDER BY rowid")
        for row in rows:
            row["node_ids"] = json.loads(row["node_ids"])
        return rows

    def events(self, after_id: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Stored events with ``id > after_id``, each as ``to_dict`` wrote it plus its ``id``.

        These are the events no table holds whole (see the module's docstring); every
        event of the run is in its ``trace.jsonl``.
        """
        rows = self._query(
            "SELECT id, payload FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, -1 if limit is None else limit),
        )
        return [{"id": row["id"], **json.loads(row["payload"])} for row in rows]

    def verdicts(self) -> list[dict[str, Any]]:
        """Every verifier verdict (``candidate-scored`` events) in the order given."""
        rows = self._query(
            "SELECT payload FROM events WHERE type = 'candidate-scored' ORDER BY id",
        )
        return [json.loads(row["payload"]) for row in rows]

    def summary(self) -> RunSummary:
        """The run in one line's worth of fields (for ``thinktree runs``)."""
        rows = self._query(
            """SELECT r.run_id, r.mode, r.endpoint, r.model, r.problems_total,
                coalesce(r.started_utc, r.created_utc) AS started,
                (SELECT count(*) FROM problems) AS seen,
                (SELECT count(*) FROM problems WHERE finished_at IS NOT NULL) AS done,
                (SELECT count(*) FROM problems WHERE correct = 1) AS correct,
                (SELECT coalesce(sum(prompt_tokens), 0) FROM nodes WHERE kind != 'verdict')
                    AS prompt_tokens,
                (SELECT coalesce(sum(completion_tokens), 0) FROM nodes WHERE kind != 'verdict')
                    AS completion_tokens,
                (SELECT count(*) FROM problems WHERE error IS NOT NULL AND correct IS NULL)
                    AS problems_failed,
                (SELECT count(DISTINCT coalesce(call_id, id)) FROM nodes
                    WHERE failed_call(kind, status, error)) AS calls_failed
            FROM run AS r WHERE r.id = 1"""
        )
        if not rows:
            raise StoreError(f"{self.path} is a damaged run store: no run row")
        row = rows[0]
        # the verifiers' tokens and cost as the run's metrics count them: from every verdict
        # (a failed one's node holds none), each priced at its own model's price
        try:
            found = self.verdicts()
            verdicts = [_spent(v) for v in found]
            models = [_model(v) for v in found]
        except (ValueError, TypeError, AttributeError):
            raise StoreError(f"{self.path} is a damaged run store: a verdict is damaged") from None
        unpriced = any(cost is None and (p or c) for p, c, cost in verdicts)
        at_no_price: dict[str | None, tuple[int, int]] = {}  # by model, to price them later
        for (p, c, cost), model in zip(verdicts, models, strict=True):
            if cost is None and (p or c):
                was = at_no_price.get(model, (0, 0))
                at_no_price[model] = (was[0] + p, was[1] + c)
        borrowed = self._read_back()
        return RunSummary(
            run_id=row["run_id"] or self.path.parent.name,
            folder=self.path.parent,
            status=self.status(),
            mode=row["mode"],
            endpoint=row["endpoint"],
            model=row["model"],
            problems_done=row["done"],
            problems_total=row["problems_total"]
            if row["problems_total"] is not None
            else row["seen"],
            problems_correct=row["correct"],
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            started=row["started"],
            problems_failed=row["problems_failed"],
            calls_failed=row["calls_failed"],
            verifier_prompt_tokens=sum(p for p, _, _ in verdicts),
            verifier_completion_tokens=sum(c for _, c, _ in verdicts),
            verifier_cost_usd=None
            if unpriced
            else math.fsum(cost for _, _, cost in verdicts if cost is not None),
            verifier_priced_usd=math.fsum(cost for _, _, cost in verdicts if cost is not None),
            verifier_unpriced=at_no_price,
            read_back_calls=len({call_id for call_id, _, _ in borrowed}),
            read_back_prompt_tokens=sum(p for _, p, _ in borrowed),
            read_back_completion_tokens=sum(c for _, _, c in borrowed),
        )

    def _read_back(self) -> list[tuple[str, int, int]]:
        """The call id and tokens of each node whose call the run read back from another
        run's (a bench cell's, see :func:`~thinktree.orchestrator.call_cache.read_back_calls`)."""
        from thinktree.orchestrator.call_cache import read_back_calls

        ids = read_back_calls(self.path.parent / _CALLS)
        if not ids:
            return []
        rows = self._query(
            "SELECT call_id, prompt_tokens, completion_tokens FROM nodes "
            "WHERE kind != 'verdict' AND call_id IS NOT NULL"
        )
        return [
            (str(r["call_id"]), int(r["prompt_tokens"] or 0), int(r["completion_tokens"] or 0))
            for r in rows
            if r["call_id"] in ids
        ]


def _model(verdict: dict[str, Any]) -> str | None:
    """The model a verdict's tokens were spent on (None: not recorded)."""
    model = verdict.get("model")
    if model is not None and not isinstance(model, str):
        raise TypeError("a verdict's model is not a name")
    return model


def _spent(verdict: dict[str, Any]) -> tuple[int, int, float | None]:
    """A verdict's prompt and completion tokens and its cost (None: no known price)."""
    cost = verdict.get("cost_usd")
    return (
        int(verdict.get("prompt_tokens") or 0),
        int(verdict.get("completion_tokens") or 0),
        None if cost is None else float(cost),
    )


# --- listing runs ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One run folder as ``thinktree runs`` lists it. ``status`` is the store's, or
    "unreadable" (its store cannot be read) or "damaged" (another of its files is broken);
    ``error`` then says why."""

    run_id: str
    folder: Path
    status: str
    mode: str | None = None
    endpoint: str | None = None
    model: str | None = None
    problems_done: int = 0
    problems_total: int = 0
    problems_correct: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: str | None = None
    error: str | None = None
    problems_failed: int = 0  # an error left them ungraded (failed calls, a limit's stop)
    calls_failed: int = 0  # the solver's model calls (requests) that failed
    # the verifiers' own, on top of the solver's tokens above (as in the run's metrics)
    verifier_prompt_tokens: int = 0
    verifier_completion_tokens: int = 0
    verifier_cost_usd: float | None = 0.0  # None: a verdict spent tokens at no known price
    verifier_priced_usd: float = 0.0  # what the verdicts recorded a cost for cost
    verifier_unpriced: dict[str | None, tuple[int, int]] = field(default_factory=dict)
    """Prompt and completion tokens of the verdicts recorded at no price, by their model
    (None: not recorded), for :meth:`verifier_cost` to price."""

    def verifier_cost(self, prices: Mapping[str, Price] | None = None) -> float | None:
        """What the verifiers cost: as recorded, else with the tokens recorded at no price
        priced at their model's price in ``prices``; None where one has none."""
        if self.verifier_cost_usd is not None:
            return self.verifier_cost_usd
        total = [self.verifier_priced_usd]
        for model, (p, c) in self.verifier_unpriced.items():
            price = (prices or {}).get(model) if model is not None else None
            if price is None:
                return None
            total.append(price.cost(p, c))
        return math.fsum(total)

    def unpriced_models(self, prices: Mapping[str, Price] | None = None) -> list[str]:
        """The verifier models whose tokens ``prices`` cannot price ("not recorded" where
        a verdict recorded none: a run from before verdicts recorded their model)."""
        return [
            model or "not recorded"
            for model in self.verifier_unpriced
            if model is None or model not in (prices or {})
        ]

    # of the solver's calls and tokens above, those read back from another run's calls (a
    # bench cell's): that run paid for them
    read_back_calls: int = 0
    read_back_prompt_tokens: int = 0
    read_back_completion_tokens: int = 0

    @property
    def tokens(self) -> int:
        """Every token the run spent: the solver's and its verifiers'."""
        return (
            self.prompt_tokens
            + self.completion_tokens
            + self.verifier_prompt_tokens
            + self.verifier_completion_tokens
        )

    def cost_usd(
        self, price: Price | None, prices: Mapping[str, Price] | None = None
    ) -> float | None:
        """What the run cost, its solver's tokens at ``price`` (its model's) and its
        verifiers' at their own models' prices (:meth:`verifier_cost`); None where either
        price is unknown. The calls it read back from another run's cost it nothing: that
        run paid for them."""
        verifiers = self.verifier_cost(prices)
        if price is None or verifiers is None:
            return None
        prompt = self.prompt_tokens - self.read_back_prompt_tokens
        completion = self.completion_tokens - self.read_back_completion_tokens
        return price.cost(prompt, completion) + verifiers


# A run folder's other files, as orchestrator.run names them (it imports this module).
_MANIFEST: Final = "run.json"  # written first: what makes a folder a run folder
_RESULTS: Final = "results.json"  # written last, whole: its presence means the run ended
_CALLS: Final = "calls.sqlite"  # the run's own call store
_ENDED: Final = ("completed", "stopped")  # a run that ended so has written its results


def _run_folders(root: Path) -> Iterator[Path]:
    """The folders in ``root`` that hold a run store or a run manifest (a run begun);
    none when there is no folder ``root``."""
    try:
        folders = sorted(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return
    for folder in folders:
        try:
            if folder.is_dir() and any(
                os.path.lexists(folder / name) for name in (STORE_NAME, _MANIFEST)
            ):
                yield folder
        except OSError:
            continue


def list_runs(root: Path) -> list[RunSummary]:
    """Every run folder in ``root`` (runs in progress included), oldest first.

    Opens each store read-only; a store that cannot be read is listed as "unreadable".
    A run whose process is gone is checked against its other files: a run that ended
    without its ``results.json`` is "interrupted" (a resume writes it), and one whose
    manifest or results are not whole is "damaged". Raises OSError when ``root`` cannot
    be read.
    """
    out: list[RunSummary] = []
    for folder in _run_folders(Path(root)):
        path = folder / STORE_NAME
        if not os.path.lexists(path):
            out.append(_without_store(folder))
            continue
        try:
            with StoreReader.open(path) as reader:
                summary = reader.summary()
        except (StoreError, sqlite3.Error, OSError) as exc:
            message = str(exc) if isinstance(exc, StoreError) else _reason(exc)
            summary = RunSummary(
                run_id=folder.name, folder=folder, status="unreadable", error=message
            )
        else:
            summary = _checked(summary)
        out.append(summary)
    out.sort(key=lambda s: (s.started or "", s.folder.name))
    return out


def _checked(summary: RunSummary) -> RunSummary:
    """``summary`` as the run folder's other files bear it out (see :func:`list_runs`)."""
    folder = summary.folder
    if summary.status == "running" or in_use(folder):
        return summary  # its files are still being written
    status, notes = summary.status, []
    if (broken := _not_whole(folder / _MANIFEST)) is not None:
        status = "damaged"
        notes.append(f"{_MANIFEST} {broken}: it cannot be resumed")
    if summary.status in _ENDED and (broken := _not_whole(folder / _RESULTS)) is not None:
        if broken == _MISSING:
            status = "interrupted" if status != "damaged" else status
            notes.append(f"{_RESULTS} {_MISSING}: a resume writes it")
        else:
            status = "damaged"
            notes.append(f"{_RESULTS} {broken}")
    if not notes:
        return summary
    return dataclasses.replace(summary, status=status, error="; ".join(notes))


def _without_store(folder: Path) -> RunSummary:
    """A run folder with a manifest and no run store: its process died as the run began
    (a resume makes the store), or the store was lost. What it is comes from its manifest."""
    manifest: dict[str, Any] = {}
    broken = _not_whole(folder / _MANIFEST)
    if broken is None:
        try:
            loaded = json.loads((folder / _MANIFEST).read_bytes())
            manifest = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError, RecursionError):
            manifest = {}
    endpoint = manifest.get("endpoint")
    endpoint = endpoint if isinstance(endpoint, dict) else {}
    settings = manifest.get("settings")
    settings = settings if isinstance(settings, dict) else {}
    problems = manifest.get("problems")

    def text(value: Any) -> str | None:
        return value if isinstance(value, str) else None

    if in_use(folder):
        status, note = "running", None
    elif broken is not None:
        status, note = "damaged", f"{_MANIFEST} {broken}; no {STORE_NAME}"
    elif _not_whole(folder / _RESULTS) is None:
        status, note = "damaged", f"no {STORE_NAME}"  # it ended, and its store is gone
    else:
        status, note = "interrupted", f"no {STORE_NAME} yet: a resume makes it"
    return RunSummary(
        run_id=text(manifest.get("run_id")) or folder.name,
        folder=folder,
        status=status,
        mode=text(settings.get("mode")),
        endpoint=text(endpoint.get("name")),
        model=text(endpoint.get("model")),
        problems_total=len(problems) if isinstance(problems, list) else 0,
        error=note,
    )


_MISSING: Final = "is missing"
_EDGE = 64  # bytes read at each end of a file to tell whether it holds a whole JSON object


def _not_whole(path: Path) -> str | None:
    """Why the JSON file ``path`` (a run's manifest or results) is not whole, or None.

    A results file can hold a run's every node (gigabytes): only its size and its two
    ends are read. Written whole or not at all, it is empty or cut off only when something
    else damaged it (a full disk while copying it, a crash of the machine): those the ends
    tell. ``report`` and ``run --resume`` read it all, and say so of any other damage.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        return _MISSING
    except OSError as exc:
        return f"cannot be read ({_reason(exc)})"
    if not stat.S_ISREG(info.st_mode):
        return "is not a file"
    if info.st_size == 0:
        return "is empty"
    try:
        with path.open("rb") as file:
            head = file.read(_EDGE)
            file.seek(max(info.st_size - _EDGE, 0))
            tail = file.read()
    except OSError as exc:
        return f"cannot be read ({_reason(exc)})"
    if not head.lstrip().startswith(b"{") or not tail.rstrip().endswith(b"}"):
        return "is cut off or damaged (not a whole JSON object)"
    return None

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
import json
import operator
import os
import re
import sqlite3
import stat
import threading
import types
import typing
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote

import anyio
import structlog

from thinktree import __version__
from thinktree._json import dump_bytes
from thinktree.errors import ThinktreeError
from thinktree.orchestrator.events import (
    Event,
    NodeDelta,
    NodeFinished,
    NodeKind,
    NodeStarted,
    RunFinished,
)

log = structlog.get_logger(__name__)

__all__ = [
    "SCHEMA_VERSION",
    "STORE_NAME",
    "RunStore",
    "RunSummary",
    "StoreError",
    "StoreReader",
    "list_runs",
    "redact",
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


def _scrub(text: str) -> str:
    """``text`` with anything shaped like a credential (bearer token, sk-…, ?key=) masked."""
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text


def _is_secret(key: object, value: object) -> bool:
    if not isinstance(key, str) or value is None or isinstance(value, bool | int | float):
        return False
    return _SECRET_KEY.search(key.replace("-", "_")) is not None


def redact(value: Any) -> Any:
    """A copy of ``value`` with credential-like keys masked and credential-like text scrubbed.

    Keys named like api_key, authorization, secret, password or token lose their value
    (numbers are kept: ``max_tokens`` is data, not a credential).
    """
    if isinstance(value, Mapping):
        return {k: REDACTED if _is_secret(k, v) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _scrub(value)
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
            data[name] = _scrub(data[name])
    data["type"] = shape.kind
    return data


# --- shared helpers ----------------------------------------------------------------------


def _now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + LOCK_SUFFIX)


def _writer_alive(path: Path) -> bool:
    """Whether a live writer holds the store's lock (read-only: takes no lasting lock)."""
    try:
        fd = os.open(_lock_path(path), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


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

# Events the tables hold whole (every field is a column): the ``events`` table leaves them
# out. A run's complete event log is its trace.jsonl.
_TABLED: Final = (
    "node-started",
    "node-finished",
    "node-failed",
    "problem-started",
    "problem-finished",
)
# Nodes that only group others: their NodeFinished is no model call unless it names one.
_STRUCTURAL: Final = tuple(
    str(k) for k in (NodeKind.PROBLEM, NodeKind.BRANCH, NodeKind.VOTE, NodeKind.VERDICT)
)


_NOW_SQL = "strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now')"  # what _now_utc() writes


def _sql_list(words: Sequence[str]) -> str:
    return ", ".join(f"'{w}'" for w in words)


# The projection from events to rows, in SQL. A batch of events goes to SQLite as one
# JSON array in one statement, and these triggers (of the writer's connection only: TEMP)
# turn each event, in order, into rows. SQLite runs all of it with the GIL released, so
# the projection costs the run's own thread nothing but the JSON of each event.
# ``NEW.e`` is the event (a JSON object). An event that does not fit the tree so far (a
# node of an unknown problem or parent) changes no table (``changes() = 0`` right after
# the statement that would have changed it) and is noted in ``skips``.
_PROBLEM_OF_EVENT = "EXISTS (SELECT 1 FROM problems WHERE id = NEW.e ->> 'problem_id')"
_PARENT_OF_EVENT = "EXISTS (SELECT 1 FROM nodes WHERE id = NEW.e ->> 'parent_id')"
_DONE_OR_FAILED = "iif(coalesce(NEW.e ->> 'error', '') = '', 'done', 'failed')"


def _skip_sql(event_type: str, why: str) -> str:
    """Note the event in ``skips`` when the statement before it changed nothing."""
    return f"INSERT INTO skips (event_type, why) SELECT '{event_type}', {why} WHERE changes() = 0;"


_NO_NODE = "'no node ' || (NEW.e ->> 'node_id')"
_NO_PROBLEM = "'no problem ' || (NEW.e ->> 'problem_id')"
_TRIGGERS: dict[str, str] = {
    "node-started": f"""
        INSERT OR REPLACE INTO nodes
            (id, problem_id, parent_id, kind, label, max_tokens, continuation, started_at)
        SELECT NEW.e ->> 'node_id', NEW.e ->> 'problem_id', NEW.e ->> 'parent_id',
            NEW.e ->> 'kind', NEW.e ->> 'label', NEW.e ->> 'max_tokens',
            NEW.e ->> 'continuation', NEW.e ->> 'at'
        WHERE {_PROBLEM_OF_EVENT} AND {_PARENT_OF_EVENT};
        {
        _skip_sql(
            "node-started",
            f"iif({_PROBLEM_OF_EVENT}, "
            "'no parent node ' || coalesce(NEW.e ->> 'parent_id', 'None'), "
            f"{_NO_PROBLEM})",
        )
    }""",
    # A node counts into its call once: one call may serve n nodes (an n-choice request).
    "node-finished": f"""
        UPDATE nodes SET text = NEW.e ->> 'text', finish_reason = NEW.e ->> 'finish_reason',
            prompt_tokens = NEW.e ->> 'prompt_tokens',
            completion_tokens = NEW.e ->> 'completion_tokens',
            answer = NEW.e ->> 'answer', extraction = NEW.e ->> 'extraction',
            latency_s = NEW.e ->> 'latency_s', call_id = NEW.e ->> 'call_id', status = 'done',
            finished_at = NEW.e ->> 'at'
        WHERE id = NEW.e ->> 'node_id';
        {_skip_sql("node-finished", _NO_NODE)}
        INSERT INTO calls (call_id, problem_id, node_ids, prompt_tokens, completion_tokens,
            latency_s, finished_at)
        SELECT coalesce(NEW.e ->> 'call_id', id), problem_id, json_array(id),
            NEW.e ->> 'prompt_tokens', NEW.e ->> 'completion_tokens', NEW.e ->> 'latency_s',
            NEW.e ->> 'at'
        FROM nodes
        WHERE id = NEW.e ->> 'node_id'
            AND (NEW.e ->> 'call_id' IS NOT NULL OR kind NOT IN ({_sql_list(_STRUCTURAL)}))
            AND NOT EXISTS (
                SELECT 1 FROM calls AS c, json_each(c.node_ids) AS counted
                WHERE c.call_id = coalesce(NEW.e ->> 'call_id', nodes.id)
                    AND counted.value = nodes.id
            )
        ON CONFLICT (call_id) DO UPDATE SET
            node_ids = json_insert(calls.node_ids, '$[#]', excluded.node_ids ->> 0),
            prompt_tokens = calls.prompt_tokens + excluded.prompt_tokens,
            completion_tokens = calls.completion_tokens + excluded.completion_tokens,
            latency_s = max(calls.latency_s, excluded.latency_s),
            finished_at = max(calls.finished_at, excluded.finished_at);""",
    "node-failed": f"""
        UPDATE nodes SET
            status = iif(substr(NEW.e ->> 'error', 1, 9) = 'cancelled', 'cancelled', 'failed'),
            error = NEW.e ->> 'error', finished_at = NEW.e ->> 'at'
        WHERE id = NEW.e ->> 'node_id';
        {_skip_sql("node-failed", _NO_NODE)}""",
    "problem-started": """
        INSERT OR REPLACE INTO problems (id, node_id, question, gold, status, started_at)
        VALUES (NEW.e ->> 'problem_id', NEW.e ->> 'node_id', NEW.e ->> 'question',
            NEW.e ->> 'gold', 'running', NEW.e ->> 'at');
        INSERT OR REPLACE INTO nodes (id, problem_id, parent_id, kind, label, started_at)
        VALUES (NEW.e ->> 'node_id', NEW.e ->> 'problem_id', NULL, 'problem',
            NEW.e ->> 'problem_id', NEW.e ->> 'at');""",
    "problem-finished": f"""
        UPDATE problems SET answer = NEW.e ->> 'answer', error = NEW.e ->> 'error',
            finished_at = NEW.e ->> 'at', status = {_DONE_OR_FAILED},
            correct = NEW.e ->> 'correct', covered = NEW.e ->> 'covered'
        WHERE id = NEW.e ->> 'problem_id';
        {_skip_sql("problem-finished", _NO_PROBLEM)}
        UPDATE nodes SET answer = NEW.e ->> 'answer', error = NEW.e ->> 'error',
            finished_at = NEW.e ->> 'at', status = {_DONE_OR_FAILED}
        WHERE id = (SELECT node_id FROM problems WHERE id = NEW.e ->> 'problem_id');""",
    "vote-cast": f"""
        INSERT OR REPLACE INTO votes (problem_id, node_id, rule, answer, winner_node, counts, at)
        SELECT NEW.e ->> 'problem_id', NEW.e ->> 'node_id', NEW.e ->> 'rule',
            NEW.e ->> 'answer', NEW.e ->> 'winner_node', NEW.e -> 'counts', NEW.e ->> 'at'
        WHERE {_PROBLEM_OF_EVENT};
        {_skip_sql("vote-cast", _NO_PROBLEM)}""",
    "call-retried": "UPDATE run SET retries = retries + 1 WHERE id = 1;",
    "run-started": f"""
        UPDATE run SET run_id = NEW.e ->> 'run_id', mode = NEW.e ->> 'mode',
            endpoint = NEW.e ->> 'endpoint', model = NEW.e ->> 'model',
            problems_total = NEW.e ->> 'problems', settings = NEW.e -> 'settings',
            status = 'running', started_utc = {_NOW_SQL}
        WHERE id = 1;""",
    "run-finished": f"""
        UPDATE run SET status = NEW.e ->> 'status', finished_at = NEW.e ->> 'at',
            finished_utc = {_NOW_SQL}
        WHERE id = 1;""",
}

_FEED = (
    "INSERT INTO incoming (type, e) SELECT value ->> 'type', value FROM json_each(?) ORDER BY key"
)


class _Projection:
    """The writer thread's side: events in, rows out, one transaction per batch.

    The rows are made by SQLite itself (see :data:`_TRIGGERS`): every node has its row
    from the moment it starts, and a reader sees it change as the run goes.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.skipped = 0
        self.run_finished = False
        conn.execute("CREATE TEMP TABLE skips (event_type TEXT NOT NULL, why TEXT NOT NULL)")
        conn.execute("CREATE TEMP VIEW incoming (type, e) AS SELECT NULL, NULL")
        for event_type, body in _TRIGGERS.items():
            conn.execute(
                f'CREATE TEMP TRIGGER "{event_type}" INSTEAD OF INSERT ON incoming '
                f"WHEN NEW.type = '{event_type}' BEGIN {body} END"
            )
        conn.execute(
            "CREATE TEMP TRIGGER logged INSTEAD OF INSERT ON incoming "
            f"WHEN NEW.type NOT IN ({_sql_list(_TABLED)}) BEGIN "
            "INSERT INTO events (type, at, payload) "
            "VALUES (NEW.type, NEW.e ->> 'at', NEW.e); END"
        )

    def write(self, events: Sequence[Event]) -> None:
        """Store ``events`` and their effect on the tables in one transaction."""
        if not events:
            return
        parts: list[bytes] = []
        finished = False
        for event in events:
            kind = type(event)
            if kind is NodeStarted or kind is NodeFinished:
                parts.append(event.json_line()[:-1])  # nothing in them to redact
            else:
                parts.append(dump_bytes(_payload(event)))
                finished = finished or kind is RunFinished
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_FEED, ((b"[" + b",".join(parts) + b"]").decode(),))
            skips = conn.execute("SELECT event_type, why FROM skips").fetchall()
            if skips:
                conn.execute("DELETE FROM skips")
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
        self.run_finished = self.run_finished or finished
        for event_type, why in skips:
            self.skipped += 1
            log.warning(
                "run store: event does not fit the tree so far", event_type=event_type, why=why
            )

    def interrupted(self) -> None:
        """Record that the writer stops before the run finished."""
        if not self.run_finished:
            self.conn.execute(
                "UPDATE run SET status = 'interrupted', finished_utc = ? "
                "WHERE id = 1 AND status = 'running'",
                (_now_utc(),),
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
                if batch:
                    self._write(batch)
                if stopping and not queue:
                    break
            if self.error is None:
                self._projection.interrupted()
        except BaseException as exc:  # the writer must never die quietly
            self._fail(exc)
        finally:
            self._release()

    def _write(self, batch: list[Event | threading.Event]) -> None:
        events = [item for item in batch if isinstance(item, Event)]
        if self.error is None:
            try:
                self._projection.write(events)
            except Exception as exc:
                self._fail(exc)
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
                (SELECT coalesce(sum(prompt_tokens), 0) FROM nodes) AS prompt_tokens,
                (SELECT coalesce(sum(completion_tokens), 0) FROM nodes) AS completion_tokens
            FROM run AS r WHERE r.id = 1"""
        )
        if not rows:
            raise StoreError(f"{self.path} is a damaged run store: no run row")
        row = rows[0]
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
        )


# --- listing runs ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One run folder as ``thinktree runs`` lists it; ``status`` is "unreadable" with ``error``."""

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

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _iter_stores(root: Path) -> Iterator[Path]:
    try:
        yield from root.glob(f"*/{STORE_NAME}")
    except OSError:
        return


def list_runs(root: Path) -> list[RunSummary]:
    """Every ``root/*/run.sqlite`` (runs in progress included), oldest first.

    Opens each read-only; a store that cannot be read is listed as "unreadable".
    """
    out: list[RunSummary] = []
    for path in _iter_stores(Path(root)):
        try:
            with StoreReader.open(path) as reader:
                out.append(reader.summary())
        except (StoreError, sqlite3.Error, OSError) as exc:
            message = str(exc) if isinstance(exc, StoreError) else _reason(exc)
            out.append(
                RunSummary(
                    run_id=path.parent.name,
                    folder=path.parent,
                    status="unreadable",
                    error=message,
                )
            )
    out.sort(key=lambda s: (s.started or "", s.folder.name))
    return out

"""The run store's writer: events as JSON lines in, rows of ``run.sqlite`` out.

It runs in a process of its own (this module imported from its own folder, started by
:class:`~thinktree.orchestrator.store.RunStore`), so that its work, most of it Python
holding the GIL, takes nothing from the event loop's thread: the run's process only hands
it the bytes of the lines the trace already holds. It imports the standard library and
orjson only, nothing of thinktree, so that it starts in a few tens of milliseconds and
runs the same code as the run whatever the run's ``sys.path``.

On its standard input it reads event lines (JSON objects, one per line, as the trace
writes them) and commands (``!flush N``: commit all so far, then answer). On its
standard output it answers with JSON lines: ``{"flushed": N}``, ``{"skip": [type, why]}``
for an event that does not fit the tree, ``{"error": message}`` once if it stops
recording, and ``{"done": true}`` once the store is closed. The end of its input ends
the run's store: what is left is committed, a run that never finished is marked
interrupted, the WAL is checkpointed and the lock let go.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import operator
import os
import re
import select
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime

import orjson

# Named for the type checker only: the writer process imports neither typing nor pathlib,
# which took about a sixth of its start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, Final, NoReturn

__all__ = ["LIVE_AFTER_S", "REDACTED", "SCHEMA_VERSION", "Writer", "is_secret", "redact", "scrub"]

SCHEMA_VERSION: Final = 1
REDACTED: Final = "[redacted]"
LOCK_SUFFIX: Final = "-lock"

TABLES = ("meta", "run", "problems", "nodes", "calls", "votes", "events")
SCHEMA: tuple[str, ...] = (
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

loads = orjson.loads


def _dumps(obj: Any) -> str:
    """Compact JSON text of what ``loads`` read (so every key is a string)."""
    return orjson.dumps(obj, default=str).decode()


_flat = itertools.chain.from_iterable

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
TEXT_FIELDS = frozenset({"error", "reason", "endpoint"})
# What the model said and how it was counted (a vote's counts, scores and ballots): kept
# as said, like a node's text; scrubbing every ballot cost more than the rest of a vote.
MODEL_OUTPUT_FIELDS = frozenset({"counts", "scores", "ballots"})


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


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def lock_path(path: Path) -> Path:
    """The lock file beside the store at ``path``."""
    return path.with_name(path.name + LOCK_SUFFIX)


def reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return " ".join(str(exc).split()) or type(exc).__name__


class Shapes:
    """Which fields of each event type to redact (those that may hold dicts or lists) and
    to scrub (free text that may quote a credential), as :class:`RunStore` worked them out
    from the event classes' field types.

    A type not named (an event class made after the store started) has every field but
    ``at`` redacted, model output aside: more than needed rather than a credential kept.
    """

    def __init__(self, by_type: Mapping[str, tuple[Sequence[str], Sequence[str]]]) -> None:
        self._by_type = {kind: (tuple(r), tuple(s)) for kind, (r, s) in by_type.items()}

    def redacted(self, event: _Row) -> _Row:
        """``event`` with its fields redacted and scrubbed (changed in place)."""
        shape = self._by_type.get(event["type"])
        if shape is None:
            redacting: Iterable[str] = [
                k for k in event if k not in ("type", "at") and k not in MODEL_OUTPUT_FIELDS
            ]
            scrubbing: Iterable[str] = ()
        else:
            redacting, scrubbing = shape
        for name in redacting:
            if name in event:
                event[name] = redact(event[name])
        for name in scrubbing:
            value = event.get(name)
            if isinstance(value, str):
                event[name] = scrub(value)
        return event


# --- the writer --------------------------------------------------------------------------

_Row = dict[str, "Any"]


# Events the tables hold whole (every field is a column): the ``events`` table leaves them
# out. A run's complete event log is its trace.jsonl.
_TABLED: Final = frozenset(
    {"node-started", "node-finished", "node-failed", "problem-started", "problem-finished"}
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
    """The writer's tables: events in, rows out, one transaction per batch.

    Rows that may still change (those of problems not finished yet) are kept in memory
    and written whole, each at most once per batch, by a few multi-row INSERTs per table;
    a row no longer in memory is read back from the database when a late event needs it.
    A node's row is written when it ends, or once it has been running for
    :data:`LIVE_AFTER_S`, or when the store closes. An event that does not fit the tree
    so far (a node of an unknown problem or parent) is skipped by the tables, and counted
    in :attr:`skipped`.
    """

    def __init__(
        self, conn: sqlite3.Connection, shapes: Shapes, report: Callable[[_Row], None]
    ) -> None:
        self.conn = conn
        self.shapes = shapes
        self.report = report
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

    def write(self, events: list[_Row], *, final: bool = False) -> None:
        """Store ``events`` (as their lines hold them) and their effect on the tables in
        one transaction.

        ``final``: the last write; every node is written as it stands.
        """
        # when this batch's nodes were first seen: a batch is written in milliseconds, so one
        # reading serves them all (LIVE_AFTER_S is a second)
        self._now = time.monotonic()
        logged: list[tuple[Any, ...]] = []
        node_started, node_finished, shapes = self._node_started, self._node_finished, self.shapes
        for event in events:
            kind = event["type"]
            if kind == "node-started":
                node_started(event)
            elif kind == "node-finished":
                node_finished(event)
            else:
                payload = shapes.redacted(event)
                payload["type"] = payload.pop("type")  # last, as the events table has it
                self._apply(payload)
                if kind not in _TABLED:
                    logged.append((kind, payload["at"], _dumps(payload)))
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

    def _node_started(self, e: _Row) -> None:
        pid, parent = e["problem_id"], e["parent_id"]
        if pid not in self.problems and self._problem(pid) is None:
            return self._skip(e["type"], f"no problem {pid}")
        if parent is None or (parent not in self.nodes and self._node(parent) is None):
            return self._skip(e["type"], f"no parent node {parent}")
        self._new_node(
            e["at"],
            e["node_id"],
            pid,
            parent,
            e["kind"],
            e["label"],
            e.get("max_tokens"),
            e.get("continuation"),
        )
        return None

    def _node_finished(self, e: _Row) -> None:
        nid = e["node_id"]
        row = self.nodes.get(nid) or self._node(nid)  # read back only if not in memory
        if row is None:
            return self._skip(e["type"], f"no node {nid}")
        call_id = e.get("call_id")
        row["text"] = e["text"]
        row["finish_reason"] = e["finish_reason"]
        row["prompt_tokens"] = e["prompt_tokens"]
        row["completion_tokens"] = e["completion_tokens"]
        row["answer"] = e.get("answer")
        row["extraction"] = e.get("extraction")
        row["latency_s"] = e.get("latency_s", 0.0)
        row["call_id"] = call_id
        row["status"] = "done"
        row["finished_at"] = e["at"]
        self._nodes_dirty[nid] = row  # as _ended does
        self._unwritten.pop(nid, None)
        if call_id is not None or row["kind"] not in _STRUCTURAL:
            self._add_call(call_id or nid, row["problem_id"], nid, e)
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
                (now_utc(),),
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
            row["node_ids"] = loads(row["node_ids"])
            self.calls[cid] = row
            self.problem_calls.setdefault(row["problem_id"], []).append(cid)
        return row

    def _skip(self, event_type: str, why: str) -> None:
        self.skipped += 1
        self.report({"skip": [event_type, why]})

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
                # failed as the tree says (an error left it ungraded), else done
                status = "failed" if p["error"] and p["correct"] is None else "done"
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
                    started_utc=now_utc(),
                )
                self._run_dirty = True
            case "run-finished":
                self.run_finished = True
                self.run.update(status=p["status"], finished_at=p["at"], finished_utc=now_utc())
                # the retries behind calls read back, as results.json counts them
                self.run["retries"] += p.get("read_back_retries", 0)
                self._run_dirty = True
            case _:
                pass
        return None

    def _add_call(self, cid: str, pid: str, nid: str, e: _Row) -> None:
        """Count a finished node's tokens into its call (one call may serve n nodes)."""
        at = e["at"]
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
            call["prompt_tokens"] += e["prompt_tokens"]
            call["completion_tokens"] += e["completion_tokens"]
        # the later and the longer, as max() keeps them (the first of equals)
        latency = e.get("latency_s", 0.0)
        if latency > call["latency_s"]:
            call["latency_s"] = latency
        if at > call["finished_at"]:
            call["finished_at"] = at
        self._calls_dirty[cid] = call


# Nodes that only group others (NodeKind's values): their finish is no model call unless
# it names one.
_STRUCTURAL: Final = frozenset({"problem", "branch", "vote", "verdict"})


# --- the loop ----------------------------------------------------------------------------

_DELTA = b'{"type":"node-delta"'  # a streamed delta's line (the store keeps none)
_FLUSH = b"!flush "

Read = Callable[[float], bytes | None]
"""``read(timeout)``: the next bytes of input; ``b""`` when none came within ``timeout``
seconds, None at its end."""


class Writer:
    """Reads event lines and commands, commits batches, and reports on what it did."""

    def __init__(
        self,
        path: str | Path,
        lock_fd: int,
        shapes: Shapes,
        report: Callable[[_Row], None],
        *,
        interval_s: float,
        batch_events: int,
    ) -> None:
        self.path = os.fspath(path)
        self.error: str | None = None
        self._lock_fd = lock_fd
        self._report = report
        self._interval = interval_s
        self._batch = max(1, batch_events)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA wal_autocheckpoint=128")
        self.projection = _Projection(self.conn, shapes, report)

    def serve(self, read: Read) -> None:
        """Store what ``read`` gives until its end, then close the store."""
        try:
            self._serve(self.projection, read)
            if self.error is None:
                self.projection.interrupted()  # a run that never finished
        except BaseException as exc:  # the writer must never die quietly
            self._fail(exc)
        finally:
            self._release()
            self._report({"done": True})

    def _serve(self, projection: _Projection, read: Read) -> None:
        """Commit what came in once no more is waiting (the writer keeps up, so little is
        left to commit when the input ends), once ``batch_events`` wait, and at least
        every ``interval_s`` while nodes still run."""
        pending: list[_Row] = []
        rest = b""
        last = time.monotonic()
        while True:
            wait = 0.0 if pending else max(0.0, self._interval - (time.monotonic() - last))
            data = read(wait)
            if data is None:
                break  # a line cut off at the end (a writer killed mid-line) is no event
            if data:
                lines = (rest + data).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    if line[:1] == b"{":
                        if not line.startswith(_DELTA):
                            pending.append(loads(line))
                    elif line.startswith(_FLUSH):  # a flush writes every node as it stands
                        self._write(pending, final=True)
                        pending = []
                        last = time.monotonic()
                        self._report({"flushed": int(line[len(_FLUSH) :])})
                if len(pending) < self._batch:
                    continue  # read on while more is waiting
            elif not pending and time.monotonic() - last < self._interval:
                continue
            if pending or projection.waiting:
                self._write(pending, final=False)
                pending = []
            last = time.monotonic()
        self._write(pending, final=True)

    def _write(self, events: list[_Row], *, final: bool) -> None:
        if self.error is None:
            try:
                self.projection.write(events, final=final)
            except Exception as exc:
                self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = f"run store {self.path} stopped recording: {reason(exc)}"
            self._report({"error": self.error})

    def _release(self) -> None:
        """Close the database, then the lock: from here on readers see the final status.

        The WAL is checkpointed first, so run.sqlite alone holds the whole run even when
        a reader still has it open (and SQLite therefore keeps the -wal file).
        """
        try:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.conn.close()
        except sqlite3.Error as exc:
            self._fail(exc)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path + LOCK_SUFFIX)  # lock_path(), of a path given as text
            os.close(self._lock_fd)


def _read_stdin(timeout: float) -> bytes | None:
    if not select.select([0], [], [], timeout)[0]:
        return b""
    return os.read(0, 1 << 20) or None


def main(argv: Sequence[str]) -> int:
    """``PATH LOCK_FD INTERVAL_S BATCH_EVENTS SHAPES`` (SHAPES: JSON, see :class:`Shapes`)."""
    path, lock_fd, interval_s, batch_events, shapes = argv
    out = sys.stdout.buffer

    def report(message: _Row) -> None:
        with contextlib.suppress(OSError):  # the run's process is gone: nobody to tell
            out.write(orjson.dumps(message, option=orjson.OPT_APPEND_NEWLINE))
            out.flush()

    writer = Writer(
        path,
        int(lock_fd),
        Shapes(loads(shapes)),
        report,
        interval_s=float(interval_s),
        batch_events=int(batch_events),
    )
    writer.serve(_read_stdin)
    return 0


def serve_process(argv: Sequence[str]) -> NoReturn:
    """The writer process: :func:`main`, then exit at once (all is written and said: no
    interpreter teardown for the run to wait on). Its launcher lowers its priority first
    (``nice``), behind the run's own processes (a local model server) for the CPU."""
    os._exit(main(argv))


if __name__ == "__main__":
    with contextlib.suppress(OSError):
        os.nice(10)
    serve_process(sys.argv[1:])

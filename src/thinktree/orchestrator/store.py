"""The run store: one SQLite database per run (``run.sqlite``), written from its events.

:class:`RunStore` takes the run's events as JSON lines (from the trace writer, or made
by its own ``handle`` as a bus subscriber) and only queues them; a writer process
(:mod:`~thinktree.orchestrator.store_writer`) turns them into rows and commits each
batch in a single transaction, so the store never holds up the run. The database keeps
the run's config, every problem, every node of every tree, every model call, the votes
and the outcomes, the run's status, and the events no table holds whole (verifier
verdicts, strategy choices, retries, votes, the run's start and end). The run's complete
event log is its ``trace.jsonl``: a node's start and finish live in its row, not twice.

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
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Literal

import anyio
import orjson
import structlog

from thinktree import __version__
from thinktree._files import held, in_use, read_only_uri
from thinktree._json import dumps, loads
from thinktree.errors import ThinktreeError
from thinktree.orchestrator import store_writer
from thinktree.orchestrator.events import (
    PAST_CONTEXT,
    Event,
    NodeDelta,
    container_fields,
    failed_call,
)
from thinktree.orchestrator.store_writer import (
    MODEL_OUTPUT_FIELDS,
    REDACTED,
    SCHEMA,
    SCHEMA_VERSION,
    TABLES,
    TEXT_FIELDS,
    is_secret,
    lock_path,
    now_utc,
    reason,
    redact,
    scrub,
)
from thinktree.pricing import Price

log = structlog.get_logger(__name__)

__all__ = [
    "REDACTED",
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
    "wait_for_writer",
]

STORE_NAME: Final = "run.sqlite"

_SQLITE_MAGIC = b"SQLite format 3\x00"


class StoreError(ThinktreeError):
    """A run store that cannot be created, opened or read; the message says why."""


# --- shared helpers ----------------------------------------------------------------------


def _writer_alive(path: Path) -> bool:
    """Whether a live writer holds the store's lock (read-only: takes no lasting lock)."""
    return held(lock_path(path))


def wait_for_writer(path: Path, timeout_s: float = 30.0) -> None:
    """Wait until no writer holds the store at ``path``.

    A run killed a moment ago leaves its writer process to commit the events it was
    handed, which takes moments; a store must not be replaced under it. Raises
    :class:`StoreError` when a writer still holds it after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while _writer_alive(path):
        if time.monotonic() > deadline:
            raise StoreError(
                f"run store {path} is still being written by another process; "
                "try again once that process has ended"
            )
        time.sleep(0.01)


def _open_checked(path: Path) -> sqlite3.Connection:
    """A read-only connection to ``path`` after checking it is a store this version reads.

    Nothing is written to ``path`` (nor beside it) on any of the ways this can fail.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise StoreError(f"no run store at {path}") from None
    except OSError as exc:
        raise StoreError(f"cannot read run store {path}: {reason(exc)}") from None
    if not stat.S_ISREG(info.st_mode):
        raise StoreError(f"{path} is not a file, so not a run store")
    if info.st_size == 0:
        raise StoreError(f"{path} is an empty file, not a run store")
    try:
        with path.open("rb") as file:
            head = file.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise StoreError(f"cannot read run store {path}: {reason(exc)}") from None
    if head != _SQLITE_MAGIC:
        raise StoreError(f"{path} is not a SQLite database, so not a run store")
    try:
        conn = sqlite3.connect(read_only_uri(path), uri=True, timeout=5.0, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open run store {path}: {reason(exc)}") from None
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
        missing = [t for t in TABLES if t not in tables]
        if missing:
            raise StoreError(f"{path} is a damaged run store: no {', '.join(missing)} table")
    except StoreError:
        conn.close()
        raise
    except sqlite3.Error as exc:
        conn.close()
        raise StoreError(f"{path} cannot be read as a run store: {reason(exc)}") from None
    return conn


# Imports the writer as a module of its own folder, which goes on its sys.path after the
# standard library's and before orjson's: its bytecode comes from the cache (run as a
# script it was compiled afresh, with runpy's imports: about 6 ms of every start).
_LAUNCH: Final = (
    # niced first, so that its imports, most of its start, already yield the CPU to the
    # run's own start (and to a local model server's)
    "import os, sys\n"
    "try:\n os.nice(10)\nexcept OSError:\n pass\n"
    "sys.path += sys.argv[1:3]\nimport store_writer\nstore_writer.serve_process(sys.argv[3:])"
)
FEED_EVERY_S: Final = 0.01
"""How often the feeder thread hands the queued lines to the writer (and at most how long
a line waits for it)..."""
FEED_BYTES: Final = 1 << 18
"""...or as soon as this many bytes wait."""


class RunStore:
    """Writes a run's events into a new ``run.sqlite``: a bus subscriber that never blocks.

    The rows are made by a writer of their own (:mod:`store_writer`) from the events' JSON
    lines. By default the writer is a process of its own, so its work (mostly Python,
    holding the GIL) takes nothing from the run's event loop; ``writer="thread"`` keeps it
    in this process, for hosts that may not start one.

    Events reach the writer two ways: :meth:`handle_batch` (as a bus subscriber) writes
    their lines itself, and :meth:`feed` takes lines made already (the trace writer's,
    see :class:`~thinktree.orchestrator.subscribers.TraceWriter`). Either only queues the
    bytes; a feeder thread hands them on. The writer commits in batches, one transaction
    per batch, at least every ``interval_s`` or as soon as ``batch_events`` are waiting.
    A store that fails while the run goes on (a full disk) logs it once, keeps the
    message in :attr:`error`, and drops what follows: its run then reads as
    ``"interrupted"``. Nothing here raises into the run after creation. If the run's
    process dies, a writer process still commits every line it was given.
    """

    wants_deltas: bool = False

    def __init__(
        self,
        path: Path,
        *,
        interval_s: float = 0.2,
        batch_events: int = 2000,
        writer: Literal["process", "thread"] = "process",
    ) -> None:
        """Create the store at ``path`` (which must not exist yet) and start its writer.

        Raises :class:`StoreError` when ``path`` exists (the file is left untouched) or
        cannot be created (missing or read-only folder, full disk), or when its writer
        cannot be started.
        """
        self.path = Path(path)
        self.error: str | None = None
        self._skipped = 0
        self._closed = False
        self._out: deque[bytes] = deque()  # bytes for the writer, in order
        self._queued = 0  # about how many bytes wait in _out
        self._wake = threading.Event()
        self._flushes = itertools.count(1)
        self._flushed: dict[int, threading.Event] = {}
        self._done = threading.Event()  # the writer has ended
        # The creating connection stays open, idle, until the writer has ended: with it the
        # -wal file stays too, so readers opened meanwhile read the live database.
        lock_fd, self._conn = self._create()
        settings = (interval_s, batch_events)
        self._proc: subprocess.Popen[bytes] | None = None
        self._listener: threading.Thread | None = None
        self._inline: store_writer.Writer | None = None
        try:
            if writer == "process" and sys.executable:  # an embedded interpreter may have none
                self._send = self._start_process(lock_fd, *settings)
            else:
                self._send = self._start_thread(lock_fd, *settings)
        except (OSError, sqlite3.Error) as exc:
            if self._proc is None:  # a started writer process holds the lock itself
                os.close(lock_fd)
            self._conn.close()
            why = reason(exc)
            raise StoreError(f"cannot start the writer of run store {path}: {why}") from None
        self._feeder = threading.Thread(target=self._feed, name="thinktree-store-feed", daemon=True)
        self._feeder.start()

    @staticmethod
    def open_readonly(path: Path) -> StoreReader:
        """Open an existing store for reading (also while its run is written)."""
        return StoreReader.open(path)

    @property
    def skipped(self) -> int:
        """Events stored but left out of the tables because they did not fit the tree
        (as far as the writer has said: exact after :meth:`flush` or :meth:`close`)."""
        return self._skipped

    def _create(self) -> tuple[int, sqlite3.Connection]:
        """Create the database with its tables; the fd holding its lock, and the connection."""
        path = self.path
        if os.path.lexists(path):
            with contextlib.closing(_open_checked(path)):
                pass
            raise StoreError(f"run store {path} already exists; a run writes a new store")
        if not path.parent.is_dir():
            raise StoreError(f"cannot create run store {path}: folder {path.parent} does not exist")
        lock = lock_path(path)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot create run store {path}: {reason(exc)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # another writer is creating this very store: leave its files be
            raise StoreError(f"run store {path} is being written by another process") from None
        conn: sqlite3.Connection | None = None
        try:
            # idle once made, and closed by whichever thread closes the store (aclose's)
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"the file system does not allow WAL ({mode})")
            # No foreign-key enforcement: a node's row may be written before its parent's
            # (a quick child ends first); the projection itself keeps every row in a tree.
            conn.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA:
                conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("schema_version", str(SCHEMA_VERSION)), ("thinktree_version", __version__)],
            )
            conn.execute("INSERT INTO run (id, created_utc) VALUES (1, ?)", (now_utc(),))
            conn.execute("COMMIT")
        except (OSError, sqlite3.Error) as exc:
            if conn is not None:
                conn.close()
            for leftover in (path, *(Path(f"{path}{s}") for s in ("-wal", "-shm", "-journal"))):
                leftover.unlink(missing_ok=True)
            lock.unlink(missing_ok=True)
            os.close(fd)
            raise StoreError(f"cannot create run store {path}: {reason(exc)}") from None
        return fd, conn

    def _start_process(
        self, lock_fd: int, interval_s: float, batch_events: int
    ) -> Callable[[bytes], None]:
        """Start the writer process (it takes over the lock); return how to send to it
        (``b""`` ends its input)."""
        proc = self._proc = subprocess.Popen(
            [
                sys.executable,
                "-S",  # no site: the writer needs orjson's folder only, and starts sooner
                "-P",  # nor the working folder first on sys.path
                "-c",
                _LAUNCH,
                str(Path(store_writer.__file__).parent),
                str(Path(orjson.__file__).parents[1]),
                str(self.path),
                str(lock_fd),
                str(interval_s),
                str(batch_events),
                dumps(_event_shapes()),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            pass_fds=(lock_fd,),
            start_new_session=True,  # a Ctrl-C for the run is not one for its store
        )
        os.close(lock_fd)  # the writer holds the lock now, for as long as it lives
        assert proc.stdin is not None and proc.stdout is not None
        stdin, stdout = proc.stdin, proc.stdout
        self._listener = threading.Thread(
            target=self._listen, args=(proc, stdout), name="thinktree-store-listen", daemon=True
        )
        self._listener.start()

        def send(data: bytes) -> None:
            if data:
                stdin.write(data)
                stdin.flush()
            else:  # the end
                stdin.close()

        return send

    def _start_thread(
        self, lock_fd: int, interval_s: float, batch_events: int
    ) -> Callable[[bytes], None]:
        """Start the writer in a thread of this process; return how to send to it
        (``b""`` ends its input)."""
        chunks: deque[bytes | None] = deque()  # None: the end
        ready = threading.Event()

        def read(timeout: float) -> bytes | None:
            if not chunks and not ready.wait(timeout):
                return b""
            ready.clear()
            data: list[bytes] = []
            while chunks:
                chunk = chunks.popleft()
                if chunk is None:
                    if not data:
                        return None
                    chunks.appendleft(None)  # the end, once what came before is read
                    ready.set()
                    break
                data.append(chunk)
            return b"".join(data)

        writer = self._inline = store_writer.Writer(
            self.path,
            lock_fd,
            store_writer.Shapes(_event_shapes()),
            self._heard,
            interval_s=interval_s,
            batch_events=batch_events,
        )

        def serve() -> None:
            try:
                writer.serve(read)
            finally:
                self._writer_ended()

        threading.Thread(target=serve, name="thinktree-store", daemon=True).start()

        def send(data: bytes) -> None:
            chunks.append(data or None)  # b"" is the end
            ready.set()

        return send

    # -- the subscriber side (the event loop's thread) --

    def handle(self, event: Event) -> None:
        """Queue ``event`` for the writer (streamed deltas are not stored)."""
        self.handle_batch((event,))

    def handle_batch(self, events: Sequence[Event]) -> None:
        """Queue ``events`` for the writer, in order (streamed deltas are not stored)."""
        lines = [e.json_line() for e in events if type(e) is not NodeDelta]
        if lines:
            self.feed(b"".join(lines))

    def feed(self, lines: bytes) -> None:
        """Queue events' JSON lines, as :meth:`Event.json_line` makes them, for the writer
        (delta lines among them are left out)."""
        if self._closed:
            return
        self._out.append(lines)
        # The feeder takes what is queued every FEED_EVERY_S: waking it for every batch
        # would hand the GIL back and forth thousands of times a second.
        self._queued += len(lines)  # a guide only (the feeder resets it from its thread)
        if self._queued >= FEED_BYTES and not self._wake.is_set():
            self._wake.set()

    async def flush(self) -> None:
        """Wait until every event handled so far is committed (or dropped after a failure)."""
        if self._closed:
            await anyio.to_thread.run_sync(self._done.wait)
            return
        number = next(self._flushes)
        flushed = self._flushed[number] = threading.Event()
        self.feed(b"!flush %d\n" % number)
        self._wake.set()
        await anyio.to_thread.run_sync(self._wait, flushed)

    def _wait(self, flushed: threading.Event) -> None:
        while not flushed.wait(0.1):
            if self._done.is_set():
                return

    def finish(self) -> None:
        """End the writer's input without waiting: it commits what it was handed and marks
        an unfinished run interrupted while the caller goes on (:meth:`close` then waits
        for it). Events handed in later are dropped."""
        if not self._closed:
            self._closed = True
            self._out.append(b"")  # the end
            self._wake.set()

    def close(self) -> None:
        """Commit everything queued, mark an unfinished run interrupted, and close."""
        self.finish()
        self._feeder.join()
        self._done.wait()
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()  # the last connection: the -wal file goes with it
        if self._listener is not None:
            self._listener.join()  # the writer process has exited and been reaped

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

    # -- the feeder and listener threads --

    def _feed(self) -> None:
        """Hand the queued bytes to the writer, in order; the empty bytes end its input."""
        out, send, wake = self._out, self._send, self._wake
        while True:
            wake.wait(FEED_EVERY_S)
            wake.clear()
            if not out:
                continue
            chunks = [out.popleft() for _ in range(len(out))]
            self._queued = 0
            end = not chunks[-1]  # b"" (the end) is the last thing ever queued
            # if the writer is gone, what it was sent is all it stored
            with contextlib.suppress(OSError):
                if data := b"".join(chunks):
                    send(data)
            if end:
                with contextlib.suppress(OSError):
                    send(b"")
                return

    def _listen(self, proc: subprocess.Popen[bytes], stdout: IO[bytes]) -> None:
        """Read the writer process's reports until it ends."""
        try:
            for line in stdout:
                with contextlib.suppress(ValueError):
                    self._heard(loads(line))
            code = proc.wait()
            if code != 0 and not self._done.is_set():
                ended = f"its writer ended with exit code {code}"
                self._heard({"error": f"run store {self.path} stopped recording: {ended}"})
        finally:
            self._writer_ended()

    def _heard(self, report: dict[str, Any]) -> None:
        """Act on one report of the writer (see :mod:`store_writer`)."""
        if "flushed" in report:
            flushed = self._flushed.pop(report["flushed"], None)
            if flushed is not None:
                flushed.set()
        elif "skip" in report:
            self._skipped += 1
            event_type, why = report["skip"]
            log.warning(
                "run store: event does not fit the tree so far", event_type=event_type, why=why
            )
        elif "done" in report:  # closed: the process itself may take a while to go
            self._writer_ended()
        elif "error" in report and self.error is None:
            self.error = str(report["error"])
            log.error("run store failed; the run goes on without it", error=self.error)

    def _writer_ended(self) -> None:
        self._done.set()
        for flushed in list(self._flushed.values()):
            flushed.set()


@functools.cache
def _event_shapes() -> dict[str, tuple[list[str], list[str]]]:
    """For each event type, the fields to redact and those to scrub (see ``Shapes``)."""
    shapes: dict[str, tuple[list[str], list[str]]] = {}
    classes: list[type[Event]] = [Event]
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        if cls is Event:
            continue
        containers = container_fields(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        shapes[cls.type] = (
            [n for n in names if n in containers and n not in MODEL_OUTPUT_FIELDS],
            [n for n in names if n in TEXT_FIELDS],
        )
    return shapes


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
                raise StoreError(f"cannot read run store {self.path}: {reason(exc)}") from None

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
                    WHERE failed_call(kind, status, error)) AS calls_failed,
                (SELECT count(DISTINCT coalesce(call_id, id)) FROM nodes
                    WHERE status = 'failed' AND instr(error, ?) = 1) AS calls_past_context
            FROM run AS r WHERE r.id = 1""",
            (PAST_CONTEXT,),
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
        borrowed, judged = self._read_back()
        status = self.status()
        return RunSummary(
            run_id=row["run_id"] or self.path.parent.name,
            folder=self.path.parent,
            status=status,
            error=self._failure() if status == "failed" else None,
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
            calls_past_context=row["calls_past_context"],
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
            verifier_read_back_calls=len(judged),
            verifier_read_back_prompt_tokens=sum(p for p, _ in judged),
            verifier_read_back_completion_tokens=sum(c for _, c in judged),
        )

    def _failure(self) -> str | None:
        """Why the run failed, as its end says (None: a run from before it said)."""
        rows = self._query(
            "SELECT payload FROM events WHERE type = 'run-finished' ORDER BY id DESC LIMIT 1"
        )
        try:
            error = json.loads(rows[0]["payload"]).get("error") if rows else None
        except (ValueError, TypeError, AttributeError):
            return None  # only the reason is lost: the status says it failed
        if not isinstance(error, str) or not error.strip():
            return None
        return f"failed: {error.strip().splitlines()[0]}"  # a note's one line

    def _read_back(self) -> tuple[list[tuple[str, int, int]], list[tuple[int, int]]]:
        """What the run read back from another run's calls (a bench cell's, see
        :func:`~thinktree.orchestrator.call_cache.read_back_calls`): the call id and tokens
        of each solver node whose call it was, and the tokens of each judge call (a call
        no solver node made)."""
        from thinktree.orchestrator.call_cache import read_back_calls

        calls = read_back_calls(self.path.parent / _CALLS)
        if not calls:
            return [], []
        rows = self._query(
            "SELECT call_id, prompt_tokens, completion_tokens FROM nodes "
            "WHERE kind != 'verdict' AND call_id IS NOT NULL"
        )
        solver = [
            (str(r["call_id"]), int(r["prompt_tokens"] or 0), int(r["completion_tokens"] or 0))
            for r in rows
            if r["call_id"] in calls
        ]
        made = {call_id for call_id, _, _ in solver}
        return solver, [spent for call_id, spent in calls.items() if call_id not in made]


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
    calls_past_context: int = 0  # requests refused as longer than the model's context
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
    # of the verifiers' tokens above, those of the judge calls read back in the same way
    verifier_read_back_calls: int = 0
    verifier_read_back_prompt_tokens: int = 0
    verifier_read_back_completion_tokens: int = 0

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
        run paid for them (a judge reads calls back only on the run's own endpoint, so its
        model's ``price`` prices those)."""
        verifiers = self.verifier_cost(prices)
        if price is None or verifiers is None:
            return None
        prompt = self.prompt_tokens - self.read_back_prompt_tokens
        completion = self.completion_tokens - self.read_back_completion_tokens
        judged = price.cost(
            self.verifier_read_back_prompt_tokens, self.verifier_read_back_completion_tokens
        )
        return price.cost(prompt, completion) + max(0.0, verifiers - judged)


# A run folder's other files, as orchestrator.run names them (it imports this module).
_MANIFEST: Final = "run.json"  # written first: what makes a folder a run folder
_RESULTS: Final = "results.json"  # written last, whole: its presence means the run ended
_CALLS: Final = "calls.sqlite"  # the run's own call store
_ENDED: Final = ("completed", "stopped")  # a run that ended so has written its results


def _run_folders(root: Path) -> Iterator[Path]:
    """The folders in ``root`` that hold a run store or a run manifest (a run begun), or
    ``root`` alone where it is such a folder; none when there is no folder ``root``."""
    if _is_run_folder(root):
        yield root
        return
    try:
        folders = sorted(root.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return
    for folder in folders:
        if _is_run_folder(folder):
            yield folder


def _is_run_folder(folder: Path) -> bool:
    try:
        return folder.is_dir() and any(
            os.path.lexists(folder / name) for name in (STORE_NAME, _MANIFEST)
        )
    except OSError:
        return False


def list_runs(root: Path) -> list[RunSummary]:
    """Every run folder in ``root`` (runs in progress included), oldest first; ``root``
    alone where it is a run folder.

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
            message = str(exc) if isinstance(exc, StoreError) else reason(exc)
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
    status, notes = summary.status, [summary.error] if summary.error else []
    known = len(notes)
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
    if len(notes) == known:
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
        return f"cannot be read ({reason(exc)})"
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
        return f"cannot be read ({reason(exc)})"
    if not head.lstrip().startswith(b"{") or not tail.rstrip().endswith(b"}"):
        return "is cut off or damaged (not a whole JSON object)"
    return None

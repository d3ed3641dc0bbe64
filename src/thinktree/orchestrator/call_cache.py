"""The request cache: every finished model call, committed before it counts.

A call's fingerprint hashes the endpoint, the model, the route, the whole request
(messages or prompt, sampling parameters, seed) and the node(s) it is for, so two
samples never collapse into one. A resumed run looks each call up first: what was paid
for once is read back, never paid for again.

A run's own store also keeps the count of the run's retries so far (every request sent
again, in every session), so a resumed run counts those of calls it makes again too.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import structlog

from thinktree._files import read_only_uri
from thinktree._json import dumps, loads
from thinktree.agents.endpoint import Choice, Completion, is_token_count
from thinktree.errors import ConfigError, RecordingError

log = structlog.get_logger(__name__)

__all__ = [
    "NotRecorded",
    "Recorded",
    "SharedCallCache",
    "SqliteCallCache",
    "check_call_store",
    "completion_from_json",
    "completion_to_json",
    "only_recorded",
    "read_back_calls",
    "solver_call",
    "verifier_call",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    fingerprint TEXT PRIMARY KEY,
    route TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_s REAL NOT NULL,
    attempts INTEGER NOT NULL,
    created REAL NOT NULL,
    node_key TEXT,
    cut TEXT
)
"""
# A solver's or a judge's call also keeps ``node_key``, the node(s) it was for (the
# fingerprint's key: a resumed run holds its tokens under its limits), and ``cut``, the
# marks its limits made where they granted it less than it asked (JSON, see `Recorded`),
# with, for a verifier's call, `VERIFIER_MARK`. Stores from before them lack them: they
# are added.
_ADDED_COLUMNS = ("node_key", "cut")


@dataclass(frozen=True, slots=True)
class Recorded:
    """What a recorded solver (or verifier) call spent, the ``max_tokens`` it was granted,
    and where its limits granted less than it asked, the marks they made: ``("cut", pool
    name)`` or ``("run-cut", reason)`` (see :class:`~thinktree.orchestrator.ledger.Budget`).
    A ``verifier``'s call counts under the run's limits only, not under its problem's."""

    prompt_tokens: int
    completion_tokens: int
    grant: int | None = None
    cut: tuple[tuple[str, str], ...] = ()
    verifier: bool = False
    cut_off: int = 0
    """Of ``completion_tokens``, those its attempts cut off mid-stream streamed: the run's
    limit counted them, its problem's did not (see :class:`~thinktree.agents.endpoint.CutOffs`)."""
    ended: bool = False
    """Every choice ended by itself (none at its ``max_tokens``): the reply is the one a
    larger grant gets, so a limit that granted less cut nothing."""


_AT_CAP = '"finish_reason":"length"'
"""A recorded response's mark of a choice that stopped at its ``max_tokens``."""

VERIFIER_MARK = ("verifier", "run")
"""Kept with a verifier's call's marks: it counts under the run's limits only."""


def _grant(value: object) -> int | None:
    """The ``max_tokens`` a recorded request asked for (None where it is no count)."""
    return value if type(value) is int else None


def _marks(cut: str | None) -> tuple[tuple[str, str], ...]:
    """A recorded call's ``cut`` column as marks (none where it is empty or unreadable)."""
    try:
        return tuple((str(kind), str(what)) for kind, what in loads(cut or "[]"))
    except (ValueError, TypeError):
        return ()


def _recorded(
    prompt: int,
    done: int,
    grant: object,
    cut: str | None,
    cut_off: object = 0,
    at_cap: object = 1,
) -> Recorded:
    """One row of :meth:`SqliteCallCache.recorded_usage` as what the call spent and was
    granted (``at_cap``: whether a choice of it stopped at its ``max_tokens``)."""
    marks = _marks(cut)
    verifier = VERIFIER_MARK in marks
    marks = tuple(mark for mark in marks if mark != VERIFIER_MARK)
    lost = cut_off if type(cut_off) is int and 0 <= cut_off <= done else 0
    return Recorded(prompt, done, _grant(grant), marks, verifier, lost, ended=at_cap == 0)


class NotRecorded(Exception):  # a state, not a failure: the call is to be made
    """Raised by a lookup under :func:`only_recorded` that finds no recorded call."""


_ONLY_RECORDED: ContextVar[bool] = ContextVar("thinktree_only_recorded", default=False)
_SOLVER_CALL: ContextVar[tuple[tuple[str, str], ...] | None] = ContextVar(
    "thinktree_solver_call", default=None
)


class solver_call:  # named as the context manager it is
    """A call made inside is the solver's: it is recorded with its node key, so a resumed
    run holds its tokens under its limits (see :class:`verifier_call` for a verifier's),
    and with ``cut``, the marks its limits made where they granted it less than it asked.

    A class, not a generator: it wraps every solver call, and costs a third as much."""

    __slots__ = ("_cut", "_token")

    def __init__(self, cut: tuple[tuple[str, str], ...] = ()) -> None:
        self._cut = cut

    def __enter__(self) -> None:
        self._token = _SOLVER_CALL.set(self._cut)

    def __exit__(self, *exc: object) -> None:
        _SOLVER_CALL.reset(self._token)


class verifier_call(solver_call):
    """A call made inside is a verifier's (a judge's) under the run's limits: recorded as a
    solver's call is, with :data:`VERIFIER_MARK` among its marks, so a resumed run holds
    its tokens under the run's limits only (its problem's never counted it)."""

    __slots__ = ()

    def __init__(self, cut: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__((VERIFIER_MARK, *cut))


@contextmanager
def only_recorded() -> Iterator[None]:
    """Calls made inside only read back what this run's own call store recorded: a
    lookup that finds nothing raises :class:`NotRecorded` (nothing is sent), and a
    store several runs share is not consulted (what it holds was never held for this
    run, see :meth:`SqliteCallCache.recorded_usage`)."""
    token = _ONLY_RECORDED.set(True)
    try:
        yield
    finally:
        _ONLY_RECORDED.reset(token)


# One row: the run's retries so far (absent from a store written before it was kept).
_RETRIES_SCHEMA = """
CREATE TABLE IF NOT EXISTS retries (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    total INTEGER NOT NULL
)
"""
_TALLY = "INSERT OR REPLACE INTO retries VALUES (1, ?)"

# The calls a run's own store holds that the run read back from a store several runs share
# (a bench's), which another run made and paid for: the run reports them as read back,
# not as spent (see :func:`read_back_calls`).
_READ_BACK_SCHEMA = "CREATE TABLE IF NOT EXISTS read_back (fingerprint TEXT PRIMARY KEY)"
_READ_BACK = "INSERT OR IGNORE INTO read_back VALUES (?)"


def completion_to_json(completion: Completion) -> str:
    """The completion and its choices as JSON objects of their fields (orjson writes
    dataclasses itself, field by field in order)."""
    return dumps(completion)


def call_row(
    fingerprint: str, route: str, request: str, completion: Completion, key: str | None = None
) -> tuple[Any, ...]:
    """One finished call as a row of the ``responses`` table (``key``: its node(s))."""
    return (
        fingerprint,
        route,
        request,
        completion_to_json(completion),
        completion.prompt_tokens,
        completion.completion_tokens,
        completion.latency_s,
        completion.attempts,
        time.time(),
        *_solver_columns(key),
    )


def _solver_columns(key: str | None) -> tuple[str | None, str | None]:
    """A solver's or verifier's call's ``node_key`` and ``cut`` (both None for any other)."""
    cut = _SOLVER_CALL.get()
    if cut is None or key is None:
        return None, None
    return key, dumps([list(mark) for mark in cut]) if cut else None


def completion_from_json(text: str, fingerprint: str | None = None) -> Completion:
    """The recorded completion; one recorded before calls had ids of their own takes its
    ``fingerprint`` as its call id (unique to the call, and the same on every read)."""
    data = loads(text)
    data["choices"] = [Choice(**c) for c in data["choices"]]
    completion = Completion(**data)
    if completion.call_id is None:
        completion.call_id = fingerprint
    return completion


def _readable(text: str, fingerprint: str) -> Completion | None:
    """A recorded completion as it was stored; None where it cannot be read back (a
    damaged row, or one another version wrote) or its token counts are no counts: the
    call is then taken as never recorded, and made again."""
    try:
        completion = completion_from_json(text, fingerprint)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("unreadable recorded call: made again", fingerprint=fingerprint, error=str(exc))
        return None
    return completion if _counts_tokens(completion) else None


def _counts_tokens(completion: Completion) -> bool:
    """Whether a recorded call's token counts are counts (a store written before replies'
    usage was checked may hold one that is below 0 or impossibly large): one that is not
    is taken as never recorded, and made again."""
    counts = [completion.prompt_tokens, completion.completion_tokens]
    counts += [choice.completion_tokens for choice in completion.choices]
    if completion.reasoning_tokens is not None:
        counts.append(completion.reasoning_tokens)
    return all(is_token_count(count) for count in counts)


class _Batch:
    """Rows committed together; every caller waiting on it learns the outcome."""

    __slots__ = ("done", "error", "rows")

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.done = anyio.Event()
        self.error: BaseException | None = None


class SqliteCallCache:
    """The ``responses`` table of a run's call store, written from a worker thread.

    Each record is committed before ``record`` returns, so a call counts only once its
    response is on disk; a killed run loses at most the calls still in flight. Records
    that arrive while a commit is under way are committed together by the next one
    (group commit), so a busy run pays one transaction and one thread hop per batch,
    not per call. The fingerprints already stored are kept in memory, so a fresh call
    is looked up without touching the database.

    A run's own store keeps the run's retries so far: once :attr:`session_retries` is
    set, each commit and :meth:`close` write :meth:`retries_total` beside the calls.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = anyio.Lock()
        try:
            self._conn = sqlite3.connect(path, timeout=30.0, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(_SCHEMA)
            columns = {str(r[1]) for r in self._conn.execute("PRAGMA table_info(responses)")}
            for column in _ADDED_COLUMNS:
                if column not in columns:  # a store from before it
                    self._conn.execute(f"ALTER TABLE responses ADD COLUMN {column} TEXT")
            self._conn.execute(_RETRIES_SCHEMA)
            self._conn.execute(_READ_BACK_SCHEMA)
            self._conn.commit()
            self._known = {
                str(r[0]) for r in self._conn.execute("SELECT fingerprint FROM responses")
            }
            self.retries_before = self._retries_so_far()
        except sqlite3.Error as exc:
            raise _unopenable(path, exc) from None
        self.hits = 0
        self.session_retries: Callable[[], int] | None = None
        """This session's retries so far (its run's count); None: keep no count here."""
        self._batch = _Batch()
        self._writing = False
        self._closer: threading.Thread | None = None  # see finish()
        self._close_error: BaseException | None = None

    def _retries_so_far(self) -> int:
        """The retries earlier sessions counted; for a store from before they were kept
        (or one filled by copying calls), the retries behind the calls it holds."""
        row = self._conn.execute("SELECT total FROM retries WHERE id = 1").fetchone()
        if row is None:  # those of the calls it read back another run made
            row = self._conn.execute(
                "SELECT coalesce(sum(max(attempts - 1, 0)), 0) FROM responses "
                "WHERE fingerprint NOT IN (SELECT fingerprint FROM read_back)"
            ).fetchone()
        return int(row[0])

    def retries_total(self) -> int:
        """The run's retries: earlier sessions' and this session's (not those behind the
        calls it read back from another run's store: that run made them)."""
        mine = self.session_retries() if self.session_retries is not None else 0
        return self.retries_before + mine

    def carried_retries(self) -> int:
        """The run's retries that this session's own retry events do not show."""
        return self.retries_before

    def finish(self) -> None:
        """Start closing the store in a thread of its own: its last commit and checkpoint
        are mostly waits on the disk, which the caller's own work (a run's results) goes
        on beside. :meth:`close` waits for it."""
        if self._closer is None:
            self._closer = threading.Thread(target=self._close_aside, name="thinktree-calls")
            self._closer.start()

    @property
    def closing(self) -> bool:
        """Whether the close :meth:`finish` started is still under way."""
        return self._closer is not None and self._closer.is_alive()

    def close(self) -> None:
        """Close the store, writing the run's retries last (see :attr:`session_retries`);
        after :meth:`finish`, wait for that close, and raise what it raised (once)."""
        if self._closer is None:
            self._close()
            return
        self._closer.join()
        error, self._close_error = self._close_error, None
        if error is not None:
            raise error

    def _close_aside(self) -> None:
        try:
            self._close()
        except BaseException as exc:  # raised where close() waits for it, not printed here
            self._close_error = exc

    def _close(self) -> None:
        try:
            if self.session_retries is not None:
                self._conn.execute(_TALLY, (self.retries_total(),))
                self._conn.commit()
        except sqlite3.Error as exc:  # the results still count them; a resume would not
            log.warning("cannot record the run's retries", store=str(self.path), error=str(exc))
        finally:
            self._conn.close()

    def cached(self) -> int:
        row = self._conn.execute("SELECT count(*) FROM responses").fetchone()
        return int(row[0])

    def recorded_usage(self) -> dict[str, Recorded]:
        """Each recorded solver or verifier call by its node key: what a resumed run holds
        under its limits for the calls it may read back (see
        :class:`~thinktree.orchestrator.ledger.RecordedCalls`)."""
        return _recorded_calls(self._conn.execute(_RECORDED_USAGE))

    async def lookup(self, fingerprint: str) -> Completion | None:
        if fingerprint not in self._known:
            if _ONLY_RECORDED.get():
                raise NotRecorded
            return None
        async with self._lock:
            row = await anyio.to_thread.run_sync(self._get, fingerprint)
        completion = None if row is None else _readable(row, fingerprint)
        if completion is None:
            if _ONLY_RECORDED.get():
                raise NotRecorded
            return None
        self.hits += 1  # its retries are counted in retries_before already
        return completion

    def _get(self, fp: str) -> str | None:
        row = self._conn.execute(
            "SELECT response FROM responses WHERE fingerprint = ?", (fp,)
        ).fetchone()
        return None if row is None else str(row[0])

    async def record(
        self,
        fingerprint: str,
        route: str,
        request: str,
        completion: Completion,
        key: str | None = None,
    ) -> None:
        """Store one finished call (``request``: its JSON, ``key``: its node(s)); returns
        once it is committed."""
        await self.put(call_row(fingerprint, route, request, completion, key))

    async def put(self, row: tuple[Any, ...]) -> None:
        """Store a :func:`call_row`; returns once it is committed (raises if it was not)."""
        fingerprint = row[0]
        batch = self._batch
        batch.rows.append(row)
        if self._writing:
            # The writer commits this batch even if this caller is cancelled meanwhile.
            await batch.done.wait()
        else:
            with anyio.CancelScope(shield=True):  # a paid-for answer is never dropped
                await self._commit()
        if batch.error is not None:
            raise batch.error
        self._known.add(fingerprint)

    async def _commit(self) -> None:
        """Commit batch after batch until no record waits (one writer at a time)."""
        self._writing = True
        try:
            while self._batch.rows:
                batch, self._batch = self._batch, _Batch()
                try:
                    async with self._lock:
                        await anyio.to_thread.run_sync(self._put, batch.rows)
                except (sqlite3.Error, OSError) as exc:
                    batch.error = self.unwritable(exc)
                except BaseException as exc:
                    batch.error = exc
                finally:
                    batch.done.set()
        finally:
            self._writing = False

    def _put(self, rows: list[tuple[Any, ...]], *, read_back: bool = False) -> None:
        """Commit ``rows``, and the run's retries so far where this store keeps them;
        ``read_back``: the rows are calls another run made (see :func:`read_back_calls`)."""
        tally = self.retries_total() if self.session_retries is not None else None
        try:
            self._conn.executemany(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
            )
            # a call made again (one read back that could not be read once more) is its own
            marked = _READ_BACK if read_back else "DELETE FROM read_back WHERE fingerprint = ?"
            self._conn.executemany(marked, [(row[0],) for row in rows])
            if tally is not None:
                self._conn.execute(_TALLY, (tally,))
            self._conn.commit()
        except BaseException:
            self._conn.rollback()
            raise

    def unwritable(self, exc: sqlite3.Error | OSError) -> RecordingError:
        """The one-line error for a call that could not be committed to this store."""
        return RecordingError(f"cannot record a model call in {self.path}: {exc}")

    def _row(self, fp: str) -> tuple[Any, ...] | None:
        row = self._conn.execute("SELECT * FROM responses WHERE fingerprint = ?", (fp,)).fetchone()
        return None if row is None else tuple(row)


def check_call_store(path: Path) -> None:
    """A one-line ConfigError when ``path`` exists but is no call store to open (a damaged
    file, or one that is no database): checked before anything is written beside it."""
    if not path.exists():
        return
    try:
        conn = sqlite3.connect(path, timeout=30.0)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise _unopenable(path, exc) from None


def _unopenable(path: Path, exc: sqlite3.Error) -> ConfigError:
    """Why the call store at ``path`` cannot be opened, and what to do about it."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # the primary code of an extended one
    if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
        return ConfigError(
            f"the call store {path} is damaged or no database ({exc}); move it aside and "
            "run again: only reading back the calls it holds is lost (a call that only it "
            "holds is made, and paid for, again)"
        )
    return ConfigError(
        f"cannot write the call store {path}: {exc} (is the folder writable and the disk not full?)"
    )


class SharedCallCache:
    """A run's own call store, backed by a store several runs share (a bench's).

    A call is looked up in the run's own store first, then in the shared one; a call
    found only there is copied into the run's own store, so the run folder alone still
    resumes. Every new call goes into both.
    """

    def __init__(self, own: SqliteCallCache, shared: SqliteCallCache) -> None:
        self.own = own
        self.shared = shared

    def recorded_usage(self) -> dict[str, Recorded]:
        return self.own.recorded_usage()

    async def lookup(self, fingerprint: str) -> Completion | None:
        hit = await self.own.lookup(fingerprint)  # under only_recorded: raises on a miss
        if hit is not None:
            return hit
        async with self.shared._lock:
            row = await anyio.to_thread.run_sync(self.shared._row, fingerprint)
        if row is None:
            return None
        completion = _readable(row[3], fingerprint)
        if completion is None:
            return None
        # kept as read back: another run made it, with its retries, and paid for it
        async with self.own._lock:
            with anyio.CancelScope(shield=True):
                try:
                    await anyio.to_thread.run_sync(partial(self.own._put, [row], read_back=True))
                except (sqlite3.Error, OSError) as exc:
                    raise self.own.unwritable(exc) from None
        self.own._known.add(fingerprint)
        self.own.hits += 1
        self.shared.hits += 1
        return completion

    async def record(
        self,
        fingerprint: str,
        route: str,
        request: str,
        completion: Completion,
        key: str | None = None,
    ) -> None:
        row = call_row(fingerprint, route, request, completion, key)  # made once, kept twice
        await self.own.put(row)
        await self.shared.put(row)


#: Each recorded call's node key, tokens, grant, limits' marks, the tokens its attempts
#: cut off mid-stream streamed, and whether a choice of it stopped at its ``max_tokens``;
#: the latest of a node's calls last (it is the one kept).
_RECORDED_USAGE = (
    "SELECT node_key, prompt_tokens, completion_tokens, "
    "json_extract(request, '$.max_tokens'), cut, "
    # a scan for a count past 0 first: most calls had no attempt cut off, and parsing
    # every response (their texts) would slow the resume of a large run
    "CASE WHEN response GLOB '*\"cut_off_tokens\":[1-9]*' THEN "
    "(SELECT sum(json_extract(value, '$.cut_off_tokens')) "
    "FROM json_each(response, '$.choices')) ELSE 0 END, "
    # a text that quotes the mark reads as one: asked again, never read back for a reply
    # it is not
    f"response GLOB '*{_AT_CAP}*' FROM responses "
    "WHERE node_key IS NOT NULL ORDER BY created"
)


def _recorded_calls(rows: Iterable[Any]) -> dict[str, Recorded]:
    return {
        str(key): _recorded(int(prompt), int(done), grant, cut, cut_off, at_cap)
        for key, prompt, done, grant, cut, cut_off, at_cap in rows
        if is_token_count(prompt) and is_token_count(done)  # else not recorded, see lookup
    }


def recorded_calls(path: Path) -> dict[str, Recorded]:
    """:meth:`SqliteCallCache.recorded_usage` of the call store at ``path``, opened
    read-only (none for no store, or one that cannot be read: its resume says why)."""
    return _recorded_calls(_read_only(path, _RECORDED_USAGE))


def recorded_tokens(path: Path) -> tuple[int, int]:
    """The prompt and completion tokens of the calls the call store at ``path`` recorded
    (the solver's and a judge's on the run's endpoint): what a resumed run has spent under
    its limits already ((0, 0) for no store, or one that cannot be read: its resume says
    why)."""
    counted = "CASE WHEN typeof({0}) = 'integer' AND {0} >= 0 THEN {0} ELSE 0 END"
    rows = _read_only(
        path,
        f"SELECT coalesce(sum({counted.format('prompt_tokens')}), 0), "
        f"coalesce(sum({counted.format('completion_tokens')}), 0) "
        "FROM responses WHERE node_key IS NOT NULL",
    )
    return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)


def read_back_calls(path: Path) -> dict[str, tuple[int, int]]:
    """The calls the call store at ``path`` read back from a store several runs share (a
    bench's), by id, with their prompt and completion tokens: another run made them and
    paid for them (the solver's and a judge's on the run's endpoint). Empty for a store
    without any, one from before they were kept, or none at all."""
    rows = _read_only(
        path,
        "SELECT r.fingerprint, json_extract(r.response, '$.call_id'), "
        "r.prompt_tokens, r.completion_tokens "
        "FROM responses r JOIN read_back b ON b.fingerprint = r.fingerprint",
    )
    return {
        str(call_id or fingerprint): (_count(prompt), _count(completion))
        for fingerprint, call_id, prompt, completion in rows
    }


def _count(value: object) -> int:
    """A recorded token count, 0 where the row's is damaged (its call was never read back
    for its reply, see :func:`_readable`)."""
    return value if is_token_count(value) else 0


def _read_only(path: Path, query: str) -> list[Any]:
    """``query``'s rows from the call store at ``path``, opened read-only; none where there
    is no store, or it cannot answer (one from before a table was kept)."""
    if not path.is_file():
        return []
    try:
        conn = sqlite3.connect(read_only_uri(path), uri=True, timeout=30.0)
        try:
            return conn.execute(query).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return []

"""The run store: what lands in run.sqlite, how it reads back, and how it fails."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from choice_set import beta_problems
from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.errors import ThinktreeError
from thinktree.orchestrator.bus import Subscriber, event_bus
from thinktree.orchestrator.call_cache import SqliteCallCache
from thinktree.orchestrator.events import (
    CallRetried,
    CandidateScored,
    Event,
    NodeDelta,
    NodeFailed,
    NodeFinished,
    NodeKind,
    NodeStarted,
    ProblemFinished,
    ProblemStarted,
    RunFinished,
    RunStarted,
    VoteCast,
)
from thinktree.orchestrator.run import RunSettings, execute
from thinktree.orchestrator.store import (
    _LAUNCH,
    REDACTED,
    SCHEMA_VERSION,
    STORE_NAME,
    RunStore,
    StoreError,
    list_runs,
    redact,
    wait_for_writer,
)
from thinktree.pricing import Price
from thinktree.testing.fake_server import FakeBehaviour, FakeServer

pytestmark = pytest.mark.anyio

API_KEY = "sk-planted-4f9a7c2e1b3d5f6a8c0e"
BEARER = "Bearer planted-bearer-9c8b7a6f5e4d3c2b"
SECRET = "planted-client-secret-0a1b2c3d"

SETTINGS = {
    "mode": "hybrid",
    "n": 2,
    "steps": 1,
    "max_tokens": 256,
    "answer_tokens": 32,
    "api_key": API_KEY,
    "headers": {"Authorization": BEARER, "X-Trace": "keep-me"},
    "clients": [{"client_secret": SECRET, "token_budget": 512}],
}


def run_started(run_id: str = "20250101-000000-abcdef", problems: int = 2) -> RunStarted:
    return RunStarted(
        at=0.0,
        run_id=run_id,
        mode="hybrid",
        endpoint="embedded",
        model="toy-1",
        problems=problems,
        settings=SETTINGS,
    )


def node(nid: str, parent: str, kind: NodeKind, at: float, pid: str = "p1") -> NodeStarted:
    return NodeStarted(
        at=at,
        node_id=nid,
        problem_id=pid,
        parent_id=parent,
        kind=kind,
        label=nid.rsplit("/", 1)[-1],
        max_tokens=128,
        continuation="chat",
    )


def done(
    nid: str, at: float, call: str | None, prompt: int, completion: int, **kw: Any
) -> NodeFinished:
    return NodeFinished(
        at=at,
        node_id=nid,
        text=f"text of {nid}",
        finish_reason=str(kw.get("finish_reason", "length")),
        prompt_tokens=prompt,
        completion_tokens=completion,
        answer=kw.get("answer"),
        extraction=kw.get("extraction"),
        latency_s=float(kw.get("latency_s", 0.5)),
        call_id=call,
    )


def branch_done(nid: str, at: float, answer: str | None) -> NodeFinished:
    """A branch closing: structural, no call of its own."""
    return NodeFinished(
        at=at,
        node_id=nid,
        text="",
        finish_reason=None,
        prompt_tokens=0,
        completion_tokens=0,
        answer=answer,
        extraction="branch",
    )


def problem_events() -> list[Event]:
    """Two problems. p1: two branches whose first generations come from one n=2 call,
    a step each, a failed step, a "Wait" extension whose call has no id, a retry, a
    forced answer, the branches closing, a vote; p2 fails."""
    return [
        ProblemStarted(at=0.1, problem_id="p1", node_id="p1", question="2+2?", gold="4"),
        node("p1/b0", "p1", NodeKind.BRANCH, 0.2),
        node("p1/b1", "p1", NodeKind.BRANCH, 0.2),
        node("p1/b0/think", "p1/b0", NodeKind.GENERATION, 0.2),
        node("p1/b1/think", "p1/b1", NodeKind.GENERATION, 0.2),
        NodeDelta(at=0.3, node_id="p1/b0/think", text="text of "),
        NodeDelta(at=0.3, node_id="p1/b1/think", text="text of "),
        done("p1/b0/think", 1.0, "call-1", 100, 50, latency_s=0.9),
        done("p1/b1/think", 1.0, "call-1", 0, 40, latency_s=0.9),
        node("p1/b0/step1", "p1/b0/think", NodeKind.STEP, 1.1),
        node("p1/b1/step1", "p1/b1/think", NodeKind.STEP, 1.1),
        CallRetried(at=1.2, endpoint="embedded", attempt=1, wait_s=0.5, reason=f"429 {BEARER}"),
        done("p1/b0/step1", 2.0, "call-2", 150, 60, answer="4", extraction="boxed"),
        NodeFailed(at=2.1, node_id="p1/b1/step1", error=f"endpoint said no to {API_KEY}"),
        node("p1/b1/wait1", "p1/b1/think", NodeKind.EXTENSION, 2.2),
        done("p1/b1/wait1", 2.5, None, 90, 20),
        node("p1/b0/answer", "p1/b0/step1", NodeKind.FORCED_ANSWER, 2.6),
        done("p1/b0/answer", 3.0, "call-3", 220, 8, answer="4", extraction="forced", latency_s=0.2),
        branch_done("p1/b0", 3.0, "4"),
        branch_done("p1/b1", 3.0, None),
        VoteCast(
            at=3.1,
            problem_id="p1",
            node_id="p1",
            rule="shortest-majority",
            answer="4",
            winner_node="p1/b0/answer",
            counts={"4": 1, "secret": 1},
        ),
        ProblemFinished(at=3.2, problem_id="p1", answer="4", correct=True, covered=True),
        ProblemStarted(at=3.3, problem_id="p2", node_id="p2", question="3+3?", gold=None),
        node("p2/think", "p2", NodeKind.GENERATION, 3.4, pid="p2"),
        NodeFailed(at=3.5, node_id="p2/think", error="connection reset"),
        ProblemFinished(
            at=3.6,
            problem_id="p2",
            answer=None,
            correct=None,
            covered=None,
            error="no candidate stated an answer",
        ),
    ]


# full_run()'s events that no table holds whole: the run's start and end, a retry, a vote
EVENTS_STORED = 4
TABLED = (NodeDelta, NodeStarted, NodeFinished, NodeFailed, ProblemStarted, ProblemFinished)


def logged(events: list[Event]) -> list[Event]:
    """The events the ``events`` table keeps (the tables hold the others whole)."""
    return [e for e in events if not isinstance(e, TABLED)]


def full_run(status: str = "completed") -> list[Event]:
    return [run_started(), *problem_events(), RunFinished(at=3.7, run_id="x", status=status)]


def feed(store: RunStore, events: list[Event]) -> None:
    for event in events:
        store.handle(event)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    return folder / STORE_NAME


@pytest.fixture
def store(db_path: Path) -> Iterator[RunStore]:
    store = RunStore(db_path)
    yield store
    store.close()


def query(path: Path, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def copy_file(source: Path, target: Path) -> Path:
    target.write_bytes(source.read_bytes())
    return target


def snapshot(path: Path) -> tuple[bytes, int, list[str]]:
    return path.read_bytes(), path.stat().st_mtime_ns, sorted(os.listdir(path.parent))


# --- contents ------------------------------------------------------------------------------


async def test_a_run_lands_in_the_tables(store: RunStore, db_path: Path) -> None:
    events = full_run()
    feed(store, events)
    await store.aclose()
    assert store.error is None and store.skipped == 0

    (run,) = query(
        db_path,
        "SELECT run_id, mode, endpoint, model, problems_total, status, retries, finished_at "
        "FROM run",
    )
    assert run == ("20250101-000000-abcdef", "hybrid", "embedded", "toy-1", 2, "completed", 1, 3.7)
    (settings,) = query(db_path, "SELECT settings FROM run")[0]
    assert json.loads(str(settings))["max_tokens"] == 256
    assert {row[0]: row[1] for row in query(db_path, "SELECT key, value FROM meta")} == {
        "schema_version": str(SCHEMA_VERSION),
        "thinktree_version": "0.1.0",
    }

    assert query(
        db_path,
        "SELECT id, node_id, status, answer, correct, covered, error FROM problems ORDER BY rowid",
    ) == [
        ("p1", "p1", "done", "4", 1, 1, None),
        ("p2", "p2", "failed", None, None, None, "no candidate stated an answer"),
    ]

    nodes = query(
        db_path,
        "SELECT id, parent_id, kind, status, prompt_tokens, completion_tokens, answer, "
        "extraction, call_id FROM nodes WHERE problem_id = 'p1' ORDER BY rowid",
    )
    assert nodes == [
        ("p1", None, "problem", "done", 0, 0, "4", None, None),
        ("p1/b0", "p1", "branch", "done", 0, 0, "4", "branch", None),
        ("p1/b1", "p1", "branch", "done", 0, 0, None, "branch", None),
        ("p1/b0/think", "p1/b0", "generation", "done", 100, 50, None, None, "call-1"),
        ("p1/b1/think", "p1/b1", "generation", "done", 0, 40, None, None, "call-1"),
        ("p1/b0/step1", "p1/b0/think", "step", "done", 150, 60, "4", "boxed", "call-2"),
        ("p1/b1/step1", "p1/b1/think", "step", "failed", 0, 0, None, None, None),
        ("p1/b1/wait1", "p1/b1/think", "extension", "done", 90, 20, None, None, None),
        ("p1/b0/answer", "p1/b0/step1", "forced-answer", "done", 220, 8, "4", "forced", "call-3"),
    ]
    (failed,) = query(db_path, "SELECT error, finished_at FROM nodes WHERE id = 'p1/b1/step1'")
    assert failed == (f"endpoint said no to sk-{REDACTED}", 2.1)
    (forced,) = query(
        db_path,
        "SELECT label, text, max_tokens, continuation, finish_reason, latency_s, started_at, "
        "finished_at FROM nodes WHERE id = 'p1/b0/answer'",
    )
    assert forced == ("answer", "text of p1/b0/answer", 128, "chat", "length", 0.2, 2.6, 3.0)
    assert query(db_path, "SELECT id, status, error FROM nodes WHERE problem_id = 'p2'") == [
        ("p2", "failed", "no candidate stated an answer"),
        ("p2/think", "failed", "connection reset"),
    ]

    calls = query(
        db_path,
        "SELECT call_id, problem_id, node_ids, prompt_tokens, completion_tokens, latency_s "
        "FROM calls ORDER BY rowid",
    )
    assert [(c[0], c[1], json.loads(str(c[2])), *c[3:]) for c in calls] == [
        ("call-1", "p1", ["p1/b0/think", "p1/b1/think"], 100, 90, 0.9),
        ("call-2", "p1", ["p1/b0/step1"], 150, 60, 0.5),
        ("p1/b1/wait1", "p1", ["p1/b1/wait1"], 90, 20, 0.5),  # no call id: the node's own
        ("call-3", "p1", ["p1/b0/answer"], 220, 8, 0.2),
    ]

    (vote_row,) = query(
        db_path, "SELECT problem_id, node_id, rule, answer, winner_node, counts FROM votes"
    )
    assert vote_row[:5] == ("p1", "p1", "shortest-majority", "4", "p1/b0/answer")
    assert json.loads(str(vote_row[5])) == {"4": 1, "secret": 1}  # counts are data, kept

    stored = query(db_path, "SELECT id, type, at, payload FROM events ORDER BY id")
    expected = logged(events)
    assert len(expected) == EVENTS_STORED
    assert [row[1] for row in stored] == [e.type for e in expected]
    assert [row[2] for row in stored] == [e.at for e in expected]
    assert [row[0] for row in stored] == list(range(1, len(expected) + 1))
    vote = next(e for e in expected if isinstance(e, VoteCast))
    payload = json.loads(str(stored[expected.index(vote)][3]))
    assert payload == json.loads(json.dumps(vote.to_dict()))


async def test_reader_api(store: RunStore, db_path: Path) -> None:
    feed(store, full_run())
    await store.aclose()
    with RunStore.open_readonly(db_path) as reader:
        info = reader.run_info()
        assert info["run_id"] == "20250101-000000-abcdef"
        assert info["status"] == reader.status() == "completed"
        assert info["schema_version"] == SCHEMA_VERSION
        assert info["settings"]["api_key"] == REDACTED
        assert info["settings"]["headers"] == {"Authorization": REDACTED, "X-Trace": "keep-me"}
        problems = reader.problems()
        assert [p["id"] for p in problems] == ["p1", "p2"]
        assert problems[0]["correct"] is True and problems[0]["covered"] is True
        assert problems[0]["vote"]["counts"] == {"4": 1, "secret": 1}
        assert problems[1]["vote"] is None and problems[1]["correct"] is None
        assert [n["id"] for n in reader.nodes("p2")] == ["p2", "p2/think"]
        assert reader.nodes("nope") == []
        assert reader.calls()[0]["node_ids"] == ["p1/b0/think", "p1/b1/think"]
        events = reader.events()
        assert events[0]["type"] == "run-started" and events[0]["id"] == 1
        assert len(events) == EVENTS_STORED and events[-1]["type"] == "run-finished"
        assert [e["id"] for e in reader.events(after_id=1)] == [2, 3, 4]
        assert len(reader.events(after_id=0, limit=3)) == 3
        assert reader.events(after_id=10_000) == []


async def test_wal_mode_and_indexes(store: RunStore, db_path: Path) -> None:
    feed(store, [run_started(), *problem_events()[:3]])
    await store.flush()
    assert query(db_path, "PRAGMA journal_mode") == [("wal",)]
    assert (db_path.parent / f"{STORE_NAME}-wal").exists()
    indexes = query(db_path, "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index'")
    assert ("nodes_problem", "nodes") in indexes
    # events(id) is the table's INTEGER PRIMARY KEY, i.e. its rowid b-tree.
    assert ("id", "INTEGER", 1) in [
        (r[1], r[2], r[5]) for r in query(db_path, "PRAGMA table_info(events)")
    ]
    assert query(db_path, "PRAGMA foreign_key_list(nodes)")


# --- status -------------------------------------------------------------------------------


@pytest.mark.parametrize("final", ["completed", "failed", "cancelled"])
async def test_status_goes_from_running_to_the_final_one(
    store: RunStore, db_path: Path, final: str
) -> None:
    reader = RunStore.open_readonly(db_path)
    assert reader.status() == "running"  # created, nothing handled yet, writer alive
    feed(store, [run_started(), *problem_events()])
    await store.flush()
    assert reader.status() == "running"
    assert query(db_path, "SELECT status FROM run") == [("running",)]
    store.handle(RunFinished(at=9.0, run_id="x", status=final))
    await store.flush()
    assert reader.status() == final
    await store.aclose()
    assert reader.status() == final
    assert query(db_path, "SELECT status FROM run") == [(final,)]
    reader.close()


async def test_a_closed_store_is_whole_without_its_wal(
    store: RunStore, db_path: Path, tmp_path: Path
) -> None:
    reader = RunStore.open_readonly(db_path)  # kept open: SQLite cannot drop the -wal
    feed(store, full_run())
    await store.aclose()
    copy = copy_file(db_path, tmp_path / "copy.sqlite")  # the main file only
    assert query(copy, "SELECT count(*) FROM events") == [(EVENTS_STORED,)]
    assert query(copy, "SELECT status FROM run") == [("completed",)]
    reader.close()


async def test_a_store_closed_from_a_worker_thread_leaves_its_file_alone(
    store: RunStore, db_path: Path
) -> None:
    feed(store, full_run())
    await store.aclose()  # close() in a worker thread, the creating connection's too
    assert sorted(os.listdir(db_path.parent)) == [db_path.name]  # no -wal, -shm or lock
    assert query(db_path, "SELECT status FROM run") == [("completed",)]


async def test_finish_ends_the_input_and_the_writer_completes_meanwhile(
    store: RunStore, db_path: Path
) -> None:
    feed(store, full_run())
    store.finish()  # returns at once: the run goes on to its results
    late = ProblemStarted(at=4.0, problem_id="late", node_id="late", question="q", gold=None)
    store.handle(late)  # after the end: dropped, not an error
    await store.aclose()
    await store.aclose()  # closing again is harmless
    assert query(db_path, "SELECT status FROM run") == [("completed",)]
    assert query(db_path, "SELECT count(*) FROM events") == [(EVENTS_STORED,)]
    assert query(db_path, "SELECT id FROM problems ORDER BY id") == [("p1",), ("p2",)]
    assert not (db_path.parent / f"{STORE_NAME}-lock").exists()


async def test_closed_without_run_finished_is_interrupted(store: RunStore, db_path: Path) -> None:
    feed(store, [run_started(), *problem_events()[:6]])
    await store.aclose()
    assert query(db_path, "SELECT status FROM run") == [("interrupted",)]
    with RunStore.open_readonly(db_path) as reader:
        assert reader.status() == "interrupted"
    assert not (db_path.parent / f"{STORE_NAME}-lock").exists()


async def test_a_runs_results_appear_only_once_its_store_is_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the store's writer, and the call store's close (slowed here), finish while the
    # results are made; results.json is still the run's last file, so whoever sees it
    # finds both stores complete (in worker threads: the event loop stays free meanwhile)
    folder = tmp_path / "run"
    seen: list[tuple[object, bool, bool, bool]] = []
    replace = os.replace
    close_calls = SqliteCallCache._close
    calls_closed: list[bool] = []

    def slow_close(cache: SqliteCallCache) -> None:
        time.sleep(0.3)
        close_calls(cache)
        calls_closed.append(threading.current_thread() is threading.main_thread())

    def spying(src: str | Path, dst: str | Path) -> None:
        if Path(dst) == folder / "results.json":
            status = query(folder / STORE_NAME, "SELECT status FROM run")
            on_loop = threading.current_thread() is threading.main_thread()
            lock = (folder / f"{STORE_NAME}-lock").exists()
            seen.append((status, lock, calls_closed == [False], on_loop))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", spying)
    monkeypatch.setattr(SqliteCallCache, "_close", slow_close)
    modes = ModeSettings(mode="parallel", n=4, budget=16)
    async with FakeServer(FakeBehaviour(reply="Thinking. Answer: B")) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, continuation="chat")
        result = await execute(beta_problems(6), endpoint, RunSettings(modes=modes, out=folder))
    assert result.metrics.correct == 6
    # written, its writer gone, the call store closed (off the loop's thread)
    assert seen == [([("completed",)], False, True, False)]


_DYING_RUN = """
import os, signal, sys, anyio
from pathlib import Path
from thinktree.orchestrator.events import ProblemStarted, RunStarted
from thinktree.orchestrator.store import RunStore

async def main():
    store = RunStore(Path(sys.argv[1]))
    store.handle(RunStarted(run_id="r", mode="budget", endpoint="e", model="m", problems=1))
    store.handle(ProblemStarted(problem_id="p", node_id="p", question="q", gold=None))
    await store.flush()
    if sys.argv[2] == "writer":
        os.kill(store._proc.pid, signal.SIGKILL)  # the writer dies first
        store._proc.wait()
    os._exit(0)  # no close: as if the run's process were killed

anyio.run(main)
"""


@pytest.mark.anyio
async def test_the_writer_process_yields_the_cpu_to_the_run(db_path: Path) -> None:
    """It runs ten steps of priority below the run (as far as the lowest)."""
    store = RunStore(db_path)
    try:
        await store.flush()  # it has started, and answered
        assert store._proc is not None
        own = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, store._proc.pid) == min(own + 10, 19)
    finally:
        store.close()
    assert query(db_path, "SELECT status FROM run") == [("interrupted",)]


def test_the_writer_lowers_its_priority_before_its_imports(tmp_path: Path) -> None:
    """The launcher nices the process first: a stand-in writer module finds it so."""
    (tmp_path / "store_writer.py").write_text(
        "import os\nprint(os.getpriority(os.PRIO_PROCESS, 0))\n"
        "def serve_process(argv):\n    raise SystemExit(0)\n"
    )
    launched = subprocess.run(
        [sys.executable, "-S", "-P", "-c", _LAUNCH, str(tmp_path), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert int(launched.stdout) == min(os.getpriority(os.PRIO_PROCESS, 0) + 10, 19)


def test_a_writer_that_died_reads_as_interrupted(db_path: Path) -> None:
    subprocess.run([sys.executable, "-c", _DYING_RUN, db_path, "writer"], check=True, timeout=60)
    assert query(db_path, "SELECT status FROM run") == [("running",)]
    with RunStore.open_readonly(db_path) as reader:
        assert reader.status() == "interrupted"
        assert reader.run_info()["status"] == "interrupted"
        assert [p["id"] for p in reader.problems()] == ["p"]
    (db_path.parent / "run.json").write_text("{}")  # a run's folder holds its manifest too
    (summary,) = list_runs(db_path.parent.parent)
    assert summary.status == "interrupted"


def test_a_killed_run_leaves_its_writer_to_finish_the_store(db_path: Path) -> None:
    subprocess.run([sys.executable, "-c", _DYING_RUN, db_path, "run"], check=True, timeout=60)
    for _ in range(500):  # the writer commits what it was given, then lets go of the lock
        if not (db_path.parent / f"{STORE_NAME}-lock").exists():
            break
        time.sleep(0.01)
    assert query(db_path, "SELECT status FROM run") == [("interrupted",)]
    with RunStore.open_readonly(db_path) as reader:
        assert reader.status() == "interrupted"
        assert [p["id"] for p in reader.problems()] == ["p"]


def test_a_store_is_replaced_only_once_a_killed_runs_writer_has_finished(db_path: Path) -> None:
    subprocess.run([sys.executable, "-c", _DYING_RUN, db_path, "run"], check=True, timeout=60)
    wait_for_writer(db_path)  # as a resume does before it discards the store
    assert not (db_path.parent / f"{STORE_NAME}-lock").exists()
    assert query(db_path, "SELECT status FROM run") == [("interrupted",)]


def test_waiting_for_a_writer_that_does_not_end_gives_up_in_one_line(db_path: Path) -> None:
    store = RunStore(db_path)
    try:
        with pytest.raises(StoreError) as caught:
            wait_for_writer(db_path, timeout_s=0.2)
        assert str(caught.value) == (
            f"run store {db_path} is still being written by another process; "
            "try again once that process has ended"
        )
    finally:
        store.close()
    wait_for_writer(db_path, timeout_s=0.2)  # closed: nothing to wait for


async def test_a_writer_killed_mid_run_stops_the_store_not_the_run(
    store: RunStore, db_path: Path
) -> None:
    store.handle(run_started())
    await store.flush()
    assert store._proc is not None
    store._proc.kill()
    store.handle(ProblemStarted(at=1, problem_id="p1", node_id="p1", question="q", gold=None))
    with anyio.fail_after(10):
        await store.flush()  # does not hang, does not raise
        await store.aclose()
    ended = "its writer ended with exit code -9"
    assert store.error == f"run store {db_path} stopped recording: {ended}"
    with RunStore.open_readonly(db_path) as reader:
        assert reader.problems() == []
        assert reader.status() == "interrupted"


# --- live reading -------------------------------------------------------------------------


async def test_a_second_reader_follows_the_writer(store: RunStore, db_path: Path) -> None:
    events = full_run()
    reader = RunStore.open_readonly(db_path)
    seen: list[dict[str, object]] = []
    for start in range(0, len(events), 5):
        feed(store, events[start : start + 5])
        await store.flush()
        new = reader.events(after_id=int(seen[-1]["id"]) if seen else 0)  # type: ignore[call-overload]
        seen.extend(new)
        so_far = events[: start + 5]
        assert [e["type"] for e in seen] == [e.type for e in logged(so_far)]
        started = {e.node_id for e in so_far if isinstance(e, NodeStarted | ProblemStarted)}
        rows = reader.nodes("p1") + reader.nodes("p2")
        assert {n["id"] for n in rows} == started  # a flush writes running nodes too
    assert reader.status() == "completed"
    reader.close()


async def test_readers_in_another_thread_while_the_writer_writes(
    db_path: Path,
) -> None:
    store = RunStore(db_path, interval_s=0.005, batch_events=50)
    store.handle(run_started())
    store.handle(ProblemStarted(at=0, problem_id="p1", node_id="p1", question="q", gold=None))
    await store.flush()
    counts: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            with RunStore.open_readonly(db_path) as reader:
                while not stop.is_set():
                    counts.append(len(reader.nodes("p1")))
                    reader.nodes("p1")
                    reader.status()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    for i in range(2000):
        store.handle(node(f"p1/b{i}", "p1", NodeKind.BRANCH, 1.0))
        store.handle(done(f"p1/b{i}", 2.0, f"c{i}", 1, 1))
        if i % 200 == 0:
            await store.flush()
    await store.aclose()
    stop.set()
    thread.join()
    assert not errors
    assert counts == sorted(counts) and counts[-1] >= 2
    assert query(db_path, "SELECT count(*) FROM nodes") == [(2001,)]


# --- bad input ----------------------------------------------------------------------------


def _newer(path: Path) -> None:
    RunStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()


def _older(path: Path) -> None:
    RunStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()


def _foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE songs (title TEXT)")
    conn.execute("INSERT INTO songs VALUES ('x')")
    conn.commit()
    conn.close()


def _text(path: Path) -> None:
    path.write_text('{"type": "run-started"}\n' * 50)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + b"\x00" * 40)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_text, "is not a SQLite database"),
        (_empty, "is an empty file"),
        (_foreign, "without thinktree's run schema"),
        (_newer, "written by a newer thinktree"),
        (_older, "written by an older thinktree"),
        (_truncated, "cannot be read as a run store"),
    ],
)
@pytest.mark.parametrize("how", ["read", "create"])
def test_bad_stores_are_refused_and_left_untouched(
    db_path: Path, make: object, message: str, how: str
) -> None:
    make(db_path)  # type: ignore[operator]
    before = snapshot(db_path)
    with pytest.raises(StoreError) as caught:
        if how == "read":
            RunStore.open_readonly(db_path)
        else:
            RunStore(db_path)
    text = str(caught.value)
    assert message in text and "\n" not in text and str(db_path) in text
    assert isinstance(caught.value, ThinktreeError)
    assert snapshot(db_path) == before


def test_opening_what_is_not_there(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no run store at"):
        RunStore.open_readonly(tmp_path / "missing.sqlite")
    with pytest.raises(StoreError, match="is not a file"):
        RunStore.open_readonly(tmp_path)


def test_creating_over_a_good_store_is_refused(db_path: Path) -> None:
    with RunStore(db_path) as store:
        store.handle(run_started())
    before = snapshot(db_path)
    with pytest.raises(StoreError, match="already exists"):
        RunStore(db_path)
    assert snapshot(db_path) == before


def test_creating_in_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        RunStore(tmp_path / "nope" / STORE_NAME)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_creating_in_a_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(StoreError, match=r"cannot create run store .*: permission denied"):
            RunStore(folder / STORE_NAME)
        assert os.listdir(folder) == []
    finally:
        folder.chmod(0o755)


def test_a_full_disk_at_creation_leaves_nothing(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = sqlite3.connect

    def full(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = real(*args, **kwargs)
        conn.execute("PRAGMA max_page_count = 1")  # SQLite's own "disk is full"
        return conn

    monkeypatch.setattr(sqlite3, "connect", full)
    with pytest.raises(StoreError) as caught:
        RunStore(db_path)
    assert str(caught.value) == f"cannot create run store {db_path}: database or disk is full"
    assert os.listdir(db_path.parent) == []


async def test_a_full_disk_mid_run_stops_the_store_not_the_run(db_path: Path) -> None:
    store = RunStore(db_path, writer="thread")  # whose connection the test can reach
    store.handle(run_started())
    await store.flush()
    (pages,) = query(db_path, "PRAGMA page_count")[0]
    assert store._inline is not None
    store._inline.conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is now full
    big = "x" * 200_000
    store.handle(ProblemStarted(at=1, problem_id="p1", node_id="p1", question=big, gold=None))
    await store.flush()  # does not raise
    assert store.error is not None and "database or disk is full" in store.error
    assert "\n" not in store.error
    store.handle(RunFinished(at=2, run_id="x", status="completed"))  # dropped, not raised
    await store.aclose()
    with RunStore.open_readonly(db_path) as reader:
        assert reader.problems() == []
        assert reader.status() == "interrupted"


# --- listing runs -------------------------------------------------------------------------


async def test_list_runs_mixes_good_and_bad_folders(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    root.mkdir()
    for name in ("a-done", "b-interrupted", "c-garbage", "d-foreign", "e-newer", "f-empty"):
        (root / name).mkdir()
    with RunStore(root / "a-done" / STORE_NAME) as good:
        feed(good, full_run())
    with RunStore(root / "b-interrupted" / STORE_NAME) as cut:
        feed(cut, [run_started("run-b", problems=5), *problem_events()[:5]])
    for name in ("a-done", "b-interrupted"):  # the rest of a run folder, as a run leaves it
        (root / name / "run.json").write_text("{}")
    (root / "a-done" / "results.json").write_text('{"status": "completed"}')
    (root / "c-garbage" / STORE_NAME).write_bytes(os.urandom(4096))
    _foreign(root / "d-foreign" / STORE_NAME)
    _newer(root / "e-newer" / STORE_NAME)
    (root / "stray.txt").write_text("not a run")

    runs = {r.folder.name: r for r in list_runs(root)}
    assert set(runs) == {"a-done", "b-interrupted", "c-garbage", "d-foreign", "e-newer"}
    good_run = runs["a-done"]
    assert (good_run.run_id, good_run.status, good_run.mode) == (
        "20250101-000000-abcdef",
        "completed",
        "hybrid",
    )
    assert (good_run.endpoint, good_run.model) == ("embedded", "toy-1")
    assert (good_run.problems_done, good_run.problems_total, good_run.problems_correct) == (2, 2, 1)
    assert good_run.prompt_tokens == 100 + 150 + 90 + 220
    assert good_run.tokens == good_run.prompt_tokens + 50 + 40 + 60 + 20 + 8
    assert good_run.started is not None and good_run.error is None
    cut_run = runs["b-interrupted"]
    assert (cut_run.run_id, cut_run.status) == ("run-b", "interrupted")
    assert (cut_run.problems_done, cut_run.problems_total) == (0, 5)
    for name in ("c-garbage", "d-foreign", "e-newer"):
        assert runs[name].status == "unreadable"
        error = runs[name].error
        assert error and "\n" not in error
    assert list_runs(tmp_path / "no-such-root") == []
    # a run folder given itself (`thinktree runs runs/ID`) is that run; it said "no runs"
    (alone,) = list_runs(root / "a-done")
    assert alone.folder == root / "a-done" and alone.status == good_run.status


async def test_list_runs_counts_verdicts_at_their_own_cost_and_says_a_damaged_one(
    tmp_path: Path,
) -> None:
    """A verdict's tokens and cost come from its event (a failed one's node holds none),
    beside the solver's; one whose event is not whole makes the store unreadable."""
    folder = tmp_path / "runs" / "judged"
    folder.mkdir(parents=True)
    verdicts = [
        CandidateScored(
            at=3.0,
            problem_id="p1",
            node_id=f"p1/b1/verdict:{i}",
            candidate_node="p1/b1",
            verifier="judge:grader",
            score=score,
            prompt_tokens=30,
            completion_tokens=2,
            cost_usd=0.25,
        )
        for i, score in enumerate((0.9, None))
    ]
    *events, finished = full_run()
    with RunStore(folder / STORE_NAME) as store:
        feed(store, [*events, *verdicts, finished])
    (folder / "run.json").write_text("{}")
    (folder / "results.json").write_text('{"status": "completed"}')
    (solo,) = list_runs(folder.parent)
    assert solo.status == "completed"
    assert (solo.verifier_prompt_tokens, solo.verifier_completion_tokens) == (60, 4)
    assert solo.tokens == solo.prompt_tokens + solo.completion_tokens + 64
    price = Price(prompt_per_m=1.0, completion_per_m=2.0)
    solver = price.cost(solo.prompt_tokens, solo.completion_tokens)
    assert solo.cost_usd(price) == pytest.approx(solver + 0.5)
    assert solo.cost_usd(None) is None

    # verdicts recorded at no price are priced by their model's price, given later
    repriced = tmp_path / "elsewhere" / "repriced"
    repriced.mkdir(parents=True)
    unpriced = [
        dataclasses.replace(v, node_id=f"{v.node_id}/{model}", cost_usd=None, model=model)
        for v in verdicts
        for model in ("judge-x", None)
    ]
    with RunStore(repriced / STORE_NAME) as store:
        feed(store, [*events, *unpriced, finished])
    (repriced / "run.json").write_text("{}")
    (repriced / "results.json").write_text('{"status": "completed"}')
    (summary,) = list_runs(repriced.parent)
    assert summary.cost_usd(price, {"judge-x": price}) is None  # one recorded no model
    assert summary.unpriced_models({"judge-x": price}) == ["not recorded"]
    assert summary.unpriced_models({}) == ["judge-x", "not recorded"]
    only_x = dataclasses.replace(summary, verifier_unpriced={"judge-x": (60, 4)})
    assert only_x.cost_usd(price, {"judge-x": price}) == pytest.approx(solver + price.cost(60, 4))
    assert only_x.cost_usd(price) is None

    conn = sqlite3.connect(folder / STORE_NAME)
    with conn:
        conn.execute("UPDATE events SET payload = '[1]' WHERE type = 'candidate-scored'")
    conn.close()
    (damaged,) = list_runs(folder.parent)
    assert damaged.status == "unreadable" and "a verdict is damaged" in str(damaged.error)


# --- secrets ------------------------------------------------------------------------------


async def test_planted_keys_never_reach_the_file(store: RunStore, db_path: Path) -> None:
    feed(store, full_run())
    await store.aclose()
    data = b"".join(p.read_bytes() for p in db_path.parent.iterdir() if p.is_file())
    for secret in (API_KEY, BEARER, BEARER.split()[1], SECRET):
        assert secret.encode() not in data
    assert b"keep-me" in data  # the rest of the settings is there
    (settings,) = query(db_path, "SELECT settings FROM run")[0]
    assert json.loads(str(settings))["clients"] == [
        {"client_secret": REDACTED, "token_budget": 512}
    ]


def test_redact() -> None:
    assert redact(
        {
            "api_key": "x",
            "API-KEY": "x",
            "token": "x",
            "hf_token": "x",
            "password": "x",
            "max_tokens": 5,
            "tokens": "x",
            "secret": None,
            "url": "https://u:pw@host/v1?key=abc&n=2",
            "nested": [{"Authorization": {"scheme": "Bearer"}}],
        }
    ) == {
        "api_key": REDACTED,
        "API-KEY": REDACTED,
        "token": REDACTED,
        "hf_token": REDACTED,
        "password": REDACTED,
        "max_tokens": 5,
        "tokens": "x",
        "secret": None,
        "url": f"https://u:{REDACTED}@host/v1?key={REDACTED}&n=2",
        "nested": [{"Authorization": REDACTED}],
    }


# --- cost ---------------------------------------------------------------------------------


def synthetic(count: int) -> list[Event]:
    """``count`` events of one wide problem: per node a start, two deltas and a finish."""
    events: list[Event] = [
        run_started(problems=1),
        ProblemStarted(at=0.0, problem_id="p1", node_id="p1", question="q", gold="1"),
    ]
    i = 0
    while len(events) < count:
        nid = f"p1/n{i}"
        events.append(node(nid, "p1", NodeKind.GENERATION, i * 1e-3))
        events.append(NodeDelta(at=i * 1e-3, node_id=nid, text="one "))
        events.append(NodeDelta(at=i * 1e-3, node_id=nid, text="two"))
        events.append(done(nid, i * 1e-3, f"c{i}", 10, 5, answer="1"))
        i += 1
    return events[:count]


async def test_a_quick_node_is_written_when_it_ends_a_slow_one_while_it_runs(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from thinktree.orchestrator import store_writer

    monkeypatch.setattr(store_writer, "LIVE_AFTER_S", 0.3)
    store = RunStore(db_path, interval_s=0.01, writer="thread")  # its statements can be seen
    written: list[tuple[object, ...]] = []
    assert store._inline is not None
    conn = store._inline.conn
    conn.set_trace_callback(lambda sql: written.append((sql,)) if "INTO nodes" in sql else None)
    feed(store, [run_started(), *problem_events()[:2]])  # p1 and its branch p1/b0, running
    await anyio.sleep(0.1)
    assert query(db_path, "SELECT count(*) FROM nodes") == [(0,)]  # quick so far: not yet
    for _ in range(300):  # running past LIVE_AFTER_S: written while it runs, no flush
        await anyio.sleep(0.01)
        if query(db_path, "SELECT count(*) FROM nodes") == [(2,)]:
            break
    assert query(db_path, "SELECT id, status FROM nodes ORDER BY rowid") == [
        ("p1", "running"),
        ("p1/b0", "running"),
    ]
    written.clear()
    store.handle(node("p1/b0/think", "p1/b0", NodeKind.GENERATION, 0.5))
    store.handle(done("p1/b0/think", 0.6, "c1", 5, 5))
    await anyio.sleep(0.1)
    await store.aclose()
    # the quick node went in once, finished (one statement wrote it, none before)
    assert len(written) == 1
    assert query(db_path, "SELECT status FROM nodes WHERE id = 'p1/b0/think'") == [("done",)]


async def test_nodes_read_in_the_order_they_started_whatever_order_they_were_written(
    db_path: Path,
) -> None:
    store = RunStore(db_path, interval_s=0.01)
    feed(store, [run_started(), *problem_events()[:4]])  # p1, b0, b1, b0/think: all running
    store.handle(done("p1/b0/think", 1.0, "c1", 5, 5))  # the child ends first
    await anyio.sleep(0.1)  # the writer has written the child alone
    assert query(db_path, "SELECT id FROM nodes") == [("p1/b0/think",)]
    await store.aclose()  # then the rest, as they stand
    with RunStore.open_readonly(db_path) as reader:
        assert [n["id"] for n in reader.nodes("p1")] == ["p1", "p1/b0", "p1/b1", "p1/b0/think"]


async def test_flush_commits_everything_handled(store: RunStore, db_path: Path) -> None:
    # How fast handle() is, is measured by benchmarks/overhead.py (the event bus), not here.
    events = synthetic(20_000)
    for event in events:
        store.handle(event)
    await store.flush()
    assert query(db_path, "SELECT type FROM events") == [("run-started",)]
    assert query(db_path, "SELECT count(*) FROM nodes WHERE status = 'done'") == [
        (sum(isinstance(e, NodeFinished) for e in events),)
    ]
    assert query(db_path, "SELECT count(*) FROM nodes") == [
        (sum(isinstance(e, NodeStarted) for e in events) + 1,)
    ]
    assert store.error is None


async def test_the_bus_closes_the_store_with_everything_in_it(db_path: Path) -> None:
    store = RunStore(db_path)
    assert isinstance(store, Subscriber) and store.wants_deltas is False
    events = synthetic(5_000)
    async with event_bus([store]) as bus:
        for event in events:
            await bus.emit(event)
        await bus.emit(RunFinished(run_id="x", status="completed"))
    assert query(db_path, "SELECT type FROM events") == [("run-started",), ("run-finished",)]
    assert query(db_path, "SELECT count(*) FROM nodes") == [
        (sum(isinstance(e, NodeStarted) for e in events) + 1,)
    ]
    assert query(db_path, "SELECT status FROM run") == [("completed",)]
    assert not (db_path.parent / f"{STORE_NAME}-lock").exists()


async def test_an_event_that_does_not_fit_the_tree_is_skipped_not_fatal(
    store: RunStore, db_path: Path
) -> None:
    feed(store, [run_started(), *problem_events()[:2]])
    store.handle(node("elsewhere/b0", "elsewhere", NodeKind.BRANCH, 1.0, pid="elsewhere"))
    store.handle(done("p1/nowhere", 1.0, "c9", 1, 1))
    store.handle(node("p1/b9", "p1", NodeKind.BRANCH, 1.5))  # what fits still goes in
    await store.flush()
    assert store.error is None and store.skipped == 2
    assert query(db_path, "SELECT id FROM nodes ORDER BY rowid") == [
        ("p1",),
        ("p1/b0",),
        ("p1/b9",),
    ]

"""Shard folders merged into the cell's one run folder, as if one process had run it.

The merged folder is an ordinary run folder: ``calls.sqlite`` holds every shard's calls,
``run.json`` the cell's problems in the dataset's order, and ``run.sqlite`` and
``trace.jsonl`` the shards' events replayed through the same subscribers a run writes
them with (one ``run-started`` and one ``run-finished`` around them, times as the
shards recorded them). ``results.json`` is recomputed from the merged trees, so its
metrics cover every problem; it is written last, so its presence means the merge
completed. A merge cut off is simply done again: the shard folders stay until it has.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from thinktree._files import atomic_write
from thinktree.agents.capabilities import Capabilities
from thinktree.agents.endpoint import EndpointConfig
from thinktree.errors import ThinktreeError
from thinktree.orchestrator.bus import Subscriber
from thinktree.orchestrator.call_cache import SqliteCallCache
from thinktree.orchestrator.events import Event, RunFinished, RunStarted
from thinktree.orchestrator.run import (
    CALLS,
    MANIFEST,
    RESULTS,
    RunFacts,
    RunResult,
    RunSettings,
    conclude,
    manifest_text,
    save_limits,
)
from thinktree.orchestrator.store import STORE_NAME, RunStore
from thinktree.orchestrator.subscribers import TraceWriter, TreeRecorder
from thinktree.orchestrator.trace import TRACE_NAME, read_trace
from thinktree.problems import Problem

__all__ = ["copy_calls", "merge_shards"]


class MergeError(ThinktreeError):
    """Shard folders that cannot be merged (one missing or unfinished)."""


def copy_calls(sources: Sequence[Path], target: Path, *, read_back: bool = True) -> int:
    """Add every call of ``sources`` to the call store ``target``; returns how many it holds.

    A call is keyed by its fingerprint, so a call two shards (or a shard and an earlier
    cell) both hold is kept once. ``read_back``: which calls the sources read back from
    another run's are kept as such (a cell's merge); the bench's shared store keeps none.
    """
    SqliteCallCache(target).close()  # creates the file and its tables if needed
    conn = sqlite3.connect(target, timeout=30.0)
    try:
        for i, source in enumerate(sources):
            if not source.exists():
                continue
            conn.execute(f"ATTACH DATABASE ? AS s{i}", (str(source),))
            conn.execute(f"INSERT OR IGNORE INTO responses SELECT * FROM s{i}.responses")
            if read_back and _has_read_back(conn, f"s{i}"):  # a store from before has none
                conn.execute(f"INSERT OR IGNORE INTO read_back SELECT * FROM s{i}.read_back")
            conn.commit()
            conn.execute(f"DETACH DATABASE s{i}")
        return int(conn.execute("SELECT count(*) FROM responses").fetchone()[0])
    finally:
        conn.close()


def _has_read_back(conn: sqlite3.Connection, schema: str) -> bool:
    """Whether the attached call store ``schema`` keeps which calls it read back."""
    query = f"SELECT count(*) FROM {schema}.sqlite_master WHERE type = 'table' AND name = ?"
    return bool(conn.execute(query, ("read_back",)).fetchone()[0])


def _clear(folder: Path) -> None:
    """Remove what an earlier merge left in the cell folder (one cut off, or one done
    again after shards resumed their failed calls); its results first: they say it completed."""
    (folder / RESULTS).unlink(missing_ok=True)
    for name in (CALLS, STORE_NAME, MANIFEST, TRACE_NAME):
        for suffix in ("", "-wal", "-shm", "-lock", "-journal"):
            (folder / f"{name}{suffix}").unlink(missing_ok=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MergeError(f"cannot merge: {path} is unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise MergeError(f"cannot merge: {path} is not a JSON object")
    return data


def _start(
    folder: Path,
    shards: Sequence[Path],
    problems: Sequence[Problem],
    run_id: str,
    settings: RunSettings,
    shared_calls: Path | None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The merged call store and manifest, with the cell's limits (a shard done before may
    have others); returns the first shard's manifest and results."""
    for shard in shards:
        if not (shard / "results.json").is_file():
            raise MergeError(f"cannot merge: shard {shard} has not finished")
    folder.mkdir(parents=True, exist_ok=True)
    _clear(folder)
    copy_calls([s / CALLS for s in shards], folder / CALLS)
    if shared_calls is not None:
        copy_calls([folder / CALLS], shared_calls, read_back=False)
    first = _read_json(shards[0] / MANIFEST)
    manifest = {
        **first,
        "run_id": run_id,
        "problems": [p.model_dump(mode="json") for p in problems],
        "shards": len(shards),
    }
    atomic_write(folder / MANIFEST, manifest_text(manifest))
    save_limits(folder, settings)  # what the cell ran under, as cell_done compares
    return first, [_read_json(s / "results.json") for s in shards]


def _events(shards: Sequence[Path]) -> tuple[RunStarted, list[Event], list[RunFinished]]:
    """The first shard's ``run-started``, every other event in time order, and each
    shard's ``run-finished``."""
    started: RunStarted | None = None
    timed: list[tuple[float, int, int, Event]] = []
    ends: list[RunFinished] = []
    for index, shard in enumerate(shards):
        for seq, event in enumerate(read_trace(shard / TRACE_NAME)):
            if isinstance(event, RunStarted):
                started = started or event
            elif isinstance(event, RunFinished):
                ends.append(event)
            else:
                timed.append((event.at, index, seq, event))
    if started is None:
        raise MergeError(f"cannot merge: {shards[0] / TRACE_NAME} has no run-started event")
    timed.sort(key=lambda t: t[:3])  # each shard's own order is kept (its clock only grows)
    return started, [t[3] for t in timed], ends


async def merge_shards(
    folder: Path,
    shards: Sequence[Path],
    problems: Sequence[Problem],
    endpoint: EndpointConfig,
    settings: RunSettings,
    *,
    shared_calls: Path | None = None,
    subscribers: Sequence[Subscriber] = (),
    probe_servers: list[dict[str, Any]] | None = None,
) -> RunResult:
    """Merge finished shard run folders into the run folder ``folder`` (see module doc).

    ``problems`` are the cell's, in the dataset's order. ``shared_calls`` (the bench's
    call store) gets the shards' calls too, so later cells find them. ``probe_servers``:
    a pool's figures for the driver's probe, counted as a single run counts its own.
    """
    run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    first, shard_results = _start(folder, shards, problems, run_id, settings, shared_calls)
    shard_started, events, ends = _events(shards)
    # a resumed shard's calls read back carry the retries its earlier sessions made
    read_back = sum(end.read_back_retries for end in ends)
    started = RunStarted(
        run_id=run_id,
        mode=shard_started.mode,
        endpoint=shard_started.endpoint,
        model=shard_started.model,
        problems=len(problems),
        settings=shard_started.settings,
        at=0.0,
    )
    status = "completed" if all(end.status == "completed" for end in ends) else "stopped"
    finished = RunFinished(
        run_id=run_id,
        status=status,
        at=max((e.at for e in events), default=0.0),
        read_back_retries=read_back,
    )
    recorder = TreeRecorder()
    sinks: list[Subscriber] = [
        recorder,
        TraceWriter(folder / TRACE_NAME, deltas=settings.trace_deltas),
        RunStore(folder / STORE_NAME),
        *subscribers,
    ]
    try:
        for event in (started, *events, finished):  # as the event bus hands them out
            for sink in sinks:
                sink.handle(event)
    finally:
        for sink in sinks:
            with contextlib.suppress(Exception):
                await sink.aclose()

    facts = RunFacts(
        run_id,
        endpoint,
        str(first["endpoint"]["model"]),
        Capabilities(**first["capabilities"]),
        settings,
        str(first["settings"]["aggregate"]),
    )
    return conclude(
        folder,
        facts,
        problems,
        recorder,
        servers=_servers([probe_servers, *(r.get("servers") for r in shard_results)]),
        read_back_retries=read_back,
    )


def _servers(per_shard: Sequence[list[dict[str, Any]] | None]) -> list[dict[str, Any]] | None:
    """A pool's per-member figures summed over the shards (None when no pool was used).

    Shards run side by side, so the summed ``peak_outstanding`` is an upper bound of the
    member's peak, not a measurement.
    """
    merged: dict[str, dict[str, Any]] = {}
    for figures in per_shard:
        for member in figures or []:
            key = str(member.get("base_url"))
            if key not in merged:
                merged[key] = dict(member)
                continue
            into = merged[key]
            for name, value in member.items():
                if name == "healthy":
                    into[name] = bool(into[name]) and bool(value)
                elif name == "max_connections":
                    continue
                elif isinstance(value, int | float) and not isinstance(value, bool):
                    into[name] = into[name] + value
    if not merged:
        return None
    return list(merged.values())

"""One cell's problems in shards: each shard an ordinary run in its own folder.

A shard is the unit a Ray task runs (see :mod:`thinktree.bench.cluster`): the same
:func:`~thinktree.orchestrator.run.execute` a single-process bench runs, on a slice of
the cell's problems, into ``CELL/shards/NNN/``. Shards are resumable like any run: a
shard whose worker died is run again by Ray, finds its folder and continues from its
call store, so nothing it finished is paid for twice.

Every SQLite file has one writer: a shard writes only its own folder, and it reads the
bench's shared call store through a copy the driver made before the cell started
(``shards/NNN.bench-calls.sqlite``), so calls another cell made are not made again.
Seeds are per node (problem id and node id), so how problems are split never changes
what is sampled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from thinktree import event_loop
from thinktree._files import atomic_write
from thinktree.agents.capabilities import Capabilities
from thinktree.agents.endpoint import EndpointConfig
from thinktree.errors import ConfigError
from thinktree.orchestrator.call_cache import SqliteCallCache
from thinktree.orchestrator.run import (
    MANIFEST,
    RunSettings,
    execute,
    going_on,
    load_resume,
    run_done,
)
from thinktree.problems import Problem
from thinktree.verifiers.base import CheckedOnce

log = structlog.get_logger(__name__)

SHARDS = "shards"


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """Everything one shard needs; sent to a Ray worker, so plain picklable values."""

    bench: Path
    """The bench folder (absolute); a worker checks that it sees it."""
    cell: str
    index: int
    problems: tuple[Problem, ...]
    endpoint: EndpointConfig
    settings: RunSettings
    """The cell's settings; ``out`` is set to the shard's folder here."""
    capabilities: Capabilities
    """The driver's one probe of the endpoint, shared by every shard of the cell."""

    @property
    def folder(self) -> Path:
        return shard_folder(self.bench / self.cell, self.index)

    @property
    def snapshot(self) -> Path:
        return self.folder.with_name(f"{self.folder.name}.bench-calls.sqlite")

    @property
    def worker_file(self) -> Path:
        return self.folder.with_name(f"{self.folder.name}.worker.json")


@dataclass(frozen=True, slots=True)
class ShardReport:
    """What became of one shard (small: it travels back from the worker)."""

    index: int
    status: str  # "done before", "resumed", "ran"
    problems: int
    cached_calls: int
    host: str
    attempt: int
    seconds: float


def shard_folder(cell_folder: Path, index: int) -> Path:
    return cell_folder / SHARDS / f"{index:03d}"


def split(problems: Sequence[Problem], shards: int) -> list[tuple[Problem, ...]]:
    """``problems`` dealt round-robin into at most ``shards`` non-empty shards.

    Dealing (rather than cutting in blocks) spreads a dataset sorted by difficulty or
    length evenly. The merge puts the problems back in the dataset's order.
    """
    if shards < 1:
        raise ConfigError(f"--shards must be at least 1, not {shards}")
    count = min(shards, len(problems))
    return [tuple(problems[i::count]) for i in range(count)]


def check_shardable(settings: RunSettings, *, resumed: str | None = None) -> None:
    """Refuse limits that span the whole run: shards cannot share one running total.

    ``resumed``: the name of a cell left in shards, which finishes in shards even
    without ``--ray``.
    """
    if settings.max_run_tokens is None and settings.max_cost is None:
        return
    if resumed is None:
        raise ConfigError(
            "--ray cannot split a run-wide limit (max-tokens, max-cost) across shards; "
            "use max-problem-tokens, or run the bench without --ray"
        )
    raise ConfigError(
        f"cell {resumed} was left in shards, which cannot split a run-wide limit "
        "(max-tokens, max-cost); use max-problem-tokens until its shards are merged"
    )


def snapshot_calls(shared: Path, spec: ShardSpec) -> None:
    """Copy the bench's call store for a shard that has not started (one writer per file)."""
    if spec.snapshot.exists() or (spec.folder / MANIFEST).exists():
        return
    spec.snapshot.parent.mkdir(parents=True, exist_ok=True)
    tmp = spec.snapshot.with_name(f".{spec.snapshot.name}.tmp")
    tmp.unlink(missing_ok=True)
    src = sqlite3.connect(shared, timeout=30.0)
    try:
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()
    os.replace(tmp, spec.snapshot)


def run_shard(spec: ShardSpec, checked: CheckedOnce | None = None) -> ShardReport:
    """Run (or resume, or skip when done) one shard; the body of a Ray task.

    A shard is done, or resumed, as an unsharded cell is (:func:`run_done`): one that
    finished with failed calls sends those again, one its limit stopped goes on under
    the cell's other limits, the rest read back; a resumed shard takes the cell's limits
    and concurrency. Blocking: it runs its own event loop, as a Ray worker has none.
    ``checked``: what the bench's verifiers found before (a shard run in the bench's own
    process); a shard in a Ray worker checks its verifiers' endpoints itself, from there.
    """
    if not (spec.bench / "bench.json").is_file():
        raise ConfigError(
            f"shard {spec.index} of {spec.cell}: the bench folder {spec.bench} is not visible "
            f"on {socket.gethostname()}; across machines --out must be a folder every node "
            "mounts at the same path"
        )
    attempt = _note_worker(spec)
    started = time.monotonic()
    folder = spec.folder
    if run_done(folder, spec.settings):
        return ShardReport(
            spec.index, "done before", len(spec.problems), 0, socket.gethostname(), attempt, 0.0
        )
    status, cached = event_loop.run(_run, spec, checked)
    return ShardReport(
        spec.index,
        status,
        len(spec.problems),
        cached,
        socket.gethostname(),
        attempt,
        time.monotonic() - started,
    )


async def _run(spec: ShardSpec, checked: CheckedOnce | None) -> tuple[str, int]:
    folder = spec.folder
    shared = SqliteCallCache(spec.snapshot)
    try:
        with structlog.contextvars.bound_contextvars(cell=spec.cell, shard=spec.index):
            if (folder / MANIFEST).is_file():
                state = load_resume(folder, prices=spec.settings.prices, new_limits=True)
                settings = dataclasses.replace(
                    going_on(state.settings, spec.settings), config=spec.settings.config
                )
                result = await execute(
                    state.problems,
                    spec.endpoint,
                    settings,
                    resume=state,
                    shared_calls=shared,
                    verifier_checks=checked,
                )
                return "resumed", result.cached_calls
            if folder.exists():  # cut off before its manifest was written: nothing to keep
                shutil.rmtree(folder)
            settings = dataclasses.replace(spec.settings, out=folder)
            result = await execute(
                spec.problems,
                spec.endpoint,
                settings,
                shared_calls=shared,
                capabilities=spec.capabilities,
                verifier_checks=checked,
            )
            return "ran", result.cached_calls
    finally:
        shared.close()


def attempts(spec: ShardSpec) -> int:
    """How many times a worker has started the shard so far (0: never)."""
    try:
        return int(json.loads(spec.worker_file.read_text(encoding="utf-8"))["attempt"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _note_worker(spec: ShardSpec) -> int:
    """Record which process runs the shard (and how many tries it took) beside its folder."""
    path = spec.worker_file
    attempt = attempts(spec) + 1
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "attempt": attempt}
    atomic_write(path, json.dumps(info))
    log.info("shard started", cell=spec.cell, shard=spec.index, attempt=attempt)
    return attempt

"""Running a bench: every cell is an ordinary run, in its own run folder inside the bench's.

The bench folder holds ``bench.json`` (the config and the cells), a call store shared by
all cells (``calls.sqlite``: a call one cell made is not made again by another), and one
run folder per cell. Running the same config into the same folder again resumes it:
finished cells are kept, a cell cut off mid-run resumes like ``thinktree run --resume``,
and the rest start.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from thinktree import __version__
from thinktree.agents.capabilities import Capabilities
from thinktree.agents.endpoint import EndpointConfig
from thinktree.bench.follow import ShardFollower
from thinktree.bench.grid import BenchConfig, Cell, DatasetSpec
from thinktree.bench.perturb import NONE, perturb
from thinktree.bench.sharding import (
    SHARDS,
    ShardSpec,
    attempts,
    check_shardable,
    snapshot_calls,
    split,
)
from thinktree.config import endpoint_from, load_config
from thinktree.datasets import DatasetError, load_problems
from thinktree.errors import ConfigError
from thinktree.orchestrator.bus import Subscriber
from thinktree.orchestrator.call_cache import SqliteCallCache
from thinktree.orchestrator.events import RunStarted
from thinktree.orchestrator.run import (
    MANIFEST,
    RunResult,
    RunSettings,
    execute,
    failed_calls_in,
    load_resume,
    probe_endpoint,
    probe_needs,
)
from thinktree.pricing import Price, prices_from_config
from thinktree.problems import Problem

if TYPE_CHECKING:
    from thinktree.bench.cluster import ShardRunner

log = structlog.get_logger(__name__)

BENCH_MANIFEST = "bench.json"
BENCH_VERSION = 1
SHARED_CALLS = "calls.sqlite"
RESULTS = "results.json"


@dataclass(slots=True)
class CellOutcome:
    """What became of one cell in this invocation."""

    cell: Cell
    folder: Path
    status: str  # "done before", "resumed", "ran"
    result: RunResult | None = None
    seconds: float = 0.0
    note: str = ""  # how it ran, when not in one piece here (its shards)


class CellWatcher:
    """Told when each cell starts and ends (the progress view implements it)."""

    def cell_started(self, cell: Cell, position: int, total: int) -> Subscriber | None:
        """Return a subscriber for the cell's run events (or None).

        A cell run in shards tells it only its progress, as the shards write it: one
        ``run-started``, each ``problem-finished`` once, and ``call-retried``.
        """
        return None

    def cell_finished(self, outcome: CellOutcome) -> None:
        return None


def load_cell_problems(spec: DatasetSpec, perturbation: str) -> list[Problem]:
    """The cell's problems: the dataset's slice, under ``perturbation``."""
    if spec.path is not None:
        problems = load_problems(spec.path, limit=spec.limit, offset=spec.offset)
    else:
        from thinktree.bench.hub import load_hub

        assert spec.hub is not None
        problems = load_hub(spec.hub, split=spec.split, limit=spec.limit, offset=spec.offset)
    if not problems:
        raise DatasetError(f"dataset '{spec.name}' has no problems after offset/limit")
    return perturb(problems, perturbation)


def _manifest(config: BenchConfig, cells: list[Cell]) -> dict[str, Any]:
    return {
        "bench_version": BENCH_VERSION,
        "thinktree": __version__,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "config_file": str(config.path),
        "grid": config.grid,
        "run": config.fixed,
        "datasets": [d.to_dict() for d in config.datasets],
        "prices": config.raw.get("prices", {}),
        "cells": [c.to_dict() for c in cells],
    }


def prepare(config: BenchConfig, out: Path) -> list[Cell]:
    """Create the bench folder, or check that ``out`` holds this very bench to resume."""
    cells = config.cells()
    manifest = out / BENCH_MANIFEST
    if out.exists():
        if not manifest.is_file():
            if out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            else:
                raise ConfigError(f"{out} exists and is no bench folder; choose another --out")
        else:
            try:
                stored = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"cannot resume {out}: {BENCH_MANIFEST} is unreadable ({exc})"
                ) from None
            if stored.get("cells") != [c.to_dict() for c in cells] or stored.get("datasets") != [
                d.to_dict() for d in config.datasets
            ]:
                raise ConfigError(
                    f"{out} holds a bench with another grid or datasets; "
                    "give the config it was started with, or another --out"
                )
            return cells
    try:
        out.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(f"cannot create bench folder {out}: {exc.strerror}") from None
    tmp = out / f".{BENCH_MANIFEST}.tmp"
    tmp.write_text(json.dumps(_manifest(config, cells), indent=1, ensure_ascii=False))
    tmp.replace(manifest)
    return cells


def merged_config(config: BenchConfig) -> dict[str, Any]:
    """thinktree.toml with the bench config's [endpoints] and [prices] laid over it."""
    merged = load_config(None)
    return {
        **merged,
        "endpoints": {**merged.get("endpoints", {}), **config.raw.get("endpoints", {})},
        "prices": {**merged.get("prices", {}), **config.raw.get("prices", {})},
    }


def resolve_endpoints(config: BenchConfig, cells: list[Cell]) -> dict[str, EndpointConfig | None]:
    """Each cell's endpoint (None: the embedded model), resolved before anything runs."""
    merged = merged_config(config)
    out: dict[str, EndpointConfig | None] = {}
    for cell in cells:
        options = {**config.fixed, **cell.options}
        spec = options.get("endpoint")
        out[cell.name] = endpoint_from(
            None if spec is None else str(spec), model=options.get("model"), config=merged
        )
    return out


def bench_prices(config: BenchConfig) -> dict[str, Price]:
    return {**prices_from_config(load_config(None)), **prices_from_config(config.raw)}


class ProbeMemo:
    """What each endpoint was found to do, so a bench probes it once, not once per cell.

    A cell reuses an earlier probe of its endpoint that covered everything it needs (see
    :func:`probe_needs`); one that needs more (a verifier's logprobs, say) probes again.
    """

    def __init__(self) -> None:
        self._found: dict[tuple[str, str, str | None], list[tuple[frozenset[str], Capabilities]]]
        self._found = {}

    @staticmethod
    def _key(target: EndpointConfig) -> tuple[str, str, str | None]:
        return target.name, target.base_url, target.model

    def get(self, target: EndpointConfig, needs: set[str]) -> Capabilities | None:
        for probed, caps in self._found.get(self._key(target), ()):
            if needs <= probed:
                return copy.deepcopy(caps)  # a run may note things in its own copy
        return None

    def add(self, target: EndpointConfig, needs: set[str], caps: Capabilities) -> None:
        self._found.setdefault(self._key(target), []).append((frozenset(needs), caps))


async def run_bench(
    config: BenchConfig,
    out: Path,
    *,
    watcher: CellWatcher | None = None,
    embedded: Callable[[], Any] | None = None,
    shards: ShardRunner | None = None,
    shard_count: int | None = None,
) -> list[CellOutcome]:
    """Run (or resume) every cell of ``config`` into ``out``, one cell after another.

    ``embedded`` opens the embedded model's server (an async context manager giving
    ``base_url`` and ``model``); it is entered once, only when a cell left to run needs it.
    With ``shards`` (a Ray cluster), each cell's problems are split into ``shard_count``
    shards (default: the runner's CPUs) run side by side, then merged into the cell's
    run folder. A cell a sharded bench left unfinished is finished in shards too.
    """
    watcher = watcher or CellWatcher()
    if shards is not None:
        for cell in config.cells():
            check_shardable(config.settings_for(cell))
    cells = prepare(config, out)
    endpoints = resolve_endpoints(config, cells)
    prices = bench_prices(config)
    todo = [c for c in cells if not cell_done(out / c.name)]
    outcomes = [CellOutcome(c, out / c.name, "done before") for c in cells if c not in todo]
    needs_embedded = any(endpoints[c.name] is None for c in todo)
    shared = SqliteCallCache(out / SHARED_CALLS)
    probes = ProbeMemo()
    try:
        async with _maybe_embedded(embedded if needs_embedded else None) as local:
            for position, cell in enumerate(cells, start=1):
                if cell not in todo:
                    continue
                target = endpoints[cell.name] or local
                assert target is not None
                sharded = (out / cell.name / SHARDS).is_dir()
                if sharded or (shards is not None and not (out / cell.name / MANIFEST).is_file()):
                    from thinktree.bench.cluster import InProcessShards

                    outcome = await _run_cell_sharded(
                        config,
                        cell,
                        out,
                        target,
                        prices,
                        shards or InProcessShards(),
                        shard_count,
                        watcher,
                        position,
                        len(cells),
                        probes=probes,
                    )
                else:
                    outcome = await _run_cell(
                        config,
                        cell,
                        out,
                        target,
                        prices,
                        shared,
                        watcher,
                        position,
                        len(cells),
                        probes=probes,
                    )
                outcomes.append(outcome)
                watcher.cell_finished(outcome)
    finally:
        shared.close()
    order = {c.name: i for i, c in enumerate(cells)}
    outcomes.sort(key=lambda o: order[o.cell.name])
    return outcomes


def cell_done(folder: Path) -> bool:
    """Whether a cell is finished: its results written, and none of its calls failed
    (a cell with failed calls is resumed: those are sent again, the rest read back).
    A sharded cell counts as finished once its results are written."""
    results = folder / RESULTS
    if not results.is_file():
        return False
    return (folder / SHARDS).is_dir() or failed_calls_in(results) == 0


@asynccontextmanager
async def _maybe_embedded(opener: Callable[[], Any] | None) -> AsyncIterator[EndpointConfig | None]:
    if opener is None:
        yield None
        return
    async with opener() as server:
        from thinktree.embedded import endpoint_for

        yield endpoint_for(server)


def _fresh_cell(
    config: BenchConfig, cell: Cell, folder: Path, prices: dict[str, Price]
) -> tuple[list[Problem], RunSettings]:
    """A cell's problems (under its perturbation) and its run settings, to start it anew."""
    options = {**config.fixed, **cell.options}
    problems = load_cell_problems(cell.dataset, str(options.get("perturbation", NONE)))
    settings = dataclasses.replace(
        config.settings_for(cell), out=folder, prices=prices, config=merged_config(config)
    )
    return problems, settings


async def _run_cell(
    config: BenchConfig,
    cell: Cell,
    out: Path,
    target: EndpointConfig,
    prices: dict[str, Price],
    shared: SqliteCallCache,
    watcher: CellWatcher,
    position: int,
    total: int,
    *,
    probes: ProbeMemo,
) -> CellOutcome:
    folder = out / cell.name
    subscriber = watcher.cell_started(cell, position, total)
    subscribers = [subscriber] if subscriber is not None else []
    started = time.monotonic()
    with structlog.contextvars.bound_contextvars(cell=cell.name):
        if (folder / MANIFEST).is_file():
            state = load_resume(folder, prices=prices)
            result = await execute(
                state.problems,
                target,
                dataclasses.replace(state.settings, config=merged_config(config)),
                resume=state,
                subscribers=subscribers,
                shared_calls=shared,
            )
            status = "resumed"
        else:
            if folder.exists():  # cut off before its manifest was written: nothing to keep
                shutil.rmtree(folder)
            problems, settings = _fresh_cell(config, cell, folder, prices)
            needs = probe_needs(settings, subscribers)
            known = probes.get(target, needs)
            result = await execute(
                problems,
                target,
                settings,
                subscribers=subscribers,
                shared_calls=shared,
                capabilities=known,
            )
            if known is None:
                probes.add(target, needs, result.capabilities)
            status = "ran"
    return CellOutcome(cell, folder, status, result, time.monotonic() - started)


PLAN = "plan.json"


async def _run_cell_sharded(
    config: BenchConfig,
    cell: Cell,
    out: Path,
    target: EndpointConfig,
    prices: dict[str, Price],
    runner: ShardRunner,
    shard_count: int | None,
    watcher: CellWatcher,
    position: int,
    total: int,
    *,
    probes: ProbeMemo,
) -> CellOutcome:
    """The cell's problems in shards, each run by ``runner``, merged into the cell's folder."""
    from thinktree.bench.merge import merge_shards

    folder = out / cell.name
    subscriber = watcher.cell_started(cell, position, total)
    started = time.monotonic()
    problems, settings = _fresh_cell(config, cell, folder, prices)
    plan = folder / SHARDS / PLAN
    count = _planned(plan) or shard_count or runner.cpus
    parts = split(problems, count)
    with structlog.contextvars.bound_contextvars(cell=cell.name):
        caps, probe_servers = _probed(folder), None
        needs = probe_needs(settings, ())
        caps = caps or probes.get(target, needs)
        if caps is None:  # the endpoint's first cell: probe once, for every shard
            probed = await probe_endpoint(target, settings)
            caps, probe_servers = probed.capabilities, probed.servers
            probes.add(target, needs, caps)
        specs = _plan_shards(out, cell, parts, target, settings, caps)
        tried = [attempts(spec) for spec in specs]  # by an earlier, cut-off try of the bench
        log.info("cell sharded", shards=len(specs), problems=len(problems))
        follower = None
        if subscriber is not None:
            started_event = RunStarted(
                run_id="",
                mode=settings.modes.mode,
                endpoint=target.name,
                model=target.model or "",
                problems=len(problems),
            )
            follower = ShardFollower(subscriber, [s.folder for s in specs], started_event)
        reports = await runner.run(specs, None if follower is None else follower.poll)
        result = await merge_shards(
            folder,
            [s.folder for s in specs],
            problems,
            target,
            settings,
            shared_calls=out / SHARED_CALLS,
            probe_servers=probe_servers,
        )
    result.cached_calls = sum(r.cached_calls for r in reports)
    shutil.rmtree(folder / SHARDS)
    status = "ran" if all(r.status == "ran" for r in reports) else "resumed"
    rerun = sum(1 for r, before in zip(reports, tried, strict=True) if r.attempt > before + 1)
    hosts = len({r.host for r in reports})
    note = f"{len(reports)} shards on {hosts} host{'s' if hosts > 1 else ''}"
    if rerun:
        note += f", {rerun} run again after its worker was lost"
    return CellOutcome(cell, folder, status, result, time.monotonic() - started, note)


def _plan_shards(
    out: Path,
    cell: Cell,
    parts: list[tuple[Problem, ...]],
    target: EndpointConfig,
    settings: RunSettings,
    caps: Capabilities,
) -> list[ShardSpec]:
    """The shards' specs; records the split and gives each new shard its call snapshot."""
    bench = out.resolve()
    specs = [
        ShardSpec(bench, cell.name, i, part, target, settings, caps) for i, part in enumerate(parts)
    ]
    plan = out / cell.name / SHARDS / PLAN
    plan.parent.mkdir(parents=True, exist_ok=True)
    plan.write_text(json.dumps({"shards": len(parts)}), encoding="utf-8")
    for spec in specs:
        snapshot_calls(out / SHARED_CALLS, spec)
    return specs


def _planned(plan: Path) -> int | None:
    """The shard count an earlier, cut-off try of this cell chose (its folders depend on it)."""
    try:
        return int(json.loads(plan.read_text(encoding="utf-8"))["shards"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _probed(folder: Path) -> Capabilities | None:
    """What an earlier try of this cell probed, when one of its shards got that far."""
    for manifest in sorted((folder / SHARDS).glob(f"*/{MANIFEST}")):
        try:
            return Capabilities(**json.loads(manifest.read_text(encoding="utf-8"))["capabilities"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None

"""Running a bench: every cell is an ordinary run, in its own run folder inside the bench's.

The bench folder holds ``bench.json`` (the config and the cells), a call store shared by
all cells (``calls.sqlite``: a call one cell made is not made again by another), and one
run folder per cell. Running the same config into the same folder again resumes it:
finished cells are kept, a cell cut off mid-run resumes like ``thinktree run --resume``,
and the rest start.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from thinktree import __version__
from thinktree.agents.endpoint import EndpointConfig
from thinktree.bench.grid import BenchConfig, Cell, DatasetSpec
from thinktree.bench.perturb import NONE, perturb
from thinktree.config import endpoint_from, load_config
from thinktree.datasets import DatasetError, load_problems
from thinktree.errors import ConfigError
from thinktree.orchestrator.bus import Subscriber
from thinktree.orchestrator.call_cache import SqliteCallCache
from thinktree.orchestrator.run import MANIFEST, RunResult, execute, load_resume
from thinktree.pricing import Price, prices_from_config
from thinktree.problems import Problem

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


class CellWatcher:
    """Told when each cell starts and ends (the progress view implements it)."""

    def cell_started(self, cell: Cell, position: int, total: int) -> Subscriber | None:
        """Return a subscriber for the cell's run events (or None)."""
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


async def run_bench(
    config: BenchConfig,
    out: Path,
    *,
    watcher: CellWatcher | None = None,
    embedded: Callable[[], Any] | None = None,
) -> list[CellOutcome]:
    """Run (or resume) every cell of ``config`` into ``out``, one cell after another.

    ``embedded`` opens the embedded model's server (an async context manager giving
    ``base_url`` and ``model``); it is entered once, only when a cell left to run needs it.
    """
    watcher = watcher or CellWatcher()
    cells = prepare(config, out)
    endpoints = resolve_endpoints(config, cells)
    prices = bench_prices(config)
    todo = [c for c in cells if not (out / c.name / RESULTS).is_file()]
    outcomes = [CellOutcome(c, out / c.name, "done before") for c in cells if c not in todo]
    needs_embedded = any(endpoints[c.name] is None for c in todo)
    shared = SqliteCallCache(out / SHARED_CALLS)
    try:
        async with _maybe_embedded(embedded if needs_embedded else None) as local:
            for position, cell in enumerate(cells, start=1):
                if cell not in todo:
                    continue
                target = endpoints[cell.name] or local
                assert target is not None
                outcome = await _run_cell(
                    config, cell, out, target, prices, shared, watcher, position, len(cells)
                )
                outcomes.append(outcome)
                watcher.cell_finished(outcome)
    finally:
        shared.close()
    order = {c.name: i for i, c in enumerate(cells)}
    outcomes.sort(key=lambda o: order[o.cell.name])
    return outcomes


@asynccontextmanager
async def _maybe_embedded(opener: Callable[[], Any] | None) -> AsyncIterator[EndpointConfig | None]:
    if opener is None:
        yield None
        return
    async with opener() as server:
        yield EndpointConfig(name="embedded", base_url=server.base_url, model=server.model)


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
            options = {**config.fixed, **cell.options}
            problems = load_cell_problems(cell.dataset, str(options.get("perturbation", NONE)))
            settings = dataclasses.replace(
                config.settings_for(cell), out=folder, prices=prices, config=merged_config(config)
            )
            result = await execute(
                problems, target, settings, subscribers=subscribers, shared_calls=shared
            )
            status = "ran"
    return CellOutcome(cell, folder, status, result, time.monotonic() - started)

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
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from thinktree import __version__
from thinktree._files import atomic_write, folder_lock
from thinktree.agents.capabilities import Capabilities
from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.pool import client_for
from thinktree.bench.follow import ShardFollower
from thinktree.bench.grid import BenchConfig, Cell, DatasetSpec, field_name
from thinktree.bench.perturb import NONE, perturb
from thinktree.bench.sharding import (
    SHARDS,
    ShardSpec,
    attempts,
    check_shardable,
    shard_folder,
    snapshot_calls,
    split,
)
from thinktree.config import endpoint_from, endpoint_tables, load_config
from thinktree.datasets import DatasetError, load_problems, none_left
from thinktree.errors import ConfigError
from thinktree.hints import read_manifest
from thinktree.orchestrator.bus import Subscriber
from thinktree.orchestrator.call_cache import SqliteCallCache, check_call_store
from thinktree.orchestrator.events import RunStarted
from thinktree.orchestrator.run import (
    MANIFEST,
    MAY_CHANGE,
    ResumeState,
    RunResult,
    RunSettings,
    check_fits_context,
    execute,
    going_on,
    load_resume,
    money_limit,
    probe_endpoint,
    probe_needs,
    run_done,
    run_outcome,
)
from thinktree.pricing import Price, changed_prices, prices_from_config
from thinktree.problems import Problem
from thinktree.verifiers.base import CheckedOnce
from thinktree.verifiers.setup import open_panel

if TYPE_CHECKING:
    from thinktree.bench.cluster import ShardRunner

log = structlog.get_logger(__name__)

BENCH_MANIFEST = "bench.json"
#: 2: a cell leaves out the grid values its mode does not read (one cell for them all);
#: a folder of format 1 resumes where its grid has no such values (its cells are the same).
BENCH_VERSION = 2
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
    if not problems and spec.offset and spec.path is not None:
        total = len(load_problems(spec.path))
        if spec.offset >= total:
            source = f"dataset '{spec.name}'"
            raise DatasetError(none_left(source, total, spec.offset, option="offset"))
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


def _stored_bench(config: BenchConfig, out: Path) -> dict[str, Any] | None:
    """The manifest of the bench ``out`` holds, checked to be ``config``'s (None: a new
    bench); one-line ConfigError when ``out`` holds something else."""
    manifest = out / BENCH_MANIFEST
    if not out.exists():
        return None
    if not manifest.is_file():
        if out.is_dir() and not any(out.iterdir()):
            return None
        raise ConfigError(f"{out} exists and is no bench folder; choose another --out")
    try:
        stored: Any = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot resume {out}: {BENCH_MANIFEST} is unreadable ({exc})") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("run") or {}, dict):
        raise ConfigError(f"cannot resume {out}: {BENCH_MANIFEST} is damaged (not a bench's)")
    version = stored.get("bench_version")
    if version not in (1, BENCH_VERSION):  # its cells are not this version's to read
        raise ConfigError(
            f"cannot resume {out}: written by thinktree {stored.get('thinktree', '?')} "
            f"(bench format {version}); this thinktree resumes formats 1 and "
            f"{BENCH_VERSION}: run it with that version, or give another --out"
        )
    cells = [c.to_dict() for c in config.cells()]
    if (
        version == 1
        and stored.get("cells") != cells
        and stored.get("cells") == [c.to_dict() for c in config.cells(collapse=False)]
    ):
        raise ConfigError(
            f"cannot resume {out}: thinktree {stored.get('thinktree', '?')} started it with a "
            "cell for each grid value a mode does not read, which this thinktree runs once "
            "(bench format 1); finish it with that version, or give another --out"
        )
    if stored.get("cells") != cells or stored.get("datasets") != [
        d.to_dict() for d in config.datasets
    ]:
        raise ConfigError(
            f"{out} holds a bench with another grid or datasets; "
            "give the config it was started with, or another --out"
        )
    _check_same_run(out, stored, config)
    return stored


def prepare(config: BenchConfig, out: Path) -> list[Cell]:
    """Create the bench folder, or check that ``out`` holds this very bench to resume."""
    cells = config.cells()
    stored = _stored_bench(config, out)
    manifest = out / BENCH_MANIFEST
    if stored is not None:
        # new limits or concurrency, or the config under another name: kept from now on
        now = {"run": config.fixed, "config_file": str(config.path)}
        if any(stored.get(key) != value for key, value in now.items()):
            atomic_write(manifest, json.dumps(stored | now, indent=1, ensure_ascii=False))
        return cells
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create bench folder {out}: {exc.strerror}") from None
    atomic_write(manifest, json.dumps(_manifest(config, cells), indent=1, ensure_ascii=False))
    return cells


def _check_same_run(out: Path, stored: dict[str, Any], config: BenchConfig) -> None:
    """One-line ConfigError when ``config``'s [run] or [prices] is not the stored bench's
    (its limits and concurrency may change: a cell its limit stopped goes on)."""
    priced = stored.get("prices") or {}
    if not isinstance(priced, dict) or changed_prices(priced, config.raw.get("prices", {})):
        raise ConfigError(
            f"{out} holds a bench started with other [prices]; its cells' costs would not "
            "compare: give the config it was started with, or another --out"
        )
    before = {field_name(k): v for k, v in (stored.get("run") or {}).items()}
    now = {field_name(k): v for k, v in config.fixed.items()}
    changed = sorted(
        k for k in before.keys() | now.keys() if before.get(k) != now.get(k) and k not in MAY_CHANGE
    )
    if changed:
        raise ConfigError(
            f"{out} holds a bench started with other [run] settings ({', '.join(changed)}); "
            "give the config it was started with, or another --out (only concurrency and the "
            "limits max-tokens, max-problem-tokens and max-cost may change)"
        )


def merged_config(config: BenchConfig) -> dict[str, Any]:
    """thinktree.toml with the bench config's [endpoints] and [prices] laid over it."""
    merged = load_config(None)
    return {
        **merged,
        "endpoints": {**endpoint_tables(merged), **endpoint_tables(config.raw)},
        "prices": {**merged.get("prices", {}), **config.raw.get("prices", {})},
    }


def resolve_endpoints(config: BenchConfig, cells: list[Cell]) -> dict[str, EndpointConfig | None]:
    """Each cell's endpoint (None: the embedded model), resolved before anything runs."""
    merged = merged_config(config)
    out: dict[str, EndpointConfig | None] = {}
    for cell in cells:
        options = {**config.fixed, **cell.options}
        spec = options.get("endpoint")
        try:
            out[cell.name] = endpoint_from(
                None if spec is None else str(spec), model=options.get("model"), config=merged
            )
        except ConfigError as exc:
            # it names the endpoint or model; not the cell, whose name could hold a password
            raise ConfigError(f"{config.path}: {exc}") from None
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
        self._models: dict[tuple[str, str, str | None], str] = {}
        self._contexts: dict[tuple[str, str, str | None], int | None] = {}

    @staticmethod
    def _key(target: EndpointConfig) -> tuple[str, str, str | None]:
        return target.name, target.base_url, target.model

    def get(self, target: EndpointConfig, needs: set[str]) -> Capabilities | None:
        for probed, caps in self._found.get(self._key(target), ()):
            if needs <= probed:
                return copy.deepcopy(caps)  # a run may note things in its own copy
        return None

    def add(
        self,
        target: EndpointConfig,
        needs: set[str],
        caps: Capabilities,
        model: str | None = None,
        context: int | None = None,
    ) -> None:
        self._found.setdefault(self._key(target), []).append((frozenset(needs), caps))
        if model is not None:
            self._models[self._key(target)] = model
            self._contexts[self._key(target)] = context

    def context(self, target: EndpointConfig) -> int | None:
        """The context of the model ``target`` serves, where a probe here found it listed."""
        return self._contexts.get(self._key(target))

    def model(self, target: EndpointConfig) -> str | None:
        """The model ``target`` was found to serve, where a probe here found it."""
        return self._models.get(self._key(target))


@dataclass(slots=True)
class BenchPlan:
    """A bench checked before anything of it is written: its cells, those left to run,
    their endpoints (None: the embedded model), prices, problems and probes."""

    cells: list[Cell]
    todo: list[Cell]
    endpoints: dict[str, EndpointConfig | None]
    prices: dict[str, Price]
    problems: ProblemMemo
    probes: ProbeMemo
    verified: set[tuple[Any, ...]] = field(default_factory=set)  # see _check_verifiers
    checked: CheckedOnce = field(default_factory=CheckedOnce)  # what the verifiers found


async def plan_bench(config: BenchConfig, out: Path, *, sharded: bool = False) -> BenchPlan:
    """Check everything a cell left to run needs before the folder is made or any cell
    runs: that ``out`` holds this bench (or nothing) and a call store that opens, each
    dataset, each endpoint and model (probed once), the prices (one for each model a
    money limit needs), the verifiers (a judge's own endpoint named and probed), and the
    run folder of each cell to resume. Bad input fails here in one line. A cell on the
    embedded model has its endpoint and verifiers checked once that model is up, still
    before the folder is made (see :func:`run_bench`)."""
    if sharded:
        for cell in config.cells():
            check_shardable(config.settings_for(cell))
    _stored_bench(config, out)
    check_call_store(out / SHARED_CALLS)
    cells = config.cells()
    endpoints = resolve_endpoints(config, cells)
    prices = bench_prices(config)
    todo = [c for c in cells if not cell_done(out / c.name, config.settings_for(c))]
    for cell in todo:  # finished in shards, with or without --ray
        if (out / cell.name / SHARDS).is_dir():
            check_shardable(config.settings_for(cell), resumed=cell.name)
    plan = BenchPlan(cells, todo, endpoints, prices, ProblemMemo(), ProbeMemo())
    await _check_cells(config, out, plan, todo)
    return plan


async def _check_cells(
    config: BenchConfig,
    out: Path,
    plan: BenchPlan,
    cells: list[Cell],
    local: EndpointConfig | None = None,
) -> None:
    """Check what each of ``cells`` needs to run (see :func:`plan_bench`); ``local``: the
    embedded model's endpoint, once it is up (a cell on it is checked only then)."""
    used = _models_used(config, out, plan.cells)
    for cell in cells:
        folder = out / cell.name
        target = plan.endpoints[cell.name] or local
        if not (folder / MANIFEST).is_file():
            _problems, settings = _fresh_cell(config, cell, folder, plan.prices, plan.problems)
            if target is not None:
                model = await _check_cell(target, settings, plan)
                _same_model(config, cell, target.name, model, used)
        elif not (folder / SHARDS).is_dir():  # resumed from its own run folder: read it now
            state = load_resume(folder, prices=plan.prices, new_limits=True)
            settings = _resumed_settings(config, cell, state)
            money_limit(settings, state.endpoint["model"])
            if target is not None:
                if target.model is not None:  # else the run checks the model it finds
                    _same_model(config, cell, target.name, target.model, used)
                await _check_verifiers(target, settings, state.capabilities, plan)
        if (folder / SHARDS).is_dir():
            _check_shards(config, cell, folder, plan)


def _check_shards(config: BenchConfig, cell: Cell, folder: Path, plan: BenchPlan) -> None:
    """One-line ConfigError when a cell left in shards would resume on other problems than
    its shards started with (its dataset was edited meanwhile): their merge could not
    put the cell's problems together."""
    problems, _settings = _fresh_cell(config, cell, folder, plan.prices, plan.problems)
    count = _planned(folder / SHARDS / PLAN)
    if count is None or count < 1:
        return
    for index, part in enumerate(split(problems, count)):
        manifest = shard_folder(folder, index) / MANIFEST
        try:
            started = [str(p["id"]) for p in json.loads(manifest.read_text("utf-8"))["problems"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not started (it starts on these problems), or its resume says why
        if started != [p.id for p in part]:
            raise ConfigError(
                f"cell {cell.name} was left in shards on other problems than its dataset "
                f"gives now (was it edited?); put the dataset back as it was, or remove "
                f"{folder} to run the cell anew"
            )


async def _check_cell(target: EndpointConfig, settings: RunSettings, plan: BenchPlan) -> str:
    """Probe ``target`` for a fresh cell (once per endpoint), check it has a price where the
    cell has a money limit, and check the cell's verifiers; the model it serves."""
    model = await _probe(target, settings, plan.probes)
    # a budget past the model's context: refused now, not by the cell once the folder is made
    check_fits_context(settings, plan.probes.context(target), model, target)
    money_limit(settings, model)
    caps = plan.probes.get(target, probe_needs(settings, ()))
    assert caps is not None  # _probe found them
    await _check_verifiers(target, settings, caps, plan)
    return model


# (endpoint name, the model a cell's options ask for) -> (the model it ran on, the cell)
ModelsUsed = dict[tuple[str, Any], tuple[str, str]]


def _models_used(config: BenchConfig, out: Path, cells: list[Cell]) -> ModelsUsed:
    """The model each endpoint ran of those started (asked for by a grid's ``model``, or
    by none), as the first cell's run folder records it."""
    used: ModelsUsed = {}
    for cell in cells:
        try:
            endpoint = read_manifest(out / cell.name)["endpoint"]
            key = (str(endpoint["name"]), _asked_model(config, cell))
            used.setdefault(key, (str(endpoint["model"]), cell.name))
        except (ValueError, KeyError, TypeError):  # not started, or its resume says why
            continue
    return used


def _asked_model(config: BenchConfig, cell: Cell) -> Any:
    return {**config.fixed, **cell.options}.get("model")


def _same_model(
    config: BenchConfig, cell: Cell, endpoint: str, model: str, used: ModelsUsed
) -> None:
    """One-line ConfigError where ``cell`` would run on another model of ``endpoint`` than
    the bench's cells started on it did (its config now names another model or server):
    the report would pair two models as one endpoint, and a cut-off cell would go on with
    another model than it started with."""
    was, first = used.get((endpoint, _asked_model(config, cell)), (model, cell.name))
    if model != was and first == cell.name:
        raise ConfigError(
            f"cell {cell.name} was started on model '{was}'; endpoint '{endpoint}' now names "
            f"'{model}': give {config.path} the endpoint it was started with, or another --out"
        )
    if model != was:
        raise ConfigError(
            f"cell {cell.name} would run on model '{model}' of endpoint '{endpoint}', where "
            f"cell {first} ran on '{was}': give {config.path} the endpoint it was started "
            "with, or another --out"
        )


async def _check_verifiers(
    target: EndpointConfig, settings: RunSettings, caps: Capabilities, plan: BenchPlan
) -> None:
    """Build and prepare a cell's verifiers as its run will (a judge's own endpoint named,
    reached and probed), then close them: a bad one fails before the bench writes anything.
    Each set of verifiers is checked once per endpoint; what their checks found
    (``plan.checked``) the cells' own verifiers take instead of checking again."""
    key = (ProbeMemo._key(target), settings.verifiers)
    if not settings.verifiers or key in plan.verified:
        return
    client = client_for(target)
    try:
        panel = await open_panel(settings, client, caps, checked=plan.checked)
        if panel is not None:
            await panel.aclose()
    finally:
        await client.aclose()
    plan.verified.add(key)


def _resumed_settings(config: BenchConfig, cell: Cell, state: ResumeState) -> RunSettings:
    """A started cell's settings as it goes on: its own, under the bench's limits now."""
    return dataclasses.replace(
        going_on(state.settings, config.settings_for(cell)), config=merged_config(config)
    )


async def run_bench(
    config: BenchConfig,
    out: Path,
    *,
    watcher: CellWatcher | None = None,
    embedded: Callable[[], Any] | None = None,
    shards: ShardRunner | None = None,
    shard_count: int | None = None,
    plan: BenchPlan | None = None,
) -> list[CellOutcome]:
    """Run (or resume) every cell of ``config`` into ``out``, one cell after another.

    ``embedded`` opens the embedded model's server (an async context manager giving
    ``base_url`` and ``model``); it is entered once, only when a cell left to run needs it.
    With ``shards`` (a Ray cluster), each cell's problems are split into ``shard_count``
    shards (default: the runner's CPUs) run side by side, then merged into the cell's
    run folder. A cell a sharded bench left unfinished is finished in shards too.
    """
    watcher = watcher or CellWatcher()
    plan = plan or await plan_bench(config, out, sharded=shards is not None)
    cells, todo, endpoints, prices = plan.cells, plan.todo, plan.endpoints, plan.prices
    loaded, probes, checked = plan.problems, plan.probes, plan.checked
    on_embedded = [c for c in todo if endpoints[c.name] is None]
    # the embedded model starts before the folder is made: its cells are checked then
    async with _maybe_embedded(embedded if on_embedded else None) as local:
        if local is not None:
            await _check_cells(config, out, plan, on_embedded, local)
        prepare(config, out)
        outcomes = [CellOutcome(c, out / c.name, "done before") for c in cells if c not in todo]
        with folder_lock(out, "bench"):
            shared = SqliteCallCache(out / SHARED_CALLS)
            try:
                for position, cell in enumerate(cells, start=1):
                    if cell not in todo:
                        continue
                    target = endpoints[cell.name] or local
                    assert target is not None
                    sharded = (out / cell.name / SHARDS).is_dir()
                    if sharded or (
                        shards is not None and not (out / cell.name / MANIFEST).is_file()
                    ):
                        from thinktree.bench.cluster import InProcessShards

                        outcome = await _run_cell_sharded(
                            config,
                            cell,
                            out,
                            target,
                            prices,
                            shards or InProcessShards(checked),
                            shard_count,
                            watcher,
                            position,
                            len(cells),
                            probes=probes,
                            loaded=loaded,
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
                            loaded=loaded,
                            checked=checked,
                        )
                    outcomes.append(outcome)
                    watcher.cell_finished(outcome)
            finally:
                shared.close()
    order = {c.name: i for i, c in enumerate(cells)}
    outcomes.sort(key=lambda o: order[o.cell.name])
    return outcomes


def cell_done(folder: Path, settings: RunSettings) -> bool:
    """Whether a cell is finished: its results written and none of its calls failed (a
    cell with failed calls is resumed: those are sent again, the rest read back). A cell
    its limit stopped is finished while the bench's limits (``settings``) are the ones it
    ran under; under others it goes on. A sharded cell's results are its shards' merge:
    one whose shards are still there resumes in shards, each shard judged the same way."""
    return run_done(folder, settings)


def failed_calls(outcome: CellOutcome) -> int:
    """How many of a cell's solver calls failed (0 for a cell not run in this invocation
    unless its results say so)."""
    if outcome.result is not None:
        return outcome.result.failed_requests()
    results = outcome.folder / RESULTS
    return run_outcome(results)[1] if results.is_file() else 0


def first_failure(outcomes: Sequence[CellOutcome]) -> str | None:
    """The error of the first failed solver call among the cells run in this invocation
    (None if none failed): what a user must fix before sending them again."""
    for outcome in outcomes:
        failed = outcome.result.failed_calls() if outcome.result is not None else []
        if failed:
            return failed[0].error or "failed"
    return None


def cell_stopped(folder: Path) -> str | None:
    """Why a finished cell's limit stopped it (None when none did, or it has not finished)."""
    results = folder / RESULTS
    return run_outcome(results)[0] if results.is_file() else None


@asynccontextmanager
async def _maybe_embedded(opener: Callable[[], Any] | None) -> AsyncIterator[EndpointConfig | None]:
    if opener is None:
        yield None
        return
    async with opener() as server:
        from thinktree.embedded import endpoint_for

        yield endpoint_for(server)


class ProblemMemo:
    """Each dataset slice under each perturbation, loaded once for every cell that uses it."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str], list[Problem]] = {}

    def get(self, spec: DatasetSpec, perturbation: str) -> list[Problem]:
        key = (json.dumps(spec.to_dict(), sort_keys=True), perturbation)
        if key not in self._loaded:
            self._loaded[key] = load_cell_problems(spec, perturbation)
        return self._loaded[key]


async def _probe(target: EndpointConfig, settings: RunSettings, probes: ProbeMemo) -> str:
    """Probe ``target`` for what a run with ``settings`` needs, unless that is known;
    the model it serves."""
    needs = probe_needs(settings, ())
    model = probes.model(target)
    if probes.get(target, needs) is None or model is None:
        probed = await probe_endpoint(target, settings)
        probes.add(target, needs, probed.capabilities, probed.model, probed.context_length)
        model = probed.model
    return model


def _fresh_cell(
    config: BenchConfig,
    cell: Cell,
    folder: Path,
    prices: dict[str, Price],
    loaded: ProblemMemo,
) -> tuple[list[Problem], RunSettings]:
    """A cell's problems (under its perturbation) and its run settings, to start it anew."""
    options = {**config.fixed, **cell.options}
    problems = loaded.get(cell.dataset, str(options.get("perturbation", NONE)))
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
    loaded: ProblemMemo,
    checked: CheckedOnce,
) -> CellOutcome:
    folder = out / cell.name
    subscriber = watcher.cell_started(cell, position, total)
    subscribers = [subscriber] if subscriber is not None else []
    started = time.monotonic()
    with structlog.contextvars.bound_contextvars(cell=cell.name):
        if (folder / MANIFEST).is_file():
            # a limit-stopped cell goes on only under other limits (see cell_done)
            state = load_resume(folder, prices=prices, new_limits=True)
            settings = _resumed_settings(config, cell, state)
            result = await execute(
                state.problems,
                target,
                settings,
                resume=state,
                subscribers=subscribers,
                shared_calls=shared,
                verifier_checks=checked,
            )
            status = "resumed"
        else:
            if folder.exists():  # cut off before its manifest was written: nothing to keep
                shutil.rmtree(folder)
            problems, settings = _fresh_cell(config, cell, folder, prices, loaded)
            needs = probe_needs(settings, subscribers)
            known = probes.get(target, needs)
            result = await execute(
                problems,
                target,
                settings,
                subscribers=subscribers,
                shared_calls=shared,
                capabilities=known,
                verifier_checks=checked,
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
    loaded: ProblemMemo,
) -> CellOutcome:
    """The cell's problems in shards, each run by ``runner``, merged into the cell's folder."""
    from thinktree.bench.merge import merge_shards

    folder = out / cell.name
    subscriber = watcher.cell_started(cell, position, total)
    started = time.monotonic()
    problems, settings = _fresh_cell(config, cell, folder, prices, loaded)
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

"""One run: problems × one strategy × one endpoint, from settings to a results folder.

Bad input fails before the run folder exists. Once the endpoint answers, the folder
holds the manifest (``run.json``: settings, capabilities, problems), the call store
(``calls.sqlite``), the run store (``run.sqlite``) and the trace; ``results.json`` is
written last, atomically, so its presence means the run completed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import shutil
import sqlite3
import types
import typing
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio
import structlog
from pydantic import ValidationError
from structlog.contextvars import bound_contextvars

from thinktree import __version__
from thinktree._files import atomic_file, atomic_write, folder_lock, read_only_uri
from thinktree._json import dump_bytes_via
from thinktree._numbers import LARGEST_SETTING, SEED_RANGE
from thinktree.agents.aggregators import VERIFIER_RULES, get_aggregator
from thinktree.agents.auto import Auto
from thinktree.agents.capabilities import Capabilities, probe, probe_unprobed
from thinktree.agents.endpoint import EndpointClient, EndpointConfig, server_name
from thinktree.agents.modes import (
    DEFAULT_AGGREGATE,
    MODES,
    ModeSettings,
    build_strategy,
    with_default_budget,
)
from thinktree.agents.pool import EndpointPool, client_for
from thinktree.agents.solver import Sampling, Solver
from thinktree.agents.structured import check_format
from thinktree.datasets import describe_validation_error
from thinktree.errors import (
    ConfigError,
    RecordingError,
    RunStopping,
    ThinktreeError,
    find_error,
)
from thinktree.hints import CONFIG_FILE, read_manifest
from thinktree.metrics import Metrics, accuracy_by_step, compute, tokens_allowed
from thinktree.open_files import make_room
from thinktree.orchestrator.bus import EventBus, Subscriber, event_bus
from thinktree.orchestrator.call_cache import (
    SharedCallCache,
    SqliteCallCache,
    read_back_calls,
    recorded_calls,
    recorded_tokens,
)
from thinktree.orchestrator.events import (
    PAST_CONTEXT,
    CallRetried,
    RunFinished,
    RunStarted,
    failed_call,
    failed_calls_in,
    requests_of,
)
from thinktree.orchestrator.gc_tuning import run_gc
from thinktree.orchestrator.ledger import Budget, RecordedCalls, problem_of
from thinktree.orchestrator.scheduler import run_problems
from thinktree.orchestrator.store import STORE_NAME, RunStore, wait_for_writer
from thinktree.orchestrator.subscribers import TraceWriter, TreeRecorder
from thinktree.orchestrator.tree import Node, ProblemTree
from thinktree.pricing import (
    MONEY_REACHED,
    MONEY_STOP,
    ROUNDING,
    MoneyLimit,
    Price,
    at_least,
    changed_prices,
    check_prices,
    price_table,
    prices_from_config,
    usd,
)
from thinktree.problems import Problem
from thinktree.verifiers.base import CheckedOnce, Spending
from thinktree.verifiers.registry import check_verifiers
from thinktree.verifiers.setup import open_panel

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RunSettings:
    """Everything that decides what a run does."""

    modes: ModeSettings = field(default_factory=ModeSettings)
    aggregate: str | None = None
    temperature: float | None = None
    seed: int | None = 0
    concurrency: int = 8
    out: Path | None = None
    max_run_tokens: int | None = None  # completion tokens for the whole run
    max_problem_tokens: int | None = None
    max_cost: float | None = None  # USD; needs a price for the model
    prices: dict[str, Price] = field(default_factory=dict)
    trace_deltas: bool = False  # stream, and write every text delta to the trace
    answer_format: str = "free"  # free | constrained | json (see agents/structured.py)
    verifiers: tuple[str, ...] = ()  # --verifier specs, NAME[:ARG] (see verifiers/registry.py)
    config: dict[str, Any] = field(default_factory=dict)  # thinktree.toml (judge endpoints)
    # the config file named with --config, which resuming the run needs again: its run.json
    # records it (absolute), for the commands that say how to resume it (see hints.py)
    config_file: Path | None = None

    def aggregate_name(self) -> str:
        """The rule: as given, else verifier-weighted with verifiers (verifier-tiebreak in
        adaptive, whose stop rules decide a count of votes), else the mode's."""
        if self.aggregate is not None:
            return self.aggregate
        if self.verifiers:
            return "verifier-tiebreak" if self.modes.mode == "adaptive" else "verifier-weighted"
        return DEFAULT_AGGREGATE.get(self.modes.mode, "majority")  # a plugin's mode: majority

    def temperature_for_mode(self) -> float:
        if self.temperature is not None:
            return self.temperature
        return 0.7 if self.modes.mode in ("parallel", "hybrid", "adaptive", "auto") else 0.0


@dataclass(frozen=True, slots=True)
class RunFacts:
    """What a run is, as its manifest and its results say: its id, the endpoint and model
    it ran on, what the endpoint can do, and its settings (with the aggregation rule)."""

    run_id: str
    endpoint: EndpointConfig
    model: str
    capabilities: Capabilities
    settings: RunSettings
    aggregate: str

    def settings_dict(self) -> dict[str, Any]:
        """The settings as ``run.json`` and ``results.json`` record them."""
        return _settings_dict(self.settings, self.aggregate)


@dataclass(slots=True)
class RunResult:
    run_id: str
    folder: Path
    metrics: Metrics
    trees: list[ProblemTree]
    model: str
    capabilities: Capabilities
    cached_calls: int = 0
    stopped_by: str | None = None

    def failed_calls(self) -> list[Node]:
        """The nodes of the solver's model calls that failed, in tree order (see
        :func:`run_outcome`)."""
        return [
            node
            for tree in self.trees
            for node in tree.walk()
            if failed_call(node.kind, node.status, node.error)
        ]

    def failed_requests(self) -> int:
        """How many of the solver's requests failed (one of n samples counts once)."""
        return requests_of((node.id, node.call_id) for node in self.failed_calls())

    def first_past_context(self) -> str | None:
        """Why the endpoint refused the first of the requests it took for longer than the
        model's context (``metrics.past_context`` counts them); None when it refused none."""
        for tree in self.trees:
            for node in tree.walk():
                if node.status == "failed" and (node.error or "").startswith(PAST_CONTEXT):
                    return (node.error or "").removeprefix(PAST_CONTEXT).removeprefix(": ")
        return None


def validate(settings: RunSettings, *, resuming: bool = False) -> None:
    """Check the settings before anything starts (one-line ConfigError on any problem)."""
    check_values(settings)
    check_verifiers(settings.verifiers)
    check_prices(settings.prices)  # a verifier's model is charged at these too
    if not resuming and settings.out is not None and settings.out.exists():
        raise ConfigError(taken_folder(settings.out))


def taken_folder(folder: Path) -> str:
    """Why a new run cannot be written to ``folder``, which exists."""
    if not folder.is_dir():
        return f"--out {folder} is a file, not a run folder; choose another --out"
    return f"run folder {folder} already exists; choose another --out"


def check_values(settings: RunSettings) -> None:
    """The checks of :func:`validate` on what the settings hold themselves: the mode and its
    numbers, the answer format, the rule, the limits, concurrency, seed and temperature
    (not the verifiers, prices or run folder, which come from outside a run's manifest)."""
    aggregate = settings.aggregate_name()
    try:
        get_aggregator(aggregate)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    build_strategy(settings.modes, aggregate)
    check_format(settings.answer_format)
    if aggregate in VERIFIER_RULES and not settings.verifiers:
        raise ConfigError(
            f"--aggregate {aggregate} needs a verifier (--verifier NAME); without one use "
            "majority, shortest-majority or length-weighted"
        )
    for name, value in (
        ("max-tokens", settings.max_run_tokens),
        ("max-problem-tokens", settings.max_problem_tokens),
    ):
        if value is not None and value <= 0:
            raise ConfigError(f"--{name} must be a positive number of tokens, not {value}")
        if value is not None and value > LARGEST_SETTING:
            raise ConfigError(f"--{name} must be at most {LARGEST_SETTING} tokens, not {value}")
    if settings.max_cost is not None and not (
        math.isfinite(settings.max_cost) and settings.max_cost > 0
    ):
        raise ConfigError(f"--max-cost must be a positive amount, not {settings.max_cost}")
    if settings.concurrency <= 0:
        raise ConfigError(f"--concurrency must be positive, not {settings.concurrency}")
    if settings.concurrency > LARGEST_SETTING:
        raise ConfigError(
            f"--concurrency must be at most {LARGEST_SETTING}, not {settings.concurrency}"
        )
    low, high = SEED_RANGE
    if settings.seed is not None and not low <= settings.seed <= high:
        raise ConfigError(f"--seed must be between {low} and {high}, not {settings.seed}")
    if settings.temperature is not None and not 0 <= settings.temperature <= 2:
        raise ConfigError(f"--temperature must be between 0 and 2, not {settings.temperature}")


MANIFEST = "run.json"
PRICES = "prices"  # the manifest's table of the prices the run's calls count at
CALLS = "calls.sqlite"
RESULTS = "results.json"
# 2: a parallel branch's first call is the branch's node (it had a node of its own, and
# the call a node under it): a run of format 1 would find none of its parallel calls to
# read back, and pay for them again
MANIFEST_VERSION = 2


async def execute(
    problems: Sequence[Problem],
    endpoint: EndpointConfig,
    settings: RunSettings,
    *,
    subscribers: Sequence[Subscriber] = (),
    on_started: Callable[[Path], None] | None = None,
    resume: ResumeState | None = None,
    shared_calls: SqliteCallCache | None = None,
    capabilities: Capabilities | None = None,
    verifier_checks: CheckedOnce | None = None,
) -> RunResult:
    """Run every problem and keep the run folder current; returns the metrics and trees.

    The folder appears once the endpoint has answered (bad input leaves nothing). Every
    finished call is committed to ``calls.sqlite`` before it counts, so a killed run can
    be resumed (:func:`load_resume`) without paying for any finished call again.
    ``shared_calls`` is a call store shared with other runs (a bench's): calls found
    there are not made again. ``capabilities`` skips the probe (a bench's shards share
    the one probe their driver made, see :func:`probe_endpoint`); ``verifier_checks``,
    what earlier runs' verifiers found before they ran (a bench's cells share it), skips
    the checks made there (a judge's endpoint probed once, not once per run).
    """
    with run_gc(), contextlib.ExitStack() as held:
        if resume is not None:  # no other process may write it meanwhile
            held.enter_context(folder_lock(resume.folder, "run"))
        try:
            return await _execute(
                problems,
                endpoint,
                settings,
                subscribers=subscribers,
                on_started=on_started,
                resume=resume,
                shared_calls=shared_calls,
                capabilities=capabilities,
                verifier_checks=verifier_checks,
                held=held,
            )
        except BaseExceptionGroup as group:  # stopped: it cannot record, the endpoint is down
            stopping = find_error(group, RunStopping)
            if stopping is None:
                raise
            raise stopping from group


async def _execute(
    problems: Sequence[Problem],
    endpoint: EndpointConfig,
    settings: RunSettings,
    *,
    subscribers: Sequence[Subscriber],
    on_started: Callable[[Path], None] | None,
    resume: ResumeState | None,
    shared_calls: SqliteCallCache | None,
    capabilities: Capabilities | None,
    verifier_checks: CheckedOnce | None,
    held: contextlib.ExitStack,
) -> RunResult:
    validate(settings, resuming=resume is not None)
    make_room(endpoint)  # its connections fit among the files this process may open
    if resume is not None:
        _check_temperature(settings, endpoint)
    settings = _on_endpoint(settings, endpoint)
    aggregate_name = settings.aggregate_name()
    aggregate = get_aggregator(aggregate_name)
    strategy = build_strategy(settings.modes, aggregate_name)
    if resume is None:
        run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        folder = settings.out or Path("runs") / run_id
        if folder.exists():
            raise ConfigError(taken_folder(folder))
    else:
        run_id, folder = resume.run_id, resume.folder
    recorder = TreeRecorder()

    async with _client(endpoint) as client:
        bus_holder: list[EventBus] = []

        async def on_retry(attempt: int, wait: float, reason: str) -> None:
            if bus_holder:
                await bus_holder[0].emit(
                    CallRetried(endpoint=endpoint.name, attempt=attempt, wait_s=wait, reason=reason)
                )

        client.on_retry = on_retry
        with bound_contextvars(run_id=run_id):
            model = await client.resolve_model()
            check_fits_context(settings, client.context_length, model, endpoint)
            if resume is not None and model != resume.endpoint["model"]:
                raise ConfigError(
                    f"run {folder} was made on model '{resume.endpoint['model']}', and endpoint "
                    f"{endpoint.describe()} serves '{model}': a run goes on with the model it "
                    "was made on (give it an endpoint that serves that one)"
                )
            money = money_limit(settings, model)
            if resume is not None:
                needs = probe_needs(settings, subscribers)
                caps = await probe_unprobed(client, resume.capabilities, needs)
            elif capabilities is not None:
                caps = capabilities
            else:
                caps = await probe(client, what=probe_needs(settings, subscribers))
            run_pool = Budget(name="run", limit=settings.max_run_tokens, stops_run=True)
            spending = Spending(run_pool, money)  # the verifiers' calls count under them too
            # a bad verifier fails here, before the folder exists
            panel = await open_panel(settings, client, caps, spending, verifier_checks)
            facts = RunFacts(run_id, endpoint, model, caps, settings, aggregate_name)
            priced = used_prices(settings, model, panel.models() if panel is not None else ())
            same_limits = False  # a resumed run under the limits it was made under
            try:
                if resume is None:
                    _create_folder(folder, facts, problems, priced)
                    held.enter_context(folder_lock(folder, "run"))
                else:
                    same_limits = limits_of(settings) == run_limits(folder)
                    if not same_limits:
                        _check_limit_covers_spent(folder, settings, model, money)
                        save_limits(folder, settings)  # it goes on under these, and keeps them
                    save_prices(folder, priced)  # those it had none for, kept from now on
                cache, store, trace = _open_records(folder, settings, fresh=resume is None)
            except BaseException:
                if panel is not None:
                    with anyio.CancelScope(shield=True):
                        await panel.aclose()
                raise
            cache.session_retries = lambda: recorder.retries  # kept for a later resume
            client.cache = cache if shared_calls is None else SharedCallCache(cache, shared_calls)
            recorded = None
            if resume is not None:  # a completed run opened again (failed calls, new limits)
                (folder / RESULTS).unlink(missing_ok=True)
                # its calls are held under its limits until it reads them back
                recorded = RecordedCalls(
                    cache.recorded_usage(), run_pool, money, same_limits=same_limits
                )
                spending.recorded = recorded  # a judge's calls are read back as the solver's
            if on_started is not None:
                on_started(folder)
            sampling = Sampling(temperature=settings.temperature_for_mode(), seed=settings.seed)
            status, failure = "failed", None
            try:
                try:
                    async with event_bus([recorder, trace, *subscribers]) as bus:
                        bus_holder.append(bus)
                        await bus.emit(
                            RunStarted(
                                run_id=run_id,
                                mode=settings.modes.mode,
                                endpoint=endpoint.name,
                                model=model,
                                problems=len(problems),
                                settings=_settings_dict(settings, aggregate_name),
                            )
                        )

                        def make_solver(problem: Problem) -> Solver:
                            return Solver(
                                problem=problem,
                                client=client,
                                caps=caps,
                                bus=bus,
                                sampling=sampling,
                                money=money,
                                answer_format=check_format(settings.answer_format),
                                recorded=recorded,
                            )

                        try:
                            await run_problems(
                                problems,
                                strategy,
                                aggregate,
                                make_solver,
                                bus,
                                concurrency=settings.concurrency,
                                run_pool=run_pool,
                                problem_limit=settings.max_problem_tokens,
                                verify=panel.score if panel is not None else None,
                            )
                            stopped = _stopped_by(recorder)
                            status = "stopped" if stopped else "completed"
                        except (anyio.get_cancelled_exc_class(), KeyboardInterrupt):
                            status = "cancelled"  # resumable: its finished calls are kept
                            raise
                        except BaseException as exc:
                            failure = _failure(exc)  # a view of its trace says why
                            raise
                        finally:
                            # bounded, so a full buffer cannot hang the shutdown
                            with anyio.move_on_after(2, shield=True):
                                await bus.emit(
                                    RunFinished(
                                        run_id=run_id,
                                        status=status,
                                        read_back_retries=cache.carried_retries(),
                                        error=failure,
                                    )
                                )
                finally:
                    # Both stores finish while the results are made: the call store in a
                    # thread of its own, the run store (after the bus: the trace has fed it
                    # every line) by its writer.
                    cache.finish()
                    store.finish()
                    if panel is not None:
                        with anyio.CancelScope(shield=True):
                            await panel.aclose()
                if panel is not None:  # the models its verdicts named, priced: kept with the run
                    save_prices(folder, used_prices(settings, model, panel.models()))
                # In a worker thread: a large run's results take seconds to write (and the
                # store its last commit), while the loop, a terminal view's, stays live.
                result = await anyio.to_thread.run_sync(
                    functools.partial(
                        conclude,
                        folder,
                        facts,
                        problems,
                        recorder,
                        servers=client.figures() if isinstance(client, EndpointPool) else None,
                        cached_calls=cache.hits,
                        money=money,
                        read_back_retries=cache.carried_retries(),
                        # only a store shared with other runs, now or in an earlier session,
                        # lends calls
                        read_back=None if resume is not None or shared_calls is not None else {},
                        # results.json is the run's last file: both stores end first
                        before_publish=functools.partial(_stores_closed, store, cache),
                    )
                )
            finally:
                with anyio.CancelScope(shield=True):
                    await store.aclose()
                    if cache.closing:  # the run failed before its results
                        with contextlib.suppress(Exception):  # it has its own error
                            await anyio.to_thread.run_sync(cache.close)
            if store.error:
                log.warning("run store incomplete", error=store.error)
    log.info(
        "run finished",
        run_id=run_id,
        folder=str(folder),
        accuracy=result.metrics.accuracy,
        cached_calls=cache.hits,
    )
    return result


def _failure(exc: BaseException) -> str:
    """Why a run failed: what stopped it whole (its files cannot be written, its endpoint
    went away) where that is in ``exc``, else the first of thinktree's errors, else
    ``exc`` itself (a view of its trace cleans it for the screen)."""
    cause = find_error(exc, RunStopping) or find_error(exc, ThinktreeError)
    if cause is not None:
        return str(cause)
    return f"{type(exc).__name__}: {exc}"


def _stores_closed(store: RunStore, cache: SqliteCallCache) -> None:
    store.close()
    cache.close()


def conclude(
    folder: Path,
    facts: RunFacts,
    problems: Sequence[Problem],
    recorder: TreeRecorder,
    *,
    servers: list[dict[str, Any]] | None,
    cached_calls: int = 0,
    money: MoneyLimit | None = None,
    read_back_retries: int = 0,
    read_back: Mapping[str, tuple[int, int]] | None = None,
    before_publish: Callable[[], None] | None = None,
) -> RunResult:
    """A finished run's trees and metrics from its recorder, written to ``results.json``
    (also for a sharded cell, whose events were replayed into ``recorder``).

    ``read_back_retries``: the run's retries its recorder did not see (those of a resumed
    run's earlier sessions, those behind calls read back from a bench's call store),
    counted with this session's own. ``read_back``: the calls the run read back from a
    store it shares with other runs, by id with their tokens, where the caller knows them
    (a fresh run that shares none has none); None reads them from the run's call store.
    ``before_publish`` runs once the results are written, before they take their name.
    ``money``: the run's money limit, which says what it spent in all where it stopped it."""
    trees = [recorder.tree.problems[p.id] for p in problems]
    stopped = _stopped_by(recorder)
    if stopped is not None and money is not None and MONEY_REACHED.match(stopped):
        stopped = money.final_reason()  # the first refusal's figures are those of its time
    settings = facts.settings
    metrics = compute(
        trees,
        tokens_allowed=tokens_allowed(
            build_strategy(settings.modes).allowed_tokens(),
            len(trees),
            max_problem_tokens=settings.max_problem_tokens,
            max_run_tokens=settings.max_run_tokens,
        ),
        retries=recorder.retries + read_back_retries,
        price=settings.prices.get(facts.model),
        read_back=read_back_calls(folder / CALLS) if read_back is None else read_back,
    )
    if settings.modes.mode in ("sequential", "hybrid"):  # lines of revisions, step by step
        vote = None if facts.aggregate in VERIFIER_RULES else get_aggregator(facts.aggregate)
        by_step = accuracy_by_step(trees, problems, vote)
        metrics = dataclasses.replace(metrics, accuracy_by_step=by_step)
    write_results(
        folder / RESULTS,
        facts,
        metrics,
        trees,
        stopped_by=stopped,
        servers=servers,
        before_publish=before_publish,
    )
    return RunResult(
        run_id=facts.run_id,
        folder=folder,
        metrics=metrics,
        trees=trees,
        model=facts.model,
        capabilities=facts.capabilities,
        cached_calls=cached_calls,
        stopped_by=stopped,
    )


def used_prices(
    settings: RunSettings, model: str, verifier_models: Iterable[str] = ()
) -> dict[str, Price]:
    """The prices a run on ``model`` counts its calls at: its model's and its verifiers'
    models', those of them ``settings`` has (its ``run.json`` records them)."""
    models = {model, *verifier_models}
    return {name: price for name, price in settings.prices.items() if name in models}


def money_limit(settings: RunSettings, model: str) -> MoneyLimit | None:
    """The run's money limit on ``model`` (None without ``--max-cost``); a one-line
    ConfigError when the model has no price to keep it in."""
    if settings.max_cost is None:
        return None
    price = settings.prices.get(model)
    if price is None:
        raise ConfigError(
            f"--max-cost needs a price for model '{model}': add it under [prices] in the "
            "config (thinktree.toml, the --config file, or a bench's own)"
        )
    return MoneyLimit(settings.max_cost, price)


@dataclass(frozen=True, slots=True)
class ResumeState:
    """What a killed run left behind, read back by :func:`load_resume`."""

    run_id: str
    folder: Path
    problems: list[Problem]
    endpoint: dict[str, Any]
    capabilities: Capabilities
    settings: RunSettings
    retrying: int = 0
    """For a completed run: its failed model calls, sent again (the rest are read back)."""


def load_resume(
    folder: Path, *, prices: dict[str, Price] | None = None, new_limits: bool = False
) -> ResumeState:
    """Read a run folder to resume; one-line ConfigError when it cannot be resumed.

    A completed run resumes when calls of it failed (they are sent again), or when its
    token or money limit stopped it and ``new_limits`` will replace those limits.
    """
    manifest = folder / MANIFEST
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"cannot resume {folder}: it is a file, not a run folder")
    if not folder.is_dir():
        raise ConfigError(f"cannot resume {folder}: no such run folder")
    if not manifest.is_file():
        raise ConfigError(f"cannot resume {folder}: it holds no {MANIFEST}, so it is no run folder")
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot resume {folder}: {MANIFEST} is unreadable ({exc})") from None
    version = data.get("manifest_version") if isinstance(data, dict) else None
    if version != MANIFEST_VERSION:
        raise ConfigError(
            f"cannot resume {folder}: written by thinktree "
            f"{data.get('thinktree', '?') if isinstance(data, dict) else '?'} "
            f"(run format {version}); this thinktree resumes format {MANIFEST_VERSION}"
        )
    retrying = 0
    if (folder / RESULTS).exists():
        stopped_by, retrying = run_outcome(folder / RESULTS)
        if stopped_by is not None and not new_limits and not retrying:
            raise ConfigError(
                f"run {folder} was stopped by its limit ({stopped_by}); to go on, resume it "
                f"with a higher {_limit_flag(stopped_by)}"
            )
        if stopped_by is None and not retrying:
            raise ConfigError(
                f"run {folder} already completed, with no failed model call; nothing to resume"
            )
    _check_calls(folder / CALLS)
    try:
        problems = _manifest_problems(data.get("problems"))
        s = data["settings"]
        _check_fields(
            "settings",
            s,
            {**typing.get_type_hints(ModeSettings), **_RUN_FIELDS},
            required=_REQUIRED
            + (_ADAPTIVE if isinstance(s, dict) and s.get("mode") == "adaptive" else ()),
        )
        modes = ModeSettings(**{k: s[k] for k in ModeSettings.__dataclass_fields__ if k in s})
        settings = RunSettings(
            modes=modes,
            aggregate=s["aggregate"],
            temperature=s["temperature"],
            seed=s["seed"],
            concurrency=s["concurrency"],
            out=folder,
            max_run_tokens=s.get("max_run_tokens"),
            max_problem_tokens=s.get("max_problem_tokens"),
            max_cost=s.get("max_cost"),
            prices=_resumed_prices(folder, data, prices or {}),
            answer_format=s.get("answer_format", "free"),
            verifiers=tuple(s.get("verifiers", ())),
            trace_deltas=s.get("trace_deltas", False),
        )
        _check_fields("capabilities", data["capabilities"], typing.get_type_hints(Capabilities))
        caps = Capabilities(**data["capabilities"])
        endpoint = data["endpoint"]
        fields = ("name", "base_url", "model")
        _check_fields("endpoint", endpoint, dict.fromkeys(fields, str), required=fields)
        run_id = data["run_id"]
        if not isinstance(run_id, str) or not run_id:
            raise ValueError(f"run_id: expected the run's id, not {run_id!r}")
        if settings.modes.mode in MODES:  # a plugin's mode may be missing here: no damage
            try:
                check_values(settings)
            except ConfigError as exc:
                raise ValueError(f"settings: {exc}") from None
    except KeyError as exc:
        raise ConfigError(f"cannot resume {folder}: {MANIFEST} is damaged (no {exc})") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot resume {folder}: {MANIFEST} is damaged ({exc})") from None
    return ResumeState(
        run_id=run_id,
        folder=folder,
        problems=problems,
        endpoint=endpoint,
        capabilities=caps,
        settings=settings,
        retrying=retrying,
    )


def _limit_flag(stopped_by: str) -> str:
    """The option of the limit that ``stopped_by`` (a run's reason) names."""
    if stopped_by.startswith(MONEY_STOP):
        return "--max-cost"
    return "--max-tokens" if stopped_by.startswith("run stopped") else "--max-problem-tokens"


def _resumed_prices(
    folder: Path, manifest: dict[str, Any], given: dict[str, Price]
) -> dict[str, Price]:
    """The prices a resumed run goes on at: those ``given`` (a config's [prices]), with the
    ones its manifest records for the models it priced; a one-line ConfigError where
    ``given`` prices one of those models otherwise (what it paid would count at the new
    price). A manifest from before runs recorded their prices records none."""
    if PRICES not in manifest:
        return dict(given)
    try:
        if not isinstance(manifest[PRICES], dict):
            raise ConfigError(f"expected a table of model prices, not {manifest[PRICES]!r:.60}")
        recorded = prices_from_config({"prices": manifest[PRICES]})
    except ConfigError as exc:
        raise ValueError(f"{PRICES}: {exc}") from None
    changed = changed_prices(recorded, given, recorded.keys() & given.keys())
    if changed:
        was = "; ".join(f"'{m}' at {_per_m(recorded[m])}, now {_per_m(given[m])}" for m in changed)
        raise ConfigError(
            f"run {folder} was made at other prices (USD per million tokens, prompt/completion: "
            f"{was}): resume it with the [prices] it was made under (or none for that model: "
            "the run keeps its own), or start a new run"
        )
    return {**given, **recorded}


def recorded_prices(folder: Path) -> dict[str, Price]:
    """The prices the run in ``folder`` counts its calls at, as its manifest records them:
    {} where it records none (made before runs recorded theirs) or cannot be read."""
    try:
        table = read_manifest(folder).get(PRICES)
        return prices_from_config({PRICES: table}) if isinstance(table, dict) else {}
    except (ValueError, ConfigError):
        return {}


def _per_m(price: Price) -> str:
    return f"{price.prompt_per_m:g}/{price.completion_per_m:g}"


#: The settings a manifest records beside the modes', by type.
#: The settings every manifest has held (a missing one would resume the run otherwise:
#: sequential as budget, a money limit as none), and those of adaptive since it came.
_REQUIRED = (
    *("mode", "budget", "min_thinking", "answer_tokens", "n", "steps", "total_budget"),
    *("aggregate", "temperature", "seed", "concurrency"),
    *("max_run_tokens", "max_problem_tokens", "max_cost"),
)
_ADAPTIVE = ("wave", "confidence")

_RUN_FIELDS = {
    "aggregate": str,
    "temperature": float,
    "seed": int | None,
    "concurrency": int,
    "max_run_tokens": int | None,
    "max_problem_tokens": int | None,
    "max_cost": float | None,
    "answer_format": str,
    "verifiers": list[str],
    "trace_deltas": bool,
}


def _manifest_problems(raw: Any) -> list[Problem]:
    """A manifest's problems: a non-empty list, each a valid problem with an id of its own
    (a run of none would "resume" into a completed run of nothing)."""
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"problems: expected a non-empty list of problems, not {raw!r:.60}")
    problems: list[Problem] = []
    for i, item in enumerate(raw):
        try:
            problems.append(Problem.model_validate(item))
        except ValidationError as exc:
            raise ValueError(f"problems[{i}]: {describe_validation_error(exc)}") from None
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        twice = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"problems: the id {twice!r} is given twice")
    return problems


def _check_fields(
    where: str, table: Any, hints: dict[str, Any], required: Sequence[str] = ()
) -> None:
    """A ValueError naming the first field of ``table`` (a JSON object) that is missing
    (of ``required``) or whose value is not of its type in ``hints``."""
    if not isinstance(table, dict):
        raise ValueError(f"{where}: expected an object, not {table!r:.60}")
    for name in required:
        if name not in table:
            raise ValueError(f"{where}: no {name}")
    for name, hint in hints.items():
        if name in table and not _fits(table[name], hint):
            raise ValueError(f"{where}.{name}: expected {_kind(hint)}, not {table[name]!r:.60}")


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value is of type ``hint`` (a field's; a list stands for a tuple)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return isinstance(value, str) and value in args
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin in (list, tuple):
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items()
        )
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint in (int, float, str):
        kinds = (int,) if hint is int else (int, float) if hint is float else (str,)
        return isinstance(value, kinds) and not isinstance(value, bool)
    return True  # no other type is read from a manifest


def _kind(hint: Any) -> str:
    """``hint`` in words, for a message."""
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    words = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}
    if hint in words:
        return words[hint]
    return str(hint).replace("typing.", "")


def run_limits(folder: Path) -> tuple[int | None, int | None, float | None]:
    """The token and money limits a run goes on under (its manifest's)."""
    try:
        s = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["settings"]
        return s.get("max_run_tokens"), s.get("max_problem_tokens"), s.get("max_cost")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot resume {folder}: {MANIFEST} is unreadable ({exc})") from None


def limits_of(settings: RunSettings) -> tuple[int | None, int | None, float | None]:
    """``settings``' token and money limits, as :func:`run_limits` gives a run's."""
    return settings.max_run_tokens, settings.max_problem_tokens, settings.max_cost


#: Settings a resumed run may take anew (a bench's [run], ``run --resume``): they change
#: no answer, as every node has its own seed.
MAY_CHANGE = ("max_run_tokens", "max_problem_tokens", "max_cost", "concurrency")


def going_on(resumed: RunSettings, now: RunSettings) -> RunSettings:
    """A resumed run's own settings with ``now``'s limits and concurrency (:data:`MAY_CHANGE`)."""
    return dataclasses.replace(resumed, **{name: getattr(now, name) for name in MAY_CHANGE})


def run_done(folder: Path, settings: RunSettings) -> bool:
    """Whether the run in ``folder`` has nothing left to do under ``settings``' limits: its
    results written, none of its calls failed (those would be sent again), and no limit
    stopped it but these very ones (under others it goes on, see :func:`load_resume`)."""
    results = folder / RESULTS
    if not results.is_file():
        return False
    stopped_by, failed = run_outcome(results)
    if failed:
        return False
    return stopped_by is None or run_limits(folder) == limits_of(settings)


def run_outcome(results: Path) -> tuple[str | None, int]:
    """A completed run's ``stopped_by`` (None unless a limit stopped it) and how many of
    its solver's model calls failed, from its ``results.json``."""
    try:
        data = json.loads(results.read_text(encoding="utf-8"))
        failed = failed_calls_in(data["problems"])
        stopped = data["status"] == "stopped"
        stopped_by = str(data.get("stopped_by") or "a limit") if stopped else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"cannot resume {results.parent}: {RESULTS} is unreadable ({exc})"
        ) from None
    return stopped_by, failed


def _check_limit_covers_spent(
    folder: Path, settings: RunSettings, model: str, money: MoneyLimit | None
) -> None:
    """One-line ConfigError for a token or money limit below what the run has spent
    already: it would go on past its limit, and the calls it paid for that no longer fit
    would not be read back (their answers lost)."""
    _check_problem_limit_covers_spent(folder, settings.max_problem_tokens)
    limit = settings.max_run_tokens
    if limit is None and money is None:
        return
    prompt, completion = recorded_tokens(folder / CALLS)
    if limit is not None and limit < completion:
        raise ConfigError(
            f"run {folder} has spent {completion} completion tokens already: --max-tokens "
            f"{limit} is below that; give at least {completion}, or leave --max-tokens out "
            f"{_its_own(folder, 0)}"
        )
    cost = 0.0 if money is None else money.price.cost(prompt, completion)
    if money is not None and money.limit < cost - ROUNDING:
        raise ConfigError(
            f"run {folder} has spent {usd(cost)} already (its calls at the price of {model}): "
            f"--max-cost {usd(money.limit)} is below that; give at least {usd(at_least(cost))}, "
            f"or leave --max-cost out {_its_own(folder, 2)}"
        )


def _check_problem_limit_covers_spent(folder: Path, limit: int | None) -> None:
    """One-line ConfigError for a ``--max-problem-tokens`` below what a problem of the run
    has spent already (its solver's calls, as its limit counts them)."""
    if limit is None:
        return
    spent: dict[str, int] = {}
    for key, call in recorded_calls(folder / CALLS).items():
        if not call.verifier:
            problem = problem_of(key)
            spent[problem] = spent.get(problem, 0) + call.completion_tokens - call.cut_off
    most = max(spent.values(), default=0)
    if limit < most:
        which = next(problem for problem, tokens in spent.items() if tokens == most)
        raise ConfigError(
            f"run {folder} has spent {most} completion tokens on problem {which!r} already: "
            f"--max-problem-tokens {limit} is below that; give at least {most}, or leave "
            f"--max-problem-tokens out {_its_own(folder, 1)}"
        )


def _its_own(folder: Path, which: int) -> str:
    """What leaving a limit out does on resume: the run keeps its own, where it has one
    (``which``: its place in :func:`run_limits`)."""
    return "to keep its own" if run_limits(folder)[which] is not None else "(the run has none)"


def save_limits(folder: Path, settings: RunSettings) -> None:
    """Write ``settings``' token and money limits into the run's manifest, so the run (and
    any later resume of it) goes on under them."""
    path = folder / MANIFEST
    data = json.loads(path.read_text(encoding="utf-8"))
    data["settings"].update(
        max_run_tokens=settings.max_run_tokens,
        max_problem_tokens=settings.max_problem_tokens,
        max_cost=settings.max_cost,
    )
    try:
        atomic_write(path, manifest_text(data))
    except OSError as exc:
        raise RecordingError(f"cannot write {path}: {exc.strerror or exc}") from None


def save_prices(folder: Path, prices: dict[str, Price]) -> None:
    """Record ``prices`` in the run's manifest where it has none for their models (a run
    resumed with a price for a model it had none for, or one from before runs recorded
    theirs), so any later resume counts its calls at them too."""
    path = folder / MANIFEST
    data = json.loads(path.read_text(encoding="utf-8"))
    recorded = data.get(PRICES) or {}
    table = {**price_table(prices), **recorded}
    if PRICES in data and table == recorded:
        return
    data[PRICES] = table
    try:
        atomic_write(path, manifest_text(data))
    except OSError as exc:
        raise RecordingError(f"cannot write {path}: {exc.strerror or exc}") from None


def _check_calls(path: Path) -> None:
    if not path.exists():
        return
    try:
        with path.open("rb") as f:
            head = f.read(16)
        if head and head != b"SQLite format 3\x00":
            raise ConfigError(f"cannot resume: {path} is not a SQLite database")
        conn = sqlite3.connect(path)  # read-write: a killed run may have left a WAL to recover
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot resume: {path} is not a readable call store ({exc})") from None
    if tables and "responses" not in tables:
        raise ConfigError(f"cannot resume: {path} is a SQLite file but not thinktree's call store")


_ONE_LINE = json.JSONEncoder(ensure_ascii=False)


def manifest_text(manifest: dict[str, Any]) -> str:
    """``run.json``'s text: indented for people to read, each of its problems on one line.

    The standard library's indented encoder is pure Python, and a run's problems are most
    of its manifest: each is written by the C encoder instead (the same JSON values, the
    same floats, the same errors as ``json.dumps``), one problem a line.
    """
    parts = []
    for key, value in manifest.items():
        name = _ONE_LINE.encode(key)
        if key == "problems" and isinstance(value, list) and value:
            lines = ",\n  ".join(map(_ONE_LINE.encode, value))
            parts.append(f" {name}: [\n  {lines}\n ]")
        else:  # a value's own lines, one level in (no JSON string holds a line break)
            text = json.dumps(value, indent=1, ensure_ascii=False).replace("\n", "\n ")
            parts.append(f" {name}: {text}")
    return "{\n" + ",\n".join(parts) + "\n}" if parts else "{}"


def _create_folder(
    folder: Path, facts: RunFacts, problems: Sequence[Problem], prices: dict[str, Price]
) -> None:
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        raise ConfigError(taken_folder(folder)) from None
    except OSError as exc:
        raise ConfigError(f"cannot create run folder {folder}: {exc.strerror}") from None
    endpoint = facts.endpoint
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "thinktree": __version__,
        "run_id": facts.run_id,
        "endpoint": {
            "name": endpoint.name,
            "base_url": endpoint.base_url,
            "model": facts.model,
            # what its calls' fingerprints name the server by: a resume on a server that
            # moved keeps it, and reads them back
            "server_name": server_name(endpoint),
        },
        **(
            {CONFIG_FILE: str(facts.settings.config_file.absolute())}
            if facts.settings.config_file is not None
            else {}
        ),
        "capabilities": facts.capabilities.to_dict(),
        "settings": facts.settings_dict(),
        # what its calls cost: a resume at other prices is refused (see load_resume)
        PRICES: price_table(prices),
        "problems": [p.model_dump(mode="json") for p in problems],
    }
    try:
        atomic_write(folder / MANIFEST, manifest_text(manifest))
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)  # a folder without its manifest is no run
        raise RecordingError(f"cannot write run folder {folder}: {exc.strerror or exc}") from None


def _open_records(
    folder: Path, settings: RunSettings, *, fresh: bool
) -> tuple[SqliteCallCache, RunStore, TraceWriter]:
    """The run's call store, run store and trace, opened in ``folder``.

    When one cannot be opened (a full disk, say), those opened are closed again and a
    ``fresh`` run's folder, which holds nothing yet, is removed: no half-made run is left,
    and the run cannot write its files (a :class:`RecordingError`, as when its manifest
    cannot be written).
    """
    opened: list[Callable[[], None]] = []
    try:
        cache = SqliteCallCache(folder / CALLS)
        opened.append(cache.close)
        store_path = folder / STORE_NAME
        if not fresh:
            _discard_store(store_path)
        store = RunStore(store_path)
        opened.append(store.close)
        # the store is fed the trace's lines: each event is made into JSON once
        trace = TraceWriter(folder / "trace.jsonl", deltas=settings.trace_deltas, also=store.feed)
    except BaseException as exc:
        for close in reversed(opened):
            with contextlib.suppress(Exception):
                close()
        if not fresh:
            raise
        shutil.rmtree(folder, ignore_errors=True)
        if isinstance(exc, RunStopping) or not isinstance(exc, Exception):
            raise
        # a new folder's files exist only as this run creates them: not writing them is it
        if isinstance(exc, ThinktreeError):
            raise RecordingError(str(exc)) from None
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RecordingError(f"cannot write run folder {folder}: {reason}") from None
    return cache, store, trace


def _discard_store(path: Path) -> None:
    """A resumed run rebuilds its store from scratch (the calls come from the cache).

    A store the run was killed while creating (empty, or a database without tables yet)
    is discarded too; anything else that is not a run store is refused. A killed run's
    writer still finishing the store is waited for first.
    """
    wait_for_writer(path)
    if path.exists() and not _never_written(path):
        with contextlib.closing(RunStore.open_readonly(path)):
            pass  # raises a one-line StoreError for a foreign or damaged file
    for leftover in (path, *(Path(f"{path}{s}") for s in ("-wal", "-shm", "-lock", "-journal"))):
        leftover.unlink(missing_ok=True)


def _never_written(path: Path) -> bool:
    """Whether ``path`` is a store cut off at its creation: empty, or SQLite with no tables.

    Read as the store's own reader reads it: through its WAL where it has one (a writer
    killed mid-write leaves one to recover: waited for, rather than a busy database taken
    for a written one), else as it is. A store is written in WAL mode only, so a rollback
    journal beside it is one its creation left, killed while it changed the journal mode
    (a read-only connection would have to roll it back, and fails)."""
    if path.stat().st_size == 0:
        return True
    try:
        with path.open("rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                return False
        conn = sqlite3.connect(read_only_uri(path), uri=True, timeout=5.0)
        try:
            return int(conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]) == 0
        finally:
            conn.close()
    except (OSError, sqlite3.Error):
        return False


def _stopped_by(recorder: TreeRecorder) -> str | None:
    """Why the run stopped early (a token or money limit), or None when it did not."""
    for tree in recorder.tree.problems.values():
        if tree.error and tree.error.startswith("run stopped"):
            return tree.error
    for tree in recorder.tree.problems.values():
        if tree.stopped:  # a limit cut its calls short: the run goes on under a higher one
            return tree.stopped
    return None


@dataclass(frozen=True, slots=True)
class Probed:
    """What :func:`probe_endpoint` found, and what the probe cost a pool's members."""

    model: str
    capabilities: Capabilities
    servers: list[dict[str, Any]] | None = None
    context_length: int | None = None  # the model's whole context, where the endpoint lists it


async def probe_endpoint(endpoint: EndpointConfig, settings: RunSettings) -> Probed:
    """The model name and what a run with ``settings`` needs to know of the endpoint.

    The same probe :func:`execute` makes; a driver that splits one run into shards
    probes once and hands the result to every shard.
    """
    async with _client(endpoint) as client:
        model = await client.resolve_model()
        caps = await probe(client, what=probe_needs(settings, ()))
        servers = client.figures() if isinstance(client, EndpointPool) else None
        return Probed(model, caps, servers, client.context_length)


def check_fits_context(
    settings: RunSettings, context: int | None, model: str, endpoint: EndpointConfig
) -> None:
    """A one-line ConfigError where one call of the run would ask for at least as many
    tokens as the model's whole context (``context``, where the endpoint lists it): the
    server refuses every such request, and no resume could change its ask. A bench checks
    each cell so before its folder is made."""
    modes = settings.modes
    if context is None or modes.mode not in MODES:
        return
    strategy = build_strategy(modes, settings.aggregate_name())
    per_call = strategy.first_request("check", Budget(name="check", limit=None)).max_tokens
    asks = [("--answer-tokens", modes.answer_tokens, "")]
    if modes.mode == "hybrid" and modes.total_budget is not None:
        shared = f" (--total-budget {modes.total_budget} gives each step that many)"
        asks.append(("--total-budget", per_call, shared))
    elif isinstance(strategy, Auto):  # the mode it picks may have its budget scaled up
        scaled = f" (auto gives the mode it picks {strategy.scale}× --budget)"
        asks.append(("--budget", max(per_call, strategy.budget * strategy.scale), scaled))
    else:
        asks.append(("--budget", max(per_call, modes.budget or 0), ""))
    for option, ask, how in asks:
        if ask >= context:
            raise ConfigError(
                f"{option}: a call of this run asks for up to {ask} tokens{how}, and model "
                f"'{model}' on endpoint {endpoint.describe()} holds {context} in all, its "
                f"prompt included: give a smaller {option}"
            )


def _check_temperature(settings: RunSettings, endpoint: EndpointConfig) -> None:
    """A one-line ConfigError where a resumed run's endpoint now samples at a temperature
    of its own other than the run's: every call would be another (paid again), and the
    run's answers would mix two temperatures."""
    fixed, made = endpoint.temperature, settings.temperature_for_mode()
    if fixed is not None and fixed != made:
        raise ConfigError(
            f"endpoint '{endpoint.name}' now samples at temperature {fixed:g}; the run was "
            f"made at {made:g}: resume it with the endpoint as it was (its config), or "
            "start a new run"
        )


def _on_endpoint(settings: RunSettings, endpoint: EndpointConfig) -> RunSettings:
    """``settings`` as they hold on ``endpoint``: at its own temperature, if it has one."""
    fixed = endpoint.temperature
    if fixed is None or fixed == settings.temperature:
        return settings
    asked = settings.temperature_for_mode()
    if asked != fixed:
        log.warning(
            "the endpoint samples at its own temperature",
            endpoint=endpoint.name,
            asked=asked,
            sent=fixed,
        )
    return dataclasses.replace(settings, temperature=fixed)


def probe_needs(settings: RunSettings, subscribers: Sequence[Subscriber]) -> set[str]:
    """What a run with ``settings`` (watched by ``subscribers``) probes its endpoint for."""
    modes = settings.modes
    need = {"continuation"}
    if settings.trace_deltas or any(s.wants_deltas for s in subscribers):
        need.add("stream_usage")  # text will stream: is usage counted there?
    if settings.answer_format != "free" or settings.verifiers:
        need.add("constraints")
    if settings.verifiers:
        need.add("logprobs")  # a judge on this endpoint reads P("Yes")
    if modes.mode in ("parallel", "hybrid", "adaptive", "auto"):
        need.add("n")
    if modes.mode in ("budget", "parallel"):
        need.add("thinking")  # how budget forcing ends a reasoning model's thinking
    return need


def _settings_dict(settings: RunSettings, aggregate: str) -> dict[str, Any]:
    return {
        **asdict(with_default_budget(settings.modes)),  # the budget it ran under, given or not
        "aggregate": aggregate,
        "temperature": settings.temperature_for_mode(),
        "seed": settings.seed,
        "concurrency": settings.concurrency,
        "max_run_tokens": settings.max_run_tokens,
        "max_problem_tokens": settings.max_problem_tokens,
        "max_cost": settings.max_cost,
        "answer_format": settings.answer_format,
        "verifiers": list(settings.verifiers),
        "trace_deltas": settings.trace_deltas,
    }


@asynccontextmanager
async def _client(endpoint: EndpointConfig) -> AsyncIterator[EndpointClient]:
    client = client_for(endpoint)
    try:
        yield client
    finally:
        await client.aclose()


def write_results(
    path: Path,
    facts: RunFacts,
    metrics: Metrics,
    trees: list[ProblemTree],
    *,
    stopped_by: str | None,
    servers: list[dict[str, Any]] | None = None,
    before_publish: Callable[[], None] | None = None,
) -> None:
    """Write ``results.json`` atomically (its presence means the run completed).

    It is written a problem at a time, so a run of a million samples never holds its
    whole results file, or a dict per node, in memory at once. ``before_publish`` runs
    once it is written, before it takes its name (the run store's writer is waited for
    there, so the results are the run's last file while the two are made side by side).
    """
    head: dict[str, Any] = {
        "thinktree": __version__,
        "run_id": facts.run_id,
        "status": "stopped" if stopped_by else "completed",
        "stopped_by": stopped_by,
        "endpoint": {"name": facts.endpoint.name, "base_url": facts.endpoint.base_url},
        "model": facts.model,
        "capabilities": facts.capabilities.to_dict(),
        "settings": facts.settings_dict(),
        "metrics": metrics.to_dict(),
    }
    try:
        _write_results(path, head, trees, servers, before_publish)
    except OSError as exc:
        raise RecordingError(f"cannot write {path}: {exc.strerror or exc}") from None


def _write_results(
    path: Path,
    head: dict[str, Any],
    trees: list[ProblemTree],
    servers: list[dict[str, Any]] | None,
    before_publish: Callable[[], None] | None,
) -> None:
    with atomic_file(path) as f:
        f.write(dump_bytes_via(head, _results_value)[:-1])  # the object stays open
        f.write(b',"problems":[')
        for i, tree in enumerate(trees):
            if i:
                f.write(b",")
            f.write(dump_bytes_via(_problem_results(tree), _results_value))
        f.write(b"]")
        if servers is not None:  # per pool member: calls, failovers, tokens, busy time
            f.write(b',"servers":' + dump_bytes_via(servers, _results_value))
        f.write(b"}")
        if before_publish is not None:
            before_publish()


def _problem_results(t: ProblemTree) -> dict[str, Any]:
    """One problem's entry in ``results.json``."""
    return {
        "id": t.problem_id,
        "question": t.question,
        "gold": t.gold,
        "answer": t.answer,
        "correct": t.correct,
        "covered": t.covered,
        "error": t.error,
        "stopped": t.stopped,
        "vote": None
        if t.vote is None
        else {
            "rule": t.vote.rule,
            "answer": t.vote.answer,
            "winner_node": t.vote.winner_node,
            "counts": t.vote.counts,
            "scores": t.vote.scores,
            "ballots": t.vote.ballots,
        },
        "decision": None
        if t.decision is None
        else {
            "mode": t.decision.mode,
            "budget": t.decision.budget,
            "reason": t.decision.reason,
            "agreement": t.decision.agreement,
            "utilisation": t.decision.utilisation,
        },
        # made here, not by the encoder's fallback for each node (a call back into Python
        # per node): held for one problem at a time, as it is written
        "nodes": [node.to_dict() for node in t.walk()],
    }


def _results_value(value: Any) -> Any:
    """What ``results.json`` holds for a value JSON has no type for."""
    if isinstance(value, Node):
        return value.to_dict()
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return str(value)

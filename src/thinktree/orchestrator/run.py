"""One run: problems × one strategy × one endpoint, from settings to a results folder.

The run folder is written under a temporary name and renamed into place only when the
run completes, so a failed or interrupted run never leaves a half-written folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from structlog.contextvars import bound_contextvars

from thinktree import __version__
from thinktree.agents.aggregators import get_aggregator
from thinktree.agents.capabilities import Capabilities, probe
from thinktree.agents.endpoint import EndpointClient, EndpointConfig
from thinktree.agents.modes import DEFAULT_AGGREGATE, ModeSettings, build_strategy
from thinktree.agents.solver import Sampling, Solver
from thinktree.errors import ConfigError
from thinktree.metrics import Metrics, compute
from thinktree.orchestrator.bus import EventBus, Subscriber, event_bus
from thinktree.orchestrator.events import CallRetried, RunFinished, RunStarted
from thinktree.orchestrator.scheduler import run_problems
from thinktree.orchestrator.subscribers import TraceWriter, TreeRecorder
from thinktree.orchestrator.tree import ProblemTree
from thinktree.problems import Problem

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

    def temperature_for_mode(self) -> float:
        if self.temperature is not None:
            return self.temperature
        return 0.7 if self.modes.mode in ("parallel", "hybrid") else 0.0


@dataclass(slots=True)
class RunResult:
    run_id: str
    folder: Path
    metrics: Metrics
    trees: list[ProblemTree]
    model: str
    capabilities: Capabilities


def validate(settings: RunSettings) -> None:
    """Check the settings before anything starts (one-line ConfigError on any problem)."""
    build_strategy(settings.modes)
    aggregate = settings.aggregate or DEFAULT_AGGREGATE[settings.modes.mode]
    try:
        get_aggregator(aggregate)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if aggregate in ("best-of-n", "verifier-weighted"):
        raise ConfigError(
            f"--aggregate {aggregate} needs a verifier; use majority, "
            "shortest-majority or length-weighted"
        )
    if settings.concurrency <= 0:
        raise ConfigError(f"--concurrency must be positive, not {settings.concurrency}")
    if settings.temperature is not None and not 0 <= settings.temperature <= 2:
        raise ConfigError(f"--temperature must be between 0 and 2, not {settings.temperature}")
    if settings.out is not None and settings.out.exists():
        raise ConfigError(f"run folder {settings.out} already exists; choose another --out")


async def execute(
    problems: Sequence[Problem],
    endpoint: EndpointConfig,
    settings: RunSettings,
    *,
    subscribers: Sequence[Subscriber] = (),
    on_started: Callable[[str], None] | None = None,
) -> RunResult:
    """Run every problem and write the run folder; returns the metrics and trees."""
    validate(settings)
    strategy = build_strategy(settings.modes)
    aggregate_name = settings.aggregate or DEFAULT_AGGREGATE[settings.modes.mode]
    aggregate = get_aggregator(aggregate_name)
    run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    final = settings.out or Path("runs") / run_id
    if final.exists():
        raise ConfigError(f"run folder {final} already exists; choose another --out")
    recorder = TreeRecorder()

    async with _staging(final) as staging, _client(endpoint, None) as client:
        bus_holder: list[EventBus] = []

        async def on_retry(attempt: int, wait: float, reason: str) -> None:
            if bus_holder:
                await bus_holder[0].emit(
                    CallRetried(endpoint=endpoint.name, attempt=attempt, wait_s=wait, reason=reason)
                )

        client.on_retry = on_retry
        with bound_contextvars(run_id=run_id):
            model = await client.resolve_model()
            caps = await probe(client, what=_needed(settings.modes))
            if on_started is not None:
                on_started(model)
            trace = TraceWriter(staging / "trace.jsonl")
            sampling = Sampling(temperature=settings.temperature_for_mode(), seed=settings.seed)
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
                        problem=problem, client=client, caps=caps, bus=bus, sampling=sampling
                    )

                await run_problems(
                    problems,
                    strategy,
                    aggregate,
                    make_solver,
                    bus,
                    concurrency=settings.concurrency,
                )
                await bus.emit(RunFinished(run_id=run_id, status="completed"))

        trees = [recorder.tree.problems[p.id] for p in problems]
        metrics = compute(trees, tokens_allowed=strategy.allowed_tokens(), retries=recorder.retries)
        _write_results(
            staging / "results.json",
            run_id,
            endpoint,
            model,
            caps,
            settings,
            aggregate_name,
            metrics,
            trees,
        )
    log.info("run finished", run_id=run_id, folder=str(final), accuracy=metrics.accuracy)
    return RunResult(
        run_id=run_id, folder=final, metrics=metrics, trees=trees, model=model, capabilities=caps
    )


def _needed(modes: ModeSettings) -> set[str]:
    need = {"continuation"}
    if modes.mode in ("parallel", "hybrid"):
        need.add("n")
    return need


def _settings_dict(settings: RunSettings, aggregate: str) -> dict[str, Any]:
    return {
        **asdict(settings.modes),
        "aggregate": aggregate,
        "temperature": settings.temperature_for_mode(),
        "seed": settings.seed,
        "concurrency": settings.concurrency,
    }


@asynccontextmanager
async def _client(
    endpoint: EndpointConfig, http_client: Any | None
) -> AsyncIterator[EndpointClient]:
    client = EndpointClient(endpoint, http_client=http_client)
    try:
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def _staging(final: Path) -> AsyncIterator[Path]:
    """A temporary folder beside ``final``, renamed to it only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if final.exists():  # noqa: ASYNC240 - one stat at the very end of a run
        shutil.rmtree(staging, ignore_errors=True)
        raise ConfigError(f"run folder {final} appeared while the run was going; not replaced")
    os.replace(staging, final)


def _write_results(
    path: Path,
    run_id: str,
    endpoint: EndpointConfig,
    model: str,
    caps: Capabilities,
    settings: RunSettings,
    aggregate: str,
    metrics: Metrics,
    trees: list[ProblemTree],
) -> None:
    data = {
        "thinktree": __version__,
        "run_id": run_id,
        "endpoint": {"name": endpoint.name, "base_url": endpoint.base_url},
        "model": model,
        "capabilities": caps.to_dict(),
        "settings": _settings_dict(settings, aggregate),
        "metrics": metrics.to_dict(),
        "problems": [
            {
                "id": t.problem_id,
                "question": t.question,
                "gold": t.gold,
                "answer": t.answer,
                "correct": t.correct,
                "covered": t.covered,
                "error": t.error,
                "vote": None
                if t.vote is None
                else {
                    "rule": t.vote.rule,
                    "answer": t.vote.answer,
                    "winner_node": t.vote.winner_node,
                    "counts": t.vote.counts,
                },
                "nodes": [n.to_dict() for n in t.walk()],
            }
            for t in trees
        ],
    }
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")

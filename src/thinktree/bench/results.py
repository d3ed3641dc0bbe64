"""Reading finished runs back for reports: a run folder, or every cell of a bench folder."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinktree._files import in_use
from thinktree.errors import ConfigError
from thinktree.hints import hint_config, resume_command, shell_command
from thinktree.orchestrator.events import CALL_KINDS, failed_calls_in

RESULTS = "results.json"
BENCH_MANIFEST = "bench.json"
#: Options that describe a run in a report when it is not part of a bench.
_RUN_KNOBS = ("mode", "budget", "n", "steps", "total_budget", "aggregate")


@dataclass(frozen=True, slots=True)
class ProblemOutcome:
    """One problem of one cell, as the report needs it."""

    id: str
    correct: bool | None
    covered: bool | None
    answered: bool
    prompt_tokens: int
    completion_tokens: int
    decision: dict[str, Any] | None = None
    ran: bool = True  # False where the run's limit stopped the run before any call of it


@dataclass(slots=True)
class CellResult:
    """One finished run: its options, metrics and per-problem outcomes."""

    name: str
    folder: Path
    dataset: str
    options: dict[str, Any]
    mode: str
    model: str
    endpoint: str
    settings: dict[str, Any]
    metrics: dict[str, Any]
    problems: list[ProblemOutcome]
    tokens_allowed_per_problem: int
    status: str = "completed"
    stopped_by: str | None = None  # the limit that stopped it before every problem ran
    failed_calls: int = 0  # solver calls that failed (the bench sends them again)

    @property
    def graded(self) -> list[ProblemOutcome]:
        return [p for p in self.problems if p.correct is not None]

    @property
    def accuracy(self) -> float | None:
        value = self.metrics.get("accuracy")
        return None if value is None else float(value)

    @property
    def coverage(self) -> float | None:
        value = self.metrics.get("coverage")
        return None if value is None else float(value)

    @property
    def problems_run(self) -> int:
        """How many problems ran: every one but those the run's limit stopped it before."""
        return sum(1 for p in self.problems if p.ran)

    @property
    def tokens_per_problem(self) -> float:
        """Mean completion tokens (thinking and answers) spent per problem that ran, so that
        a cell its limit stopped compares with a whole one."""
        return float(self.metrics["completion_tokens"]) / max(1, self.problems_run)

    @property
    def read_back(self) -> dict[str, Any] | None:
        """The calls the cell read back from another cell's (None: none), which that cell
        made and paid for: in its tokens, not in its cost, latency or retries."""
        value = self.metrics.get("read_back")
        return value if isinstance(value, dict) else None

    @property
    def cost_per_problem(self) -> float | None:
        """Mean price per problem that ran of the calls its answers took: those it paid for
        and those it read back from another cell's, so that a cell that reused another's
        samples compares with one that made them (see :attr:`tokens_per_problem`)."""
        cost = self.metrics.get("cost_usd")
        read_back = self.read_back
        if read_back is not None:
            borrowed = read_back.get("cost_usd")
            cost = None if cost is None or borrowed is None else cost + borrowed
        return None if cost is None else float(cost) / max(1, self.problems_run)

    @property
    def perturbation(self) -> str:
        return str(self.options.get("perturbation", "none"))


@dataclass(slots=True)
class Loaded:
    """What a report is about: a single run or a bench, its finished cells, and the rest."""

    kind: str  # "run" or "bench"
    path: Path
    cells: list[CellResult]
    unfinished: list[str] = field(default_factory=list)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)


def load(path: Path) -> Loaded:
    """The finished runs under ``path`` (a run folder or a bench folder)."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} is a file, not a folder; give a run folder or a bench folder")
    if not path.is_dir():
        raise ConfigError(f"no folder at {path}; give a run folder or a bench folder")
    if (path / BENCH_MANIFEST).is_file():
        return _load_bench(path)
    if (path / RESULTS).is_file():
        cell = _load_cell(path, name=path.name, dataset="run", options=None)
        return Loaded(kind="run", path=path, cells=[cell])
    if (path / "run.json").is_file() and in_use(path):
        raise ConfigError(f"run {path} is still running; report it once it has finished")
    if (path / "run.json").is_file():
        raise ConfigError(
            f"run {path} has not finished (no {RESULTS}); resume it with "
            f"`{resume_command(path, hint_config(path))}`"
        )
    raise ConfigError(f"{path} is neither a run folder ({RESULTS}) nor a bench folder (bench.json)")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def _load_bench(path: Path) -> Loaded:
    manifest = _read_json(path / BENCH_MANIFEST)
    try:
        manifest = _object(manifest, "the manifest")
        entries = _list(manifest.get("cells"), "cells")
        grid = _object(manifest.get("grid") or {}, "grid")
        fixed = _object(manifest.get("run") or {}, "run")
    except ValueError as exc:
        raise ConfigError(f"{path / BENCH_MANIFEST} is damaged ({exc})") from None
    cells: list[CellResult] = []
    unfinished: list[str] = []
    for entry in entries:
        try:
            name, dataset, options = _cell_entry(entry)
        except ValueError as exc:
            raise ConfigError(f"{path / BENCH_MANIFEST} is damaged ({exc})") from None
        folder = path / name
        if not (folder / RESULTS).is_file():
            unfinished.append(name)
            continue
        cells.append(_load_cell(folder, name=name, dataset=dataset, options=options))
    if not cells:
        config = manifest.get("config_file")  # the config it was last run with
        config = config if isinstance(config, str) and config else "CONFIG"
        raise ConfigError(
            f"bench {path} has no finished cell yet; run "
            f"`{shell_command('thinktree', 'bench', config, '--out', path)}` "
            "to go on"
        )
    return Loaded(
        kind="bench", path=path, cells=cells, unfinished=unfinished, grid=grid, fixed=fixed
    )


def _cell_entry(entry: Any) -> tuple[str, str, dict[str, Any]]:
    """A bench manifest's entry for a cell: its folder's name, its dataset, its options."""
    cell = _object(entry, "a cell")
    name, dataset, options = cell.get("name"), cell.get("dataset"), cell.get("options")
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"a cell's name is {name!r:.40}, not a folder's")
    if not isinstance(dataset, str):
        raise ValueError(f"cell {name}'s dataset is {dataset!r:.40}, not a name")
    return name, dataset, _object(options, f"cell {name}'s options")


def _load_cell(
    folder: Path, *, name: str, dataset: str, options: dict[str, Any] | None
) -> CellResult:
    data = _read_json(folder / RESULTS)
    try:
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        settings = _object(data["settings"], "settings")
        metrics = _metrics(data["metrics"])
        problems = [_outcome(p) for p in _list(data["problems"], "problems")]
        if options is None:
            options = {k.replace("_", "-"): settings.get(k) for k in _RUN_KNOBS}
        allowed = int(metrics["tokens_allowed"]) // max(1, len(problems))
        return CellResult(
            name=name,
            folder=folder,
            dataset=dataset,
            options=dict(options),
            mode=str(settings["mode"]),
            model=str(data["model"]),
            endpoint=str(_object(data["endpoint"], "endpoint")["name"]),
            settings=settings,
            metrics=metrics,
            problems=problems,
            tokens_allowed_per_problem=allowed,
            status=str(data.get("status", "completed")),
            stopped_by=data.get("stopped_by"),
            failed_calls=failed_calls_in(data["problems"]),
        )
    except KeyError as exc:
        raise ConfigError(f"{folder / RESULTS} is damaged (no {exc})") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"{folder / RESULTS} is damaged ({exc})") from None


#: The figures of a run's metrics a report reads: those always there, those that may be null.
_COUNTS = (
    "problems",
    "answered",
    "prompt_tokens",
    "completion_tokens",
    "thinking_tokens",
    "calls",
    "tokens_allowed",
)
_FIGURES = ("accuracy", "coverage", "utilisation", "latency_p50_s", "latency_p95_s", "cost_usd")
_VERIFIER_COUNTS = ("problems", "verdicts", "failed_verdicts", "prompt_tokens", "completion_tokens")
_VERIFIER_FIGURES = ("pick_accuracy", "vote_accuracy", "oracle", "auroc", "cost_usd")
_READ_BACK_COUNTS = ("calls", "prompt_tokens", "completion_tokens")
_SHARES = frozenset({"accuracy", "coverage", "pick_accuracy", "vote_accuracy", "oracle", "auroc"})


def _metrics(value: Any) -> dict[str, Any]:
    """A results file's metrics, each figure a report reads checked to be a number."""
    metrics = _object(value, "metrics")
    _numbers(metrics, "metrics", _COUNTS, _FIGURES)
    for block, counts, figures in (
        ("verifier", _VERIFIER_COUNTS, _VERIFIER_FIGURES),
        ("read_back", _READ_BACK_COUNTS, ("cost_usd",)),
    ):
        if (value := metrics.get(block)) is not None:  # each block only where a run has it
            where = f"metrics.{block}"
            _numbers(_object(value, where), where, counts, figures)
    verifier = metrics.get("verifier")
    if verifier is not None and (judged := verifier.get("read_back")) is not None:
        where = "metrics.verifier.read_back"
        _numbers(_object(judged, where), where, _READ_BACK_COUNTS, ("cost_usd",))
    if (by_step := metrics.get("accuracy_by_step")) is not None:  # a run of revisions'
        for share in _list(by_step, "metrics.accuracy_by_step"):
            if isinstance(share, bool) or not isinstance(share, int | float) or not 0 <= share <= 1:
                raise ValueError(
                    f"metrics.accuracy_by_step holds {share!r:.40}, not a share from 0 to 1"
                )
    return metrics


def _numbers(
    table: dict[str, Any], where: str, counts: tuple[str, ...], figures: tuple[str, ...]
) -> None:
    for key in counts:
        if key not in table:
            raise ValueError(f"no {where}.{key}")
    for key in (*counts, *figures):
        value = table.get(key)
        if value is None and key in figures:
            continue
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            raise ValueError(f"{where}.{key} is {value!r:.40}, not a number")
        if key in _SHARES and not 0 <= value <= 1:
            raise ValueError(f"{where}.{key} is {value!r:.40}, not a share from 0 to 1")


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} is {value!r:.40}, not an object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{where} is {value!r:.40}, not a list")
    return value


def _outcome(problem: Any) -> ProblemOutcome:
    problem = _object(problem, "a problem")
    nodes = _list(problem.get("nodes") or [], "a problem's nodes")
    decision = problem.get("decision")
    if decision is not None and "mode" not in _object(decision, "a problem's decision"):
        raise ValueError("a problem's decision has no mode")
    return ProblemOutcome(
        id=str(problem["id"]),
        correct=problem.get("correct"),
        covered=problem.get("covered"),
        answered=problem.get("answer") is not None,
        prompt_tokens=sum(int(_object(n, "a node").get("prompt_tokens") or 0) for n in nodes),
        completion_tokens=sum(int(n.get("completion_tokens") or 0) for n in nodes),
        decision=decision,
        ran=_ran(problem, nodes),
    )


def _ran(problem: dict[str, Any], nodes: list[Any]) -> bool:
    """Whether a problem ran: False only where the run's limit refused it before any of its
    calls was sent (it is then in the results, with no call, and the run's reason)."""
    if not str(problem.get("error") or "").startswith("run stopped"):
        return True
    return any(
        n.get("kind") in CALL_KINDS and (n.get("status") == "done" or n.get("call_id"))
        for n in nodes
    )

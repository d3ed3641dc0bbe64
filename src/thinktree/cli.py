"""The ``thinktree`` command line."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import anyio
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from thinktree import event_loop
from thinktree.datasets import DatasetError, load_demo, load_problems, none_left, select
from thinktree.errors import (
    ConfigError,
    EndpointDown,
    RecordingError,
    ThinktreeError,
    find_error,
)
from thinktree.hints import hint_config, resume_command, shell_command
from thinktree.logging_setup import configure
from thinktree.sanitize import clean, literal, printable
from thinktree.terminal_tables import Column, fitted

# Plain help (click's), not typer's Rich panels: in an 80-column terminal those squeeze the
# descriptions to a few words a line and cut long option names short.
app = typer.Typer(
    help="Test-time scaling for language models, with every branch and revision on view.",
    rich_markup_mode=None,
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# No emoji codes: thinktree prints none, and ":cat:" in a model's name or a path is text.
out = Console(emoji=False)
err = Console(stderr=True, emoji=False)
# Rich reads a printed str, and a table's cells and titles, as markup: text from a user, a
# dataset, a file path, a server or a model goes through printable() (or is printed with
# markup=False after clean()), so "[/]" in it cannot crash a command, "[bold]" in it is shown
# as written, and an escape sequence in it shows as text instead of driving the terminal.
T = TypeVar("T")

if TYPE_CHECKING:
    from thinktree.agents.endpoint import EndpointConfig
    from thinktree.orchestrator.run import ResumeState, RunResult, RunSettings
    from thinktree.orchestrator.store import RunSummary
    from thinktree.pricing import Price
    from thinktree.problems import Problem


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(
        f"[bold red]error:[/] {printable(message)}", highlight=False, markup=True, soft_wrap=True
    )
    return typer.Exit(code)


class _Terminated(Exception):
    """The process was asked to stop (SIGTERM) and has stopped in order."""


def _run_async(fn: Callable[[], Awaitable[T]], *, ctrl_c_stops: bool = False) -> T:
    """Run ``fn`` on the CLI's event loop; errors end the command in one line.

    ``ctrl_c_stops``: Ctrl-C is how the command ends (a server kept up until then), so it
    exits 130 without an error line.
    """

    def interrupted() -> typer.Exit:
        return typer.Exit(130) if ctrl_c_stops else _fail("interrupted", 130)

    try:
        return event_loop.run(lambda: _stopping_on_sigterm(fn))
    except KeyboardInterrupt:
        raise interrupted() from None
    except BaseException as exc:
        done = find_error(exc, typer.Exit)
        if done is not None:
            raise done from None
        if find_error(exc, KeyboardInterrupt) is not None:
            raise interrupted() from None
        if find_error(exc, _Terminated) is not None:
            raise _fail("terminated (SIGTERM)", TERMINATED) from None
        # the reader of its output went away (`| head`): rich's console exits when a print
        # finds the pipe closed, the plain streams raise; either is the end, quietly
        if find_error(exc, BrokenPipeError) is not None:
            raise BrokenPipeError from None
        exited = find_error(exc, SystemExit)
        if exited is not None:
            raise exited from None
        user = find_error(exc, (ThinktreeError, DatasetError))
        if user is None:
            raise
        code = UNWRITABLE if isinstance(user, RecordingError) else 2
        code = UNAVAILABLE if isinstance(user, EndpointDown) else code
        raise _fail(str(user).splitlines()[0] if str(user) else type(user).__name__, code) from None


def _say_dim(text: str) -> None:
    """A line of progress on stderr, shown as written (a URL stays whole, to copy)."""
    err.print(clean(text), style="dim", markup=False, highlight=False, soft_wrap=True)


UNWRITABLE = 74  # sysexits' EX_IOERR: the run's own files could not be written
UNAVAILABLE = 69  # sysexits' EX_UNAVAILABLE: the endpoint stopped answering
TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process SIGTERM ended
NOTHING_ANSWERED = 3  # the run ended with no problem answered
INCOMPLETE = 4  # the run ended, but model calls of it failed: a resume sends them again


async def _stopping_on_sigterm(fn: Callable[[], Awaitable[T]]) -> T:
    """``await fn()``; SIGTERM (a job scheduler's, a container's stop) cancels it as Ctrl-C
    does, so a run records what it finished, closes its files and can be resumed, and a
    server it started is stopped, instead of the process dying where it stands."""
    if sys.platform == "win32":
        return await fn()
    outcome: list[T] = []
    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

            tg.start_soon(stop_on_signal)
            outcome.append(await fn())
            tg.cancel_scope.cancel()
    if not outcome:
        raise _Terminated
    return outcome[0]


@app.command(short_help="Run a dataset under one scaling mode; print its results table.")
def run(
    ctx: typer.Context,
    dataset: Annotated[
        Path | None, typer.Argument(help="JSONL file of problems (default: the built-in demo set)")
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            help="budget | sequential | parallel | hybrid | adaptive | auto [default: budget]"
        ),
    ] = None,
    n: Annotated[int, typer.Option(help="parallel samples / hybrid branches / adaptive most")] = 4,
    wave: Annotated[
        int, typer.Option(help="adaptive: the first wave's samples, the most a later one draws")
    ] = 4,
    stop_confidence: Annotated[
        float,
        typer.Option(help="adaptive: stop once P(the full vote elects the leader) reaches it"),
    ] = 0.95,
    steps: Annotated[int, typer.Option(help="sequential / hybrid revision steps")] = 2,
    budget: Annotated[
        int | None,
        typer.Option(
            help="thinking tokens (budget, parallel, adaptive; default 1024), tokens per "
            "step (sequential, hybrid; default 512), or auto's to start from (default 512)"
        ),
    ] = None,
    total_budget: Annotated[
        int | None, typer.Option(help="hybrid: tokens for all branches and steps together")
    ] = None,
    min_thinking: Annotated[int, typer.Option(help="budget: think at least this long")] = 0,
    answer_tokens: Annotated[int, typer.Option(help="cap of a forced answer")] = 64,
    aggregate: Annotated[
        str | None,
        typer.Option(
            help="majority | shortest-majority | length-weighted; with --verifier also "
            "best-of-n | verifier-weighted (its default; adaptive's: verifier-tiebreak) | "
            "verifier-tiebreak"
        ),
    ] = None,
    temperature: Annotated[float | None, typer.Option(help="sampling temperature")] = None,
    endpoint: Annotated[
        str | None,
        typer.Option(help="URL, a name from thinktree.toml, 'openai' or 'embedded' (default)"),
    ] = None,
    model: Annotated[str | None, typer.Option(help="model name on the endpoint")] = None,
    engine: Annotated[
        str, typer.Option(help="engine of the embedded model: vllm | llamacpp")
    ] = "vllm",
    config: Annotated[Path | None, typer.Option(help="TOML config of named endpoints")] = None,
    limit: Annotated[int | None, typer.Option(help="at most this many problems")] = None,
    offset: Annotated[int, typer.Option(help="skip this many problems first")] = 0,
    seed: Annotated[int, typer.Option(help="seed for sampling (per node, stable)")] = 0,
    concurrency: Annotated[int, typer.Option(help="problems solved at once")] = 8,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="run folder (default runs/<run id>)")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="stop the run once it has spent this many tokens")
    ] = None,
    max_problem_tokens: Annotated[
        int | None, typer.Option(help="at most this many tokens on any one problem")
    ] = None,
    max_cost: Annotated[
        float | None,
        typer.Option(help="stop the run at this cost in USD (needs [prices] for the model)"),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="continue a killed run from its folder (finished calls are not re-paid)"),
    ] = None,
    trace_deltas: Annotated[
        bool,
        typer.Option(help="stream, and write each text delta to trace.jsonl (for `watch`)"),
    ] = False,
    answer_format: Annotated[
        str,
        typer.Option(
            help="free (extract the answer) | constrained (generate it under a constraint) "
            "| json (answer + confidence under a schema)"
        ),
    ] = "free",
    verifier: Annotated[
        list[str] | None,
        typer.Option(
            help="score candidates: judge | pairwise | reward:URL | prm:URL | trained:FILE "
            "| a plugin's name (repeatable; `thinktree verifier list` shows them)"
        ),
    ] = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch/--no-tui",
            help="watch the tree grow live in a terminal view (default: plain progress)",
            show_default=False,  # the help says it, in words
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    """Run a dataset under one scaling mode and print the results table."""
    if watch and not _terminal():
        err.print(
            "[yellow]--watch needs a terminal; showing plain progress instead[/]", soft_wrap=True
        )
        watch = False
    # While the view owns the terminal, logs go to a file.
    configure(verbose=verbose, json_file=_watch_log() if watch else None)
    from thinktree.api import MODE_OPTIONS, run_settings
    from thinktree.config import endpoint_from, load_config

    if engine not in ("vllm", "llamacpp"):
        raise _fail(f"unknown engine '{engine}'; choose vllm or llamacpp")
    if resume is not None:
        _refuse_new_settings(ctx, resume)
        limits = {
            "max_run_tokens": max_tokens,
            "max_problem_tokens": max_problem_tokens,
            "max_cost": max_cost,
        }
        given = {k: v for k, v in limits.items() if _given(ctx, _LIMIT_PARAMS[k])}
        at_once = concurrency if _given(ctx, "concurrency") else None
        _resume(
            resume,
            dataset,
            mode,
            endpoint,
            config,
            watch=watch,
            limits=given,
            concurrency=at_once,
            trace_deltas=trace_deltas,
        )
        return
    try:
        cfg = load_config(config)
        settings = run_settings(
            {p: ctx.params[p] for p in MODE_OPTIONS if _given(ctx, p)},
            mode=mode or "budget",
            answer_tokens=answer_tokens,
            config=cfg,
            config_file=config,
            aggregate=aggregate,
            temperature=temperature,
            seed=seed,
            concurrency=concurrency,
            out=out_dir,
            max_run_tokens=max_tokens,
            max_problem_tokens=max_problem_tokens,
            max_cost=max_cost,
            trace_deltas=trace_deltas,
            answer_format=answer_format,
            verifiers=tuple(verifier or ()),
        )
        if limit is not None and limit <= 0:
            raise _fail(f"--limit must be positive, not {limit}")
        if dataset is None:
            problems = select(load_demo(), limit=limit, offset=offset)
        else:
            problems = load_problems(dataset, limit=limit, offset=offset)
        if not problems:  # the limit is positive: the offset is past the end
            every = load_demo() if dataset is None else load_problems(dataset)
            raise _fail(none_left(str(dataset or "the demo set"), len(every), offset))
        target = endpoint_from(endpoint, model=model, config=cfg)
    except (ThinktreeError, DatasetError) as exc:
        raise _fail(str(exc)) from None
    if target is not None and _given(ctx, "engine"):
        raise _fail(
            f"--engine picks the embedded model's engine; it changes nothing for endpoint "
            f"'{target.name}': leave it out"
        )
    _execute(problems, target, settings, watch=watch, engine=engine, config=config)


def _terminal() -> bool:
    """Whether the terminal view can run: it reads keys from stdin and draws on stderr,
    and stdout (where results go) is not sent to a file either."""
    return all(s is not None and s.isatty() for s in (sys.stdin, sys.stdout, sys.stderr))


def _watch_log() -> Path:
    import platformdirs

    return Path(platformdirs.user_log_dir("thinktree")) / "thinktree.jsonl"


def _execute(
    problems: list[Problem],
    target: EndpointConfig | None,
    settings: RunSettings,
    resume: ResumeState | None = None,
    *,
    watch: bool = False,
    engine: str = "vllm",
    config: Path | None = None,
) -> None:
    """Run (or resume) on ``target``, or on the embedded model when it is None.

    ``config``: the config file the endpoint was named in, which resuming needs again.
    """

    from thinktree.orchestrator.run import execute
    from thinktree.orchestrator.subscribers import ConsoleProgress

    folder: list[Path] = []

    async def go(cfg: EndpointConfig) -> RunResult:
        if not watch:
            return await execute(
                problems,
                cfg,
                settings,
                resume=resume,
                on_started=folder.append,
                subscribers=[ConsoleProgress(err)],
            )
        from thinktree.tui.subscriber import WatchQuit, watch_run

        try:
            return await watch_run(
                lambda tui: execute(
                    problems,
                    cfg,
                    settings,
                    resume=resume,
                    on_started=folder.append,
                    subscribers=[tui],
                ),
                folder=lambda: folder[-1] if folder else None,
                config=config,
                on_keep=lambda: err.print(
                    "[dim]view closed; the run goes on — results when it ends[/]", soft_wrap=True
                ),
            )
        except WatchQuit:
            raise _fail("view closed; the run was stopped", 130) from None

    async def main() -> None:
        from thinktree.embedded import announced_server, endpoint_for
        from thinktree.orchestrator.events import PAST_CONTEXT

        if target is not None:
            result = await go(target)
        else:
            async with announced_server(engine, say=_say_dim) as server:
                result = await go(endpoint_for(server))
        _print_results(result)
        past = result.first_past_context()
        if past is not None:  # not sent again: say so, and what would help
            err.print(
                f"{result.metrics.past_context} model call(s) {PAST_CONTEXT} and will not be "
                f"sent again, the first with: {clean(past)}; their lines kept the answers "
                "they had (shorten those prompts, or use a model or server with a longer "
                "context)",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        failed = [node.error or "failed" for node in result.failed_calls()]
        requests = result.failed_requests()
        if failed and result.metrics.answered:
            err.print(
                f"{requests} model call(s) failed, the first with: {clean(failed[0])}; once "
                f"the cause is fixed, send them again with: "
                f"{resume_command(result.folder, config)}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
            raise typer.Exit(INCOMPLETE)  # results.json is written, but some are ungraded
        if result.metrics.answered == 0:
            if result.stopped_by:  # its limit, not the model: say which
                raise _fail(
                    f"no problem was answered ({result.stopped_by}); go on under a higher "
                    f"limit with: {resume_command(result.folder, config)} --max-tokens N "
                    "(or --max-problem-tokens, --max-cost)",
                    NOTHING_ANSWERED,
                )
            if failed:  # the calls failed (a refused request): say so, not "no answer",
                # and that a resume sends them again, as for a run that answered some
                raise _fail(
                    f"no problem was answered: {requests} model call(s) failed, the first "
                    f"with: {clean(failed[0])}; once the cause is fixed, send them again "
                    f"with: {resume_command(result.folder, config)}",
                    INCOMPLETE,
                )
            raise _fail(
                f"the model stated no answer on any of the {result.metrics.problems} problems "
                f"(all counted wrong); check the model and its prompt in {result.folder}",
                NOTHING_ANSWERED,
            )

    try:
        _run_async(main)
    except typer.Exit as exc:
        if exc.exit_code in (130, TERMINATED) and folder:
            err.print(
                f"resume with: {resume_command(folder[0], config)}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        elif exc.exit_code in (UNWRITABLE, UNAVAILABLE) and folder:
            again = "it can be written" if exc.exit_code == UNWRITABLE else "the endpoint answers"
            err.print(
                f"once {again} again, resume with: {resume_command(folder[0], config)}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        raise


# what a run is: a resumed run keeps these as it was started (its run.json)
_SETTINGS_PARAMS = (
    "n",
    "wave",
    "stop_confidence",
    "steps",
    "budget",
    "total_budget",
    "min_thinking",
    "answer_tokens",
    "aggregate",
    "temperature",
    "limit",
    "offset",
    "seed",
    "out_dir",
    "answer_format",
    "verifier",
    "model",
    "engine",
)
_LIMIT_PARAMS = {
    "max_run_tokens": "max_tokens",
    "max_problem_tokens": "max_problem_tokens",
    "max_cost": "max_cost",
}


def _given(ctx: typer.Context, param: str) -> bool:
    """Whether ``param`` was given on the command line (not left at its default)."""
    source = ctx.get_parameter_source(param)
    return source is not None and source.name == "COMMANDLINE"


def _refuse_new_settings(ctx: typer.Context, folder: Path) -> None:
    """A setting given with ``--resume`` would be ignored: say so instead."""
    for param in ctx.command.params:
        if param.name in _SETTINGS_PARAMS and _given(ctx, param.name):
            flag = max(param.opts, key=len)
            raise _fail(
                f"{flag} is not taken when resuming {folder}: a resumed run keeps the "
                "settings it was started with (its run.json), so leave it out, or start a "
                "new run to change it (only --endpoint, --concurrency, --trace-deltas and the "
                "limits --max-tokens, --max-problem-tokens and --max-cost are taken)"
            )


def _resume(
    folder: Path,
    dataset: Path | None,
    mode: str | None,
    endpoint: str | None,
    config: Path | None,
    *,
    watch: bool = False,
    limits: dict[str, Any] | None = None,
    concurrency: int | None = None,
    trace_deltas: bool = False,
) -> None:
    """Continue a killed run with the settings and problems it was started with (and,
    where given, new token or money limits, or more or fewer problems at once: that
    changes no answer, as every node has its own seed; or its text streamed into the
    trace, which changes no call's fingerprint)."""
    from thinktree.agents.endpoint import EndpointConfig
    from thinktree.config import endpoint_from, load_config
    from thinktree.orchestrator.run import load_resume, validate
    from thinktree.pricing import prices_from_config

    try:
        prices = prices_from_config(load_config(config))
        state = load_resume(folder, prices=prices, new_limits=bool(limits))
        settings = dataclasses.replace(state.settings, config=load_config(config))
        if trace_deltas:
            settings = dataclasses.replace(settings, trace_deltas=True)
        if concurrency is not None:
            settings = dataclasses.replace(settings, concurrency=concurrency)
            validate(settings, resuming=True)
        if limits:  # the run goes on under new limits, and keeps them once it starts
            settings = dataclasses.replace(
                settings,
                max_run_tokens=limits.get("max_run_tokens", settings.max_run_tokens),
                max_problem_tokens=limits.get("max_problem_tokens", settings.max_problem_tokens),
                max_cost=limits.get("max_cost", settings.max_cost),
            )
            validate(settings, resuming=True)
        state = dataclasses.replace(state, settings=settings)
        if mode is not None and mode != state.settings.modes.mode:
            raise ConfigError(
                f"run {folder} was started in mode '{state.settings.modes.mode}'; "
                f"it cannot be resumed as '{mode}' (start a new run instead)"
            )
        started_with = [p.id for p in state.problems]
        if dataset is not None and [p.id for p in load_problems(dataset)] != started_with:
            raise ConfigError(
                f"{dataset} does not hold the problems run {folder} was started with; "
                "resume without a dataset, or start a new run"
            )
        saved = state.endpoint
        target: EndpointConfig | None = None
        if endpoint is not None:  # the server moved: the run goes on with the model it had
            target = endpoint_from(endpoint, model=saved["model"], config=load_config(config))
        elif saved["name"] not in ("embedded", "embedded-llamacpp"):
            try:
                found = endpoint_from(
                    saved["name"], model=saved["model"], config=load_config(config)
                )
            except ConfigError as exc:
                if not str(exc).startswith("unknown endpoint"):
                    raise
                recorded = None if config is not None else hint_config(folder)
                raise ConfigError(
                    f"run {folder} was started on endpoint '{saved['name']}', which no config "
                    "names here; resume it with the config it was named in: "
                    f"{resume_command(folder, recorded or 'FILE')} (or --endpoint URL)"
                ) from None
            target = found or EndpointConfig(
                name=saved["name"], base_url=saved["base_url"], model=saved["model"]
            )
        if target is not None:
            target = _named_as_before(target, saved)
    except (ThinktreeError, DatasetError) as exc:
        raise _fail(str(exc)) from None
    engine = "llamacpp" if state.endpoint["name"] == "embedded-llamacpp" else "vllm"
    if state.retrying:
        err.print(
            f"run {clean(str(folder))} completed with {state.retrying} failed model call(s): "
            "sending those again; the calls that succeeded are read back, not paid for again",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    _execute(
        state.problems,
        target,
        state.settings,
        resume=state,
        watch=watch,
        engine=engine,
        config=config if config is not None else hint_config(folder),  # for the hints
    )


def _named_as_before(target: EndpointConfig, saved: dict[str, Any]) -> EndpointConfig:
    """``target`` naming its server in call fingerprints as the run's first session did,
    where it moved (a new URL, another pool): its calls are read back, not paid again."""
    from thinktree.agents.endpoint import server_name

    before = saved.get("server_name")
    if not isinstance(before, str) or not before:  # a run.json from before it was kept
        before = None if target.members or target.cache_as else saved["base_url"]
    if before is None or server_name(target) == before:
        return target
    return dataclasses.replace(target, cache_as=before)


def _print_results(result: object) -> None:
    from thinktree.orchestrator.run import RunResult

    assert isinstance(result, RunResult)
    table = Table(title=printable(f"run {result.run_id} · {result.model}"), show_lines=False)
    table.add_column("problem", overflow="fold")
    table.add_column("answer")
    table.add_column("gold")
    table.add_column("correct")
    table.add_column("tokens", justify="right")
    for tree in result.trees:
        mark = {True: "[green]✓[/]", False: "[red]✗[/]", None: "–"}[tree.correct]
        table.add_row(
            printable(tree.problem_id),
            printable(tree.answer or "—"),
            printable(tree.gold or "—"),
            mark,
            f"{tree.completion_tokens():,}",
        )
    out.print(table)
    m = result.metrics
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f} %"

    def secs(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f} s"

    summary.add_row("accuracy", f"{pct(m.accuracy)}  ({m.correct}/{m.graded})")
    if m.accuracy_by_step:  # a sequential or hybrid run's, after each step of revision
        steps = enumerate(m.accuracy_by_step, 1)
        summary.add_row("  after each step", " · ".join(f"{k}: {pct(a)}" for k, a in steps))
    summary.add_row("coverage", pct(m.coverage))
    summary.add_row("answered", f"{m.answered}/{m.problems}")
    summary.add_row(
        "tokens",
        f"prompt {m.prompt_tokens:,} · completion {m.completion_tokens:,} · "
        f"thinking {m.thinking_tokens:,}",
    )
    summary.add_row("budget utilisation", f"{pct(m.utilisation)} of {m.tokens_allowed:,}")
    past = f", {m.past_context} past the model's context" if m.past_context else ""
    summary.add_row("calls", f"{m.calls} ({m.retries} retries{past})")
    if m.cost_usd is not None:
        summary.add_row("cost", f"${m.cost_usd:.4f}")
    summary.add_row("latency", f"p50 {secs(m.latency_p50_s)} · p95 {secs(m.latency_p95_s)}")
    if m.verifier is not None:
        from thinktree.verifiers.report import verifier_rows

        for name, value in verifier_rows(m.verifier):
            summary.add_row(printable(name), printable(value))
    summary.add_row("continuation", printable(result.capabilities.continuation))
    summary.add_row("run folder", printable(str(result.folder)))
    out.print(summary)
    if result.stopped_by:
        err.print(
            f"[yellow]{printable(result.stopped_by)}[/]; the problems it cut short or left "
            "unfinished say so in the results",
            highlight=False,
            soft_wrap=True,
        )


@app.command(short_help="Try an endpoint's capabilities for real; print what it can do.")
def probe(
    endpoint: Annotated[
        str | None, typer.Argument(help="URL or name (default: the embedded model)")
    ] = None,
    model: Annotated[str | None, typer.Option(help="model name on the endpoint")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML config of named endpoints")] = None,
    engine: Annotated[
        str, typer.Option(help="engine of the embedded model: vllm | llamacpp")
    ] = "vllm",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Try each capability of an endpoint for real and print what it can do."""
    configure()
    if engine not in ("vllm", "llamacpp"):
        raise _fail(f"unknown engine '{engine}'; choose vllm or llamacpp")
    from thinktree.config import endpoint_from, load_config

    try:
        target = endpoint_from(endpoint, model=model, config=load_config(config))
    except ThinktreeError as exc:
        raise _fail(str(exc)) from None

    async def main() -> None:
        from thinktree.agents.capabilities import probe as run_probe
        from thinktree.agents.pool import client_for
        from thinktree.embedded import announced_server, endpoint_for

        async def go(cfg: EndpointConfig) -> None:
            cfg = dataclasses.replace(cfg, max_attempts=2)
            client = client_for(cfg)
            try:
                name = await client.resolve_model()
                caps = await run_probe(client)  # one line for a server that cannot generate
            finally:
                await client.aclose()
            http = "lean" if client.transport.lean else "aiohttp"
            cap = client.cap_field()
            if as_json:
                found = {"endpoint": cfg.base_url, "model": name, "http_client": http}
                print(json.dumps({**found, "max_tokens_field": cap, **caps.to_dict()}))
                return
            table = Table(title=printable(f"{cfg.base_url} · {name}"))
            table.caption = (
                "calls go through thinktree's lean HTTP/1.1 client"
                if http == "lean"
                else "calls go through aiohttp"
            ) + f"; their token cap goes in {printable(cap)}"
            table.add_column("capability")
            table.add_column("result")
            table.add_column("evidence", overflow="fold")
            rows = [
                ("n > 1 in one request", caps.native_n, "n"),
                ("token ids of each choice", caps.token_ids, "token_ids"),
                (
                    f"continuation: {caps.continuation}",
                    caps.continuation != "revision",
                    "continuation",
                ),
                ("/v1/completions", caps.completions, "completions"),
                ("logprobs", caps.logprobs, "logprobs"),
                ("seed reproducible", caps.seed, "seed"),
                (f"reasoning text: {caps.reasoning}", caps.reasoning != "none", "reasoning"),
                (
                    f"constraints: {', '.join(caps.constraints) or 'none'}",
                    bool(caps.constraints),
                    "constraints",
                ),
                (
                    f"thinking budget: {caps.thinking_budget}",
                    caps.thinking_budget == "server",
                    "thinking",
                ),
            ]
            for label, ok, key in rows:
                table.add_row(
                    printable(label),
                    "[green]yes[/]" if ok else "[yellow]no[/]",
                    printable(caps.notes.get(key, "")),
                )
            out.print(table)

        if target is not None:
            await go(target)
        else:
            async with announced_server(engine, say=_say_dim) as server:
                await go(endpoint_for(server))

    _run_async(main)


@app.command(short_help="Browse a run in the terminal view, live while it is written.")
def watch(
    path: Annotated[
        Path, typer.Argument(help="run folder, its trace.jsonl, or a folder of runs (newest)")
    ] = Path("runs"),
    speed: Annotated[
        float | None,
        typer.Option(help="replay a finished run at this many × real time (default: at once)"),
    ] = None,
) -> None:
    """Browse a run in the terminal view; a run still being written is followed live."""
    configure(json_file=_watch_log())
    from thinktree.tui.sources import source_for

    try:
        source = source_for(path, speed=speed)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None
    if not _terminal():
        raise _fail("watch needs a terminal; `thinktree runs` lists runs without one")
    from thinktree.tui.app import ThinktreeApp

    view = ThinktreeApp(source)
    view.run()
    if view.source_error is not None:  # shown in the view; said again once it has closed
        raise _fail(view.source_error)


@app.command()
def runs(
    root: Annotated[Path, typer.Argument(help="folder holding run folders")] = Path("runs"),
) -> None:
    """List runs: status, mode, endpoint, progress and tokens."""
    configure()
    from thinktree.config import load_config
    from thinktree.orchestrator.run import recorded_prices
    from thinktree.orchestrator.store import list_runs
    from thinktree.pricing import prices_from_config

    try:
        prices = prices_from_config(load_config(None))
    except ThinktreeError as exc:
        raise _fail(str(exc)) from None
    try:
        if root.exists() and not root.is_dir():
            raise _fail(f"{root} is a file, not a folder; give the folder that holds run folders")
        if not root.is_dir():
            raise _fail(f"no run folder at {root}; runs go to ./runs unless --out says otherwise")
        found = list_runs(root)
    except OSError as exc:
        raise _fail(f"cannot read {_cannot(exc, root)}") from None
    if not found:
        out.print(f"no runs in {clean(str(root))}", markup=False, soft_wrap=True)
        return
    columns = [
        *(Column(name, "left") for name in ("run", "status", "mode", "endpoint", "model")),
        *(Column(name) for name in ("progress", "right", "tokens", "cost")),
        Column("note", "left"),
    ]
    rows: list[list[str | Text]] = []
    colours = {
        "completed": "green",
        "running": "cyan",
        "interrupted": "yellow",  # resumable, as a cancelled one is
        "cancelled": "yellow",
        "stopped": "yellow",  # by its own token or money limit: not a failure
    }
    for run in found:
        colour = colours.get(run.status, "red")
        # the price the run was made at (its run.json keeps it), else today's config's
        model = run.model or ""
        recorded = recorded_prices(run.folder)
        price = recorded.get(model) or prices.get(model)
        known = {**prices, **recorded}  # its verifiers' models' prices, found the same way
        rows.append(
            [
                run.folder.name,
                literal(run.status, colour),
                run.mode or "—",
                run.endpoint or "—",
                run.model or "—",
                f"{run.problems_done}/{run.problems_total}",
                str(run.problems_correct),
                f"{run.tokens:,}",
                _cost(run.cost_usd(price, known)),
                _run_note(run, priced=price is not None, prices=known),
            ]
        )
    for table in fitted(f"runs in {root}", columns, rows, out.width):
        out.print(table)


def _cannot(exc: OSError, path: Path) -> str:
    """One line for a file the command could not read or write: which, and why."""
    where = exc.filename if exc.filename is not None else path
    return f"{where}: {(exc.strerror or str(exc)).lower()}"


def _run_note(run: RunSummary, *, priced: bool, prices: dict[str, Price]) -> str:
    """Why a run is unreadable or damaged, what of it failed, and why a priced model's
    run has no cost (which of its verifiers' models ``prices`` has no price for)."""
    failed = []
    if run.problems_failed:
        failed.append(f"{run.problems_failed} problem(s) failed")
    if run.calls_failed:
        failed.append(f"{run.calls_failed} model call(s) failed")
    if run.calls_past_context:  # no failure to resend: the model cannot read them
        failed.append(f"{run.calls_past_context} model call(s) past the model's context")
    unpriced = ""
    if priced and run.verifier_cost(prices) is None:
        unpriced = f"no price for a verifier's model: {', '.join(run.unpriced_models(prices))}"
    calls = run.read_back_calls + run.verifier_read_back_calls
    read_back = (
        f"{calls} call{'s' if calls != 1 else ''} read back from another run's, not paid here"
        if calls
        else ""
    )
    return "; ".join(part for part in (run.error, ", ".join(failed), unpriced, read_back) if part)


def _cost(cost: float | None) -> str:
    return "—" if cost is None else f"${cost:.4f}"


@app.command(short_help="Run a grid of runs (datasets × modes × budgets …) in one folder.")
def bench(
    config: Annotated[Path, typer.Argument(help="bench config (TOML): [[datasets]] and [grid]")],
    out_dir: Annotated[
        Path, typer.Option("--out", help="bench folder; the same folder again resumes it")
    ],
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="[ADDRESS]",
            help=(
                "split each cell's problems across a Ray cluster: alone, a local one started "
                "for this command; or HOST:PORT, ray://HOST:PORT, auto (needs thinktree[ray])"
            ),
        ),
    ] = None,
    shards: Annotated[
        int | None,
        typer.Option("--shards", help="shards per cell with --ray [default: the cluster's CPUs]"),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
) -> None:
    """Run a grid of runs (datasets × modes × budgets × endpoints …) into one bench folder."""
    configure(verbose=verbose)
    from thinktree.bench.commands import bench_main

    try:
        main = bench_main(config, out_dir, out, err, ray=ray, shards=shards, say=_say_dim)
    except (ThinktreeError, DatasetError) as exc:
        raise _fail(str(exc)) from None
    try:
        failed = _run_async(main)
    except typer.Exit as exc:
        if exc.exit_code in (130, TERMINATED, UNWRITABLE, UNAVAILABLE):
            err.print(
                f"resume with: {shell_command('thinktree', 'bench', config, '--out', out_dir)}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        raise
    if failed:  # as a run whose calls failed: its cells' results are incomplete
        raise typer.Exit(INCOMPLETE)


@app.command(short_help="Tables, paired comparisons and plots: report.md, report.html.")
def report(
    path: Annotated[Path, typer.Argument(help="a run folder or a bench folder")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="where report.md/.html go (default: PATH)")
    ] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="draw the PNG plots")] = True,
    plot_terminal: Annotated[
        bool, typer.Option("--plot-terminal", help="draw the scaling curve in the terminal")
    ] = False,
) -> None:
    """Tables, paired comparisons and plots of finished runs: report.md and report.html."""
    configure()
    from thinktree.bench.commands import report_main

    try:
        report_main(path, out_dir, plots=plots, plot_terminal=plot_terminal, out=out)
    except (ThinktreeError, DatasetError) as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(_cannot(exc, path)) from None


@app.command(
    short_help="Serve a model until Ctrl-C (runs reuse the embedded one).",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def serve(
    ctx: typer.Context,
    engine: Annotated[str, typer.Argument(help="vllm | llamacpp")] = "vllm",
    model: Annotated[
        str | None,
        typer.Argument(
            help="vllm: a model folder or id; llamacpp: a .gguf file (default: the embedded model)"
        ),
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="port to listen on (default: a free one)")
    ] = None,
    host: Annotated[
        str,
        typer.Option(
            help="address to listen on: 127.0.0.1 for this machine only, 0.0.0.0 for every "
            "interface (other machines can reach it, without authentication); an IPv6 "
            "address with or without brackets ([::1])"
        ),
    ] = "127.0.0.1",
    n_threads: Annotated[
        int | None, typer.Option(help="llamacpp: CPU threads (default: all cores)")
    ] = None,
    served_name: Annotated[
        str | None,
        typer.Option(
            help="the model's name on the server (runs reuse the embedded model only under "
            "its own name)"
        ),
    ] = None,
    reasoning_parser: Annotated[
        str | None,
        typer.Option(help="vllm: reasoning parser (default: detected; 'none' for none)"),
    ] = None,
    chat_template: Annotated[
        Path | None, typer.Option(help="vllm: a Jinja chat template file to serve with")
    ] = None,
    max_model_len: Annotated[int | None, typer.Option(help="vllm: context length")] = None,
    startup_timeout: Annotated[
        float, typer.Option(help="seconds to wait for the server to become healthy")
    ] = 900,
) -> None:
    """Serve a model on 127.0.0.1, or on --host, until Ctrl-C (runs reuse the embedded one).

    Arguments after `--` go to vllm as they are, except --host, --port and
    --served-model-name (use thinktree's) and those that leave the plain HTTP API
    thinktree checks (--uds, --ssl-certfile, --ssl-keyfile, --grpc, --headless).
    """
    configure()
    from thinktree.serving.commands import ServeRequest, serve_until_stopped

    request = ServeRequest(
        engine=engine,
        model=model,
        port=port,
        host=host,
        n_threads=n_threads,
        served_name=served_name,
        reasoning_parser=reasoning_parser,
        chat_template=chat_template,
        max_model_len=max_model_len,
        startup_timeout=startup_timeout,
        extra_args=tuple(ctx.args),
    )

    async def main() -> None:
        async with serve_until_stopped(request) as server:
            took = f" (ready in {server.startup_s:.0f} s)" if server.startup_s is not None else ""
            where = printable(server.base_url)
            if server.remote_url is not None:
                err.print(
                    f"warning: the server listens on {printable(request.host)} without "
                    "authentication; anyone who can reach it can use it",
                    soft_wrap=True,
                    highlight=False,
                )
                if server.remote_url != server.base_url:
                    where += f"; from other machines: {printable(server.remote_url)}"
            out.print(
                f"serving [bold]{printable(server.model)}[/] with {request.engine} at "
                f"{where}{took}; log: {printable(str(server.log_path))}; {_how_to_stop()}",
                soft_wrap=True,
                highlight=False,
            )
            await _until_terminated()
        err.print("stopped")

    try:
        _run_async(main, ctrl_c_stops=True)
    except typer.Exit as exc:
        if exc.exit_code == 130:
            err.print("stopped")
            raise typer.Exit(0) from None
        raise


def _how_to_stop() -> str:
    """How the user stops ``serve``: Ctrl-C where it reaches it (run in the foreground of a
    terminal, Ctrl-C not ignored); else the signal that does (started with ``&``, under
    ``nohup``, or with no terminal at all)."""
    if signal.getsignal(signal.SIGINT) != signal.SIG_IGN and _in_terminal_foreground():
        return "Ctrl-C to stop"
    return f"stop it with: kill {os.getpid()}"


def _in_terminal_foreground() -> bool:
    """Whether this process is in the foreground of its controlling terminal (where the
    terminal's Ctrl-C goes); False with no terminal."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


async def _until_terminated() -> None:
    """Return on SIGTERM, or on SIGHUP (its terminal closed) unless it was started immune
    to hangups (``nohup``: it goes on serving); Ctrl-C raises KeyboardInterrupt as usual."""
    import signal

    stops = [signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:  # a handler would undo nohup's
        stops.append(signal.SIGHUP)
    with anyio.open_signal_receiver(*stops) as signals:
        async for _ in signals:
            return


from thinktree.verifiers.cli import verifier_app  # noqa: E402

app.add_typer(verifier_app, name="verifier")


def _ray_alone(args: list[str]) -> list[str]:
    """``args`` with ``--ray`` given its value when it stands alone (a local cluster).

    typer has no options whose value is optional; what follows ``--ray`` is its value
    only when it looks like one (``local``, ``auto``, or an address with a port).
    """
    if "--ray" not in args:
        return args
    from thinktree.bench.commands import LOCAL_RAY

    out: list[str] = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg == "--ray":
            following = args[i + 1] if i + 1 < len(args) else ""
            named = following in (LOCAL_RAY, "auto")
            if not named and (":" not in following or following.startswith("-")):
                out.append(LOCAL_RAY)
    return out


def _click_error(name: str) -> type[Exception]:
    """click's exception class ``name``, as the installed typer raises it (newer typers
    carry their own copy of click, older ones use click itself)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


def main() -> None:
    """Console-script entry point."""
    usage_error, click_error = _click_error("UsageError"), _click_error("ClickException")
    try:
        code = app(args=_ray_alone(sys.argv[1:]), standalone_mode=False)
    except BrokenPipeError:
        # what is left in stdout's buffer would fail again as the interpreter exits
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except usage_error as exc:
        # a bad flag or value is one line, as every other error: what is wrong, and where
        # the command's flags are listed
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "thinktree"
        message = getattr(exc, "format_message", exc.__str__)()
        sys.exit(_fail(f"{message} (see {where} --help)").exit_code)
    except click_error as exc:
        message = getattr(exc, "format_message", exc.__str__)()
        sys.exit(_fail(message, getattr(exc, "exit_code", 1)).exit_code)
    except typer.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()

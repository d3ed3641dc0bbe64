"""The bodies of ``thinktree bench`` and ``thinktree report`` (the CLI only wires them up)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.console import Console

from thinktree._files import busy, in_use
from thinktree.bench.grid import load_bench_config
from thinktree.bench.results import load
from thinktree.errors import ConfigError
from thinktree.hints import shell_command
from thinktree.sanitize import clean, printable

#: ``--ray`` given without an address: start a local Ray instance for the command.
LOCAL_RAY = "local"


def bench_main(
    config_path: Path,
    out_dir: Path,
    out: Console,
    err: Console,
    *,
    ray: str | None = None,
    shards: int | None = None,
    say: Callable[[str], None],
) -> Callable[[], Awaitable[int]]:
    """Check the config now (bad input fails before anything exists); return the bench to run,
    which returns how many of its cells' model calls failed (a run again sends those).

    ``ray``: run each cell's problems in shards on a Ray cluster, ``LOCAL_RAY`` for one
    started here (see :mod:`thinktree.bench.cluster`); ``shards``: how many per cell.
    ``say``: where a line of progress goes (which embedded server the cells use).
    """
    from thinktree.bench.progress import BenchProgress
    from thinktree.bench.runner import (
        cell_stopped,
        failed_calls,
        first_failure,
        plan_bench,
        run_bench,
    )
    from thinktree.bench.sharding import check_shardable

    config = load_bench_config(config_path)
    cells = config.cells()
    if shards is not None and shards < 1:
        raise ConfigError(f"--shards must be at least 1, not {shards}")
    if shards is not None and ray is None:
        raise ConfigError("--shards splits cells across a Ray cluster; give --ray too")
    if ray is not None:
        for cell in cells:
            check_shardable(config.settings_for(cell))

    async def main() -> int:
        from thinktree.bench.cluster import RayCluster
        from thinktree.embedded import announced_server

        cluster = None
        if ray is not None:
            # a local cluster gets one CPU per shard (or the machine's)
            cluster = RayCluster(None if ray == LOCAL_RAY else ray, num_cpus=shards)
        with cluster or contextlib.nullcontext():
            if in_use(out_dir):  # said before the progress view starts (the lock is taken later)
                raise busy("bench", out_dir)
            plan = await plan_bench(config, out_dir, sharded=cluster is not None)
            note = config.unread_note()
            if note is not None:
                err.print(clean(note), style="dim", highlight=False, markup=False, soft_wrap=True)
            done = len(cells) - len(plan.todo)
            if done:
                where = printable(str(out_dir))
                err.print(
                    f"[dim]resuming {where}: {done}/{len(cells)} cells already done[/]",
                    soft_wrap=True,
                )
            with BenchProgress(err, len(cells), done) as view:
                outcomes = await run_bench(
                    config,
                    out_dir,
                    watcher=view,
                    embedded=lambda: announced_server(say=say),
                    shards=cluster,
                    shard_count=shards,
                    plan=plan,
                )
        ran = sum(1 for o in outcomes if o.status != "done before")
        stopped = [(o, why) for o in outcomes if (why := cell_stopped(o.folder))]
        failing = [(o, n) for o in outcomes if (n := failed_calls(o))]
        whole = len(outcomes) - len(stopped) - len(failing)
        out.print(
            f"bench {clean(str(out_dir))}: {whole} of {len(outcomes)} cells done ({ran} run now); "
            f"report with: {shell_command('thinktree', 'report', out_dir)}",
            highlight=False,
            markup=False,
            soft_wrap=True,  # the command stays whole, to copy
        )
        if stopped:
            err.print(
                f"[yellow]{len(stopped)} cell(s) stopped by their limit[/] (the first: "
                f"{printable(stopped[0][1])}); raise it in \\[run] of "
                f"{printable(str(config_path))} and run the same command again to go on",
                highlight=False,
                soft_wrap=True,
            )
        past = [r for o in outcomes if (r := o.result) is not None and r.metrics.past_context]
        if past:
            firsts = [said for r in past if (said := r.first_past_context())]
            why = f" (the first with: {printable(firsts[0])})" if firsts else ""
            err.print(
                f"[yellow]{len(past)} cell(s) had "
                f"{sum(r.metrics.past_context for r in past)} model call(s) refused as longer "
                f"than the model's context[/]{why}; no resume sends them again: shorten those "
                "prompts, or use a model or server with a longer context",
                highlight=False,
                soft_wrap=True,
            )
        calls = sum(n for _, n in failing)
        if failing:
            cause = first_failure([o for o, _ in failing])
            why = f" (the first with: {printable(cause)})" if cause else ""
            err.print(
                f"[yellow]{len(failing)} cell(s) finished with {calls} failed model call(s)[/]"
                f"{why}; once the cause is fixed, the same command again sends only those",
                highlight=False,
                soft_wrap=True,
            )
        return calls

    return main


def report_main(
    path: Path, out_dir: Path | None, *, plots: bool, plot_terminal: bool, out: Console
) -> None:
    """Print the report's tables and write report.md, report.html and the plots."""
    from thinktree.bench import render
    from thinktree.bench.report import build

    if out_dir is not None:
        _check_out(out_dir)
    loaded = load(path)
    folder = out_dir or path
    make = None
    if plots:
        from thinktree.bench.plots import make_plots

        make = make_plots
    report = build(loaded, folder / "plots", make_plots=make)
    render.terminal(report, out)
    if plot_terminal:
        from thinktree.bench.termplot import scaling_curve

        # a dataset's name is the bench config's: its control characters are shown, not sent
        out.print(clean(scaling_curve(loaded)), highlight=False, markup=False)
    md, page = render.write(report, folder)
    out.print(clean(f"wrote {md} and {page}"), highlight=False, markup=False, soft_wrap=True)


def _check_out(out_dir: Path) -> None:
    """A one-line ConfigError, before anything is written, when ``--out`` (or a folder it
    would be made in) is a file."""
    for folder in (out_dir, *out_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "is a file" if folder == out_dir else f"is in {folder}, a file"
                raise ConfigError(f"--out {out_dir} {where}; give a folder")
            return

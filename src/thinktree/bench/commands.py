"""The bodies of ``thinktree bench`` and ``thinktree report`` (the CLI only wires them up)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from rich.console import Console

from thinktree.bench.grid import load_bench_config
from thinktree.bench.results import load


def bench_main(
    config_path: Path, out_dir: Path, out: Console, err: Console
) -> Callable[[], Awaitable[None]]:
    """Check the config now (bad input fails before anything exists); return the bench to run."""
    from thinktree.bench.progress import BenchProgress
    from thinktree.bench.runner import RESULTS, run_bench

    config = load_bench_config(config_path)
    cells = config.cells()

    async def main() -> None:
        from thinktree.embedded import embedded_server

        done = sum(1 for c in cells if (out_dir / c.name / RESULTS).is_file())
        if done:
            err.print(f"[dim]resuming {out_dir}: {done}/{len(cells)} cells already done[/]")
        with BenchProgress(err, len(cells), done) as view:
            outcomes = await run_bench(config, out_dir, watcher=view, embedded=embedded_server)
        ran = sum(1 for o in outcomes if o.status != "done before")
        out.print(
            f"bench {out_dir}: {len(outcomes)} cells done ({ran} now); "
            f"report with: thinktree report {out_dir}",
            highlight=False,
        )

    return main


def report_main(
    path: Path, out_dir: Path | None, *, plots: bool, plot_terminal: bool, out: Console
) -> None:
    """Print the report's tables and write report.md, report.html and the plots."""
    from thinktree.bench import render
    from thinktree.bench.report import build

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

        out.print(scaling_curve(loaded), highlight=False, markup=False)
    md, page = render.write(report, folder)
    out.print(f"wrote {md} and {page}", highlight=False)

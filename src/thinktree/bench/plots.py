"""The report's plots (matplotlib, PNG), drawn without pyplot's global state.

- ``scaling``: accuracy vs completion tokens per problem, one line per mode (the
  test-time scaling curve), one panel per dataset;
- ``budget``: accuracy and budget utilisation vs the tokens each mode was allowed;
- ``coverage``: coverage vs accuracy per cell (the gap is what a better selector gains);
- ``cost``: accuracy vs cost per problem, per endpoint (tokens when prices are unknown);
- ``robustness``: accuracy per mode on original and perturbed problems;
- ``steps``: a sequential or hybrid cell's accuracy after each step of revision.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from thinktree.bench.grid import show
from thinktree.bench.report import (
    COMPUTE_KEYS,
    accuracy_ci,
    label,
    robustness_rows,
    varying_keys,
)
from thinktree.bench.results import CellResult, Loaded

_MODE_COLOURS = {
    "budget": "#1f77b4",
    "sequential": "#ff7f0e",
    "parallel": "#2ca02c",
    "hybrid": "#d62728",
    "auto": "#9467bd",
    "adaptive": "#8c564b",
}
_OTHER = ["#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
DPI = 110


def colour(mode: str) -> str:
    if mode in _MODE_COLOURS:
        return _MODE_COLOURS[mode]
    return _OTHER[sum(map(ord, mode)) % len(_OTHER)]


def _figure(panels: int, title: str) -> tuple[Figure, list[Axes]]:
    cols = min(3, panels)
    rows = (panels + cols - 1) // cols
    size = (5.4 * cols, 4.2 * rows + 1.4) if panels > 1 else (8.0, 6.2)
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]
    fig.suptitle(title, fontsize=12 if panels == 1 else 13, fontweight="bold")
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # a name in a script the font lacks: boxes, not stderr
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
        fig.savefig(path, format="png")
    return path


def _datasets(loaded: Loaded) -> list[str]:
    return list(dict.fromkeys(c.dataset for c in loaded.cells))


def _baseline(loaded: Loaded) -> list[CellResult]:
    """The cells on unperturbed problems (all cells when every one is perturbed)."""
    plain = [c for c in loaded.cells if c.perturbation == "none"]
    return plain or loaded.cells


def _shared_legend(
    fig: Figure, axes: Sequence[Axes], title: str, *, columns: int | None = None
) -> None:
    """One legend under the panels, with every label any panel drew (in ``columns``, or
    as many as short labels fit)."""
    seen: dict[str, Artist] = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(text, handle)
    if seen:
        fig.legend(
            list(seen.values()),
            list(seen),
            loc="outside lower center",
            ncols=min(columns or (4 if max(map(len, seen)) < 28 else 2), len(seen)),
            title=title,
            fontsize=9,
            title_fontsize=9,
        )


def _line_label(cell: CellResult, keys: Sequence[str]) -> str:
    extra = [
        f"{k}={show(cell.options.get(k))}"
        for k in keys
        if k not in (*COMPUTE_KEYS, "dataset", "perturbation") and k in cell.options
    ]
    return " · ".join([cell.mode, *extra])


def _lines(cells: list[CellResult], keys: Sequence[str]) -> dict[str, list[CellResult]]:
    out: dict[str, list[CellResult]] = {}
    for cell in cells:
        out.setdefault(_line_label(cell, keys), []).append(cell)
    return out


def _accuracy_axis(ax: Axes) -> None:
    ax.set_ylabel("accuracy (% of problems right)")
    ax.set_ylim(-3, 103)
    ax.grid(True, alpha=0.3)


def _maybe_log(ax: Axes, xs: list[float]) -> None:
    positive = [x for x in xs if x > 0]
    if positive and max(positive) / min(positive) > 8:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _tick(v)))
        ax.xaxis.set_minor_formatter(NullFormatter())


def _tick(value: float) -> str:
    """A log axis's tick: tokens as whole numbers, dollars below 10 as written (0.05)."""
    return f"{value:,.0f}" if value >= 10 else f"{value:g}"


_LINE_STYLES = ["-", "--", ":", "-."]


def scaling(loaded: Loaded, path: Path) -> Path:
    keys = varying_keys(loaded)
    datasets = _datasets(loaded)
    fig, axes = _figure(len(datasets), "Test-time scaling: accuracy vs tokens spent")
    for ax, dataset in zip(axes, datasets, strict=True):
        cells = [c for c in _baseline(loaded) if c.dataset == dataset and c.accuracy is not None]
        of_mode: dict[str, int] = {}  # lines of one mode (other endpoints, …) so far
        points: list[tuple[float, float, str]] = []  # every line's, in the order drawn
        for name, group in _lines(cells, keys).items():
            k = of_mode[group[0].mode] = of_mode.get(group[0].mode, -1) + 1
            group.sort(key=lambda c: c.tokens_per_problem)
            xs = [c.tokens_per_problem for c in group]
            cis = [accuracy_ci(c) for c in group]
            ys = [100 * ci[0] if ci else 0.0 for ci in cis]
            low = [100 * (ci[0] - ci[1]) if ci else 0.0 for ci in cis]
            high = [100 * (ci[2] - ci[0]) if ci else 0.0 for ci in cis]
            ax.errorbar(
                xs,
                ys,
                yerr=[low, high],
                marker=_MARKERS[k % len(_MARKERS)],
                linestyle=_LINE_STYLES[k % len(_LINE_STYLES)],
                capsize=3,
                color=colour(group[0].mode),
                label=name,
            )
            points.extend((x, y, name) for x, y in zip(xs, ys, strict=True))
        _maybe_log(ax, [c.tokens_per_problem for c in cells])
        ax.set_xlabel("completion tokens per problem (mean)")
        _accuracy_axis(ax)
        _name_shared_points(ax, points)
        ax.set_title(dataset)
    _shared_legend(fig, axes, "mode (error bars: 95 % CI over problems)")
    return _save(fig, path)


# How near two points are drawn on one another: about a marker's width, as a share of
# the panel's width and height.
_ONE_POINT = 0.018


def _name_shared_points(ax: Axes, points: Sequence[tuple[float, float, str]]) -> None:
    """Name the lines whose points fall on one another's (parallel and adaptive that spent
    alike): each mark drawn hides the one under it, and a line would be missing from the
    panel with only its legend entry to show for it."""
    if len(points) < 2:
        return
    ax.autoscale_view()  # the limits the panel is drawn with, to place its points
    places = ax.transLimits.transform(ax.transScale.transform([(x, y) for x, y, _ in points]))
    spots: list[tuple[float, float, float, float, dict[str, None]]] = []
    for (x, y, name), (fx, fy) in zip(points, places, strict=True):
        for spot in spots:
            if abs(spot[2] - fx) < _ONE_POINT and abs(spot[3] - fy) < _ONE_POINT:
                spot[4][name] = None
                break
        else:
            spots.append((x, y, fx, fy, {name: None}))
    for x, y, fx, fy, names in spots:
        if len(names) > 1:  # beside the point, on the side of the panel with room
            left, low = fx > 0.5, fy > 0.9
            ax.annotate(
                " / ".join(names),
                (x, y),
                xytext=(-5 if left else 5, -5 if low else 5),
                textcoords="offset points",
                ha="right" if left else "left",
                va="top" if low else "bottom",
                fontsize=7.5,
                color="0.25",
            )


def budget(loaded: Loaded, path: Path) -> Path:
    keys = varying_keys(loaded)
    datasets = _datasets(loaded)
    fig, axes = _figure(len(datasets), "Accuracy and budget utilisation vs budget")
    twins: list[Axes] = []
    for ax, dataset in zip(axes, datasets, strict=True):
        cells = [c for c in _baseline(loaded) if c.dataset == dataset]
        twin = ax.twinx()
        for name, group in _lines(cells, keys).items():
            group.sort(key=lambda c: c.tokens_allowed_per_problem)
            xs = [c.tokens_allowed_per_problem for c in group]
            c0 = colour(group[0].mode)
            ax.plot(
                xs,
                [100 * (c.accuracy or 0) for c in group],
                marker="o",
                color=c0,
                label=f"{name}: accuracy",
            )
            twin.plot(
                xs,
                [100 * (c.metrics.get("utilisation") or 0) for c in group],
                marker="s",
                markerfacecolor="none",
                linestyle=":",
                color=c0,
                label=f"{name}: utilisation",
            )
        _maybe_log(ax, [c.tokens_allowed_per_problem for c in cells])
        ax.set_xlabel("tokens allowed per problem (the mode's budget)")
        _accuracy_axis(ax)
        twin.set_ylabel("budget utilisation (% of allowed tokens used)")
        twin.set_ylim(-3, 103)
        ax.set_title(dataset)
        twins.append(twin)
    _shared_legend(
        fig, [*axes, *twins], "solid: accuracy (left axis) · dotted: utilisation (right axis)"
    )
    return _save(fig, path)


def coverage(loaded: Loaded, path: Path) -> Path:
    datasets = _datasets(loaded)
    fig, axes = _figure(1, "Coverage vs accuracy: what a better selector could gain")
    ax = axes[0]
    ax.plot([0, 100], [0, 100], linestyle="--", color="grey", label="coverage = accuracy")
    seen: set[str] = set()
    for cell in _baseline(loaded):
        if cell.accuracy is None or cell.coverage is None:
            continue
        x, y = 100 * cell.accuracy, 100 * cell.coverage
        ax.vlines(x, x, y, color=colour(cell.mode), alpha=0.35, linewidth=3)
        marker = _MARKERS[datasets.index(cell.dataset) % len(_MARKERS)]
        ax.scatter(
            [x],
            [y],
            color=colour(cell.mode),
            marker=marker,
            s=60,
            alpha=0.8,
            edgecolors="black",
            linewidths=0.5,
            label=cell.mode if cell.mode not in seen else None,
            zorder=3,
        )
        seen.add(cell.mode)
    for i, dataset in enumerate(datasets):
        ax.scatter([], [], color="white", edgecolors="black", marker=_MARKERS[i % 8], label=dataset)
    ax.set_xlabel("accuracy (% right after voting)")
    ax.set_ylabel("coverage (% with the gold among any candidate)")
    ax.set_xlim(-3, 103)
    ax.set_ylim(-3, 103)
    ax.set_aspect("equal")
    ax.grid(True, alpha=0.3)
    _shared_legend(fig, axes, "colour: mode · marker: dataset · bar: gap a selector could close")
    return _save(fig, path)


def cost(loaded: Loaded, path: Path) -> Path:
    """Accuracy vs cost per problem, a panel per dataset (accuracies on two datasets do
    not compare), the endpoint as colour and the mode as marker."""
    cells = [c for c in _baseline(loaded) if c.accuracy is not None]
    priced = all(c.cost_per_problem is not None for c in _baseline(loaded))
    title = "Accuracy vs cost across endpoints" + ("" if priced else " (no prices: tokens)")
    datasets = list(dict.fromkeys(c.dataset for c in _baseline(loaded)))
    fig, axes = _figure(len(datasets), title)
    endpoints = list(dict.fromkeys(f"{c.endpoint} · {c.model}" for c in cells))
    modes = list(dict.fromkeys(c.mode for c in cells))
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
    for ax, dataset in zip(axes, datasets, strict=True):
        xs: list[float] = []
        for cell in (c for c in cells if c.dataset == dataset):
            where = f"{cell.endpoint} · {cell.model}"
            x = (
                1000 * float(cell.cost_per_problem or 0)
                if priced
                else (cell.metrics["prompt_tokens"] + cell.metrics["completion_tokens"])
                / max(1, cell.problems_run)
            )
            xs.append(x)
            ax.scatter(
                [x],
                [100 * float(cell.accuracy or 0)],
                color=palette[endpoints.index(where) % len(palette)],
                marker=_MARKERS[modes.index(cell.mode) % len(_MARKERS)],
                s=60,
                edgecolors="black",
                linewidths=0.5,
                zorder=3,
            )
        _maybe_log(ax, xs)
        ax.set_xlabel(
            "cost per 1,000 problems (USD, prices from the config)"
            if priced
            else "tokens per problem (prompt + completion)"
        )
        _accuracy_axis(ax)
        if len(datasets) > 1:
            ax.set_title(dataset)
    for i, where in enumerate(endpoints):  # the legend's entries, drawn once
        axes[0].scatter([], [], color=palette[i % len(palette)], marker="o", label=where)
    for i, mode in enumerate(modes):
        axes[0].scatter(
            [], [], color="white", edgecolors="black", marker=_MARKERS[i % 8], label=mode
        )
    _shared_legend(fig, axes, "colour: endpoint · marker: mode")
    return _save(fig, path)


def robustness(loaded: Loaded, path: Path) -> Path | None:
    found = robustness_rows(loaded)
    if not found:
        return None
    modes = list(dict.fromkeys(cell.mode for _, cell, _ in found))
    names = ["none", *dict.fromkeys(cell.perturbation for _, cell, _ in found)]
    values: dict[tuple[str, str], list[float]] = {}
    for base, cell, p in found:
        values.setdefault((cell.mode, "none"), []).append(100 * p.acc_b)
        values.setdefault((cell.mode, cell.perturbation), []).append(100 * p.acc_a)
        del base
    fig, axes = _figure(1, "Robustness: accuracy on original and perturbed problems")
    ax = axes[0]
    width = 0.8 / len(names)
    shades = ["#4c72b0", "#dd8452", "#c44e52", "#8172b3", "#937860"]
    for j, name in enumerate(names):
        heights = [
            sum(values.get((m, name), [0.0])) / max(1, len(values.get((m, name), [])))
            for m in modes
        ]
        bars = ax.bar(
            [i + (j - (len(names) - 1) / 2) * width for i in range(len(modes))],
            heights,
            width=width,
            label="original" if name == "none" else name,
            color=shades[j % len(shades)],
        )
        ax.bar_label(bars, fmt="%.0f %%", fontsize=8, padding=2)
    ax.set_xticks(range(len(modes)), modes)
    ax.set_xlabel("mode (accuracy averaged over its cells with a perturbed twin)")
    _accuracy_axis(ax)
    _shared_legend(fig, axes, "problems")
    return _save(fig, path)


def steps(loaded: Loaded, path: Path) -> Path | None:
    """Accuracy after each step, a line per sequential or hybrid cell of two steps or more,
    a panel per dataset (None without such a cell): whether revising ("Wait") helped."""
    stepped = [c for c in loaded.cells if len(c.metrics.get("accuracy_by_step") or ()) > 1]
    if not stepped:
        return None
    keys = varying_keys(loaded)
    datasets = list(dict.fromkeys(c.dataset for c in stepped))
    fig, axes = _figure(len(datasets), "Accuracy after each step of revision")
    for ax, dataset in zip(axes, datasets, strict=True):
        cells = [c for c in stepped if c.dataset == dataset]
        for i, cell in enumerate(cells):
            by_step = cell.metrics["accuracy_by_step"]
            ax.plot(
                range(1, len(by_step) + 1),
                [100 * a for a in by_step],
                marker=_MARKERS[i % len(_MARKERS)],
                linestyle=_LINE_STYLES[i // len(_MARKERS) % len(_LINE_STYLES)],
                color=colour(cell.mode),
                label=label(cell, [k for k in keys if k != "dataset"]),
            )
        ax.set_title(dataset, fontsize=10)
        ax.set_xlabel("step (the answer standing after it, before any forced answer)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _accuracy_axis(ax)
    _shared_legend(fig, axes, "cell", columns=2)  # a cell's label is its options
    return _save(fig, path)


def make_plots(loaded: Loaded, folder: Path) -> dict[str, tuple[str, Path]]:
    """Draw every plot that applies; returns name → (caption, PNG path)."""
    out: dict[str, tuple[str, Path]] = {
        "scaling": ("Accuracy vs tokens spent per mode", scaling(loaded, folder / "scaling.png")),
        "budget": ("Accuracy and utilisation vs budget", budget(loaded, folder / "budget.png")),
        "coverage": ("Coverage vs accuracy", coverage(loaded, folder / "coverage.png")),
        "cost": ("Accuracy vs cost across endpoints", cost(loaded, folder / "cost.png")),
    }
    drawn = robustness(loaded, folder / "robustness.png")
    if drawn is not None:
        out["robustness"] = ("Accuracy under perturbations", drawn)
    drawn = steps(loaded, folder / "steps.png")
    if drawn is not None:
        out["steps"] = ("Accuracy after each step of revision", drawn)
    return out

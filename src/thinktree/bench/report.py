"""A report on finished runs: tables, paired comparisons, auto's decisions and robustness.

:func:`build` turns loaded cells into a :class:`Report` (sections of text, tables and
plots); :mod:`thinktree.bench.render` writes it as Markdown, HTML or terminal tables.
Accuracy intervals are percentile bootstraps over problems (exact binomial ones for a
cell whose problems all went one way); "A beats B" comes from
McNemar's test on the problems both were graded on, the difference's interval from a
paired bootstrap.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from thinktree.agents.modes import unread
from thinktree.bench.grid import field_name, flag_name, show
from thinktree.bench.results import CellResult, Loaded
from thinktree.bench.stats import bootstrap_ci, mcnemar, paired_bootstrap, unanimous_ci
from thinktree.orchestrator.run import MAY_CHANGE, RunSettings

#: Options that set how much compute a cell spends (they vary along a scaling curve).
COMPUTE_KEYS = ("mode", "budget", "n", "steps", "total-budget", "min-thinking", "answer-tokens")
MAX_DECISION_ROWS = 30


@dataclass(slots=True)
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""


@dataclass(slots=True)
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    images: list[tuple[str, Path]] = field(default_factory=list)  # (caption, PNG)


@dataclass(slots=True)
class Report:
    title: str
    intro: list[str]
    sections: list[Section]


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def pvalue(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _num(x: float | int | None, digits: int = 2) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.{digits}f}" if isinstance(x, float) else f"{x:,}"


def varying_keys(loaded: Loaded) -> list[str]:
    """The options that differ between cells (what a reader needs to tell them apart)."""
    keys: list[str] = []
    if len({c.dataset for c in loaded.cells}) > 1:
        keys.append("dataset")
    for key in dict.fromkeys(k for c in loaded.cells for k in c.options):
        if len({repr(c.options[key]) for c in loaded.cells if key in c.options}) > 1:
            keys.append(key)
    return keys


def label(cell: CellResult, keys: Sequence[str]) -> str:
    return _values(cell.dataset, cell.options, keys) or cell.name


def _values(dataset: str, options: dict[str, Any], keys: Sequence[str]) -> str:
    """The values of ``keys``; an option a cell's mode does not read (not among its
    options: see :meth:`~thinktree.bench.grid.BenchConfig.cells`) is left out."""
    return " · ".join(
        dataset if k == "dataset" else f"{k}={show(options[k])}"
        for k in keys
        if k == "dataset" or k in options
    )


def accuracy_ci(cell: CellResult, seed: int = 0) -> tuple[float, float, float] | None:
    """A cell's accuracy and its 95 % interval (None: no problem graded): a percentile
    bootstrap over problems, or, where they all went one way, the exact binomial one (see
    :func:`~thinktree.bench.stats.unanimous_ci`)."""
    graded = [bool(p.correct) for p in cell.graded]
    if not graded:
        return None
    if all(graded) or not any(graded):
        ci = unanimous_ci(len(graded), graded[0])
    else:
        ci = bootstrap_ci(graded, seed=seed)
    return ci.estimate, ci.low, ci.high


def _ci_text(ci: tuple[float, float, float] | None) -> str:
    if ci is None:
        return "n/a"
    est, low, high = ci
    return f"{100 * est:.1f} % [{100 * low:.0f}–{100 * high:.0f}]"


def _read_back_text(read_back: dict[str, Any] | None) -> str:
    """The calls a cell read back from another cell's, and their price ("—": none)."""
    if read_back is None:
        return "—"
    cost = read_back.get("cost_usd")
    calls = f"{read_back['calls']:,} call{'s' if read_back['calls'] != 1 else ''}"
    return calls if cost is None else f"{calls}, ${cost:.4f}"


def _problems_text(cell: CellResult) -> str:
    """A cell's problems, and how many of them ran where its limit left some unrun."""
    total = len(cell.problems)
    return str(total) if cell.problems_run == total else f"{cell.problems_run} of {total} ran"


def _past_context(cell: CellResult) -> int:
    """How many of a cell's requests passed the model's context (none in results.json
    files from before they were counted)."""
    count = cell.metrics.get("past_context")
    return count if isinstance(count, int) and not isinstance(count, bool) else 0


def cells_table(loaded: Loaded, keys: Sequence[str]) -> Table:
    borrowed = any(cell.read_back is not None for cell in loaded.cells)
    rows = []
    for cell in loaded.cells:
        m = cell.metrics
        cost = m.get("cost_usd")
        flag = " (stopped)" if cell.stopped_by else " (failed calls)" if cell.failed_calls else ""
        rows.append(
            [
                label(cell, keys) + flag,
                _problems_text(cell),
                _ci_text(accuracy_ci(cell)),
                pct(cell.coverage),
                f"{m['answered']}/{m['problems']}",
                _num(m["prompt_tokens"]),
                _num(m["completion_tokens"]),
                _num(m["thinking_tokens"]),
                f"{cell.tokens_per_problem:,.1f}",
                pct(m.get("utilisation")),
                _num(m["calls"]),
                _num(m.get("latency_p50_s")),
                _num(m.get("latency_p95_s")),
                "n/a" if cost is None else f"${cost:.4f}",
                *([_read_back_text(cell.read_back)] if borrowed else []),
            ]
        )
    note = (
        "Accuracy intervals: percentile bootstrap over problems (10,000 resamples); a cell "
        "whose problems all went one way (all right, or all wrong) gives resampling nothing "
        "to vary, and has the exact binomial (Clopper–Pearson) interval instead. "
        "Tokens are totals over the cell's problems; tok/problem is mean completion tokens "
        "per problem that ran (a stopped cell's problems its limit left unrun are left out); "
        "utilisation is completion tokens over the tokens the mode allowed."
    )
    if borrowed:
        note += (
            " Cost, latency and retries are what a cell's own calls spent; read back: the "
            "calls it reused from another cell (the bench's shared call store) and their "
            "price, which that cell paid. Their tokens count in both cells, and the cost "
            "plot prices every call a cell's answers took, read back or not."
        )
    return Table(
        "Cells",
        [
            "cell",
            "problems",
            "accuracy [95 % CI]",
            "coverage",
            "answered",
            "prompt tok",
            "completion tok",
            "thinking tok",
            "tok/problem",
            "utilisation",
            "calls",
            "p50 s",
            "p95 s",
            "cost",
            *(["read back"] if borrowed else []),
        ],
        rows,
        note=note,
    )


@dataclass(frozen=True, slots=True)
class Paired:
    a: CellResult
    b: CellResult
    key: str
    problems: int
    acc_a: float
    acc_b: float
    diff: float
    low: float
    high: float
    mcnemar_p: float
    mcnemar_method: str


def paired(a: CellResult, b: CellResult, key: str, seed: int = 0) -> Paired | None:
    """A against B on the problems both were graded on (None when they share none)."""
    outcome_b = {p.id: p.correct for p in b.graded}
    pairs = [(bool(p.correct), bool(outcome_b[p.id])) for p in a.graded if p.id in outcome_b]
    if not pairs:
        return None
    xs = [x for x, _ in pairs]
    ys = [y for _, y in pairs]
    test = mcnemar(xs, ys)
    boot = paired_bootstrap(xs, ys, seed=seed)
    low, high = boot.low, boot.high
    if xs == ys:  # no problem went otherwise: resampling has nothing to vary (accuracy_ci)
        low, high = _unanimous_difference(len(pairs))
    return Paired(
        a=a,
        b=b,
        key=key,
        problems=len(pairs),
        acc_a=sum(xs) / len(xs),
        acc_b=sum(ys) / len(ys),
        diff=boot.difference,
        low=low,
        high=high,
        mcnemar_p=test.p_value,
        mcnemar_method=test.method,
    )


def _unanimous_difference(problems: int) -> tuple[float, float]:
    """The interval of A − B where the two went the same way on every one of ``problems``:
    ± the exact binomial bound on the share of problems on which they could differ (the
    difference is never larger than that share), not a bootstrap's [0, 0]."""
    bound = unanimous_ci(problems, False).high
    return -bound, bound


def _differs_in_one(a: CellResult, b: CellResult) -> str | None:
    """The one option two cells of a dataset differ in (None: none, or several). A cell
    without an option its mode does not read (a budget cell in a grid over ``n``) ran as
    it would have with any value of it, so only the options both have count."""
    if a.dataset != b.dataset:
        return None
    diff = [k for k in a.options if k in b.options and a.options[k] != b.options[k]]
    return diff[0] if len(diff) == 1 else None


def _order(a: CellResult, b: CellResult, key: str) -> tuple[CellResult, CellResult]:
    """The pair with the larger value of ``key`` first (numbers), else in grid order."""
    va, vb = a.options.get(key), b.options.get(key)
    if isinstance(va, int | float) and isinstance(vb, int | float) and vb > va:
        return b, a
    return a, b


def comparisons(loaded: Loaded, seed: int = 0) -> list[Paired]:
    """Every pair of cells on the same dataset that differ in exactly one option."""
    out: list[Paired] = []
    cells = loaded.cells
    for i, a in enumerate(cells):
        for b in cells[i + 1 :]:
            key = _differs_in_one(a, b)
            if key is None:
                continue
            first, second = _order(a, b, key)
            found = paired(first, second, key, seed=seed)
            if found is not None:
                out.append(found)
    return out


def _shared(p: Paired, keys: Sequence[str]) -> str:
    """What the two cells of a comparison share: their other varying options (where one
    cell's mode does not read one, the other's value), else their dataset (a cell's folder
    name would repeat the option compared)."""
    return _values(p.a.dataset, {**p.b.options, **p.a.options}, keys) or p.a.dataset


def comparisons_table(found: list[Paired], keys: Sequence[str]) -> Table:
    rows = [
        [
            _shared(p, [k for k in keys if k != p.key]),
            p.key,
            show(p.a.options.get(p.key)),
            show(p.b.options.get(p.key)),
            str(p.problems),
            pct(p.acc_a),
            pct(p.acc_b),
            f"{100 * p.diff:+.1f} [{100 * p.low:+.0f}, {100 * p.high:+.0f}]",
            f"{pvalue(p.mcnemar_p)} ({p.mcnemar_method.split(' ')[0]})",
            f"{p.a.tokens_per_problem:,.0f} / {p.b.tokens_per_problem:,.0f}",
        ]
        for p in found
    ]
    return Table(
        "Paired comparisons",  # short: a part's "(1/2)" stays on the title's line at 80
        [
            "cells",
            "varies",
            "A",
            "B",
            "problems",
            "acc A",
            "acc B",
            "A − B, points [95 % CI]",
            "McNemar p",
            "tok/problem A / B",
        ],
        rows,
        note="Each pair: two cells that differ in one option, on the same problems. "
        "McNemar: exact binomial test below 25 discordant problems, else chi-square "
        "with continuity correction. The interval: a paired bootstrap over problems; where "
        "no problem went otherwise in A than in B, ± the exact binomial bound on the share "
        "of problems on which they could.",
    )


def _context_key(cell: CellResult) -> tuple[Any, ...]:
    """Everything but the compute knobs: cells with the same context share a scaling curve."""
    rest = sorted((k, repr(v)) for k, v in cell.options.items() if k not in COMPUTE_KEYS)
    return (cell.dataset, cell.model, tuple(rest))


def interpolate(points: Sequence[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of y at ``x`` along ``points`` (None outside their range)."""
    pts = sorted(points)
    if not pts or x < pts[0][0] or x > pts[-1][0]:
        return None
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[0][1]


def auto_section(loaded: Loaded, keys: Sequence[str]) -> Section | None:
    autos = [c for c in loaded.cells if c.mode == "auto"]
    if not autos:
        return None
    section = Section("The auto mode: its decisions, and fixed modes at equal tokens")
    section.text.append(
        "auto runs a cheap pilot per problem (two short samples: do they agree, how much of "
        "the pilot budget did they use) and picks parallel for easy problems and sequential "
        "for hard ones, with a larger budget only when the pilot used its budget. Each "
        "decision and its reason are recorded on the problem."
    )
    compare_rows: list[list[str]] = []
    for auto in autos:
        decisions = [p for p in auto.problems if p.decision]
        counts = Counter(
            f"{p.decision['mode']} @ {p.decision.get('budget')}" for p in decisions if p.decision
        )
        section.text.append(
            f"{label(auto, keys)}: "
            + ", ".join(f"{k}: {v} problem(s)" for k, v in counts.most_common())
        )
        rows = [
            [
                p.id,
                str(p.decision["mode"]),
                str(p.decision.get("budget")),
                "—" if p.correct is None else ("✓" if p.correct else "✗"),
                str(p.completion_tokens),
                str(p.decision.get("reason", "")),
            ]
            for p in decisions[:MAX_DECISION_ROWS]
            if p.decision
        ]
        more = len(decisions) - len(rows)
        section.tables.append(
            Table(
                f"Decisions · {label(auto, keys)}",
                ["problem", "mode", "budget", "right", "tokens", "reason"],
                rows,
                note=f"{more} more in results.json" if more > 0 else "",
            )
        )
        fixed = [
            c for c in loaded.cells if c.mode != "auto" and _context_key(c) == _context_key(auto)
        ]
        by_mode: dict[str, list[CellResult]] = {}
        for c in fixed:
            by_mode.setdefault(c.mode, []).append(c)
        for mode, group in sorted(by_mode.items()):
            pts = [(c.tokens_per_problem, c.accuracy) for c in group if c.accuracy is not None]
            at = interpolate([(x, y) for x, y in pts if y is not None], auto.tokens_per_problem)
            spent = (
                f"n/a (it spent {min(x for x, _ in pts):,.0f}–{max(x for x, _ in pts):,.0f})"
                if pts
                else "n/a"
            )
            nearest = min(group, key=lambda c: abs(c.tokens_per_problem - auto.tokens_per_problem))
            test = paired(auto, nearest, "mode")
            compare_rows.append(
                [
                    label(auto, keys),
                    f"{auto.tokens_per_problem:,.0f}",
                    pct(auto.accuracy),
                    mode,
                    pct(at) if at is not None else spent,
                    f"{label(nearest, keys)} ({nearest.tokens_per_problem:,.0f} tok)",
                    pct(nearest.accuracy),
                    "n/a" if test is None else pvalue(test.mcnemar_p),
                ]
            )
    if compare_rows:
        section.tables.append(
            Table(
                "auto against the fixed modes at equal tokens",
                [
                    "auto cell",
                    "auto tok/problem",
                    "auto acc",
                    "fixed mode",
                    "its acc at auto's tokens",
                    "nearest fixed cell",
                    "its acc",
                    "McNemar p vs auto",
                ],
                compare_rows,
                note="A fixed mode's accuracy at auto's tokens is interpolated linearly along "
                "its cells of the same dataset, model and other options.",
            )
        )
    return section


def robustness_rows(loaded: Loaded) -> list[tuple[CellResult, CellResult, Paired]]:
    """(baseline, perturbed, comparison) for each perturbed cell with an unperturbed twin."""
    out = []
    for cell in loaded.cells:
        if cell.perturbation == "none":
            continue
        for base in loaded.cells:
            if base.perturbation == "none" and _differs_in_one(cell, base) == "perturbation":
                found = paired(cell, base, "perturbation")
                if found is not None:
                    out.append((base, cell, found))
    return out


def robustness_section(loaded: Loaded, keys: Sequence[str]) -> Section | None:
    found = robustness_rows(loaded)
    if not found:
        return None
    others = [k for k in keys if k != "perturbation"]
    section = Section("Robustness: accuracy under perturbed problems")
    section.text.append(
        "misleading: another physician is said to believe a wrong answer; expert-hint: an "
        "expert states a wrong answer with certainty; shuffle: the options in another order. "
        "Δ is perturbed minus original accuracy on the same problems."
    )
    section.tables.append(
        Table(
            "Per cell",
            ["cell", "perturbation", "original", "perturbed", "Δ points [95 % CI]", "McNemar p"],
            [
                [
                    label(base, others),
                    cell.perturbation,
                    pct(p.acc_b),
                    pct(p.acc_a),
                    f"{100 * p.diff:+.1f} [{100 * p.low:+.0f}, {100 * p.high:+.0f}]",
                    pvalue(p.mcnemar_p),
                ]
                for base, cell, p in found
            ],
            note="Δ's interval: a paired bootstrap over problems, as in the paired comparisons.",
        )
    )
    groups: dict[tuple[str, str], list[tuple[CellResult, Paired]]] = {}
    for _, cell, p in found:
        groups.setdefault((cell.mode, cell.perturbation), []).append((cell, p))
    rows = []
    for (mode, name), items in sorted(groups.items()):
        mean = sum(p.diff for _, p in items) / len(items)
        # recovery within each dataset and context, then averaged over them
        curves: dict[tuple[Any, ...], list[tuple[CellResult, Paired]]] = {}
        for cell, p in items:
            curves.setdefault(_context_key(cell), []).append((cell, p))
        gains = []
        for curve in curves.values():
            curve.sort(key=lambda item: item[0].tokens_allowed_per_problem)
            (low, low_p), (high, high_p) = curve[0], curve[-1]
            if high.tokens_allowed_per_problem > low.tokens_allowed_per_problem:
                gains.append(high_p.diff - low_p.diff)
        recovery = f"{100 * sum(gains) / len(gains):+.1f}" if gains else "n/a (one budget)"
        rows.append([mode, name, str(len(items)), f"{100 * mean:+.1f}", recovery])
    section.tables.append(
        Table(
            "Per mode",
            ["mode", "perturbation", "cells", "mean Δ points", "recovered with more compute"],
            rows,
            note="Recovered: Δ at the mode's largest budget minus Δ at its smallest, on the "
            "same dataset, averaged over datasets (positive: more test-time compute wins back "
            "part of the drop).",
        )
    )
    return section


def verifier_table(loaded: Loaded, keys: Sequence[str]) -> Table | None:
    """How each cell's verifiers picked (cells that ran one), beside its vote and oracle."""
    rows = []
    borrowed = any(_judged(cell) is not None for cell in loaded.cells)
    for cell in loaded.cells:
        v = cell.metrics.get("verifier")
        if not v:
            continue
        auroc = v.get("auroc")
        cost = v.get("cost_usd")
        rows.append(
            [
                label(cell, keys),
                str(v["problems"]),
                pct(v.get("pick_accuracy")),
                pct(v.get("vote_accuracy")),
                pct(v.get("oracle")),
                "n/a" if auroc is None else f"{auroc:.3f}",
                f"{v['verdicts']} ({v['failed_verdicts']} failed)",
                _num(v["prompt_tokens"] + v["completion_tokens"]),
                "n/a" if cost is None else f"${cost:.4f}",
                *([_read_back_text(_judged(cell))] if borrowed else []),
            ]
        )
    if not rows:
        return None
    return Table(
        "Verifiers",
        [
            "cell",
            "problems",
            "best-scored",
            "majority",
            "oracle",
            "AUROC",
            "verdicts",
            "tokens",
            "cost",
            *(["read back"] if borrowed else []),
        ],
        rows,
        note="best-scored: the verifiers' top candidate is right (best-of-n, whatever rule the "
        "cell's vote used: its accuracy is the cell's own); majority: the plain vote of the "
        "same candidates (shortest-majority, unweighted); oracle: any candidate is right. "
        "Tokens and cost are the verifiers' own"
        + (
            "; read back: the judge calls a cell reused from another cell, in its tokens, "
            "not its cost (that cell paid for them)."
            if borrowed
            else "."
        ),
    )


def _judged(cell: CellResult) -> dict[str, Any] | None:
    """The judge calls a cell read back from another cell's (None: none)."""
    verifier = cell.metrics.get("verifier")
    read_back = verifier.get("read_back") if isinstance(verifier, dict) else None
    return read_back if isinstance(read_back, dict) else None


def steps_table(loaded: Loaded, keys: Sequence[str]) -> Table | None:
    """Each sequential or hybrid cell's accuracy after each step, beside its final one."""
    cells = [c for c in loaded.cells if c.metrics.get("accuracy_by_step")]
    if not cells:
        return None
    steps = max(len(c.metrics["accuracy_by_step"]) for c in cells)
    rows = []
    for cell in cells:
        by_step = cell.metrics["accuracy_by_step"]
        shown = [pct(by_step[k]) if k < len(by_step) else "—" for k in range(steps)]
        rows.append([label(cell, keys), *shown, pct(cell.accuracy)])
    return Table(
        "Accuracy after each step",
        ["cell", *(f"step {k}" for k in range(1, steps + 1)), "final"],
        rows,
        note="After step k, a line of revisions' answer is the last one its steps up to k "
        "stated, before any forced answer (a hybrid cell's branches vote on theirs); final: "
        "the cell's accuracy, forced answers included.",
    )


_DEFAULTS = {f.name: f for f in fields(RunSettings)}


def _shared_options(loaded: Loaded, keys: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """The options every cell ran under (a grid key of one value among them), and a line
    for each limit they ran under apart.

    A bench's limits and concurrency may change from one of its runs to the next, and its
    ``bench.json`` keeps the last ones given: a cell finished before ran under others. So
    those are read from what each cell's results say it ran under, never from the bench's
    ``[run]`` table."""
    shared = {  # those no cell's mode reads said nothing about its figures
        k: v
        for k, v in loaded.fixed.items()
        if field_name(k) not in MAY_CHANGE
        and (
            not loaded.cells or any(not unread(c.mode, [k.replace("_", "-")]) for c in loaded.cells)
        )
    }
    if loaded.kind != "bench":
        return shared, []
    for key, values in loaded.grid.items():  # a grid key of one value: every cell's
        if (
            isinstance(values, list)
            and len(values) == 1
            and any(key in c.options for c in loaded.cells)
        ):
            shared[key] = values[0]
    in_grid = {field_name(k) for k in loaded.grid}
    apart: list[str] = []
    for name in MAY_CHANGE:
        if name in in_grid:
            continue  # a grid key: the cells' labels say it
        by_value: dict[Any, list[str]] = {}
        for cell in loaded.cells:
            by_value.setdefault(cell.settings.get(name), []).append(label(cell, keys))
        if len(by_value) == 1:
            (value,) = by_value
            given = any(field_name(k) == name for k in loaded.fixed)
            if value is not None and (given or value != _DEFAULTS[name].default):
                shared[flag_name(name)] = value
        elif by_value:
            apart.append(
                f"Not every cell ran under the same {flag_name(name)} (the bench ran again "
                "with another): "
                + "; ".join(
                    f"{'none' if value is None else value} for {', '.join(cells)}"
                    for value, cells in by_value.items()
                )
                + "."
            )
    return shared, apart


def build(
    loaded: Loaded,
    plot_dir: Path | None,
    *,
    make_plots: Callable[[Loaded, Path], dict[str, tuple[str, Path]]] | None = None,
) -> Report:
    """The report of ``loaded``; plots are drawn into ``plot_dir`` by ``make_plots``."""
    keys = varying_keys(loaded)
    models = sorted({c.model for c in loaded.cells})
    intro = [
        f"{'Bench' if loaded.kind == 'bench' else 'Run'} {loaded.path.name}: "
        f"{len(loaded.cells)} finished cell(s), "
        f"{sum(len(c.problems) for c in loaded.cells)} problem runs, model(s) {', '.join(models)}.",
    ]
    shared, apart = _shared_options(loaded, keys)
    if shared:
        intro.append("Shared options: " + ", ".join(f"{k}={v}" for k, v in sorted(shared.items())))
    intro.extend(apart)
    if loaded.unfinished:
        intro.append(
            f"Not finished, left out: {', '.join(loaded.unfinished)} "
            "(run the bench again to finish them)."
        )
    stopped = [c for c in loaded.cells if c.stopped_by]
    if stopped:
        intro.append(
            "Stopped by their limit, so their figures cover only what ran: "
            + ", ".join(f"{label(c, keys)} ({c.stopped_by})" for c in stopped)
            + " (raise the limit and run again to go on)."
        )
    failing = [c for c in loaded.cells if c.failed_calls]
    if failing:
        intro.append(
            "With failed model calls (a problem has fewer samples where they failed, and is "
            "unanswered where all did): "
            + ", ".join(f"{label(c, keys)} ({c.failed_calls})" for c in failing)
            + " (run again to send them)."
        )
    past = [(c, n) for c in loaded.cells if (n := _past_context(c))]
    if past:
        intro.append(
            "With model calls refused as longer than the model's context (their lines kept "
            "what they had; no run sends them again): "
            + ", ".join(f"{label(c, keys)} ({n})" for c, n in past)
            + "."
        )
    plots = make_plots(loaded, plot_dir) if make_plots and plot_dir else {}
    sections = [Section("Cells", tables=[cells_table(loaded, keys)])]
    for extra_table in (steps_table(loaded, keys), verifier_table(loaded, keys)):
        if extra_table is not None:
            sections[0].tables.append(extra_table)
    pictures = Section("Plots")
    for name in ("scaling", "budget", "coverage", "cost", "robustness", "steps"):
        if name in plots:
            pictures.images.append(plots[name])
    if pictures.images:
        sections.append(pictures)
    found = comparisons(loaded)
    if found:
        sections.append(Section("Comparisons", tables=[comparisons_table(found, keys)]))
    for extra in (auto_section(loaded, keys), robustness_section(loaded, keys)):
        if extra is not None:
            sections.append(extra)
    title = f"thinktree report · {loaded.path.name}"
    return Report(title=title, intro=intro, sections=sections)

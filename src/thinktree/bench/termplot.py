"""The scaling curve drawn with characters, for ``thinktree report --plot-terminal``."""

from __future__ import annotations

import math

from thinktree.bench.results import Loaded

_MARKS = "●■▲◆▼✚✖★"
_SEVERAL = "◎"  # modes whose points fall on one character: each would hide the one before


def scaling_curve(loaded: Loaded, *, width: int = 64, height: int = 16) -> str:
    """Accuracy (%) against completion tokens per problem, one mark per mode, per dataset.

    Where points of several modes fall on one character, it shows :data:`_SEVERAL` and
    the legend names the modes there (one mark drawn over another would leave a mode off
    the plot with no sign of it)."""
    blocks: list[str] = []
    for dataset in dict.fromkeys(c.dataset for c in loaded.cells):
        cells = [c for c in loaded.cells if c.dataset == dataset and c.accuracy is not None]
        if not cells:
            continue
        modes = list(dict.fromkeys(c.mode for c in cells))
        xs = [max(c.tokens_per_problem, 1e-9) for c in cells]
        log = max(xs) / min(xs) > 8
        scale = (lambda v: math.log10(v)) if log else (lambda v: v)
        lo, hi = scale(min(xs)), scale(max(xs))
        span = hi - lo or 1.0
        grid = [[" "] * width for _ in range(height)]
        at: dict[tuple[int, int], dict[str, None]] = {}  # the modes at each character
        for cell in sorted(cells, key=lambda c: c.tokens_per_problem):
            col = round((scale(max(cell.tokens_per_problem, 1e-9)) - lo) / span * (width - 1))
            row = height - 1 - round((cell.accuracy or 0) * (height - 1))
            at.setdefault((row, col), {})[cell.mode] = None
        shared: dict[str, None] = {}  # each set of modes that share a character, once
        for (row, col), here in at.items():
            if len(here) == 1:
                grid[row][col] = _MARKS[modes.index(next(iter(here))) % len(_MARKS)]
            else:
                grid[row][col] = _SEVERAL
                shared[" + ".join(sorted(here, key=modes.index))] = None
        lines = [f"{dataset}: accuracy (%) vs completion tokens per problem"]
        for i, row_chars in enumerate(grid):
            value = 100 * (height - 1 - i) / (height - 1)
            tick = f"{value:5.0f} ┤" if i % 5 == 0 or i == height - 1 else "      │"
            lines.append(tick + "".join(row_chars))
        lines.append("      └" + "─" * width)
        left, right = f"{min(xs):,.0f}", f"{max(xs):,.0f}"
        lines.append("       " + left + " " * max(1, width - len(left) - len(right)) + right)
        lines.append(
            "       tokens"
            + (" (log scale)" if log else "")
            + "   "
            + "  ".join(f"{_MARKS[i % len(_MARKS)]} {m}" for i, m in enumerate(modes))
        )
        if shared:
            lines.append(f"       {_SEVERAL} at one point: " + "; ".join(shared))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)

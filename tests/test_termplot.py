"""The scaling curve in characters (``report --plot-terminal``): where each mode's mark lands."""

from __future__ import annotations

from pathlib import Path

from cell_results import cell_result
from thinktree.bench.results import CellResult, Loaded
from thinktree.bench.termplot import scaling_curve


def cell(mode: str, accuracy: float, completion_tokens: int) -> CellResult:
    """A cell of four problems, ``accuracy`` of them right."""
    outcomes = [i < accuracy * 4 for i in range(4)]
    return cell_result(outcomes, mode=mode, completion_tokens=completion_tokens, dataset="medqa")


def plot_rows(text: str) -> list[str]:
    """The plot's rows of marks, top (100 %) first, without the axis."""
    return [line[7:] for line in text.splitlines() if line[6:7] in ("┤", "│")]


def test_each_mode_has_its_mark_where_its_cell_lies() -> None:
    cells = [cell("budget", 0.5, 48), cell("parallel", 1.0, 192)]
    text = scaling_curve(Loaded(kind="bench", path=Path("b"), cells=cells), width=10, height=5)
    rows = plot_rows(text)
    assert len(rows) == 5
    assert rows[0] == " " * 9 + "■"  # 100 %, the most tokens: the right edge
    assert rows[2] == "●" + " " * 9  # 50 %, the fewest tokens: the left edge
    assert "● budget  ■ parallel" in text
    assert "◎" not in text


def test_modes_on_one_point_show_one_mark_and_are_named() -> None:
    """Two modes with the same accuracy and tokens: before, the second mark was drawn over
    the first and one mode was missing from the plot with nothing to say so."""
    cells = [
        cell("budget", 0.25, 48),
        cell("parallel", 0.5, 192),
        cell("adaptive", 0.5, 192),
        cell("hybrid", 0.5, 190),  # the same character at this width
    ]
    text = scaling_curve(Loaded(kind="bench", path=Path("b"), cells=cells), width=10, height=5)
    rows = plot_rows(text)
    assert rows[2] == " " * 9 + "◎"
    assert rows[3] == "●" + " " * 9
    assert text.splitlines()[-1].strip() == "◎ at one point: parallel + adaptive + hybrid"


def test_cells_of_one_mode_on_one_point_keep_its_mark() -> None:
    cells = [cell("budget", 0.5, 48), cell("budget", 0.5, 49), cell("parallel", 1.0, 192)]
    text = scaling_curve(Loaded(kind="bench", path=Path("b"), cells=cells), width=10, height=5)
    assert plot_rows(text)[2] == "●" + " " * 9
    assert "◎" not in text

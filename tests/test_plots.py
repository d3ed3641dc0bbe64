"""The report's plots: what tells their series and their axes apart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from thinktree.bench import plots
from thinktree.bench.results import CellResult, Loaded, ProblemOutcome


def _saved_into(drawn: list[Any]) -> Callable[[Any, Path], Path]:
    """A stand-in for the plots' save: each figure is kept in ``drawn``, not drawn."""

    def save(fig: Any, path: Path) -> Path:
        drawn.append(fig)
        return path

    return save


def _cell(name: str, endpoint: str, budget: int, right: int) -> CellResult:
    problems = [
        ProblemOutcome(f"q{i}", correct=i < right, covered=i < right, answered=True,
                       prompt_tokens=10, completion_tokens=budget // 2)
        for i in range(4)
    ]  # fmt: skip
    return CellResult(
        name=name,
        folder=Path(name),
        dataset="d",
        options={"mode": "budget", "budget": budget, "endpoint": endpoint},
        mode="budget",
        model="m",
        endpoint=endpoint,
        settings={},
        metrics={"completion_tokens": 4 * budget // 2, "accuracy": right / 4},
        problems=problems,
        tokens_allowed_per_problem=budget,
    )


def test_lines_of_one_mode_on_two_endpoints_are_drawn_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cells = [
        _cell(f"{i}", endpoint, budget, right)
        for i, (endpoint, budget, right) in enumerate(
            [("e1", 64, 1), ("e1", 128, 2), ("e2", 64, 2), ("e2", 128, 3)]
        )
    ]
    loaded = Loaded(kind="bench", path=tmp_path, cells=cells)
    drawn: list[Any] = []
    monkeypatch.setattr(plots, "_save", _saved_into(drawn))
    plots.scaling(loaded, tmp_path / "scaling.png")
    lines = [line for line in drawn[0].axes[0].get_lines() if line.get_linestyle() != "None"]
    assert len(lines) == 2
    styles = {(line.get_marker(), line.get_linestyle()) for line in lines}
    assert len(styles) == 2  # same mode, same colour: the marker and line tell them apart


def test_a_log_axis_of_dollars_reads_below_one() -> None:
    assert [plots._tick(v) for v in (0.01, 0.1, 0.2, 0.5, 1, 2, 50, 1500)] == [
        "0.01", "0.1", "0.2", "0.5", "1", "2", "50", "1,500",
    ]  # fmt: skip


def test_the_steps_plot_draws_each_cell_of_two_steps_or_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line per sequential or hybrid cell that revised, its accuracy after each step; a
    cell of one step is a point the table shows, and without any revising cell no plot."""
    cells = [_cell(f"{i}", "e1", 64, 2) for i in range(3)]
    for cell in cells:  # what the other plots of make_plots read
        cell.metrics["prompt_tokens"] = 40
    cells[0].metrics["accuracy_by_step"] = [0.25, 0.5, 0.75]
    cells[1].metrics["accuracy_by_step"] = [0.5]  # one step: nothing to draw
    loaded = Loaded(kind="bench", path=tmp_path, cells=cells)
    drawn: list[Any] = []
    monkeypatch.setattr(plots, "_save", _saved_into(drawn))
    assert plots.steps(loaded, tmp_path / "steps.png") == tmp_path / "steps.png"
    (line,) = drawn[0].axes[0].get_lines()
    assert list(line.get_xdata()) == [1, 2, 3] and list(line.get_ydata()) == [25, 50, 75]
    assert "steps" in plots.make_plots(loaded, tmp_path)
    del cells[0].metrics["accuracy_by_step"]
    assert plots.steps(loaded, tmp_path / "steps.png") is None
    assert "steps" not in plots.make_plots(loaded, tmp_path)


def test_a_dataset_named_in_a_script_the_font_lacks_warns_nothing(
    tmp_path: Path, recwarn: pytest.WarningsRecorder
) -> None:
    """matplotlib warned twice a glyph on stderr (its boxes stand in for them)."""
    import dataclasses

    cells = [dataclasses.replace(_cell(f"{i}", "e", b, r), dataset="日本語") for i, (b, r) in
             enumerate([(64, 1), (128, 2)])]  # fmt: skip
    path = plots.scaling(Loaded(kind="bench", path=tmp_path, cells=cells), tmp_path / "s.png")
    assert path.stat().st_size > 0
    assert not [w for w in recwarn if "missing from font" in str(w.message)]


def test_the_cost_plot_has_a_panel_per_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Accuracies on two datasets do not compare: each has its panel, with its own cells,
    and the endpoints' colours and the modes' markers are one legend for all."""
    cells = [_cell(f"{i}", endpoint, 64, right) for i, (endpoint, right) in enumerate(
        [("e1", 1), ("e2", 2), ("e1", 3)]
    )]  # fmt: skip
    cells[2].dataset = "other"
    for cell in cells:
        cell.metrics["prompt_tokens"] = 40
    loaded = Loaded(kind="bench", path=tmp_path, cells=cells)
    drawn: list[Any] = []
    monkeypatch.setattr(plots, "_save", _saved_into(drawn))
    plots.cost(loaded, tmp_path / "cost.png")
    panels = drawn[0].axes
    assert [ax.get_title() for ax in panels] == ["d", "other"]
    points = [[tuple(c.get_offsets()[0]) for c in ax.collections if len(c.get_offsets())]
              for ax in panels]  # fmt: skip
    assert [[y for _, y in panel] for panel in points] == [[25.0, 50.0], [75.0]]
    (legend,) = drawn[0].legends
    assert [t.get_text() for t in legend.get_texts()] == ["e1 · m", "e2 · m", "budget"]


def test_lines_whose_points_fall_on_one_another_are_named_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parallel and adaptive that spent alike and scored alike: the mark drawn last hid the
    other's, and the panel showed one line of two with nothing to say so."""
    import dataclasses

    def of_mode(cell: CellResult, mode: str) -> CellResult:
        return dataclasses.replace(cell, mode=mode, options={**cell.options, "mode": mode})

    cells = [
        _cell("0", "e", 64, 1),
        of_mode(_cell("1", "e", 256, 3), "parallel"),
        of_mode(_cell("2", "e", 256, 3), "adaptive"),
        of_mode(_cell("3", "e", 256, 1), "hybrid"),  # the same tokens, another accuracy
    ]
    drawn: list[Any] = []
    monkeypatch.setattr(plots, "_save", _saved_into(drawn))
    plots.scaling(Loaded(kind="bench", path=tmp_path, cells=cells), tmp_path / "s.png")
    (ax,) = drawn[0].axes
    (named,) = ax.texts
    assert named.get_text() == "parallel / adaptive"
    assert named.xy == (128.0, 75.0)
    drawn.clear()
    plots.scaling(Loaded(kind="bench", path=tmp_path, cells=cells[:2]), tmp_path / "s.png")
    assert not drawn[0].axes[0].texts

"""Tables too wide for the terminal are shown in parts, with no figure cut in two."""

from __future__ import annotations

import io

from rich.console import Console
from rich.text import Text

from thinktree.terminal_tables import Column, fitted

FIGURES = [f"{11.1 * i:.1f} % [0–100]" for i in range(8)]
COLUMNS = [Column("cell", "left"), *(Column(f"accuracy of arm {i}") for i in range(8))]
ROWS: list[list[str | Text]] = [
    [f"medqa · mode=parallel · budget={budget}", *FIGURES] for budget in (32, 64)
]


def shown(columns: list[Column], rows: list[list[str | Text]], width: int, **kw: str) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, color_system=None)
    for table in fitted("Cells", columns, rows, width, **kw):
        console.print(table)
    return out.getvalue()


def test_a_table_too_wide_is_shown_in_parts_that_fit_with_every_figure_whole() -> None:
    text = shown(COLUMNS, ROWS, 80, caption="intervals: bootstrap")
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    parts = [line.strip() for line in lines if line.strip().startswith("Cells (")]
    count = len(parts)
    assert count > 1 and parts == [f"Cells ({i}/{count})" for i in range(1, count + 1)]
    for figure in FIGURES:  # on one line, never "33." over "3 %"
        assert sum(line.count(figure) for line in lines) == 2, figure
    # each part begins with the rows' names: the first column is in every one
    assert sum(line.count("medqa · mode=parallel ·") for line in lines) == 2 * len(parts)
    assert text.count("intervals: bootstrap") == 1 and text.rstrip().endswith("bootstrap")


def test_a_table_that_fits_is_one_table_as_it_is() -> None:
    text = shown(COLUMNS, ROWS, 250)
    assert "Cells (" not in text and "Cells" in text
    assert "accuracy of arm 7" in text  # its header on one line
    assert "medqa · mode=parallel · budget=64" in text


def test_prose_breaks_between_words_and_names_are_shown_as_written() -> None:
    note = "one call read back from another run's store, not paid here"
    columns = [Column("run", "left"), Column("tokens"), Column("note", "left")]
    rows: list[list[str | Text]] = [
        ["[bold]r1\x1b[2J", "1673", note],
        [Text("r2", style="green"), "12,345,678", "—"],
    ]
    text = shown(columns, rows, 40)
    assert max(len(line) for line in text.splitlines()) <= 40
    assert "[bold]r1␛[2J" in text and "\x1b" not in text  # no markup, no control
    assert "12,345,678" in text
    words = {word for line in text.splitlines() for word in line.replace("│", " ").split()}
    assert set(note.split()) <= words  # every word whole, wherever the lines break


def test_a_terminal_narrower_than_a_figure_still_gets_lines_that_fit() -> None:
    text = shown(COLUMNS, ROWS, 30)
    assert max(len(line) for line in text.splitlines()) <= 30
    assert "Cells (1/" in text


def test_the_parts_are_as_even_as_their_number_allows() -> None:
    """Fourteen columns of one width that need two parts go seven and seven, not as many
    as fit and then the rest."""
    columns = [Column("name", "left"), *(Column(f"c{i:02d}") for i in range(14))]
    rows: list[list[str | Text]] = [["row", *(f"{i:010d}" for i in range(14))]]
    text = shown(columns, rows, 160)
    heads = [line for line in text.splitlines() if " c0" in line or " c1" in line]
    assert [line.count(" c") for line in heads] == [7, 7]
    assert "Cells (2/2)" in text and "Cells (3/" not in text


def test_a_header_breaks_between_words_but_never_inside_its_brackets() -> None:
    # the report's comparison table: its figures are about as wide as its headers' words
    columns = [Column("cell", "left"), *(Column(f"A{i} − B, points [95 % CI]") for i in range(6))]
    rows: list[list[str | Text]] = [["c1", *(f"+{i}.0 [-1.0, 2.0]" for i in range(6))]]
    for width in (60, 80):
        lines = shown(columns, rows, width).splitlines()
        assert max(len(line) for line in lines) <= width
        assert sum(line.count("[95 % CI]") for line in lines) == 6  # whole, once per column
        assert not any("[95 %" in line and "[95 % CI]" not in line for line in lines)


def test_a_bench_cell_s_run_folder_stays_whole_in_80_columns() -> None:
    """A cell's folder name is one long word, which the user copies into ``report``."""
    name = "007_pubmedqa_mode-parallel_endpoint-embedded"  # 44 characters
    headers = ("status", "mode", "endpoint", "model", "progress", "tokens")
    columns = [Column("run", "left"), *(Column(c) for c in headers)]
    rows: list[list[str | Text]] = [
        [name, "completed", "parallel", "embedded", "smollm2", "6/6", "1,455"]
    ]
    text = shown(columns, rows, 80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "(1/" in text  # in parts, each led by the name
    assert text.count(name) == text.count("(") and "1,455" in text

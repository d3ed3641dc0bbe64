"""Tables that fit the terminal they are printed on.

A table wider than the terminal is shown as several, each beginning with the table's
first column (what its rows are) and taking its share of the others: as few parts as fit,
and as even as their number allows. Figures
are never cut in two: only the first column and prose (cells longer than
:data:`PROSE_AFTER` characters) break, and then between words; headers break between
words too, but never inside a bracketed aside such as ``[95 % CI]``. Rich alone squeezes every
column of a wide table, so at 80 columns ``33.3 %`` read ``33.`` over ``3 %``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

from thinktree.sanitize import clean

__all__ = ["PROSE_AFTER", "Column", "fitted"]

PROSE_AFTER = 24
"""A column with a cell longer than this (in terminal cells) holds prose, which may break
between words; a shorter one holds figures and names, kept whole."""

_PER_COLUMN = 3  # a space each side of it and the border after it
_EDGE = 1  # the table's left border

Cell = str | Text
"""A cell: text shown as written (its control characters made visible), or a styled
:class:`~rich.text.Text` (which is shown as it is)."""


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    justify: Literal["left", "right"] = "right"


@dataclass(slots=True)
class _Measure:
    natural: int  # its widest line, header on one line
    least: int  # the narrowest it can be without breaking what must stay whole
    wraps: bool


def fitted(
    title: str,
    columns: Sequence[Column],
    rows: Sequence[Sequence[Cell]],
    width: int,
    *,
    caption: str | None = None,
) -> list[Table]:
    """``rows`` under ``columns`` as rich tables that fit ``width`` terminal cells: one
    where it fits, else one per group of columns, titled ``title (1/2)``, ``(2/2)``…, each
    with the first column; ``caption`` goes under the last."""
    texts = [[_text(cell) for cell in row] for row in rows]
    measures = [
        _measure(column.header, [row[j].plain for row in texts], first=j == 0)
        for j, column in enumerate(columns)
    ]
    if _EDGE + sum(m.natural + _PER_COLUMN for m in measures) <= width or len(columns) < 2:
        groups = [list(range(1, len(columns)))]
        widths = [m.natural for m in measures]
    else:
        groups, widths = _grouped(measures, width)
    tables = []
    for number, group in enumerate(groups, start=1):
        named = title if len(groups) == 1 else f"{title} ({number}/{len(groups)})"
        table = Table(
            title=Text(clean(named)),
            caption=Text(clean(caption)) if caption and number == len(groups) else None,
            caption_justify="left",
        )
        for j in (0, *group):
            table.add_column(
                _header(columns[j].header, widths[j]),
                justify=columns[j].justify,
                width=widths[j],
                no_wrap=not measures[j].wraps,
                overflow="fold",  # only a word wider than its column (a very narrow terminal)
            )
        for row in texts:
            table.add_row(*(row[j] for j in (0, *group)))
        tables.append(table)
    return tables


def _text(cell: Cell) -> Text:
    return cell if isinstance(cell, Text) else Text(clean(cell))


def _measure(header: str, cells: list[str], *, first: bool) -> _Measure:
    lines = [cell_len(line) for cell in cells for line in cell.split("\n")]
    natural = max([cell_len(header), *lines])
    wraps = first or max(lines, default=0) > PROSE_AFTER
    words = [cell_len(word) for cell in cells for word in cell.split()] if wraps else lines
    return _Measure(natural, max([_longest_word(header), *words, 1]), wraps)


def _longest_word(text: str) -> int:
    return max((cell_len(word) for word in _words(text)), default=0)


_HEADER_WORD = re.compile(r"\[[^\]]*\]|\S+")
"""A header's unit: a bracketed aside (``[95 % CI]``) is kept whole, as a word is."""


def _words(header: str) -> list[str]:
    return _HEADER_WORD.findall(header)


def _grouped(measures: list[_Measure], width: int) -> tuple[list[list[int]], list[int]]:
    """The other columns in groups that fit beside the first; every column's width."""
    first = measures[0]
    # the first column: whole where it can be, else a third of the terminal at least, and
    # never less than its longest word unless that is more than three fifths of it (a
    # bench cell's run folder, one word of some 45 characters, stays whole at 80 columns,
    # to read and to copy)
    label = min(first.natural, max(min(first.least, width * 3 // 5), width // 3))
    room = width - _EDGE - (label + _PER_COLUMN)
    widths = [label] + [min(m.least, max(room - _PER_COLUMN, 1)) for m in measures[1:]]
    needs = {j: widths[j] + _PER_COLUMN for j in range(1, len(measures))}
    # as few groups as fit, and as even as they can be: the least room per group that
    # still packs them into that many
    fewest = len(_packed(needs, room))
    low, high = min(max(needs.values()), room), room
    while low < high:
        middle = (low + high) // 2
        if len(_packed(needs, middle)) <= fewest:
            high = middle
        else:
            low = middle + 1
    groups = _packed(needs, max(low, 1))
    for group in groups:  # the room a group leaves goes to its columns that would widen
        slack = room - sum(widths[j] + _PER_COLUMN for j in group)
        wanting = sorted(group, key=lambda j: measures[j].natural - widths[j])
        for left, j in enumerate(wanting):
            give = min(measures[j].natural - widths[j], slack // (len(wanting) - left))
            widths[j] += give
            slack -= give
    return groups, widths


def _packed(needs: dict[int, int], room: int) -> list[list[int]]:
    """The columns in order, in groups of at most ``room`` cells each (a column wider than
    that, alone)."""
    groups: list[list[int]] = []
    used = room + 1
    for j, need in needs.items():
        if used + need > room:
            groups.append([])
            used = 0
        groups[-1].append(j)
        used += need
    return groups


def _header(text: str, width: int) -> Text:
    """``text`` broken between words (a bracketed aside is one) into lines of at most
    ``width`` cells."""
    lines: list[str] = []
    for word in _words(text):
        if lines and cell_len(lines[-1]) + 1 + cell_len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return Text(clean("\n".join(lines)))

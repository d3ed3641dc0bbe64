"""One-line rows that fit a pane: what matters stays, the rest is cut with "…".

A row is a sequence of pieces (a status mark, a label, an answer, token counts, …) and
the order they give way in. Cutting the whole line at the pane's edge would hide its
end, which is where the answer and the outcome are; instead the less important pieces
are shortened or left out first, each cut piece marked with "…".
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.cells import cell_len
from rich.text import Text

ELLIPSIS = "…"


@dataclass(frozen=True, slots=True)
class Piece:
    """``text`` in ``style``, after ``lead`` (spacing or an arrow that goes with it).

    Cut, it keeps at least ``least`` cells ("…" included) or is left out, lead and all;
    ``least=0`` means it is shown whole or not at all (a token count, say).
    """

    text: str
    style: str = ""
    lead: str = ""
    least: int = 1
    middle: bool = False
    """Cut in the middle ("case-0…0417"): for ids, which often share a long prefix."""

    def cells(self, shown: str | None) -> int:
        """Cells it takes showing ``shown`` (None: left out)."""
        return 0 if shown is None else cell_len(self.lead) + cell_len(shown)

    def shown_in(self, cells: int) -> str | None:
        """Its text in at most ``cells`` cells: whole, cut with "…", or None (left out)."""
        if cells >= cell_len(self.text):
            return self.text
        if self.least == 0 or cells < self.least:
            return None
        if self.middle and cells >= 3:
            return _middle_cut(self.text, cells)
        cut = Text(self.text)
        cut.truncate(cells, overflow="ellipsis")
        return cut.plain


@dataclass(frozen=True, slots=True)
class Row:
    """A line in pieces, and how it gives way to a narrow pane.

    ``cuts`` are steps ``(piece index, cells)`` taken in order while the line is too
    wide: each cuts that piece down to ``cells`` (as far as needed, and never below its
    ``least``: 0 lets it be left out). Pieces no step names are never cut.
    """

    pieces: tuple[Piece, ...]
    cuts: tuple[tuple[int, int], ...] = ()

    @property
    def plain(self) -> str:
        return "".join(p.lead + p.text for p in self.pieces)

    def fit(self, width: int | None = None) -> Text:
        """The row in at most ``width`` cells (None: whole)."""
        pieces = self.pieces
        shown: list[str | None] = [p.text for p in pieces]
        if width is not None:
            excess = sum(p.cells(s) for p, s in zip(pieces, shown, strict=True)) - width
            cut: list[int] = []
            for index, cells in self.cuts:
                if excess <= 0:
                    break
                piece, before = pieces[index], shown[index]
                if before is None:
                    continue
                after = piece.shown_in(max(cells, cell_len(before) - excess))
                excess -= piece.cells(before) - piece.cells(after)
                shown[index] = after
                cut.append(index)
            # a piece left out whole may free more than was needed: give the rest back to
            # the pieces cut before it, the more important (the later cut) first
            for index in reversed(cut):
                if excess >= 0:
                    break
                piece, now = pieces[index], shown[index]
                room = piece.cells(now) - excess - cell_len(piece.lead)
                grown = piece.shown_in(room)
                if piece.cells(grown) > piece.cells(now):
                    excess += piece.cells(grown) - piece.cells(now)
                    shown[index] = grown
        text = Text(no_wrap=True, overflow="ellipsis")
        for piece, part in zip(pieces, shown, strict=True):
            if part is not None and (part or piece.lead):
                text.append(piece.lead + part, style=piece.style)
        if width is not None and text.cell_len > width:  # the pieces never cut, too wide
            text.truncate(max(width, 0), overflow="ellipsis")
        return text


class RowBuilder:
    """Pieces added one by one; :meth:`add` returns the index a cut step names."""

    def __init__(self) -> None:
        self.pieces: list[Piece] = []

    def add(
        self, text: str, style: str = "", *, lead: str = "", least: int = 1, middle: bool = False
    ) -> int:
        self.pieces.append(Piece(text, style, lead, least, middle))
        return len(self.pieces) - 1

    def row(self, *cuts: tuple[int | None, int]) -> Row:
        """The row; steps naming a piece never added (None) are skipped."""
        return Row(tuple(self.pieces), tuple((i, c) for i, c in cuts if i is not None))


def _middle_cut(text: str, cells: int) -> str:
    """``text`` in ``cells`` cells (at least 3): its start, "…", and its end (the larger
    half: where ids differ)."""
    room = cells - cell_len(ELLIPSIS)
    tail_room = room - room // 2
    head, used = [], 0
    for char in text:
        if used + cell_len(char) > room - tail_room:
            break
        head.append(char)
        used += cell_len(char)
    tail: list[str] = []
    used = 0
    for char in reversed(text):
        if used + cell_len(char) > tail_room:
            break
        tail.append(char)
        used += cell_len(char)
    return "".join(head) + ELLIPSIS + "".join(reversed(tail))

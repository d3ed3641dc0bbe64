"""One-line rows that fit a pane: what matters stays, the rest is cut with "…".

A row is a sequence of pieces (a status mark, a label, an answer, token counts, …) and
the order they give way in. Cutting the whole line at the pane's edge would hide its
end, which is where the answer and the outcome are; instead the less important pieces
are shortened or left out first, each cut piece marked with "…": a piece left out whole
leaves a "…" in its place (one for a run of them), so a row never drops a count or a
vote without showing that something is missing.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.cells import cell_len
from rich.text import Text

ELLIPSIS = "…"
_ELLIPSIS_CELLS = cell_len(ELLIPSIS)
DROP_MARKS = -1
"""A cut step ``(DROP_MARKS, 0)``: the "…" that left-out pieces leave goes too. Put it
just before the step that would cut what must stay whole (the answer): the mark is worth
less than what it would take the room from."""


@dataclass(frozen=True, slots=True)
class Piece:
    """``text`` in ``style``, after ``lead`` (spacing or an arrow that goes with it).

    Cut, it keeps at least ``least`` cells ("…" included) or is left out (a "…" after
    its lead stands for it); ``least=0`` means it is shown whole or not at all (a token
    count, say).
    """

    text: str
    style: str = ""
    lead: str = ""
    least: int = 1
    middle: bool = False
    """Cut in the middle ("case-0…0417"): for ids, which often share a long prefix."""
    label: str = ""
    """Said before the text, after the lead (both in ``label_style``), only while the text
    is shown: a piece left out leaves its lead and "…", never a label with no value."""
    label_style: str = "dim"
    with_previous: bool = False
    """Shown only with the piece before it (cut steps must leave this one out first)."""

    def shown_in(self, cells: int) -> str | None:
        """Its text in at most ``cells`` cells: whole, cut with "…", or None (left out)."""
        if cells >= cell_len(self.text):
            return self.text
        if self.least == 0 or cells < self.least:
            return None
        return middle_cut(self.text, cells) if self.middle else _end_cut(self.text, cells)


@dataclass(frozen=True, slots=True)
class Row:
    """A line in pieces, and how it gives way to a narrow pane.

    ``cuts`` are steps ``(piece index, cells)`` taken in order while the line is too
    wide: each cuts that piece down to ``cells`` (as far as needed, and never below its
    ``least``: 0 lets it be left out, a "…" in its place). Pieces no step names are never
    cut; a step naming :data:`DROP_MARKS` takes those "…" away.
    """

    pieces: tuple[Piece, ...]
    cuts: tuple[tuple[int, int], ...] = ()

    @property
    def plain(self) -> str:
        return "".join(p.lead + p.label + p.text for p in self.pieces)

    def fit(self, width: int | None = None) -> Text:
        """The row in at most ``width`` cells (None: whole)."""
        shown, marked = self._fitted(width)
        if width is not None and self._cells(shown, marked) > width:
            marked = False  # the pieces never cut, too wide: the line's end is cut below
        text = Text(no_wrap=True, overflow="ellipsis")
        for part, style in self._parts(shown, marked):
            text.append(part, style=style)
        if width is not None and text.cell_len > width:
            text.truncate(max(width, 0), overflow="ellipsis")
        return text

    def fits(self, width: int) -> bool:
        """Whether its cut steps bring the row within ``width`` cells (else :meth:`fit`
        cuts its end)."""
        return self._cells(*self._fitted(width)) <= width

    def _fitted(self, width: int | None) -> tuple[list[str | None], bool]:
        """What :meth:`fit` shows of each piece (None: left out) once its cut steps have
        been taken as far as ``width`` needs, and whether left-out pieces leave a "…"."""
        pieces = self.pieces
        shown: list[str | None] = [p.text for p in pieces]
        marked = True
        if width is not None:
            cut: list[int] = []
            for index, cells in self.cuts:
                excess = self._cells(shown, marked) - width
                if excess <= 0:
                    break
                if index == DROP_MARKS:
                    marked = False
                    continue
                piece, before = pieces[index], shown[index]
                if before is None:
                    continue
                shown[index] = piece.shown_in(max(cells, cell_len(before) - excess))
                cut.append(index)
            # a piece left out whole may free more than was needed: give the rest back to
            # the pieces cut before it, the more important (the later cut) first
            for index in reversed(cut):
                if self._cells(shown, marked) >= width:
                    break
                piece, now = pieces[index], shown[index]
                if piece.with_previous and shown[index - 1] is None:
                    continue  # never "✗ 1" back without its "✓ 2"
                # the room its text has once shown (a left-out piece frees its "…")
                room = width - self._cells([*shown[:index], "", *shown[index + 1 :]], marked)
                grown = piece.shown_in(room)
                if grown is not None and (now is None or cell_len(grown) > cell_len(now)):
                    shown[index] = grown
        return shown, marked

    def _parts(self, shown: list[str | None], marked: bool) -> list[tuple[str, str]]:
        """What is drawn of each piece, ``shown`` (None: left out), in its style; with
        ``marked``, a run of left-out pieces leaves one "…" (after the first one's lead)."""
        parts: list[tuple[str, str]] = []
        left_out = False
        for piece, part in zip(self.pieces, shown, strict=True):
            if part is None:
                if marked and not left_out:
                    parts.append((piece.lead + ELLIPSIS, piece.style))
                left_out = True
                continue
            left_out = False
            if piece.label:
                parts.append((piece.lead + piece.label, piece.label_style))
                if part:
                    parts.append((part, piece.style))
            elif part or piece.lead:
                parts.append((piece.lead + part, piece.style))
        return parts

    def _cells(self, shown: list[str | None], marked: bool) -> int:
        """Cells the row takes showing ``shown``: what :meth:`_parts` draws, counted
        without building it (this runs for each step of each line drawn)."""
        total = 0
        left_out = False
        for piece, part in zip(self.pieces, shown, strict=True):
            if part is None:
                if marked and not left_out:
                    total += cell_len(piece.lead) + _ELLIPSIS_CELLS
                left_out = True
            else:
                total += cell_len(piece.lead) + cell_len(piece.label) + cell_len(part)
                left_out = False
        return total


class RowBuilder:
    """Pieces added one by one; :meth:`add` returns the index a cut step names."""

    def __init__(self) -> None:
        self.pieces: list[Piece] = []

    def add(
        self,
        text: str,
        style: str = "",
        *,
        lead: str = "",
        least: int = 1,
        middle: bool = False,
        label: str = "",
        with_previous: bool = False,
    ) -> int:
        self.pieces.append(
            Piece(text, style, lead, least, middle, label, with_previous=with_previous)
        )
        return len(self.pieces) - 1

    def row(self, *cuts: tuple[int | None, int]) -> Row:
        """The row; steps naming a piece never added (None) are skipped."""
        return Row(tuple(self.pieces), tuple((i, c) for i, c in cuts if i is not None))


def _end_cut(text: str, cells: int) -> str:
    """``text`` in at most ``cells`` cells: whole, or its start and "…"."""
    if cell_len(text) <= cells:
        return text
    cut = Text(text)
    cut.truncate(max(cells, 0), overflow="ellipsis")
    return cut.plain


def middle_cut(text: str, cells: int) -> str:
    """``text`` in at most ``cells`` cells: whole, or its start, "…", and its end (the
    larger half: ids of one dataset share their start and differ at the end)."""
    if cell_len(text) <= cells:
        return text
    if cells < 3:  # no room for both ends
        return _end_cut(text, cells)
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

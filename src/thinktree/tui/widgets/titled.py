"""Pane titles that fit the pane's top border, an id cut in its middle as rows cut it."""

from __future__ import annotations

from rich.text import Text
from textual import events
from textual.widget import Widget

from thinktree.sanitize import one_line
from thinktree.tui.rows import middle_cut

TITLE_MARGIN = 6
"""Cells of a pane's width a title cannot have: the corners, the edge either side of the
title and the blank either side of it (as Textual draws a border label)."""
LABEL_CELLS = 40  # a label (not an id) is cut at its end, to this at most


class TitledPane(Widget):
    """A pane whose title is set with :meth:`set_title`: a mixin, named after the widget
    it is mixed into (Textual takes a widget's CSS from its first base only).

    Left to Textual, a title too long for the border is cut at its end, so two problem
    ids that share their start (those of one dataset do) read the same: an id is cut in
    its middle instead, to the room the border has, and cut again when the pane resizes.
    """

    _pane_title: tuple[str, bool] | None = None

    def set_title(self, title: str, *, is_id: bool = False) -> None:
        """Show ``title`` (never markup); ``is_id``: cut it in its middle, not its end."""
        self._pane_title = (one_line(title) if is_id else one_line(title, LABEL_CELLS), is_id)
        self._fit_title(self.outer_size.width)

    def _fit_title(self, width: int) -> None:
        if self._pane_title is None:
            return
        title, is_id = self._pane_title
        if is_id and width > TITLE_MARGIN:  # 0 wide: not laid out yet, fitted on resize
            title = middle_cut(title, width - TITLE_MARGIN)
        self.border_title = Text(title)

    def on_resize(self, event: events.Resize) -> None:
        self._fit_title(event.size.width)  # the new outer size (self's is the old one yet)

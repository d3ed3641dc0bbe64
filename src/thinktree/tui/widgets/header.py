"""The two header lines: which run, and how far it has got."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class RunHeader(Static):
    """Shows a prepared Text; redraws only when the text changes."""

    DEFAULT_CSS = """
    RunHeader {
        dock: top;
        height: 2;
        background: $panel;
        text-wrap: nowrap;  /* a line too long is cut with "…": it never pushes the */
        text-overflow: ellipsis;  /* progress line out of the two rows */
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(Text(""), markup=False, id=id)
        self._shown = Text("")

    def show(self, text: Text) -> None:
        if text != self._shown:
            self._shown = text
            self.update(text)

    @property
    def plain(self) -> str:
        return self._shown.plain

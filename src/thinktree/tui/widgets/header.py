"""The two header lines: which run, and how far it has got."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from thinktree.tui.render import Header


class RunHeader(Widget):
    """Shows a prepared :class:`Header`, fitted to its width (again when that changes);
    redraws only when the header or its width changes."""

    DEFAULT_CSS = """
    RunHeader {
        dock: top;
        height: 2;
        background: $panel;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._shown: Header | None = None

    def show(self, header: Header) -> None:
        if header != self._shown:
            self._shown = header
            self.refresh()

    def render(self) -> Text:
        if self._shown is None:
            return Text("")
        return self._shown.fit(self.size.width or None)

    @property
    def plain(self) -> str:
        """Everything the header says, uncut (what is drawn may be cut to fit)."""
        return "" if self._shown is None else self._shown.plain

"""The problem list: one line per problem, drawn only where it is visible.

A run may have thousands of problems, so this is a line-API widget over a list of ids,
not a widget per problem: drawing costs the height of the screen, not the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from rich.segment import Segment
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from thinktree.tui.messages import ProblemHighlighted, ProblemOpened


class ProblemList(ScrollView, can_focus=True):
    """Problem ids with a cursor; posts :class:`ProblemHighlighted` when the user moves it."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {"problem-list--cursor"}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("down,j", "move(1)", "Move", key_display="j/k", show=True),
        Binding("up,k", "move(-1)", "Up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("home,g", "first", "First", show=False),
        Binding("end,G", "last", "Last", show=False),
        Binding("enter", "open", "Open", show=True),
    ]
    DEFAULT_CSS = """
    ProblemList {
        overflow-x: hidden;
    }
    ProblemList > .problem-list--cursor {
        background: $boost;
        text-style: bold;
    }
    ProblemList:focus > .problem-list--cursor {
        background: $block-cursor-background;
        color: $block-cursor-foreground;
    }
    """

    def __init__(self, render_row: Callable[[str], Text], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._render_row = render_row
        self.rows: list[str] = []
        self.cursor = 0

    @property
    def highlighted(self) -> str | None:
        return self.rows[self.cursor] if self.rows else None

    def set_rows(self, rows: list[str]) -> None:
        """Show ``rows``; the cursor stays on the same problem when it is still there."""
        current, before = self.highlighted, self.cursor
        self.rows = rows
        if current is not None and current in rows:
            self.cursor = rows.index(current)
        self.cursor = min(self.cursor, max(len(rows) - 1, 0))
        self.virtual_size = Size(0, len(rows))
        if self.cursor != before:
            self._reveal()  # otherwise leave the scroll where the user put it
        self.refresh()

    def select(self, problem_id: str) -> None:
        """Put the cursor on ``problem_id`` without telling anyone (the app asked)."""
        if problem_id in self.rows:
            self.cursor = self.rows.index(problem_id)
            self._reveal()
            self.refresh()

    def render_line(self, y: int) -> Strip:
        _, scroll_y = self.scroll_offset
        index = scroll_y + y
        width = self.size.width
        base = self.rich_style
        if index >= len(self.rows):
            return Strip.blank(width, base)
        text = self._render_row(self.rows[index])
        text.truncate(width, overflow="ellipsis", pad=True)
        text.stylize_before(base)
        if index == self.cursor:
            text.stylize_before(self.get_component_rich_style("problem-list--cursor"))
        segments: list[Segment] = list(text.render(self.app.console))
        return Strip(segments).adjust_cell_length(width, base)

    def _reveal(self) -> None:
        if self.rows:
            self.scroll_to_region(
                Region(0, self.cursor, 1, 1), animate=False, force=True, immediate=True
            )

    def _move_to(self, index: int) -> None:
        if not self.rows:
            return
        index = max(0, min(index, len(self.rows) - 1))
        if index != self.cursor:
            self.cursor = index
            self._reveal()
            self.refresh()
        self.post_message(ProblemHighlighted(self.rows[index]))

    def action_move(self, step: int) -> None:
        self._move_to(self.cursor + step)

    def action_page(self, direction: int) -> None:
        self._move_to(self.cursor + direction * max(self.size.height - 1, 1))

    def action_first(self) -> None:
        self._move_to(0)

    def action_last(self) -> None:
        self._move_to(len(self.rows) - 1)

    def action_open(self) -> None:
        if self.rows:
            self.post_message(ProblemOpened(self.rows[self.cursor]))

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None:
            return
        index = self.scroll_offset.y + offset.y
        if index < len(self.rows):
            self._move_to(index)
            if event.chain >= 2:
                self.post_message(ProblemOpened(self.rows[index]))

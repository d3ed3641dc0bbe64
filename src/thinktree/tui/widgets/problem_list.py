"""The problem list: one line per problem, drawn only where it is visible.

A run may have thousands of problems, so this is a line-API widget over a list of ids,
not a widget per problem: drawing costs the height of the screen, not the run. Drawn
lines are kept with the key of what they show, so a redraw repaints only the visible
lines whose problem changed.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from thinktree.tui.messages import ProblemHighlighted, ProblemOpened


class ProblemList(ScrollView, can_focus=True):
    """Problem ids with a cursor; posts :class:`ProblemHighlighted` when the user moves it.

    ``render_row(problem_id, width)`` draws a problem's line in ``width`` cells.
    """

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

    def __init__(
        self,
        render_row: Callable[[str, int], Text],
        row_key: Callable[[str], Hashable],
        *,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self._render_row = render_row
        self._row_key = row_key
        self._drawn: dict[str, tuple[Hashable, Strip]] = {}  # problem id → (key, line)
        self.rows: list[str] = []
        self.cursor = 0

    @property
    def highlighted(self) -> str | None:
        return self.rows[self.cursor] if self.rows else None

    def set_rows(self, rows: list[str]) -> None:
        """Show ``rows``; the cursor stays on the same problem when it is still there.

        When the rows are the same problems as before, only the visible lines whose
        problem changed are repainted.
        """
        current, before = self.highlighted, self.cursor
        same = rows == self.rows
        self.rows = rows
        if current is not None and current in rows:
            self.cursor = rows.index(current)
        self.cursor = min(self.cursor, max(len(rows) - 1, 0))
        self.virtual_size = Size(0, len(rows))
        if self.cursor != before:
            self._reveal()  # otherwise leave the scroll where the user put it
        if same and self.cursor == before:
            self._refresh_changed_lines()
        else:
            self.refresh()

    def _refresh_changed_lines(self) -> None:
        top = self.scroll_offset.y
        width = self.size.width
        base = self.rich_style
        for y, problem_id in enumerate(self.rows[top : top + self.size.height]):
            drawn = self._drawn.get(problem_id)
            if drawn is None or drawn[0] != self._line_key(problem_id, top + y, base):
                self.refresh(Region(0, y, width, 1))

    def _line_key(self, problem_id: str, index: int, base: Style) -> Hashable:
        """What a drawn line depends on: when it is unchanged, so is the line."""
        return (
            self._row_key(problem_id),
            self.size.width,
            self.scrollable_content_region.width,
            index == self.cursor,
            self.has_focus,
            base,
        )

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
        problem_id = self.rows[index]
        key = self._line_key(problem_id, index, base)
        drawn = self._drawn.get(problem_id)
        if drawn is not None and drawn[0] == key:
            return drawn[1]
        room = self.scrollable_content_region.width  # less the scrollbar, when shown
        text = self._render_row(problem_id, room)  # fitted: the answer is never cut off
        text.truncate(width, overflow="ellipsis", pad=True)
        text.stylize_before(base)
        if index == self.cursor:
            text.stylize_before(self.get_component_rich_style("problem-list--cursor"))
        segments: list[Segment] = list(text.render(self.app.console))
        strip = Strip(segments).adjust_cell_length(width, base)
        self._drawn[problem_id] = (key, strip)
        return strip

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

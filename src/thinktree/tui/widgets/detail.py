"""The detail pane: the selected node's facts and its full text, as it streams."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Static

from thinktree.tui.messages import UserNavigated
from thinktree.tui.widgets.titled import TitledPane


class DetailPane(VerticalScroll, TitledPane):
    """Scrollable meta + body; keeps to the bottom while a node streams, if it was there."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "scroll_down", "Down", show=False),
        Binding("k", "scroll_up", "Up", show=False),
        Binding("escape", "back", "Back", show=True),
    ]
    DEFAULT_CSS = """
    DetailPane > #detail-meta {
        padding: 0 0 1 0;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.node_id: str | None = None
        self._meta = Text("")
        self._body = Text("")

    def compose(self) -> ComposeResult:
        yield Static(Text("select a node", style="dim"), markup=False, id="detail-meta")
        yield Static(Text(""), markup=False, id="detail-body")

    @property
    def text(self) -> str:
        """What the pane shows, as plain text."""
        return self._meta.plain + "\n" + self._body.plain

    def show(
        self,
        node_id: str | None,
        meta: Text,
        body: Text,
        *,
        streaming: bool = False,
        tail: bool = False,
    ) -> None:
        """Show ``node_id``: a new node from its top, where its status and facts are (from
        its end with ``tail``: following a node as it streams); the same node keeps its
        place, and while ``streaming`` keeps to the end as text arrives if it was there."""
        same = node_id == self.node_id
        at_end = self.scroll_y >= self.max_scroll_y
        self.node_id = node_id
        if meta != self._meta:
            self._meta = meta
            self.query_one("#detail-meta", Static).update(meta)
        if body != self._body:
            self._body = body
            self.query_one("#detail-body", Static).update(body)
        if not same and not tail:
            self.scroll_home(animate=False)
        elif (streaming and at_end) or not same:
            # only text that grows is followed: a node shown again before its text was
            # laid out is "at the end" too, and must not be sent there
            self.call_after_refresh(self.scroll_end, animate=False)

    def action_back(self) -> None:
        self.post_message(UserNavigated("detail-back"))

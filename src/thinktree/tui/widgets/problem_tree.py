"""The selected problem's tree: problem → branch → step / generation / … → forced answer.

Only the selected problem is built. On each redraw the tree is brought up to date by
adding the nodes that started since and relabelling the ones whose label changed. Each
label is fitted to the room its line has (the pane's width less its indent), so a narrow
pane cuts the label, not the answer at the line's end.
"""

from __future__ import annotations

from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from thinktree.orchestrator.tree import ProblemTree
from thinktree.tui.messages import UserNavigated
from thinktree.tui.render import node_row, subtree_tokens, winner_path
from thinktree.tui.rows import Row
from thinktree.tui.widgets.titled import TitledPane

EMPTY = Text("no problem selected", style="dim")
_TOGGLE = Style.from_meta({"toggle": True})  # as Tree marks its expand arrow (clickable)


class ProblemTreeView(Tree[str], TitledPane):
    """A Textual Tree whose nodes carry the run's node ids as data."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("enter", "select_cursor", "Open", show=True),
        Binding("escape", "back", "Back", show=True),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(EMPTY, id=id)
        self.auto_expand = False
        self.problem_id: str | None = None
        self._items: dict[str, TreeNode[str]] = {}
        self._rows: dict[str, Row] = {}  # each node's line, fitted when drawn

    def item(self, node_id: str) -> TreeNode[str] | None:
        return self._items.get(node_id)

    def show(self, problem: ProblemTree | None) -> None:
        """Rebuild for ``problem`` (None: empty)."""
        self._items.clear()
        self._rows.clear()
        if problem is None:
            self.problem_id = None
            self.reset(EMPTY)
            return
        self.problem_id = problem.problem_id
        self.reset(Text(""), data=problem.root_id)
        self._items[problem.root_id] = self.root
        self.sync(problem)
        self.root.expand()

    def sync(self, problem: ProblemTree) -> None:
        """Add nodes that started since the last sync and relabel the changed ones."""
        if problem.problem_id != self.problem_id:
            self.show(problem)
            return
        tokens = subtree_tokens(problem)
        winners = winner_path(problem)
        for node in problem.walk():
            item = self._items.get(node.id)
            if item is None:
                parent = self._items.get(node.parent_id or "")
                if parent is None:
                    continue
                parent.allow_expand = True
                item = parent.add(Text(""), data=node.id, expand=True, allow_expand=False)
                self._items[node.id] = item
            if node.children and not item.allow_expand:
                item.allow_expand = True
            row = node_row(problem, node, tokens[node.id], winners)
            if self._rows.get(node.id) != row:
                self._rows[node.id] = row
                self._relabel(item, row.fit())

    def _relabel(self, item: TreeNode[str], label: Text) -> None:
        """Give ``item`` a new label, repainting its own line only.

        ``TreeNode.set_label`` repaints every visible line below the node too, and the
        problem's line (its token count) changes on almost every redraw of a live run,
        so that would repaint the whole tree each time.
        """
        line = getattr(item, "_line", None)
        if not (hasattr(item, "_label") and hasattr(item, "_updates") and isinstance(line, int)):
            item.set_label(label)  # a Textual without these internals: correct, just slower
            return
        item._label = self.process_label(label)
        item._updates += 1
        if line >= 0:
            self._refresh_line(line)

    def render_label(self, node: TreeNode[str], base_style: Style, style: Style) -> Text:
        """The node's line fitted to the room left beside its indent and arrow."""
        row = self._rows.get(node.data) if node.data is not None else None
        if row is None:
            return super().render_label(node, base_style, style)
        if node.allow_expand:
            arrow = self.ICON_NODE_EXPANDED if node.is_expanded else self.ICON_NODE
            prefix = Text(arrow, style=base_style + _TOGGLE)
        else:
            prefix = Text("", style=base_style)
        width = self.scrollable_content_region.width  # less the scrollbar, when shown
        room = width - self._indent(node) - prefix.cell_len if width > 0 else None
        label = row.fit(room)
        label.stylize(style)
        return Text.assemble(prefix, label)

    def _indent(self, node: TreeNode[str]) -> int:
        """Cells of guides before ``node``'s line (as Tree draws them)."""
        depth = 0
        parent = node.parent
        while parent is not None:
            depth += 1
            parent = parent.parent
        if not self.show_root:
            depth -= 1
        return max(depth, 0) * self.guide_depth

    def focus_node(self, node_id: str) -> None:
        """Move the cursor to ``node_id`` (opening its ancestors) without user input."""
        item = self._items.get(node_id)
        if item is None:
            return
        parent = item.parent
        while parent is not None:
            parent.expand()
            parent = parent.parent
        _ = self.last_line  # lay the lines out now, so the node knows its line
        self.move_cursor(item, animate=False)

    def action_back(self) -> None:
        """Back to the problem list."""
        self.post_message(UserNavigated("tree-back"))

    def _user(self) -> None:
        self.post_message(UserNavigated("tree"))

    def action_cursor_up(self) -> None:
        super().action_cursor_up()
        self._user()

    def action_cursor_down(self) -> None:
        super().action_cursor_down()
        self._user()

    def action_page_up(self) -> None:
        super().action_page_up()
        self._user()

    def action_page_down(self) -> None:
        super().action_page_down()
        self._user()

    def action_scroll_home(self) -> None:
        super().action_scroll_home()
        self._user()

    def action_scroll_end(self) -> None:
        super().action_scroll_end()
        self._user()

    def action_cursor_parent(self) -> None:
        super().action_cursor_parent()
        self._user()

    def on_click(self, event: events.Click) -> None:
        self._user()

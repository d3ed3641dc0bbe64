"""The view's widgets."""

from thinktree.tui.widgets.detail import DetailPane
from thinktree.tui.widgets.header import RunHeader
from thinktree.tui.widgets.problem_list import ProblemList
from thinktree.tui.widgets.problem_tree import ProblemTreeView

__all__ = ["DetailPane", "ProblemList", "ProblemTreeView", "RunHeader"]

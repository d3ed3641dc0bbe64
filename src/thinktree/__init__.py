"""thinktree: test-time scaling for language models, with every branch and revision on view.

From Python, :func:`run` (or ``await`` :func:`arun`) makes a run as ``thinktree run``
does (see :mod:`thinktree.api`); they are imported on first use, so that the command
line starts without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Problem", "RunResult", "__version__", "arun", "run"]

if TYPE_CHECKING:
    from thinktree.api import arun, run
    from thinktree.orchestrator.run import RunResult
    from thinktree.problems import Problem

_LAZY = {
    "run": "thinktree.api",
    "arun": "thinktree.api",
    "RunResult": "thinktree.orchestrator.run",
    "Problem": "thinktree.problems",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'thinktree' has no attribute {name!r}")

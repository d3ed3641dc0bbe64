"""Commands the user is told to type next: one wording for the CLI and the view alike,
quoted where a shell would read a path otherwise (spaces, brackets)."""

from __future__ import annotations

import shlex
from pathlib import Path


def shell_command(*words: str | Path) -> str:
    """``words`` as one line a shell reads back as those words."""
    return " ".join(shlex.quote(str(word)) for word in words)


def resume_command(folder: Path | str, config: Path | str | None = None) -> str:
    """How to resume the run in ``folder``; with the config file its endpoint was named in
    (``config``), which the resumed run needs again to find that endpoint."""
    named = ("--config", config) if config is not None else ()
    return shell_command("thinktree", "run", "--resume", folder, *named)

"""Commands the user is told to type next: one wording for the CLI and the view alike."""

from __future__ import annotations

from pathlib import Path


def resume_command(folder: Path | str, config: Path | str | None = None) -> str:
    """How to resume the run in ``folder``; with the config file its endpoint was named in
    (``config``), which the resumed run needs again to find that endpoint."""
    named = f" --config {config}" if config is not None else ""
    return f"thinktree run --resume {folder}{named}"

"""Commands the user is told to type next: one wording for the CLI and the view alike,
quoted where a shell would read a path otherwise (spaces, brackets, control characters)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from thinktree.sanitize import UNSAFE

#: A run folder's manifest (``orchestrator.run`` writes it), and its key that names the
#: config file the run was started with (``--config``), which resuming it needs again.
MANIFEST = "run.json"
CONFIG_FILE = "config_file"


def shell_command(*words: str | Path) -> str:
    """``words`` as one line a shell reads back as those words."""
    return " ".join(_quote(str(word)) for word in words)


def _quote(word: str) -> str:
    """``word`` quoted for a shell; one holding a control character (which printed as it
    is would drive the terminal) in ``$'...'``, that character written as an escape."""
    if not UNSAFE.search(word):
        return shlex.quote(word)
    return "$'" + "".join(_c_escape(char) for char in word) + "'"


def _c_escape(char: str) -> str:
    if char in "\\'":
        return "\\" + char
    if not UNSAFE.match(char):
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}"


def resume_command(folder: Path | str, config: Path | str | None = None) -> str:
    """How to resume the run in ``folder``; with the config file its endpoint was named in
    (``config``), which the resumed run needs again to find that endpoint."""
    named = ("--config", config) if config is not None else ()
    return shell_command("thinktree", "run", "--resume", folder, *named)


def hint_config(folder: Path | str) -> Path | None:
    """:func:`recorded_config` for a command to give the user: None where the manifest
    cannot be read (the command refuses such a run anyway, in a line that says why)."""
    try:
        return recorded_config(folder)
    except ValueError:
        return None


def read_manifest(folder: Path | str) -> dict[str, Any]:
    """The manifest (``run.json``) of the run in ``folder``, as JSON.

    Raises ValueError when it cannot be read or is no manifest.
    """
    path = Path(folder) / MANIFEST
    try:
        if not path.is_file():  # not a FIFO, say, that would hang the read
            raise ValueError(f"{path} is missing")
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        raise ValueError(f"{path} cannot be read") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} is not a run's manifest")
    return manifest


def recorded_config(folder: Path | str) -> Path | None:
    """The config file the run in ``folder`` was started with (``run --config``), as its
    manifest records it; None when it was started without one, or that file is gone.

    Raises ValueError when the manifest cannot be read (such a run cannot be resumed).
    """
    named = read_manifest(folder).get(CONFIG_FILE)
    if not isinstance(named, str) or not named:
        return None
    config = Path(named)
    try:
        return config if config.is_file() else None
    except OSError:
        return None

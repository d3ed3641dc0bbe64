"""Files written whole or not at all."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_file", "atomic_write"]


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path`` when the block ends, on disk, or not at all.

    It is written beside ``path`` under a name of this process's own, flushed to disk and
    renamed over ``path``: a reader sees the old file or the new one, never part of one,
    and a crash (or an error in the block) leaves no partial file behind.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: Path, content: str | bytes) -> None:
    """Replace ``path`` with ``content`` (text as UTF-8) as :func:`atomic_file` does."""
    with atomic_file(path) as f:
        f.write(content.encode() if isinstance(content, str) else content)

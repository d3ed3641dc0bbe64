"""Files written whole or not at all."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from thinktree.errors import ConfigError

__all__ = ["LOCK", "atomic_file", "atomic_write", "busy", "folder_lock", "held", "in_use"]

#: The file in a run or bench folder that the process writing the folder holds locked.
LOCK = ".lock"


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


@contextlib.contextmanager
def folder_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold ``folder``'s lock for the block: one process writes a run or bench folder.

    A second process (a ``--resume`` of a run still going, the same bench started twice)
    gets a one-line ConfigError instead of paying for the same calls again. The lock is
    the kernel's (``flock``): a process that dies, however it dies, releases it.
    """
    try:
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot lock {what} {folder}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy(what, folder) from None
        yield
    finally:
        os.close(fd)  # and the lock with it


def busy(what: str, folder: Path) -> ConfigError:
    """The one-line error for a folder another process is writing."""
    return ConfigError(
        f"{what} {folder} is being written by another thinktree process; "
        "wait for it to end, or stop it first"
    )


def in_use(folder: Path) -> bool:
    """Whether a process holds ``folder``'s lock (is writing the run or bench now)."""
    return held(folder / LOCK)


def held(lock_file: Path) -> bool:
    """Whether a live process holds ``lock_file``'s flock (read-only: takes no lasting lock)."""
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def read_only_uri(path: Path) -> str:
    """The SQLite URI that reads the database at ``path`` without writing anything beside
    it. One with no -wal is closed: read as immutable, so SQLite leaves no -wal or -shm
    behind (and a rollback journal a creation cut off is not rolled back). One with a -wal
    has a live writer (or one that died): read through the WAL, as any reader would."""
    live = os.path.lexists(f"{path}-wal")
    return f"file:{quote(str(path.absolute()))}?mode=ro{'' if live else '&immutable=1'}"

"""A tmux server of each test's own, for the end-to-end checks in a real terminal.

Each test gets a server on a socket no other test uses: a server killed at the end of
one test goes on exiting for a moment after ``kill-server`` returns, and a next test
that started a session on the same socket meanwhile reached the dying server
("server exited unexpectedly"). Keys go in with ``send-keys``, the screen comes back
with ``capture-pane``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


class Tmux:
    """One tmux server: no user config, so no other sizes or key bindings."""

    def __init__(self) -> None:
        self.socket = f"thinktree-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def __call__(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def screen(self, session: str) -> str:
        return self("capture-pane", "-p", "-t", session)

    def wait_for(self, session: str, needle: str, timeout: float) -> tuple[str, list[str]]:
        """Poll the screen until ``needle`` shows; returns it and every screen seen before."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.screen(session)
            if needle in text:
                return text, seen
            seen.append(text)
            time.sleep(0.5)
        last = seen[-1] if seen else ""
        raise AssertionError(f"{needle!r} never appeared; last screen:\n{last}")

    def kill(self) -> None:
        """Stop the server and remove its socket, which tmux leaves behind."""
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)
        folder = Path(os.environ.get("TMUX_TMPDIR") or "/tmp") / f"tmux-{os.getuid()}"
        (folder / self.socket).unlink(missing_ok=True)


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    """A tmux server for this test alone, killed when it ends."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    server = Tmux()
    try:
        yield server
    finally:
        server.kill()

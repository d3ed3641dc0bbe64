"""End to end: the real `thinktree run --watch` in tmux on the embedded model.

Keys go in with `send-keys`, the screen comes back with `capture-pane`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


SOCKET = f"thinktree-e2e-{os.getpid()}"  # a server of its own: no user config, no other sizes


def tmux(*args: str) -> str:
    return subprocess.run(
        ["tmux", "-L", SOCKET, "-f", "/dev/null", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def screen(session: str) -> str:
    return tmux("capture-pane", "-p", "-t", session)


def wait_for(session: str, needle: str, timeout: float) -> tuple[str, list[str]]:
    """Poll the screen until ``needle`` shows; returns it and every screen seen before."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = screen(session)
        if needle in text:
            return text, seen
        seen.append(text)
        time.sleep(0.5)
    raise AssertionError(f"{needle!r} never appeared; last screen:\n{seen[-1] if seen else ''}")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_run_watch_shows_the_tree_and_the_vote(embedded_url: str, tmp_path: Path) -> None:
    session = f"thinktree-e2e-{os.getpid()}"
    run = tmp_path / "run"
    command = " ".join(
        shlex.quote(part)
        for part in [
            "env",  # the app sizes itself from these when set: let the pane decide
            "-u",
            "COLUMNS",
            "-u",
            "LINES",
            sys.executable,
            "-m",
            "thinktree.cli",
            "run",
            "--watch",
            "--endpoint",
            embedded_url,
            "--mode",
            "parallel",
            "--n",
            "3",
            "--budget",
            "24",
            "--limit",
            "2",
            "--out",
            str(run),
        ]
    )
    tmux(
        "new-session",
        "-d",
        "-s",
        session,
        "-x",
        "200",
        "-y",
        "50",
        f"{command}; echo EXIT=$?; sleep 600",
    )
    try:
        final, before = wait_for(session, "run completed", timeout=300)
        # the tree grew while the run went: screens before the end showed it partly built
        assert any("branch 1" in s for s in before), "no screen showed the tree mid-run"
        for needle in (
            "demo-choice-01",
            "branch 1",
            "branch 2",
            "branch 3",
            "thinking",
            "shortest-majority",
            "★",
        ):
            assert needle in final, needle
        assert "problems 2/2" in final

        tmux("send-keys", "-t", session, "j")
        moved, _ = wait_for(session, "demo-choice-02 ─", timeout=10)
        assert "demo-choice-02" in moved

        tmux("send-keys", "-t", session, "q")
        after, _ = wait_for(session, "EXIT=", timeout=60)
        assert "EXIT=0" in after
        assert "accuracy" in after and "run folder" in after
        assert (run / "results.json").is_file()
    finally:
        subprocess.run(["tmux", "-L", SOCKET, "kill-server"], capture_output=True)

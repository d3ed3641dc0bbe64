"""End to end: the real `thinktree run --watch` in tmux on the embedded model.

The tmux server is the test's own (`terminal.tmux`).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest

from terminal import Tmux

pytestmark = pytest.mark.slow


def test_run_watch_shows_the_tree_and_the_vote(
    embedded_url: str, tmp_path: Path, tmux: Tmux
) -> None:
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
    final, before = tmux.wait_for(session, "run completed", timeout=300)
    # the tree grew while the run went: screens before the end showed it partly built
    assert any("branch 1" in s for s in before), "no screen showed the tree mid-run"
    for needle in (
        "demo-choice-01",
        "branch 1",
        "branch 2",
        "branch 3",
        "shortest-majority",
        "★",
    ):
        assert needle in final, needle
    assert "problems 2/2" in final

    tmux("send-keys", "-t", session, "j")
    moved, _ = tmux.wait_for(session, "demo-choice-02 ─", timeout=10)
    assert "demo-choice-02" in moved

    tmux("send-keys", "-t", session, "q")
    after, _ = tmux.wait_for(session, "EXIT=", timeout=60)
    assert "EXIT=0" in after
    assert "accuracy" in after and "run folder" in after
    assert (run / "results.json").is_file()

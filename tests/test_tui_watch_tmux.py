"""`thinktree watch` in a real terminal (tmux) on a trace it cannot read to its end: the
view shows what came before the broken line and says what is wrong with it; once closed,
the command says so again in one line and exits 2. No model is needed."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from terminal import Tmux
from thinktree.tui.synthetic import synthetic_run


def test_watch_shows_a_broken_trace_then_ends_with_its_error(tmp_path: Path, tmux: Tmux) -> None:
    folder = tmp_path / "r1"
    folder.mkdir()
    (folder / "run.json").write_text("{}")
    lines = [event.json_line() for event in synthetic_run(2, 1)]
    broken = b'{"type": "node-finished", "at": "x"}\n'
    (folder / "trace.jsonl").write_bytes(b"".join([*lines[:6], broken, *lines[6:]]))
    session = f"thinktree-watch-{os.getpid()}"
    command = shlex.join(
        [
            "env",
            "-u",
            "COLUMNS",
            "-u",
            "LINES",
            sys.executable,
            "-m",
            "thinktree.cli",
            "watch",
            "r1",
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
        "30",
        "-c",
        str(tmp_path),
        f"{command}; echo EXIT=$?; sleep 600",
    )
    tmux.wait_for(session, "run 20250101-000000-synth", timeout=60)  # what came before it
    tmux.wait_for(session, "bad node-finished event", timeout=10)  # in the header, and told
    tmux("send-keys", "-t", session, "q")
    after, _ = tmux.wait_for(session, "EXIT=", timeout=30)
    assert "EXIT=2" in after
    said = "error: r1/trace.jsonl:7: bad node-finished event: at is text, not a number"
    assert said in after
    assert "Traceback" not in after

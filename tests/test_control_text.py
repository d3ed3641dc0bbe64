"""Text from a model, a server or a dataset never drives the user's terminal.

An ESC sequence in a reply can clear the screen, retitle the window, plant a link or
hide text; a bidi override makes a line read differently from what it is. The CLI's
tables, progress bar, error lines and hints show such text with visible stand-ins
(``␛[2J``), and markup in it as written.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from thinktree.orchestrator.events import CallRetried, RunStarted
from thinktree.orchestrator.subscribers import ConsoleProgress
from thinktree.testing.fake_server import FakeBehaviour, fake_server_in_thread

HOSTILE = "\x1b[2J\x1b]0;owned\x07\x1b]8;;http://x/\x1b\\link\r\x00\u202etxt[bold red]red"
# what reaches the terminal must hold none of these
RAW = ("\x1b[2J", "\x1b]", "\x07", "\r", "\x00", "\u202e")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI's output as it reaches a terminal (bytes decoded, "\\r" kept)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["COLUMNS"] = "400"
    proc = subprocess.run(
        [sys.executable, "-m", "thinktree.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        timeout=120,
    )
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


def assert_inert(shown: str, raw_chars: tuple[str, ...] = RAW) -> None:
    for raw in raw_chars:
        assert raw not in shown, (raw, shown)


def write_problems(path: Path) -> Path:
    path.write_text(
        json.dumps(
            {
                "id": "q\x1b[31m1",
                "question": "Is it so?" + HOSTILE,
                "answer_type": "free",
                "answer": "yes" + HOSTILE,
            }
        )
        + "\n"
    )
    return path


def test_run_and_runs_show_a_models_text_with_its_controls_made_visible(
    tmp_path: Path,
) -> None:
    data = write_problems(tmp_path / "d.jsonl")
    reply = FakeBehaviour(reply="Yes.\nAnswer: yes" + HOSTILE, model="m" + HOSTILE)
    with fake_server_in_thread(reply) as server:
        ran = cli("run", str(data), "--endpoint", server.base_url, "--out", "r", cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert_inert(ran.stdout + ran.stderr)
    assert "q␛[31m1" in ran.stdout and "yes␛[2J␛]0;owned␇" in ran.stdout, ran.stdout
    assert "txt[bold red]red" in ran.stdout  # markup as written

    listed = cli("runs", ".", cwd=tmp_path)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert_inert(listed.stdout + listed.stderr)
    assert "m␛[2J␛]0;owned␇" in listed.stdout, listed.stdout


def test_a_servers_error_message_is_shown_inert_in_the_error_line(tmp_path: Path) -> None:
    data = write_problems(tmp_path / "d.jsonl")

    def refuse(body: dict[str, Any]) -> str:
        return "refused" + HOSTILE

    with fake_server_in_thread(FakeBehaviour(reject=refuse)) as server:
        ran = cli("run", str(data), "--endpoint", server.base_url, "--out", "r", cwd=tmp_path)
    assert ran.returncode != 0
    assert "error:" in ran.stderr and "refused␛[2J" in ran.stderr, ran.stderr
    assert_inert(ran.stdout + ran.stderr)


@pytest.mark.anyio
async def test_the_progress_bar_shows_a_model_and_a_retry_reason_inert() -> None:
    shown = io.StringIO()
    console = Console(file=shown, force_terminal=True, width=300, color_system=None)
    bar = ConsoleProgress(console)
    bar.handle(RunStarted(run_id="r", mode="budget", endpoint="e", model="m" + HOSTILE, problems=2))
    bar.handle(CallRetried(endpoint="e", attempt=1, wait_s=2, reason="429: " + HOSTILE))
    await bar.aclose()
    assert "budget · m␛[2J" in shown.getvalue()
    assert "waiting 2 s: 429: ␛[2J" in shown.getvalue() and "link␍␀" in shown.getvalue()
    assert_inert(shown.getvalue(), tuple(r for r in RAW if r != "\r"))  # a bar redraws with \r


def test_a_hint_with_a_control_character_still_pastes_back_into_a_shell(tmp_path: Path) -> None:
    """A folder whose name holds ESC is quoted so that bash reads it back, and printing
    the hint sends no ESC to the terminal."""
    from thinktree.hints import resume_command

    folder = "runs/a\x1b[2Jb\u202ec d"
    hint = resume_command(folder)
    assert_inert(hint)
    echoed = subprocess.run(
        ["bash", "-c", hint.replace("thinktree run --resume", "printf %s", 1)],
        capture_output=True,
        check=True,
        env={**os.environ, "LC_ALL": "C.UTF-8"},
    )
    assert echoed.stdout.decode() == folder


def test_report_shows_a_models_name_inert(tmp_path: Path) -> None:
    data = write_problems(tmp_path / "d.jsonl")
    reply = FakeBehaviour(reply="Answer: yes", model="m" + HOSTILE)
    with fake_server_in_thread(reply) as server:
        ran = cli("run", str(data), "--endpoint", server.base_url, "--out", "r", cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    reported = cli("report", "r", "--no-plots", cwd=tmp_path)
    assert reported.returncode == 0, reported.stdout + reported.stderr
    assert "model(s) m␛[2J␛]0;owned␇" in reported.stdout, reported.stdout
    assert_inert(reported.stdout + reported.stderr)
    # the files it writes are shown with `cat` too
    written = {name: (tmp_path / "r" / name).read_text() for name in ("report.md", "report.html")}
    assert "m␛[2J␛]0;owned␇" in written["report.md"]
    for text in written.values():
        assert_inert(text)


def test_log_lines_show_model_text_inert_and_hide_only_secrets() -> None:
    """The CLI's log lines may carry model output (a reply that fails its answer format)
    or server text: the console renderer writes string values as they are, so they are
    cleaned first. Keys that name secrets are hidden, token counts are not."""
    code = (
        "import structlog\n"
        "from thinktree.logging_setup import configure\n"
        "configure()\n"
        "structlog.get_logger().warning('reply not in its format' + TEXT, text=TEXT,"
        " token_ids=True, completion_tokens=7, api_key='k-1', access_token='t-2',"
        " error='refused: Bearer abcdefgh12345')\n"
    ).replace("TEXT", repr(HOSTILE))
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, check=False)
    shown = ran.stderr.decode("utf-8", "replace")
    assert ran.returncode == 0, shown
    assert "text='␛[2J␛]0;owned␇" in shown and "format␛[2J" in shown, shown
    assert_inert(shown)
    assert "token_ids=True" in shown and "completion_tokens=7" in shown, shown
    assert "k-1" not in shown and "t-2" not in shown, shown
    assert "abcdefgh12345" not in shown and "Bearer [redacted]" in shown, shown

"""Help texts are shown as written: typer reads them as Rich markup, which ate "[prices]"."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner

from thinktree.cli import app


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["COLUMNS"] = "250"
    return subprocess.run(
        [sys.executable, "-m", "thinktree.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_help_texts_keep_their_brackets(tmp_path: Path) -> None:
    run_help = cli("run", "--help", cwd=tmp_path)
    bench_help = cli("bench", "--help", cwd=tmp_path)
    assert_ok(run_help)
    assert_ok(bench_help)
    assert "(needs [prices] for the model)" in run_help.stdout, run_help.stdout
    assert "auto [default: budget]" in run_help.stdout
    assert "bench config (TOML): [[datasets]] and [grid]" in bench_help.stdout, bench_help.stdout
    assert "(needs thinktree[ray])" in bench_help.stdout
    assert "shards per cell with --ray [default: the cluster's CPUs]" in bench_help.stdout


def _commands(command: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, [*path, name])


def test_every_help_text_is_shown_as_written() -> None:
    def words(text: str) -> str:
        return " ".join(text.replace("│", " ").split())

    runner = CliRunner()
    for path, command in _commands(typer.main.get_command(app), []):
        shown = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "400"})
        assert shown.exit_code == 0, shown.output
        texts = [command.help or "", *(getattr(p, "help", None) or "" for p in command.params)]
        for text in texts:  # a bracket escaped for typer's markup is shown without the "\\"
            assert words(text.replace("\\[", "[")) in words(shown.output), (path, text)

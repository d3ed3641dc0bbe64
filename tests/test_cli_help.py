"""Help texts are shown as written, and whole in an 80-column terminal."""

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
    run_text, bench_text = (" ".join(p.stdout.split()) for p in (run_help, bench_help))  # unwrapped
    assert "(needs [prices] for the model)" in run_text, run_help.stdout
    assert "auto [default: budget]" in run_text
    assert "bench config (TOML): [[datasets]] and [grid]" in bench_text, bench_help.stdout
    assert "(needs thinktree[ray])" in bench_text
    assert "shards per cell with --ray [default: the cluster's CPUs]" in bench_text


def _commands(command: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, [*path, name])


def test_every_help_text_is_shown_as_written() -> None:
    def letters(text: str) -> str:  # wrapped anywhere, even after a hyphen, it reads the same
        return "".join(text.split())

    runner = CliRunner()
    for path, command in _commands(typer.main.get_command(app), []):
        shown = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "400"})
        assert shown.exit_code == 0, shown.output
        texts = [command.help or "", *(getattr(p, "help", None) or "" for p in command.params)]
        for text in texts:
            assert letters(text) in letters(shown.output), (path, text)


def test_help_fits_an_80_column_terminal() -> None:
    runner = CliRunner()
    for path, command in _commands(typer.main.get_command(app), []):
        shown = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
        assert shown.exit_code == 0, shown.output
        lines = shown.output.splitlines()
        assert max(len(line) for line in lines) <= 80, (path, shown.output)
        words = shown.output.split()
        for param in command.params:  # every option's name whole, as a word of its own
            for name in (*param.opts, *param.secondary_opts):
                if name.startswith("-"):
                    assert any(w.strip(",") == name for w in words), (path, name, shown.output)
        for name, sub in getattr(command, "commands", {}).items():  # and what each command does
            line = next(line for line in lines if line.split()[:1] == [name])
            assert sub.get_short_help_str(limit=1000) in line, (path, line)


def test_no_default_is_shown_twice() -> None:
    # an option whose help names its default in words does not also get click's [default: …]
    for path, command in _commands(typer.main.get_command(app), []):
        for param in command.params:
            says = "(default" in (getattr(param, "help", None) or "")
            shown = getattr(param, "show_default", False) and param.default is not None
            assert not (says and shown), (path, param.name)

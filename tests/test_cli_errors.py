"""Bad input at the command line: one line that says what to fix, non-zero exit, no folder."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def thinktree(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "thinktree.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def assert_nothing_written(folder: Path) -> None:
    assert list(folder.iterdir()) == [], list(folder.iterdir())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def work(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--mode", "tree-search"], ["unknown mode 'tree-search'", "budget, sequential"]),
        (["--budget", "-5"], ["--budget", "-5"]),
        (["--budget", "0"], ["--budget", "positive"]),
        (["--mode", "parallel", "--n", "0"], ["--n", "positive"]),
        (["--mode", "sequential", "--steps", "-1"], ["--steps", "positive"]),
        (["--mode", "adaptive", "--stop-confidence", "1.5"], ["--stop-confidence", "below 1"]),
        (["--mode", "hybrid", "--total-budget", "0"], ["--total-budget"]),
        (["--mode", "hybrid", "--n", "8", "--steps", "8", "--total-budget", "10"], ["too small"]),
        (["--aggregate", "loudest"], ["unknown aggregator 'loudest'"]),
        (["--min-thinking", "5000", "--budget", "100"], ["--min-thinking"]),
        (["--limit", "0"], ["--limit"]),
        (["--endpoint", "nowhere"], ["unknown endpoint 'nowhere'"]),
    ],
)
def test_bad_options(work: Path, args: list[str], needles: list[str]) -> None:
    proc = thinktree("run", *args, "--out", str(work / "run"), cwd=work)
    assert_one_line_error(proc, *needles)
    assert_nothing_written(work)


def test_missing_dataset(work: Path) -> None:
    proc = thinktree("run", str(work / "nope.jsonl"), "--out", str(work / "run"), cwd=work)
    assert_one_line_error(proc, "dataset not found", "nope.jsonl")
    assert_nothing_written(work)


def test_malformed_jsonl_line_names_file_and_line(work: Path, tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(
        '{"id": "a", "question": "Q?", "answer_type": "yesno", "answer": "yes"}\n'
        '{"id": "b", "question": "Q?", "answer_type": "yesno", \n'
    )
    proc = thinktree("run", str(data), "--out", str(work / "run"), cwd=work)
    assert_one_line_error(proc, "bad.jsonl:2")
    assert_nothing_written(work)


def test_invalid_problem_line_names_the_field(work: Path, tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"id": "a", "question": "Q?", "answer_type": "choice", "answer": "A"}\n')
    proc = thinktree("run", str(data), "--out", str(work / "run"), cwd=work)
    assert_one_line_error(proc, "bad.jsonl:1", "options")
    assert_nothing_written(work)


def test_endpoint_that_refuses_connections(work: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    proc = thinktree("run", "--endpoint", url, "--out", str(work / "run"), cwd=work)
    assert_one_line_error(proc, "cannot connect", url)
    assert_nothing_written(work)


def test_existing_run_folder_is_not_overwritten(work: Path) -> None:
    (work / "run").mkdir()
    (work / "run" / "results.json").write_text("{}")
    proc = thinktree("run", "--out", str(work / "run"), cwd=work)
    assert_one_line_error(proc, "already exists")
    assert (work / "run" / "results.json").read_text() == "{}"


def test_serve_on_a_port_in_use(work: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = thinktree("serve", "--port", str(port), cwd=work)
    assert_one_line_error(proc, f"port {port}", "in use")


def test_unknown_config_file(work: Path) -> None:
    proc = thinktree("run", "--config", str(work / "none.toml"), cwd=work)
    assert_one_line_error(proc, "config file not found")

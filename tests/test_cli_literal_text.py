"""Text from users, datasets, file paths and servers is printed as written, never as markup.

Rich reads the text it prints as markup: "[/]" in a folder name (or an error message)
would crash a command after its run finished, and "[bold]" in a problem id would vanish
from what is shown (an id cannot hold "/", which names the nodes under a problem).
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

from thinktree.bench.grid import Cell, DatasetSpec
from thinktree.bench.progress import BenchProgress
from thinktree.orchestrator.events import CallRetried, RunStarted
from thinktree.orchestrator.subscribers import ConsoleProgress
from thinktree.testing.fake_server import FakeBehaviour, fake_server_in_thread

IDS = ["q[i]", "q[bold]x", "q[red]refused"]


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


def write_problems(path: Path, ids: list[str]) -> Path:
    path.write_text(
        "".join(
            json.dumps(
                {"id": i, "question": f"Is {i} so?", "answer_type": "yesno", "answer": "yes"}
            )
            + "\n"
            for i in ids
        )
    )
    return path


def refuse_one(body: dict[str, Any]) -> str | None:
    """A 400 whose message holds markup, for the problem whose id says "refused"."""
    if "refused" in json.dumps(body.get("messages")):
        return "bad value [/] in [bold]field"
    return None


def assert_ok(proc: subprocess.CompletedProcess[str], status: int = 0) -> None:
    assert proc.returncode == status, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_run_runs_and_report_show_ids_models_and_folders_as_written(tmp_path: Path) -> None:
    data = write_problems(tmp_path / "d.jsonl", IDS)
    behaviour = FakeBehaviour(reply="Yes.\nAnswer: yes", model="m[red]x", reject=refuse_one)
    with fake_server_in_thread(behaviour) as server:
        ran = cli(
            "run", str(data), "--endpoint", server.base_url, "--out", "root/r[red]x", cwd=tmp_path
        )
    assert_ok(ran, 4)  # a call failed: the results are incomplete
    assert (tmp_path / "root" / "r[red]x" / "results.json").is_file()
    for shown in (*IDS, "m[red]x", "run folder          root/r[red]x"):
        assert shown in ran.stdout, ran.stdout
    # the one refused call: the hint names the folder as it is
    assert "thinktree run --resume 'root/r[red]x'" in ran.stderr, ran.stderr

    listed = cli("runs", "root", cwd=tmp_path)
    assert_ok(listed)
    assert "│ r[red]x " in listed.stdout and "│ m[red]x " in listed.stdout, listed.stdout

    reported = cli("report", "root/r[red]x", "--no-plots", cwd=tmp_path)
    assert_ok(reported)
    assert "thinktree report · r[red]x" in reported.stdout, reported.stdout
    assert "model(s) m[red]x" in reported.stdout
    assert "wrote root/r[red]x/report.md" in reported.stdout


def test_run_and_runs_show_emoji_codes_in_a_model_and_a_folder_as_written(
    tmp_path: Path,
) -> None:
    data = write_problems(tmp_path / "d.jsonl", ["a"])
    with fake_server_in_thread(FakeBehaviour(reply="Answer: yes", model="m:cat:")) as server:
        ran = cli("run", str(data), "--endpoint", server.base_url, "--out", "r:dog:", cwd=tmp_path)
    assert_ok(ran)
    assert "m:cat:" in ran.stdout and "run folder          r:dog:" in ran.stdout, ran.stdout
    listed = cli("runs", ".", cwd=tmp_path)
    assert_ok(listed)
    assert "│ r:dog: " in listed.stdout and "│ m:cat: " in listed.stdout, listed.stdout
    failed = cli("run", "missing:cat:.jsonl", cwd=tmp_path)
    assert failed.returncode == 2 and "missing:cat:.jsonl" in failed.stderr, failed.stderr


def test_an_out_folder_with_a_closing_tag_does_not_crash_the_summary(tmp_path: Path) -> None:
    data = write_problems(tmp_path / "d.jsonl", ["a"])
    with fake_server_in_thread(FakeBehaviour(reply="Answer: yes")) as server:
        ran = cli("run", str(data), "--endpoint", server.base_url, "--out", "x[/]", cwd=tmp_path)
    assert_ok(ran)
    assert "run folder          x[/]" in ran.stdout, ran.stdout


def test_probe_shows_a_server_message_as_written(tmp_path: Path) -> None:
    def refuse_logprobs(body: dict[str, object]) -> str | None:
        return "bad value [/] here, nope [bad] field" if body.get("logprobs") else None

    with fake_server_in_thread(FakeBehaviour(reject=refuse_logprobs)) as server:
        probed = cli("probe", server.base_url, cwd=tmp_path)
    assert_ok(probed)
    assert "bad value [/] here, nope [bad] field" in probed.stdout, probed.stdout


def test_probe_of_a_server_that_cannot_generate_fails_in_one_line(tmp_path: Path) -> None:
    """Every capability would read "no"; the probe says the server refuses to generate."""
    refuse = FakeBehaviour(reject=lambda body: "bad value [/] here, nope [bad] field")
    with fake_server_in_thread(refuse) as server:
        probed = cli("probe", server.base_url, cwd=tmp_path)
    assert probed.returncode == 2, probed.stdout + probed.stderr
    lines = probed.stderr.strip().splitlines()
    assert len(lines) == 1 and "failed a plain chat request" in lines[0], probed.stderr
    assert "bad value [/] here, nope [bad] field" in lines[0]


def test_bench_lines_show_the_bench_folder_as_written(tmp_path: Path) -> None:
    write_problems(tmp_path / "d.jsonl", ["a", "b"])
    with fake_server_in_thread(FakeBehaviour(reply="Answer: yes")) as server:
        config = tmp_path / "bench.toml"
        config.write_text(
            f"""
[[datasets]]
path = "d.jsonl"

[grid]
mode = ["budget"]

[run]
endpoint = "{server.base_url}"
"""
        )
        ran = cli("bench", str(config), "--out", "b[red]x", cwd=tmp_path)
        again = cli("bench", str(config), "--out", "b[red]x", cwd=tmp_path)
    assert_ok(ran)
    assert "bench b[red]x: 1 of 1 cells done" in ran.stdout, ran.stdout
    assert "thinktree report 'b[red]x'" in ran.stdout
    assert_ok(again)
    assert "resuming b[red]x: 1/1 cells already done" in again.stderr, again.stderr


def test_an_error_line_shows_a_path_as_written(tmp_path: Path) -> None:
    (tmp_path / "v[").mkdir()
    (tmp_path / "v[/].json").write_text("{}")
    proc = cli("verifier", "train", "run[bold]", "--out", "v[/].json", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (
        proc.stderr.strip()
        == "error: v[/].json already exists; choose another --out or pass --force"
    )


RETRIED = CallRetried(
    endpoint="e", attempt=1, wait_s=2, reason="429: slow [/] down [bold]now :warning:"
)


def terminal() -> tuple[Console, io.StringIO]:
    shown = io.StringIO()
    return Console(file=shown, force_terminal=True, width=200, color_system=None), shown


@pytest.mark.anyio
async def test_the_run_progress_bar_shows_a_model_and_a_retry_reason_as_written() -> None:
    console, shown = terminal()
    bar = ConsoleProgress(console)
    bar.handle(RunStarted(run_id="r", mode="budget", endpoint="e", model="m[/]x[bold]", problems=2))
    bar.handle(RETRIED)
    await bar.aclose()  # draws the bar a last time
    assert "budget · m[/]x[bold]" in shown.getvalue()
    assert "waiting 2 s: 429: slow [/] down [bold]now :warning:" in shown.getvalue()


@pytest.mark.anyio
async def test_the_run_progress_bar_shows_emoji_codes_as_written() -> None:
    """An emoji code (":cat:") in a model's name or a retry's reason is text."""
    console, shown = terminal()
    bar = ConsoleProgress(console)
    bar.handle(RunStarted(run_id="r", mode="budget", endpoint="e", model="org/m:cat:", problems=2))
    bar.handle(CallRetried(endpoint="e", attempt=1, wait_s=2, reason="503 :warning: busy"))
    await bar.aclose()
    assert "budget · org/m:cat:" in shown.getvalue()
    assert "waiting 2 s: 503 :warning: busy" in shown.getvalue()


def test_the_bench_progress_bar_shows_a_retry_reason_as_written() -> None:
    console, shown = terminal()
    cell = Cell(index=1, dataset=DatasetSpec(name="d"), options={})
    with BenchProgress(console, cells=1) as view:
        view.cell_started(cell, 1, 1).handle(RETRIED)
    assert "waiting 2 s: 429: slow [/] down [bold]now :warning:" in shown.getvalue()


def test_commands_printed_for_the_user_paste_back_into_a_shell() -> None:
    """A folder or config with a space (or brackets) is quoted; a plain one is not."""
    import shlex

    from thinktree.hints import resume_command, shell_command

    hint = resume_command("my runs/r 1", "lab [gpu].toml")
    assert shlex.split(hint) == [
        "thinktree", "run", "--resume", "my runs/r 1", "--config", "lab [gpu].toml",
    ]  # fmt: skip
    assert resume_command("runs/r1") == "thinktree run --resume runs/r1"
    assert shell_command("thinktree", "report", "b 2") == "thinktree report 'b 2'"

"""Kill a run with SIGKILL at many points, resume it, and prove nothing was lost or paid twice.

The server is a real HTTP server on 127.0.0.1 that records every request it answers;
the run is the real ``thinktree`` command in a child process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bench_data import without_timing
from request_keys import request_key
from thinktree.orchestrator.run import MANIFEST_VERSION
from thinktree.testing.fake_server import FakeBehaviour, fake_server_in_thread

REPLY_WORDS = ["Let", "me", "weigh", "each", "option", "in", "turn", "before", "deciding"]


def reply(body: dict[str, Any], index: int) -> str:
    """Deterministic per request, different per seed, so samples and steps differ."""
    seed = int(body.get("seed") or 0) + index
    letter = "ABC"[seed % 3]
    words = REPLY_WORDS[: 4 + seed % 6]
    return " ".join(words) + f". Answer: {letter}"


# Each reply waits a little before its first byte, so kills land mid-run (25 calls in all).
BEHAVIOUR = FakeBehaviour(reply=reply, delay_s=0.02, chunk_delay_s=0.004)
RUN_ARGS = [
    "--mode",
    "hybrid",
    "--n",
    "2",
    "--steps",
    "3",
    "--total-budget",
    "96",
    "--concurrency",
    "2",
    "--seed",
    "3",
]


def write_dataset(path: Path, count: int = 5) -> Path:
    with path.open("w") as f:
        for i in range(count):
            f.write(
                json.dumps(
                    {
                        "id": f"q{i}",
                        "question": f"Which one, case {i}?",
                        "answer_type": "choice",
                        "options": {"A": "alpha", "B": "beta", "C": "gamma"},
                        "answer": "ABC"[i % 3],
                    }
                )
                + "\n"
            )
    return path


def start(args: list[str]) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    return subprocess.Popen(
        [sys.executable, "-m", "thinktree.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(args: list[str]) -> None:
    proc = start(args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err


def committed(folder: Path) -> set[str]:
    path = folder / "calls.sqlite"
    if not path.exists():
        return set()
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT request FROM responses").fetchall()
    except sqlite3.OperationalError:
        return set()
    finally:
        conn.close()
    return {request_key(json.loads(r[0])) for r in rows}


def comparable(results: dict[str, Any]) -> dict[str, Any]:
    """Everything but wall-clock figures and the server's own response ids (and whether
    the run streamed its text into its trace, which changes nothing else)."""
    settings = {k: v for k, v in results["settings"].items() if k != "trace_deltas"}
    return {**without_timing(results), "settings": settings}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("reference")
    data = write_dataset(root / "data.jsonl")
    with fake_server_in_thread(BEHAVIOUR) as server:
        finish(
            ["run", str(data), "--endpoint", server.base_url, *RUN_ARGS, "--out", str(root / "run")]
        )
    return comparable(json.loads((root / "run" / "results.json").read_text()))


# (calls answered before the kill, extra delay, streamed): early, between calls, late.
KILL_POINTS = [
    # streamed runs (--trace-deltas) are killed mid-stream as often as between calls
    (1, 0.0, False),
    (2, 0.01, True),
    (3, 0.0, False),
    (5, 0.02, True),
    (7, 0.0, False),
    (9, 0.03, True),
    (12, 0.0, False),
    (15, 0.015, True),
    (18, 0.0, False),
    (16, 0.025, True),
    (20, 0.01, False),
]


@pytest.mark.parametrize(("after", "delay", "stream"), KILL_POINTS)
def test_sigkill_then_resume_pays_once_and_matches(
    tmp_path: Path, reference: dict[str, Any], after: int, delay: float, stream: bool
) -> None:
    data = write_dataset(tmp_path / "data.jsonl")
    folder = tmp_path / "run"
    with fake_server_in_thread(BEHAVIOUR, record_bodies=True) as server:
        streaming = ["--trace-deltas"] if stream else []
        proc = start(
            [
                "run",
                str(data),
                "--endpoint",
                server.base_url,
                *RUN_ARGS,
                *streaming,
                "--out",
                str(folder),
            ]
        )
        deadline = time.monotonic() + 60
        while not (folder / "run.json").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.002)
        base = server.answered  # the capability probe's calls come before the folder
        while server.answered < base + after and proc.poll() is None:
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.002)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
        assert proc.returncode == -signal.SIGKILL, f"the run ended on its own: {out}{err}"
        assert not (folder / "results.json").exists()
        paid_before = committed(folder)

        finish(["run", "--resume", str(folder)])

        answered = Counter(
            request_key(b) for b in server.bodies if b.get("messages") or b.get("prompt")
        )
    # every call that was finished (committed) before the kill was paid exactly once
    if after >= 3:
        assert paid_before, "the kill point should leave finished calls behind"
    for key in paid_before:
        assert answered[key] == 1, "a finished call was paid for again"
    results = json.loads((folder / "results.json").read_text())
    assert comparable(results) == reference
    status = (
        sqlite3.connect(f"file:{folder / 'run.sqlite'}?mode=ro", uri=True)
        .execute("SELECT status FROM run")
        .fetchone()[0]
    )
    assert status == "completed"


def test_sigterm_stops_the_run_in_order_and_it_resumes(
    tmp_path: Path, reference: dict[str, Any]
) -> None:
    """A job scheduler's or a container's stop: the run keeps its trace and says how to go on."""
    data = write_dataset(tmp_path / "data.jsonl")
    folder = tmp_path / "run"
    with fake_server_in_thread(BEHAVIOUR, record_bodies=True) as server:
        proc = start(
            ["run", str(data), "--endpoint", server.base_url, *RUN_ARGS, "--out", str(folder)]
        )
        deadline = time.monotonic() + 60
        while not (folder / "run.json").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.002)
        base = server.answered
        while server.answered < base + 6 and proc.poll() is None:
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 143, f"{out}{err}"
        assert "Traceback" not in err
        assert err.strip().splitlines()[-2:] == [
            "error: terminated (SIGTERM)",
            f"resume with: thinktree run --resume {folder}",
        ]
        assert not (folder / "results.json").exists()
        # the trace was flushed and closed: whole lines, the run's end recorded
        events = [json.loads(line) for line in (folder / "trace.jsonl").read_text().splitlines()]
        assert events[0]["type"] == "run-started"
        assert events[-1] == {**events[-1], "type": "run-finished", "status": "cancelled"}
        paid_before = committed(folder)
        finish(["run", "--resume", str(folder)])
        answered = Counter(
            request_key(b) for b in server.bodies if b.get("messages") or b.get("prompt")
        )
    assert paid_before and all(answered[key] == 1 for key in paid_before)
    assert comparable(json.loads((folder / "results.json").read_text())) == reference


def test_resume_refuses_foreign_and_finished_folders(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "thinktree.cli", "run", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run("--resume", str(empty))
    assert proc.returncode != 0 and "no run.json" in proc.stderr
    assert "Traceback" not in proc.stderr

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "run.json").write_text(json.dumps({"manifest_version": 99, "thinktree": "9.0"}))
    proc = run("--resume", str(bad))
    assert proc.returncode != 0 and "format 99" in proc.stderr

    (bad / "run.json").write_text(json.dumps({"manifest_version": MANIFEST_VERSION}))
    (bad / "calls.sqlite").write_bytes(b"not a database at all, just text")
    before = (bad / "calls.sqlite").read_bytes()
    proc = run("--resume", str(bad))
    assert proc.returncode != 0 and "not a SQLite database" in proc.stderr
    assert (bad / "calls.sqlite").read_bytes() == before


def test_resume_with_another_mode_or_dataset_is_refused(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data.jsonl", count=2)
    folder = tmp_path / "run"
    with fake_server_in_thread(BEHAVIOUR) as server:
        proc = start(
            ["run", str(data), "--endpoint", server.base_url, *RUN_ARGS, "--out", str(folder)]
        )
        while not (folder / "run.json").exists():
            time.sleep(0.005)
        base = server.answered
        while server.answered < base + 2:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    other = write_dataset(tmp_path / "other.jsonl", count=3)
    for args, needle in (
        (["--mode", "parallel"], "cannot be resumed as 'parallel'"),
        ([str(other)], "does not hold the problems"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "thinktree.cli", "run", "--resume", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0
        assert needle in done.stderr
        assert "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def cut_off_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder as a run killed before its end leaves it (its server gone since)."""
    root = tmp_path_factory.mktemp("cut")
    data = write_dataset(root / "data.jsonl", count=2)
    folder = root / "run"
    with fake_server_in_thread(BEHAVIOUR) as server:
        finish(["run", str(data), "--endpoint", server.base_url, *RUN_ARGS, "--out", str(folder)])
    (folder / "results.json").unlink()
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("damage", "field"),
    [
        (lambda m: m.update(problems="x"), "problems: expected a non-empty list"),
        (lambda m: m.update(problems=[]), "problems: expected a non-empty list"),
        (lambda m: m["problems"].append(m["problems"][0]), "problems: the id 'q0' is given twice"),
        (lambda m: m["problems"][1].pop("question"), "problems[1]: question"),
        (lambda m: m["settings"].update(concurrency="x"), "settings.concurrency: expected a whole"),
        (
            lambda m: m["settings"].update(concurrency=-1),
            "settings: --concurrency must be positive",
        ),
        (lambda m: m["settings"].update(verifiers="judge"), "settings.verifiers"),
        (lambda m: m["settings"].pop("seed"), "settings: no seed"),
        # each went on at its default: a sequential run as budget, a money limit as none
        (lambda m: m["settings"].pop("mode"), "settings: no mode"),
        (lambda m: m["settings"].pop("budget"), "settings: no budget"),
        (lambda m: m["settings"].pop("max_cost"), "settings: no max_cost"),
        (lambda m: m["capabilities"].update(continuation=3), "capabilities.continuation"),
        (lambda m: m["endpoint"].pop("base_url"), "endpoint: no base_url"),
        (lambda m: m.update(settings="x"), "settings: expected an object"),
        (lambda m: m.update(prices=[]), "prices: expected a table of model prices"),
        (lambda m: m.update(prices={"m": {"prompt": 1}}), 'prices: price of "m" needs both'),
    ],
)
def test_a_damaged_run_json_is_named_in_one_line_and_the_folder_left_alone(
    cut_off_run: Path, tmp_path: Path, damage: Any, field: str
) -> None:
    folder = tmp_path / "run"
    shutil.copytree(cut_off_run, folder)
    manifest = json.loads((folder / "run.json").read_text())
    damage(manifest)
    (folder / "run.json").write_text(json.dumps(manifest))
    before = _files(folder)
    proc = subprocess.run(
        [sys.executable, "-m", "thinktree.cli", "run", "--resume", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"cannot resume {folder}: run.json is damaged ({field}" in proc.stderr, proc.stderr
    assert _files(folder) == before


def test_a_run_resumed_on_a_server_that_moved_reads_its_calls_back(tmp_path: Path) -> None:
    """Started with --endpoint on one address and resumed with --endpoint on another (the
    README's "a server that moved"): its calls are read back, none is sent again (every
    one was: the fingerprints named the server by its old URL)."""
    data = write_dataset(tmp_path / "set.jsonl", 3)
    with fake_server_in_thread(BEHAVIOUR) as first:
        finish(
            [
                "run",
                str(data),
                "--endpoint",
                first.base_url,
                "--out",
                str(tmp_path / "r"),
                *RUN_ARGS,
            ]
        )
    (tmp_path / "r" / "results.json").unlink()  # cut off just before its end
    with fake_server_in_thread(BEHAVIOUR) as moved:
        finish(["run", "--resume", str(tmp_path / "r"), "--endpoint", moved.base_url])
        assert moved.requests == 0
    saved = json.loads((tmp_path / "r" / "results.json").read_text())
    assert saved["status"] == "completed" and len(saved["problems"]) == 3


def test_a_resume_whose_endpoint_now_fixes_another_temperature_is_refused(
    tmp_path: Path,
) -> None:
    """The endpoint's table gained `temperature = 1` between the run and its resume: one
    line, nothing sent (it sent every call again at the new temperature, and results.json
    said 1 where run.json said 0.7)."""
    data = write_dataset(tmp_path / "set.jsonl", 2)
    config = tmp_path / "thinktree.toml"
    folder = tmp_path / "r"
    with fake_server_in_thread(BEHAVIOUR) as server:
        config.write_text(f'[endpoints.lab]\nbase_url = "{server.base_url}"\n')
        finish(
            [
                "run",
                str(data),
                "--endpoint",
                "lab",
                "--config",
                str(config),
                "--out",
                str(folder),
                *RUN_ARGS,
            ]
        )
        (folder / "results.json").unlink()
        config.write_text(f'[endpoints.lab]\nbase_url = "{server.base_url}"\ntemperature = 1\n')
        sent = server.requests
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "thinktree.cli",
                "run",
                "--resume",
                str(folder),
                "--config",
                str(config),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert server.requests == sent
    assert done.returncode == 2, done.stderr
    assert "now samples at temperature 1; the run was made at 0.7" in done.stderr
    assert "Traceback" not in done.stderr and not (folder / "results.json").exists()


def test_a_resume_at_other_prices_is_refused_and_one_without_keeps_the_runs(
    tmp_path: Path,
) -> None:
    """The config's [prices] changed between the run and its resume: one line, nothing
    sent or written (it counted what the run had paid at the new price under --max-cost,
    and its cost mixed two prices). Resumed with no [prices], the run counts at the prices
    it was made at (it was refused: --max-cost had no price)."""
    data = write_dataset(tmp_path / "set.jsonl", 2)
    config = tmp_path / "thinktree.toml"
    folder = tmp_path / "r"
    priced = '[prices]\n"fake-model" = { prompt = 1.0, completion = 1000.0 }\n'

    def resume() -> subprocess.CompletedProcess[str]:
        args = ["run", "--resume", str(folder), "--config", str(config)]
        return subprocess.run(
            [sys.executable, "-m", "thinktree.cli", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    with fake_server_in_thread(BEHAVIOUR) as server:
        config.write_text(priced)
        finish(
            [
                *("run", str(data), "--endpoint", server.base_url, "--config", str(config)),
                *("--out", str(folder), "--max-cost", "100", *RUN_ARGS),
            ]
        )
        made = json.loads((folder / "results.json").read_text())["metrics"]["cost_usd"]
        (folder / "results.json").unlink()  # cut off just before its end
        kept = _files(folder)
        sent = server.requests
        config.write_text(priced.replace("1000.0", "2000.0"))
        refused = resume()
        assert server.requests == sent
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
        assert "was made at other prices" in refused.stderr, refused.stderr
        assert "'fake-model' at 1/1000, now 1/2000" in refused.stderr, refused.stderr
        assert _files(folder) == kept
        config.write_text("")  # no prices given: the run keeps its own
        again = resume()
        assert again.returncode == 0, again.stdout + again.stderr
        assert server.requests == sent  # every call read back
    assert made is not None and made > 0
    assert json.loads((folder / "results.json").read_text())["metrics"]["cost_usd"] == made

"""A run whose own files cannot be written (a full disk) stops in one line and resumes.

The failures are the operating system's and SQLite's own: a file size limit
(``RLIMIT_FSIZE``: every write past it fails with EFBIG) for the command, and SQLite's
``max_page_count`` (SQLITE_FULL, "database or disk is full") for the call store.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from choice_set import beta_problems, write_dataset
from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.errors import RecordingError
from thinktree.orchestrator import call_cache
from thinktree.orchestrator.run import RunSettings, execute, load_resume
from thinktree.testing.fake_server import FakeBehaviour, FakeServer, fake_server_in_thread

pytestmark = pytest.mark.anyio

PROBLEMS = beta_problems(24)
REPLY = "Thinking it over at some length, as a model does. Answer: B"


async def test_a_full_call_store_stops_the_run_which_then_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = call_cache.SqliteCallCache._put
    commits = 0

    def filling(self: call_cache.SqliteCallCache, rows: list[tuple[Any, ...]]) -> None:
        nonlocal commits
        commits += 1
        if commits == 4:  # from now on the database may not grow: SQLite's own SQLITE_FULL
            pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
            self._conn.execute(f"PRAGMA max_page_count = {pages}")
        commit(self, rows)

    monkeypatch.setattr(call_cache.SqliteCallCache, "_put", filling)
    modes = ModeSettings(mode="parallel", n=4, budget=16)
    folder = tmp_path / "run"
    async with FakeServer(FakeBehaviour(reply=REPLY)) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, continuation="chat")
        with pytest.raises(RecordingError, match=r"calls\.sqlite: database or disk is full"):
            await execute(PROBLEMS, endpoint, RunSettings(modes=modes, out=folder))
        assert not (folder / "results.json").exists()  # no half-written results

        monkeypatch.setattr(call_cache.SqliteCallCache, "_put", commit)  # room again
        before = server.requests
        state = load_resume(folder)
        result = await execute(PROBLEMS, endpoint, state.settings, resume=state)
        sent = server.requests - before
    assert (folder / "results.json").is_file()
    assert result.metrics.answered == len(PROBLEMS)
    assert result.cached_calls > 0  # what was recorded before is not paid for again
    assert sent == len(PROBLEMS) - result.cached_calls  # one n=4 request per problem


def _limited(size: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


def _dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data.jsonl", PROBLEMS)


def _cli(*args: str, limit: int | None = None) -> subprocess.CompletedProcess[str]:
    """``thinktree ARGS``; with ``limit``, no file it writes may grow past that many bytes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    return subprocess.run(
        [sys.executable, "-m", "thinktree.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        preexec_fn=None if limit is None else lambda: _limited(limit),
    )


def test_a_command_that_cannot_write_its_run_says_so_in_one_line_and_resumes(
    tmp_path: Path,
) -> None:
    data = _dataset(tmp_path)
    out = tmp_path / "run"
    with fake_server_in_thread(FakeBehaviour(reply=REPLY * 20)) as server:
        where = ["--endpoint", server.base_url, "--mode", "parallel", "--n", "4"]
        stopped = _cli("run", str(data), *where, "--out", str(out), limit=64 * 1024)
        left = sorted(p.name for p in out.iterdir())
        resumed = _cli("run", "--resume", str(out))
    assert stopped.returncode == 74, stopped.stderr
    assert "Traceback" not in stopped.stderr
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("error:")]
    # which file passes the limit first (the call store, the trace, results.json) varies
    assert len(errors) == 1 and errors[0].startswith("error: cannot ") and str(out) in errors[0]
    assert f"resume with: thinktree run --resume {out}" in stopped.stderr
    assert "results.json" not in left  # no half-written results
    assert resumed.returncode == 0, resumed.stderr
    saved = json.loads((out / "results.json").read_text())
    assert [p["answer"] for p in saved["problems"]] == ["B"] * len(PROBLEMS)


@pytest.mark.parametrize(
    ("limit", "says"),
    [
        (1024, "cannot write run folder {out}: File too large"),  # its manifest
        # its manifest written, its call store not (it used to exit 2, as a bad --out)
        (9000, "cannot write the call store {out}/calls.sqlite: disk I/O error"),
    ],
)
def test_a_run_folder_that_cannot_be_written_at_all_is_not_left_behind(
    tmp_path: Path, limit: int, says: str
) -> None:
    out = tmp_path / "run"
    with fake_server_in_thread(FakeBehaviour(reply=REPLY)) as server:
        data = str(_dataset(tmp_path))
        done = _cli("run", data, "--endpoint", server.base_url, "--out", str(out), limit=limit)
    assert done.returncode == 74, done.stderr
    (line,) = done.stderr.strip().splitlines()  # no resume hint: nothing to resume
    assert line.startswith("error: " + says.format(out=out))
    assert not out.exists()

"""A run makes room for its connections among the files it may open (``ulimit -n``)."""

from __future__ import annotations

import json
import os
import resource
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from thinktree.agents.endpoint import EndpointConfig, PoolMember
from thinktree.open_files import SPARE, connections_of
from thinktree.testing.fake_server import FakeBehaviour, fake_server_in_thread

CONNECTIONS = 400
ARGS = ("--mode", "parallel", "--n", "16", "--concurrency", "24", "--out", "r")


def _limited(soft: int, hard: int | None = None) -> Callable[[], None]:
    """For ``preexec_fn``: the child starts with these limits on open files."""

    def limit() -> None:
        _, was = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, was if hard is None else hard))

    return limit


def _run(
    tmp_path: Path, base_url: str, limit: Callable[[], None]
) -> subprocess.CompletedProcess[str]:
    """``thinktree run`` of 24 problems x 16 samples, every one a request of its own, all
    at once, against an endpoint allowed ``CONNECTIONS`` connections."""
    data = tmp_path / "d.jsonl"
    line: dict[str, object] = {"question": "Which letter?", "answer_type": "choice", "answer": "B"}
    line["options"] = {"A": "a", "B": "b"}
    data.write_text("".join(json.dumps({**line, "id": f"q{i}"}) + "\n" for i in range(24)))
    (tmp_path / "thinktree.toml").write_text(
        f'[endpoints.many]\nbase_url = "{base_url}"\nmax_connections = {CONNECTIONS}\n'
        'native_n = "no"\ncontinuation = "chat"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    return subprocess.run(
        [sys.executable, "-m", "thinktree.cli", "run", str(data), "--endpoint", "many", *ARGS],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit,
    )


def test_a_run_raises_its_soft_limit_so_its_connections_and_store_fit(tmp_path: Path) -> None:
    """Under a soft limit of 200 open files (a hard one far above), 384 calls in flight:
    the run raises its soft limit, and its store records the whole run (it stopped
    recording, 'unable to open database file', and the run went on without it)."""
    with fake_server_in_thread(FakeBehaviour(reply="Answer: B", delay_s=0.5)) as server:
        proc = _run(tmp_path, server.base_url, _limited(200))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "stopped recording" not in proc.stdout + proc.stderr
    conn = sqlite3.connect(tmp_path / "r" / "run.sqlite")
    try:
        status = conn.execute("SELECT status FROM run").fetchone()[0]
        done = conn.execute("SELECT count(*) FROM nodes WHERE kind = 'generation'").fetchone()
    finally:
        conn.close()
    assert (status, done[0]) == ("completed", 24 * 16)


def test_a_hard_limit_too_low_for_max_connections_is_one_line_before_the_run(
    tmp_path: Path,
) -> None:
    """Where even the hard limit leaves no room, the run is refused in one line that names
    the endpoint and what to change, before its folder exists and before any request."""
    with fake_server_in_thread(FakeBehaviour(reply="Answer: B")) as server:
        proc = _run(tmp_path, server.base_url, _limited(200, 200))
        sent = server.requests
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"endpoint 'many': max_connections {CONNECTIONS} needs about" in lines[0]
    assert "may open 200 (ulimit -n)" in lines[0]
    assert not (tmp_path / "r").exists()
    assert sent == 0


def test_a_pool_needs_room_for_every_member_s_connections() -> None:
    members = (PoolMember("http://127.0.0.1:1/v1", 30), PoolMember("http://127.0.0.1:2/v1", 50))
    pool = EndpointConfig(name="pool", base_url="http://127.0.0.1:1/v1", members=members)
    assert connections_of(pool) == 80
    assert connections_of(EndpointConfig(name="one", base_url="http://h/v1")) == 32
    assert SPARE > 0

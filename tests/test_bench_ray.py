"""`thinktree bench --ray` on local Ray clusters against a real local HTTP server.

A cluster the test starts (``ray start --head``) runs a bench whose merged run folders
equal, node for node, a single-process bench of the same config and seeds; a shard
whose worker is SIGKILLed is run again by Ray and finishes without paying twice for a
call; an unreachable cluster address is one line, no folder and no Ray process left.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench_data import without_timing, write_choice_problems
from request_keys import SEEN, reply, request_key
from thinktree.bench.follow import ShardFollower
from thinktree.bench.merge import _servers
from thinktree.bench.sharding import split
from thinktree.orchestrator.events import CallRetried, Event, ProblemFinished, RunStarted
from thinktree.orchestrator.store import StoreReader
from thinktree.orchestrator.trace import read_trace
from thinktree.problems import Problem
from thinktree.testing.fake_server import FakeBehaviour, fake_server_in_thread
from thinktree.tui.state import RunView


def paid() -> list[str]:
    """The problems' requests the server answered (capability probes left out)."""
    return [key for key in SEEN if "Which one" in key]


def write_config(folder: Path, url: str, grid: str, count: int, endpoints: str = "") -> Path:
    write_choice_problems(folder / "qs.jsonl", "q", count)
    config = folder / "bench.toml"
    config.write_text(
        f"""
[[datasets]]
path = "qs.jsonl"

[grid]
{grid}

[run]
endpoint = "{url}"
seed = 2
n = 2
budget = 16
concurrency = 1
{endpoints}
"""
    )
    return config


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    base.update({"COLUMNS": "250", "RAY_USAGE_STATS_ENABLED": "0", **(env or {})})
    return subprocess.Popen(
        [sys.executable, "-m", "thinktree.cli", *args],
        cwd=cwd,
        env=base,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = cli(*args, cwd=cwd, env=env)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out + err
    return out + err


def comparable(results: dict[str, Any]) -> dict[str, Any]:
    """Everything but wall-clock figures, run ids and the server's own response ids."""
    rest = {
        k: v for k, v in results.items() if k not in ("run_id", "metrics", "problems", "servers")
    }
    servers = results.get("servers") or []  # which member answered depends on load
    answered = sum(m["calls"] for m in servers)
    tokens = sum(m["completion_tokens"] for m in servers)
    return {**rest, **without_timing(results), "pool": (answered, tokens)}


def stored_nodes(folder: Path) -> dict[str, list[tuple[Any, ...]]]:
    """The run store's nodes per problem, as a reader of any run sees them (times left out).

    Problems are stored in the order they started, which shards running side by side
    change; each problem's own nodes keep their order.
    """
    with StoreReader.open(folder / "run.sqlite") as reader:
        assert reader.status() == "completed"
        return {
            p["id"]: [
                (n["id"], n["kind"], n["text"], n["completion_tokens"], n["answer"])
                for n in reader.nodes(p["id"])
            ]
            for p in reader.problems()
        }


def watched(folder: Path) -> dict[str, Any]:
    """What ``thinktree watch`` shows of a finished run: its trace replayed into the view."""
    view = RunView()
    for event in read_trace(folder / "trace.jsonl"):
        view.apply(event)
    assert view.skipped == 0 and view.error is None
    assert view.finished is not None and view.finished.status == "completed"
    return {
        "progress": (view.done, view.total, dict(view.outcomes)),
        "tokens": (view.prompt_tokens, view.completion_tokens, view.allowed_tokens),
        "nodes": {
            pid: [
                {k: v for k, v in n.to_dict().items() if k not in ("latency_s", "call_id")}
                for n in tree.walk()
            ]
            for pid, tree in view.tree.problems.items()
        },
    }


def call_count(path: Path) -> int:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM responses").fetchone()[0])
    finally:
        conn.close()


def committed_so_far(path: Path) -> int:
    """Calls a running shard has committed (0 while its store is not there yet)."""
    try:
        return call_count(path) if path.is_file() else 0
    except sqlite3.Error:
        return 0


def assert_same_bench(single: Path, sharded: Path) -> None:
    cells = sorted(p.parent.name for p in single.glob("*/results.json"))
    assert cells and cells == sorted(p.parent.name for p in sharded.glob("*/results.json"))
    for cell in cells:
        a = json.loads((single / cell / "results.json").read_text())
        b = json.loads((sharded / cell / "results.json").read_text())
        assert comparable(a) == comparable(b), cell
        assert [p["id"] for p in b["problems"]] == [p["id"] for p in a["problems"]]
        assert stored_nodes(single / cell) == stored_nodes(sharded / cell), cell
        assert watched(single / cell) == watched(sharded / cell), cell
        assert call_count(single / cell / "calls.sqlite") == call_count(
            sharded / cell / "calls.sqlite"
        )
        manifest = json.loads((sharded / cell / "run.json").read_text())
        assert manifest["run_id"] == b["run_id"] and len(manifest["problems"]) == len(a["problems"])
        assert not (sharded / cell / "shards").exists()


def ray_pids() -> set[int]:
    """Processes of Ray's (its servers, its workers) on this machine."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"ray::") or b"site-packages/ray/" in cmdline:
            found.add(int(entry.name))
    return found


def wait_gone(pids: set[int], timeout_s: float = 30.0) -> set[int]:
    deadline = time.monotonic() + timeout_s
    left = pids
    while time.monotonic() < deadline:
        left = pids & ray_pids()
        if not left:
            break
        time.sleep(0.2)
    return left


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ray_head(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A one-node Ray cluster (2 CPUs) started for the test; stopped and checked after."""
    before = ray_pids()
    port = free_port()
    # Ray's default for `ray start`; the driver needs it too, and its token (a machine
    # that never ran Ray has none in ~/.ray/auth_token, and `ray start` makes none)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **auth}
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            f"--port={port}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--block",
        ],
        env=env,
        stdout=(tmp_path / "ray-head.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert head.poll() is None, (tmp_path / "ray-head.log").read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        yield f"127.0.0.1:{port}", auth
    finally:
        started = ray_pids() - before
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=10)
        left = wait_gone(started)
        for pid in left:  # ours, by id: never leave a Ray process behind
            os.kill(pid, signal.SIGKILL)
        assert not left, f"Ray processes outlived the cluster: {sorted(left)}"


def test_a_ray_bench_equals_a_single_process_bench(
    tmp_path: Path, ray_head: tuple[str, dict[str, str]]
) -> None:
    address, env = ray_head
    behaviour = FakeBehaviour(reply=reply, delay_s=0.01)
    with (
        fake_server_in_thread(behaviour, id_prefix="one") as one,
        fake_server_in_thread(behaviour, id_prefix="two") as two,
    ):
        # every shard against one pool of two servers, as replicas on several nodes would be
        pool = f"""
[endpoints.pool]
model = "fake-model"
max_connections = 2
members = ["{one.base_url}", "{two.base_url}"]
"""
        config = write_config(tmp_path, "pool", 'mode = ["budget", "parallel"]', 5, pool)
        SEEN.clear()
        finish("bench", str(config), "--out", "single", cwd=tmp_path)
        single_seen = list(SEEN)
        SEEN.clear()
        said = finish(
            "bench",
            str(config),
            "--out",
            "sharded",
            "--ray",
            address,
            "--shards",
            "2",
            cwd=tmp_path,
            env=env,
        )
        assert "2 shards on 1 host" in said
        # the very same requests: one probe per cell (by the driver, none per shard) and
        # each problem's calls once
        assert Counter(SEEN) == Counter(single_seen)
        assert len(paid()) == len(set(paid()))
    assert_same_bench(tmp_path / "single", tmp_path / "sharded")
    # the merged folders read like any run's
    runs = finish("runs", "sharded", cwd=tmp_path)
    assert runs.count("completed") == 2 and runs.count("5/5") == 2
    finish("report", "sharded", "--no-plots", cwd=tmp_path)
    assert (tmp_path / "sharded" / "report.md").is_file()


def test_a_killed_worker_s_shard_runs_again_without_paying_twice(tmp_path: Path) -> None:
    before = ray_pids()
    behaviour = FakeBehaviour(reply=reply, delay_s=0.15)
    with fake_server_in_thread(behaviour) as server:
        config = write_config(tmp_path, server.base_url, 'mode = ["sequential"]\nsteps = [2]', 6)
        SEEN.clear()
        finish("bench", str(config), "--out", "single", cwd=tmp_path)
        SEEN.clear()
        # --ray alone: a local cluster the command starts and stops itself
        proc = cli("bench", str(config), "--out", "sharded", "--ray", "--shards", "2", cwd=tmp_path)
        shards = tmp_path / "sharded" / "001_qs_mode-sequential_steps-2" / "shards"
        worker, calls = shards / "000.worker.json", shards / "000" / "calls.sqlite"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            if worker.is_file() and committed_so_far(calls):
                break
            time.sleep(0.02)
        else:
            pytest.fail("shard 0 never committed a call")
        os.kill(json.loads(worker.read_text())["pid"], signal.SIGKILL)
        assert not (shards / "000" / "results.json").exists(), "the kill came too late"
        conn = sqlite3.connect(f"file:{calls}?mode=ro", uri=True)
        before_kill = {
            request_key(json.loads(r[0])) for r in conn.execute("SELECT request FROM responses")
        }
        conn.close()
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, out + err
        assert "1 run again after its worker was lost" in out + err
        requests = Counter(paid())
    # what the killed shard had committed was never asked for again; at most the one
    # call in flight at the kill (concurrency 1) was made twice
    assert before_kill and all(requests[key] == 1 for key in before_kill)
    assert sum(requests.values()) - len(requests) <= 1
    assert_same_bench(tmp_path / "single", tmp_path / "sharded")
    left = wait_gone(ray_pids() - before)
    assert not left, f"the command left Ray processes behind: {sorted(left)}"


def test_a_ray_bench_cut_off_by_ctrl_c_resumes_without_ray(tmp_path: Path) -> None:
    before = ray_pids()
    with fake_server_in_thread(FakeBehaviour(reply=reply, delay_s=0.1)) as server:
        config = write_config(tmp_path, server.base_url, 'mode = ["budget"]', 6)
        finish("bench", str(config), "--out", "single", cwd=tmp_path)
        proc = cli("bench", str(config), "--out", "sharded", "--ray", "--shards", "2", cwd=tmp_path)
        shards = tmp_path / "sharded" / "001_qs_mode-budget" / "shards"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if all(committed_so_far(shards / f"00{i}" / "calls.sqlite") for i in (0, 1)):
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, out + err
        assert "resume with: thinktree bench" in err
        assert not wait_gone(ray_pids() - before), "Ctrl-C left Ray processes behind"
        assert not (shards.parent / "results.json").exists() and shards.is_dir()
        said = finish("bench", str(config), "--out", "sharded", cwd=tmp_path)  # no --ray
        assert "(resumed)" in said and "from the cache" in said
    assert_same_bench(tmp_path / "single", tmp_path / "sharded")


def test_bad_ray_input_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    before = ray_pids()
    config = write_config(tmp_path, "http://127.0.0.1:9/v1", 'mode = ["budget"]', 2)
    port = free_port()
    cases = [
        (["--ray", f"127.0.0.1:{port}"], f"cannot reach the Ray cluster at 127.0.0.1:{port}"),
        (["--ray", f"ray://127.0.0.1:{port}"], "cannot reach the Ray cluster at ray://"),
        (["--ray", "nowhere:port"], "give HOST:PORT"),
        (["--shards", "2"], "give --ray too"),
        (["--ray", "127.0.0.1:1", "--shards", "0"], "--shards must be at least 1"),
    ]
    for args, message in cases:
        proc = cli("bench", str(config), "--out", "never", *args, cwd=tmp_path)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 2, (args, out, err)
        assert message in err, (args, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "never").exists()
    config.write_text(config.read_text() + "max-tokens = 100\n")
    proc = cli("bench", str(config), "--out", "never", "--ray", cwd=tmp_path)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 2 and "cannot split a run-wide limit" in err, err
    assert not (tmp_path / "never").exists()
    assert not (ray_pids() - before), "a failed --ray left Ray processes behind"


def test_problems_are_dealt_round_robin_and_pool_figures_add_up() -> None:
    problems = [Problem(id=f"p{i}", question="?") for i in range(5)]
    parts = split(problems, 3)
    assert [[p.id for p in part] for part in parts] == [["p0", "p3"], ["p1", "p4"], ["p2"]]
    assert len(split(problems, 9)) == 5  # never an empty shard
    one = {"base_url": "a", "max_connections": 4, "calls": 2, "busy_s": 1.5, "healthy": True}
    two = {"base_url": "a", "max_connections": 4, "calls": 3, "busy_s": 0.5, "healthy": False}
    other = {"base_url": "b", "max_connections": 2, "calls": 1, "busy_s": 0.1, "healthy": True}
    assert _servers([[one, other], [two], None]) == [
        {"base_url": "a", "max_connections": 4, "calls": 5, "busy_s": 2.0, "healthy": False},
        other,
    ]
    assert _servers([None, None]) is None


@pytest.mark.slow
def test_a_ray_bench_on_the_embedded_model(tmp_path: Path, embedded_url: str) -> None:
    """`endpoint = "embedded"`: the driver serves the model (here it finds the session's
    server) and the shards on the local cluster call it at its address."""
    before = ray_pids()
    config = write_config(tmp_path, "embedded", 'mode = ["budget"]', 4)
    config.write_text(config.read_text().replace("concurrency = 1", "concurrency = 2"))
    said = finish("bench", str(config), "--out", "sharded", "--ray", "--shards", "2", cwd=tmp_path)
    assert "2 shards on 1 host" in said
    (cell,) = (tmp_path / "sharded").glob("*/results.json")
    results = json.loads(cell.read_text())
    assert results["endpoint"]["base_url"] == embedded_url
    assert [p["id"] for p in results["problems"]] == ["q0", "q1", "q2", "q3"]
    assert results["metrics"]["problems"] == 4 and results["metrics"]["failed"] == 0
    nodes = [n for p in results["problems"] for n in p["nodes"]]
    assert all(n["status"] == "done" for n in nodes)
    call_ids = {n["call_id"] for n in nodes if n["call_id"]}
    assert len(call_ids) == results["metrics"]["calls"]
    assert call_count(cell.parent / "calls.sqlite") == len(call_ids)
    with StoreReader.open(cell.parent / "run.sqlite") as reader:
        assert reader.status() == "completed" and len(reader.calls()) == len(call_ids)
    assert not wait_gone(ray_pids() - before)


def test_a_sharded_cell_s_progress_follows_its_shards_traces(tmp_path: Path) -> None:
    seen: list[Event] = []

    class Sink:
        wants_deltas = False

        def handle(self, event: Event) -> None:
            seen.append(event)

        async def aclose(self) -> None:
            return None

    def write(folder: Path, *events: Event, mode: str = "a") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "trace.jsonl").open(mode) as f:
            for event in events:
                f.write(json.dumps(event.to_dict()) + "\n")

    def done(pid: str) -> ProblemFinished:
        return ProblemFinished(problem_id=pid, answer="A", correct=True, covered=True)

    a, b = tmp_path / "000", tmp_path / "001"
    started = RunStarted(run_id="", mode="budget", endpoint="e", model="m", problems=3)
    follower = ShardFollower(Sink(), [a, b], started)
    follower.poll()  # no traces yet
    write(a, started, done("q0"))
    follower.poll()
    write(a, done("q2"))
    write(b, started, CallRetried(endpoint="e", attempt=1, wait_s=0.5, reason="429"))
    follower.poll()
    # shard 0 run again after a kill: its trace starts over and repeats q0
    write(a, started, done("q0"), mode="w")
    write(b, done("q1"))
    follower.poll()
    kinds = [(e.type, getattr(e, "problem_id", None)) for e in seen]
    assert kinds == [
        ("run-started", None),
        ("problem-finished", "q0"),
        ("problem-finished", "q2"),
        ("call-retried", None),
        ("problem-finished", "q1"),
    ]


def test_ray_given_alone_means_a_local_cluster() -> None:
    from thinktree.cli import _ray_alone

    assert _ray_alone(["bench", "b.toml", "--ray"]) == ["bench", "b.toml", "--ray", "local"]
    assert _ray_alone(["bench", "--ray", "b.toml", "--out", "o"])[:4] == [
        "bench",
        "--ray",
        "local",
        "b.toml",
    ]
    assert _ray_alone(["bench", "b", "--ray", "--shards", "2"])[3] == "local"
    for value in ("local", "auto", "head:6379", "ray://head:10001"):
        assert _ray_alone(["bench", "b", "--ray", value]) == ["bench", "b", "--ray", value]
    assert _ray_alone(["run", "x"]) == ["run", "x"]

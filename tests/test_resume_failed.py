"""A completed run with failed model calls resumes: only the failed calls are sent again.

An endpoint down for a while, or one request it refused, leaves failed calls in an
otherwise complete run. The server here is a real HTTP server on 127.0.0.1 that refuses
one problem's requests until it is told it is "back".
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from choice_set import beta_problems, write_dataset
from thinktree._files import folder_lock
from thinktree.agents.capabilities import Capabilities
from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.agents.prompts import FORCE_ANSWER_CUE, WAIT_CUE
from thinktree.errors import ConfigError
from thinktree.orchestrator.call_cache import SqliteCallCache
from thinktree.orchestrator.run import RunSettings, execute, load_resume
from thinktree.testing.fake_server import FakeBehaviour, FakeServer, Fault, fake_server_in_thread

pytestmark = pytest.mark.anyio

PROBLEMS = beta_problems(6)


class Outage:
    """Refuses every request about ``Question 1?`` while ``down``."""

    def __init__(self) -> None:
        self.down = True

    def __call__(self, body: dict[str, Any]) -> str | None:
        if self.down and "Question 1?" in json.dumps(body.get("messages")):
            return "the model is being reloaded"
        return None


def _behaviour(outage: Outage) -> FakeBehaviour:
    return FakeBehaviour(reply="It is beta. Answer: B", reject=outage)


async def test_resuming_a_completed_run_sends_only_its_failed_calls_again(
    tmp_path: Path,
) -> None:
    outage = Outage()
    folder = tmp_path / "run"
    async with FakeServer(_behaviour(outage)) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, continuation="chat")
        settings = RunSettings(modes=ModeSettings(mode="budget", budget=32), out=folder)
        first = await execute(PROBLEMS, endpoint, settings)
        assert first.metrics.answered == len(PROBLEMS) - 1
        assert (folder / "results.json").is_file()  # completed, with one failure

        outage.down = False
        state = load_resume(folder)
        assert state.retrying == 1
        before = server.requests
        again = await execute(PROBLEMS, endpoint, state.settings, resume=state)
        sent = server.requests - before
    assert sent == 1  # only the failed call; the others are read back
    assert again.cached_calls == len(PROBLEMS) - 1
    assert again.metrics.answered == len(PROBLEMS) and again.metrics.failed == 0
    saved = json.loads((folder / "results.json").read_text())
    assert all(n["status"] != "failed" for p in saved["problems"] for n in p["nodes"])
    with pytest.raises(ConfigError, match="already completed, with no failed model call"):
        load_resume(folder)


class FailingWait:
    """While ``down``, every "Wait" extension fails on each attempt: answered with a 500
    (``how="500"``) or its connection cut mid-answer (``how="reset"``). The thinking,
    the one problem's first request, is answered."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.down = True

    def reject(self, body: dict[str, Any]) -> str | None:
        messages = body.get("messages") or [{}]
        waits = str(messages[-1].get("content", "")).endswith("Wait")
        return "the server broke" if self.down and self.how == "500" and waits else None

    def fault(self, index: int) -> Fault | None:
        return Fault.RESET if self.down and self.how == "reset" and index > 0 else None


def _thinks_then_waits(body: dict[str, Any], index: int) -> str:
    """5 tokens that state B, and after "Wait" 5 more that state it again."""
    messages = body.get("messages") or [{}]
    if str(messages[-1].get("content", "")).endswith("Wait"):
        return " I am sure. Answer: B"
    return "It is beta. Answer: B"


@pytest.mark.parametrize("how", ["500", "reset"])
async def test_a_failed_wait_keeps_the_thinkings_answer_and_is_sent_again_on_resume(
    tmp_path: Path, how: str
) -> None:
    """Budget forcing below --min-thinking: the thinking states B, and its "Wait" fails
    on every retry. The extension's node fails with the error and B, the thinking's
    answer, decides the problem (it used to end with no answer). The failed extension is
    still a failed call: a resume sends it, and only it, again, and it then decides."""
    wait = FailingWait(how)
    folder = tmp_path / "run"
    behaviour = FakeBehaviour(
        reply=_thinks_then_waits, reject=wait.reject, reject_status=500, native_n=False
    )
    async with FakeServer(behaviour, faults=wait.fault) as server:
        endpoint = EndpointConfig(
            name="fake",
            base_url=server.base_url,
            continuation="chat",
            max_attempts=2,
            max_backoff_s=0.01,
        )
        modes = ModeSettings(mode="budget", budget=32, min_thinking=8, answer_tokens=8)
        settings = RunSettings(modes=modes, out=folder)
        caps = Capabilities(continuation="chat")
        first = await execute(PROBLEMS[:1], endpoint, settings, capabilities=caps)
        (tree,) = json.loads((folder / "results.json").read_text())["problems"]
        assert tree["answer"] == "B" and tree["error"] is None and tree["correct"] is True
        assert tree["vote"]["winner_node"] == "q0/think"
        nodes = {n["id"]: n for n in tree["nodes"]}
        assert nodes["q0/think"]["status"] == "done"
        assert nodes["q0/wait1"]["status"] == "failed" and nodes["q0/wait1"]["error"]
        assert "q0/answer" not in nodes  # the thinking's answer needs no forcing
        assert [n.id for n in first.failed_calls()] == ["q0/wait1"]

        wait.down = False
        state = load_resume(folder)
        assert state.retrying == 1
        before = server.requests
        again = await execute(state.problems, endpoint, state.settings, resume=state)
        sent = server.requests - before
    assert sent == 1 and again.cached_calls == 1  # the extension; the thinking read back
    (tree,) = json.loads((folder / "results.json").read_text())["problems"]
    assert tree["answer"] == "B" and tree["vote"]["winner_node"] == "q0/wait1"
    assert all(n["status"] == "done" for n in tree["nodes"])
    assert again.failed_calls() == []


async def test_after_a_failed_wait_the_answer_is_forced_after_the_thinking(
    tmp_path: Path,
) -> None:
    """The thinking states no answer and its "Wait" fails: as when a limit refuses the
    extension, the answer is forced after the thinking as it was, not after "Wait"."""
    wait = FailingWait("500")
    asked: list[str] = []

    def reply(body: dict[str, Any], index: int) -> str:
        last = body["messages"][-1]
        asked.append(last["content"] if last["role"] == "assistant" else "")
        return " B" if asked[-1].endswith(FORCE_ANSWER_CUE) else "Let me think about it."

    behaviour = FakeBehaviour(reply=reply, reject=wait.reject, reject_status=500)
    async with FakeServer(behaviour) as server:
        endpoint = EndpointConfig(
            name="fake", base_url=server.base_url, continuation="chat", max_attempts=1
        )
        modes = ModeSettings(mode="budget", budget=32, min_thinking=8, answer_tokens=8)
        settings = RunSettings(modes=modes, out=tmp_path / "run")
        caps = Capabilities(continuation="chat")
        result = await execute(PROBLEMS[:1], endpoint, settings, capabilities=caps)
    (tree,) = result.trees
    assert tree.answer == "B" and tree.vote is not None
    assert tree.vote.winner_node == "q0/answer"
    assert asked == ["", "Let me think about it." + FORCE_ANSWER_CUE]
    assert [n.id for n in result.failed_calls()] == ["q0/wait1"]


def test_the_command_says_how_to_send_failed_calls_again(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data.jsonl", PROBLEMS)
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "thinktree.cli", "run", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)

    outage = Outage()
    with fake_server_in_thread(_behaviour(outage)) as server:
        first = cli(str(data), "--endpoint", server.base_url, "--out", str(out))
        outage.down = False
        resumed = cli("--resume", str(out))
        done = cli("--resume", str(out))
    # the results are written but incomplete: a script or CI job can tell from the status
    assert first.returncode == 4, first.stderr
    assert f"send them again with: thinktree run --resume {out}" in first.stderr
    # and why they failed, which the table does not show (a resume may not mend it)
    assert "1 model call(s) failed, the first with: " in first.stderr
    assert "the model is being reloaded" in first.stderr
    assert resumed.returncode == 0, resumed.stderr
    assert "completed with 1 failed model call(s): sending those again" in resumed.stderr
    assert "once the cause is fixed" not in resumed.stderr
    assert done.returncode == 2
    assert done.stderr.strip().endswith("with no failed model call; nothing to resume")


def test_the_resume_command_names_the_config_its_endpoint_came_from(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data.jsonl", PROBLEMS)
    out = tmp_path / "run"
    config = tmp_path / "servers.toml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "thinktree.cli", "run", *args]
        return subprocess.run(
            command, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
        )

    outage = Outage()
    with fake_server_in_thread(_behaviour(outage)) as server:
        config.write_text(f'[endpoints.lab]\nbase_url = "{server.base_url}"\n')
        first = cli(str(data), "--config", str(config), "--endpoint", "lab", "--out", str(out))
        outage.down = False
        without = cli("--resume", str(out))
        resumed = cli("--resume", str(out), "--config", str(config))
    assert first.returncode == 4, first.stderr
    assert f"thinktree run --resume {out} --config {config}" in first.stderr
    assert without.returncode == 2 and len(without.stderr.strip().splitlines()) == 1
    assert "started on endpoint 'lab', which no config names here" in without.stderr
    # the run folder records the config (`watch` and `report` name it in their hints too)
    assert json.loads((out / "run.json").read_text())["config_file"] == str(config)
    assert f"thinktree run --resume {out} --config {config} (or" in without.stderr
    assert resumed.returncode == 0, resumed.stderr


def test_a_run_its_limit_stopped_goes_on_under_a_higher_one(tmp_path: Path) -> None:
    problems = beta_problems(12)
    data = write_dataset(tmp_path / "data.jsonl", problems)
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "thinktree.cli", "run", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)

    with fake_server_in_thread(FakeBehaviour(reply="It is beta. Answer: B")) as server:
        where = ["--endpoint", server.base_url, "--concurrency", "1", "--budget", "16"]
        stopped = cli(str(data), *where, "--max-tokens", "40", "--out", str(out))
        first = json.loads((out / "results.json").read_text())
        refused = cli("--resume", str(out))
        changed = cli("--resume", str(out), "--n", "8")
        manifest = (out / "run.json").read_bytes()
        # refused for another reason: the new limit is not kept either
        wrong_mode = cli("--resume", str(out), "--max-tokens", "100000", "--mode", "parallel")
        unreachable = cli(
            "--resume", str(out), "--max-tokens", "100000", "--endpoint", "http://127.0.0.1:9/v1"
        )
        with folder_lock(out, "run"):  # as a run still going holds it
            busy = cli("--resume", str(out), "--max-tokens", "100000")
        assert (out / "run.json").read_bytes() == manifest
        before = server.answered
        # more problems at once is allowed too: every node has its own seed
        raised = cli("--resume", str(out), "--max-tokens", "100000", "--concurrency", "4")
        sent = server.answered - before
    assert stopped.returncode == 0, stopped.stderr
    assert first["status"] == "stopped" and first["metrics"]["answered"] < len(problems)
    assert refused.returncode == 2
    assert "was stopped by its limit" in refused.stderr and "higher --max-tokens" in refused.stderr
    assert changed.returncode == 2 and "--n is not taken when resuming" in changed.stderr
    assert wrong_mode.returncode == 2 and "cannot be resumed as 'parallel'" in wrong_mode.stderr
    assert unreachable.returncode != 0 and "cannot connect" in unreachable.stderr
    assert busy.returncode == 2 and "being written by another thinktree" in busy.stderr
    assert raised.returncode == 0, raised.stderr
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "completed" and saved["metrics"]["answered"] == len(problems)
    assert saved["settings"]["max_run_tokens"] == 100000
    assert saved["settings"]["concurrency"] == 4
    assert json.loads((out / "run.json").read_text())["settings"]["max_run_tokens"] == 100000
    # calls the old limit did not cut short are read back; one it cut (its request asked
    # for fewer tokens) is asked again
    assert 0 < sent < len(problems)


def test_resume_refuses_another_model_or_engine_but_takes_a_moved_endpoint(
    tmp_path: Path,
) -> None:
    data = write_dataset(tmp_path / "data.jsonl", beta_problems(12))
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "thinktree.cli", "run", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)

    with fake_server_in_thread(FakeBehaviour(reply="It is beta. Answer: B")) as server:
        where = ["--endpoint", server.base_url, "--concurrency", "1", "--budget", "16"]
        stopped = cli(str(data), *where, "--max-tokens", "40", "--out", str(out))
        higher = ["--resume", str(out), "--max-tokens", "100000"]
        refused = {
            flag: cli(*higher, flag, value)
            for flag, value in (("--model", "bogus-model"), ("--engine", "llamacpp"))
        }
        before = server.answered
        moved = cli(*higher, "--endpoint", server.base_url)
        sent = server.answered - before
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stderr  # by its token limit: --resume may raise it
    for flag, proc in refused.items():
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {flag} is not taken"), lines
    assert moved.returncode == 0, moved.stderr
    assert sent > 0  # the refused attempts sent nothing; this one finished the run
    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "completed" and saved["model"] == "fake-model"


def test_a_resumed_run_keeps_streaming_its_text_and_takes_trace_deltas(tmp_path: Path) -> None:
    """A run started with --trace-deltas went on without them when resumed (its run.json
    did not keep them), and --trace-deltas was refused with --resume; streaming changes
    no call's fingerprint, so a resume may now ask for it too."""
    data = write_dataset(tmp_path / "data.jsonl", beta_problems(6))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "thinktree.cli", "run", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)

    def deltas(folder: Path) -> int:
        lines = (folder / "trace.jsonl").read_text().splitlines()
        return sum(1 for line in lines if json.loads(line)["type"] == "node-delta")

    with fake_server_in_thread(FakeBehaviour(reply="It is beta. Answer: B")) as server:
        where = ["--endpoint", server.base_url, "--concurrency", "1", "--budget", "16"]
        for name, flags in (("kept", ["--trace-deltas"]), ("asked", [])):
            out = tmp_path / name
            stopped = cli(str(data), *where, *flags, "--max-tokens", "12", "--out", str(out))
            assert stopped.returncode == 0 and "stopped" in stopped.stderr, stopped.stderr
            assert json.loads((out / "run.json").read_text())["settings"]["trace_deltas"] == (
                name == "kept"
            )
            before = deltas(out)
            again = ["--trace-deltas"] if name == "asked" else []
            resumed = cli("--resume", str(out), "--max-tokens", "1000", *again)
            assert resumed.returncode == 0, resumed.stderr
            assert deltas(out) > before  # the resumed session's text streamed in


async def test_a_resumed_run_counts_the_retries_behind_the_calls_it_reads_back(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "run"
    caps = Capabilities(continuation="chat")
    async with FakeServer(_behaviour(Outage()), faults=[Fault.SERVER_ERROR]) as server:
        endpoint = EndpointConfig(
            name="fake", base_url=server.base_url, continuation="chat", max_backoff_s=0.01
        )
        settings = RunSettings(modes=ModeSettings(mode="budget", budget=32), out=folder)
        first = await execute(PROBLEMS[2:], endpoint, settings, capabilities=caps)
        assert first.metrics.retries == 1  # the first call's 500, answered on its retry
        (folder / "results.json").unlink()  # as if the run was killed before its end
        state = load_resume(folder)
        again = await execute(state.problems, endpoint, state.settings, resume=state)
    assert again.cached_calls == len(PROBLEMS) - 2
    assert again.metrics.retries == 1  # made in the first session, behind a call kept


async def test_a_failed_revision_step_leaves_the_line_ending_at_the_last_step_back(
    tmp_path: Path,
) -> None:
    """sequential: step 1 states B and step 2 fails on every retry. The vote's winner is
    step 1, whose answer stands (it named the failed step), the revision count leaves
    the failed step out, and a resume sends only step 2 again."""
    down = [True]

    def reject(body: dict[str, Any]) -> str | None:
        revising = str(body["messages"][-1].get("content", "")).endswith(WAIT_CUE)
        return "the server broke" if down[0] and revising else None

    folder = tmp_path / "run"
    behaviour = FakeBehaviour(reply="It is beta. Answer: B", reject=reject, reject_status=500)
    async with FakeServer(behaviour) as server:
        endpoint = EndpointConfig(
            name="fake", base_url=server.base_url, continuation="chat", max_attempts=1
        )
        modes = ModeSettings(mode="sequential", steps=2, budget=32)
        settings = RunSettings(modes=modes, out=folder)
        caps = Capabilities(continuation="chat")
        first = await execute(PROBLEMS[:1], endpoint, settings, capabilities=caps)
        (tree,) = first.trees
        assert tree.answer == "B" and tree.vote is not None
        assert tree.vote.winner_node == "q0/step1"
        assert [b["revisions"] for b in tree.vote.ballots] == [0]
        assert [n.id for n in first.failed_calls()] == ["q0/step2"]

        down[0] = False
        state = load_resume(folder)
        before = server.requests
        again = await execute(state.problems, endpoint, state.settings, resume=state)
        sent = server.requests - before
    assert sent == 1 and again.failed_calls() == []
    (tree,) = again.trees
    assert tree.vote is not None and tree.vote.winner_node == "q0/step2"
    assert [b["revisions"] for b in tree.vote.ballots] == [1]


async def test_a_problem_whose_calls_all_failed_is_failed_not_graded_wrong(
    tmp_path: Path,
) -> None:
    """Question 1's every call is refused: it has no answer because of the endpoint, not
    the model, so it is not counted wrong (accuracy is over the problems graded, and a
    bench report pairs only those); its error gives the calls' reason. Where one of its
    samples still answers, the answers decide it and it is graded as usual."""
    outage = Outage()
    async with FakeServer(_behaviour(outage)) as server:
        endpoint = EndpointConfig(
            name="fake", base_url=server.base_url, continuation="chat", max_attempts=1
        )
        settings = RunSettings(modes=ModeSettings(mode="budget", budget=32), out=tmp_path / "a")
        result = await execute(PROBLEMS, endpoint, settings)
    failed = next(t for t in result.trees if t.question.startswith("Question 1?"))
    assert failed.answer is None and failed.correct is None and failed.covered is None
    assert failed.error is not None
    assert failed.error.startswith("1 model call(s) failed, the first with: ")
    assert "the model is being reloaded" in failed.error
    metrics = result.metrics
    assert (metrics.graded, metrics.correct, metrics.failed) == (5, 5, 1)
    assert metrics.accuracy == 1.0

    class OneDown:
        """Refuses Question 1's first sample only."""

        def __init__(self) -> None:
            self.refused = False

        def __call__(self, body: dict[str, Any]) -> str | None:
            if not self.refused and "Question 1?" in json.dumps(body.get("messages")):
                self.refused = True
                return "the model is being reloaded"
            return None

    behaviour = FakeBehaviour(reply="It is beta. Answer: B", reject=OneDown(), native_n=False)
    async with FakeServer(behaviour) as server:
        endpoint = EndpointConfig(
            name="fake", base_url=server.base_url, continuation="chat", max_attempts=1
        )
        modes = ModeSettings(mode="parallel", n=2, budget=32)
        settings = RunSettings(modes=modes, concurrency=1, out=tmp_path / "b")
        result = await execute(PROBLEMS, endpoint, settings)
    assert all(t.correct for t in result.trees) and result.metrics.failed == 0
    assert len(result.failed_calls()) == 1


def _run_retries(folder: Path) -> tuple[int, int]:
    """The retries results.json and the run store count."""
    saved = json.loads((folder / "results.json").read_text())
    with contextlib.closing(sqlite3.connect(folder / "run.sqlite")) as conn:
        stored = conn.execute("SELECT retries FROM run").fetchone()[0]
    return saved["metrics"]["retries"], stored


async def test_a_resumed_run_counts_the_retries_of_a_call_that_failed_before(
    tmp_path: Path,
) -> None:
    """Question 1's call fails on both its attempts (one retry), and on resume is sent
    again and answered: the run still took that retry."""
    outage = Outage()
    folder = tmp_path / "run"
    behaviour = FakeBehaviour(reply="It is beta. Answer: B", reject=outage, reject_status=500)
    async with FakeServer(behaviour) as server:
        endpoint = EndpointConfig(
            name="fake",
            base_url=server.base_url,
            continuation="chat",
            max_attempts=2,
            max_backoff_s=0.01,
        )
        settings = RunSettings(modes=ModeSettings(mode="budget", budget=32), out=folder)
        first = await execute(PROBLEMS, endpoint, settings)
        assert first.metrics.failed == 1 and first.metrics.retries == 1
        outage.down = False
        state = load_resume(folder)
        again = await execute(PROBLEMS, endpoint, state.settings, resume=state)
    assert again.metrics.failed == 0
    assert again.metrics.retries == 1
    assert _run_retries(folder) == (1, 1)


async def test_a_resumed_run_counts_the_retries_of_a_call_a_limit_cut_short(
    tmp_path: Path,
) -> None:
    """The second call, capped at what the token limit left, is answered on its retry;
    resumed under no limit it is asked again with a higher cap (another request, not read
    back): the run still took that retry."""
    folder = tmp_path / "run"
    behaviour = FakeBehaviour(reply="It is beta, I think. Answer: B")  # 7 tokens
    async with FakeServer(behaviour, faults=[None, Fault.SERVER_ERROR]) as server:
        endpoint = EndpointConfig(
            name="fake", base_url=server.base_url, continuation="chat", max_backoff_s=0.01
        )
        modes = ModeSettings(mode="budget", budget=32)
        settings = RunSettings(modes=modes, out=folder, concurrency=1, max_run_tokens=10)
        caps = Capabilities(continuation="chat")
        first = await execute(PROBLEMS[:3], endpoint, settings, capabilities=caps)
        assert first.stopped_by is not None and first.metrics.retries == 1
        state = load_resume(folder, new_limits=True)
        unlimited = dataclasses.replace(state.settings, max_run_tokens=None)
        again = await execute(state.problems, endpoint, unlimited, resume=state)
    assert again.stopped_by is None and again.metrics.answered == 3
    assert again.metrics.retries == 1
    assert _run_retries(folder) == (1, 1)


def test_a_call_store_from_before_retries_were_kept_counts_those_behind_its_calls(
    tmp_path: Path,
) -> None:
    path = tmp_path / "calls.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as conn:  # as an earlier thinktree made it
        conn.execute(
            "CREATE TABLE responses (fingerprint TEXT PRIMARY KEY, route TEXT NOT NULL, "
            "request TEXT NOT NULL, response TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, "
            "completion_tokens INTEGER NOT NULL, latency_s REAL NOT NULL, "
            "attempts INTEGER NOT NULL, created REAL NOT NULL)"
        )
        rows = [(f"fp{a}", "chat", "{}", "{}", 1, 1, 0.1, a, 0.0) for a in (1, 3, 2)]
        conn.executemany("INSERT INTO responses VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.commit()
    store = SqliteCallCache(path)
    store.session_retries = lambda: 4
    assert store.retries_before == 3
    store.close()
    again = SqliteCallCache(path)
    assert again.retries_before == 3 + 4  # kept from now on
    again.close()

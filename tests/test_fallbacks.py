"""Endpoints that lack ``n`` or continuation: the probe says so and the modes fall back.

The server is a real HTTP server on 127.0.0.1 (thinktree.testing.fake_server) that, like
llama.cpp, returns one choice for ``n>1`` and ignores ``continue_final_message``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.orchestrator.events import NodeKind, NodeStatus
from thinktree.orchestrator.run import RunResult, RunSettings, execute
from thinktree.problems import AnswerType, Problem
from thinktree.testing.fake_server import FakeBehaviour, FakeServer, Fault, fake_server_in_thread

pytestmark = pytest.mark.anyio

PROBLEMS = [
    Problem(
        id=f"q{i}",
        question=f"Question {i}?",
        answer_type=AnswerType.CHOICE,
        options={"A": "alpha", "B": "beta", "C": "gamma"},
        answer="B",
    )
    for i in range(3)
]
LIMITED = FakeBehaviour(native_n=False, continuation=False)
LONG = "one two three four five six seven eight nine ten eleven twelve Answer: B"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    return subprocess.run(
        [sys.executable, "-m", "thinktree.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_probe_reports_missing_n_and_continuation() -> None:
    with fake_server_in_thread(LIMITED) as server:
        proc = cli("probe", server.base_url, "--json")
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["http_client"] == "lean"  # a plain-http server
    assert found["native_n"] is False
    assert "returned 1 choice" in found["notes"]["n"]
    assert found["continuation"] == "revision"
    assert "ignored" in found["notes"]["continuation"]


def test_probe_reports_what_a_capable_server_can_do() -> None:
    with fake_server_in_thread(FakeBehaviour()) as server:
        proc = cli("probe", server.base_url, "--json")
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["native_n"] is True
    assert found["continuation"] == "chat"
    assert found["max_tokens_field"] == "max_tokens"


def test_probe_finds_every_feature_of_a_server_that_refuses_max_tokens() -> None:
    with fake_server_in_thread(FakeBehaviour(reject=_refuse_max_tokens)) as server:
        proc = cli("probe", server.base_url, "--json")
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["max_tokens_field"] == "max_completion_tokens"
    # the first refusal teaches the field; no check after it mistakes it for its feature's
    for feature in ("native_n", "token_ids", "logprobs", "stream_usage", "seed"):
        assert found[feature] is True, found["notes"]
    assert found["continuation"] == "chat"


async def _run(server: FakeServer, tmp_path: Path, modes: ModeSettings, **cfg: str) -> RunResult:
    endpoint = EndpointConfig(name="fake", base_url=server.base_url, **cfg)  # type: ignore[arg-type]
    return await execute(PROBLEMS, endpoint, RunSettings(modes=modes, out=tmp_path / "run"))


async def test_parallel_fans_out_when_n_is_not_supported(tmp_path: Path) -> None:
    async with FakeServer(LIMITED) as server:
        result = await _run(server, tmp_path, ModeSettings(mode="parallel", n=4, budget=64))
        probe_calls = server.answered - sum(
            len(t.of_kind(NodeKind.GENERATION)) for t in result.trees
        )
    assert result.capabilities.native_n is False
    for tree in result.trees:
        thinks = tree.of_kind(NodeKind.GENERATION)
        assert len(thinks) == 4
        assert len({t.call_id for t in thinks}) == 4  # one request per sample
        assert tree.answer == "B"
    assert probe_calls >= 1  # the probe's own requests, outside the tree


async def test_parallel_uses_one_request_with_n_where_supported(tmp_path: Path) -> None:
    async with FakeServer(FakeBehaviour(), record_bodies=True) as server:
        result = await _run(
            server, tmp_path, ModeSettings(mode="parallel", n=4, budget=64), continuation="chat"
        )
        requests = server.answered
        bodies = server.bodies
    assert result.capabilities.token_ids is True
    for tree in result.trees:
        thinks = tree.of_kind(NodeKind.GENERATION)
        assert len({t.call_id for t in thinks}) == 1
        assert all(t.completion_tokens > 0 for t in thinks)
    # probe requests (a plain chat, n, token ids and separate thinking), then one request
    # per problem
    assert requests == 4 + len(PROBLEMS)
    # each choice is counted from its token ids: no logprobs asked for
    sampled = [b for b in bodies if b.get("n") == 4]
    assert len(sampled) == len(PROBLEMS)
    assert all(b.get("return_token_ids") is True and "logprobs" not in b for b in sampled)


async def test_the_choices_of_one_request_that_say_the_same_are_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from thinktree.agents import solver
    from thinktree.extraction import extract_answer

    read: list[str] = []

    def counted(text: str, problem: Problem, *, cut_off: bool = False) -> Any:
        read.append(text)
        return extract_answer(text, problem, cut_off=cut_off)

    monkeypatch.setattr(solver, "extract_answer", counted)

    def reply(body: dict[str, Any], index: int) -> str:
        return "Thinking it over. Answer: " + "BCB"[index % 3]  # B, C, B, B, C, B

    async with FakeServer(FakeBehaviour(reply=reply)) as server:
        result = await _run(
            server, tmp_path, ModeSettings(mode="parallel", n=6, budget=64), continuation="chat"
        )
    for tree in result.trees:
        thinks = tree.of_kind(NodeKind.GENERATION)
        assert len({t.call_id for t in thinks}) == 1  # one request of n=6
        # each choice has its own text's answer: a text said again is read once, not once
        # for all
        assert [t.answer for t in thinks] == list("BCBBCB")
        assert all(t.text.endswith(t.answer or "?") for t in thinks)
        assert tree.answer == "B"
    assert sorted(read) == sorted(
        ["Thinking it over. Answer: B", "Thinking it over. Answer: C"] * 3
    )


# what OpenAI's reasoning models answer a chat request with ``max_tokens``
_NO_MAX_TOKENS = (
    "Unsupported parameter: 'max_tokens' is not supported with this model. "
    "Use 'max_completion_tokens' instead."
)


def _refuse_max_tokens(body: dict[str, Any]) -> str | None:
    return _NO_MAX_TOKENS if "max_tokens" in body else None


@pytest.mark.parametrize("field", ["auto", "max_completion_tokens"])
async def test_a_server_that_refuses_max_tokens_gets_the_field_it_names(
    tmp_path: Path, field: str
) -> None:
    behaviour = FakeBehaviour(reply=LONG, reject=_refuse_max_tokens)
    async with FakeServer(behaviour, record_bodies=True) as server:
        result = await _run(
            server,
            tmp_path,
            ModeSettings(mode="parallel", n=4, budget=6),
            continuation="chat",
            max_tokens_field=field,
        )
        bodies = server.bodies
    # "auto" learns from the first refusal; set in the config, nothing is refused
    refused = [b for b in bodies if "max_tokens" in b]
    assert len(refused) == (1 if field == "auto" else 0)
    assert all("max_completion_tokens" in b for b in bodies if b not in refused)
    assert result.capabilities.native_n and result.capabilities.token_ids
    for tree in result.trees:  # the cap, sent in the other field, still held
        thinks = tree.of_kind(NodeKind.GENERATION)
        assert len(thinks) == 4
        assert all(0 < t.completion_tokens <= 6 for t in thinks)
    assert result.metrics.answered == len(PROBLEMS)


async def test_calls_already_sent_when_the_field_is_learned_are_each_sent_again_once() -> None:
    from thinktree.agents.endpoint import Completion, EndpointClient

    behaviour = FakeBehaviour(reject=_refuse_max_tokens)
    async with FakeServer(behaviour, record_bodies=True) as server:
        config = EndpointConfig(name="o", base_url=server.base_url, model="fake-model")
        client = EndpointClient(config)
        done: list[Completion] = []

        async def one() -> None:
            done.append(await client.chat([{"role": "user", "content": "hi"}], max_tokens=4))

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(one)
        finally:
            await client.aclose()
        bodies = server.bodies
    assert len(done) == 8 and all(c.choices for c in done)
    refused = [b for b in bodies if "max_tokens" in b]
    assert len(refused) > 1  # sent before the first refusal came back
    assert len(bodies) == len(refused) + 8  # each refused call sent again once
    assert client.cap_field() == "max_completion_tokens"


async def test_a_call_made_after_learning_the_field_is_found_again_by_a_resumed_run(
    tmp_path: Path,
) -> None:
    """The call store's fingerprint is the request's, not the field it was sent in."""
    from thinktree.agents.endpoint import EndpointClient
    from thinktree.orchestrator.call_cache import SqliteCallCache

    messages = [{"role": "user", "content": "hi"}]
    async with FakeServer(FakeBehaviour(reject=_refuse_max_tokens)) as server:
        config = EndpointConfig(name="o", base_url=server.base_url, model="fake-model")
        for run in ("first", "resumed"):  # a fresh client each time: the field unknown again
            client = EndpointClient(config)
            client.cache = SqliteCallCache(tmp_path / "calls.sqlite")
            try:
                made = await client.chat(messages, max_tokens=4, key="q/think")
            finally:
                client.cache.close()
                await client.aclose()
            assert made.choices[0].text
            if run == "first":
                assert client.cap_field() == "max_completion_tokens"
                sent = server.requests
        assert server.requests == sent == 2  # refused, sent again; then read back


def test_a_server_that_refuses_max_tokens_fails_in_one_line_when_told_to_send_it(
    tmp_path: Path,
) -> None:
    behaviour = FakeBehaviour(reject=_refuse_max_tokens)
    with fake_server_in_thread(behaviour) as server:
        config = tmp_path / "thinktree.toml"
        config.write_text(
            f'[endpoints.o]\nbase_url = "{server.base_url}"\nmax_tokens_field = "max_tokens"\n'
            'continuation = "chat"\n'
        )
        data = tmp_path / "data.jsonl"
        data.write_text(
            json.dumps({"id": "q", "question": "Yes?", "answer_type": "yesno", "answer": "yes"})
            + "\n"
        )
        done = cli(
            "run",
            str(data),
            "--endpoint",
            "o",
            "--config",
            str(config),
            "--out",
            str(tmp_path / "runs"),
        )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "rejected the request (400)" in lines[0] and "max_completion_tokens" in lines[0]
    assert "Traceback" not in done.stderr


def _only_temperature_one(body: dict[str, Any]) -> str | None:
    """What OpenAI's reasoning models answer a request at any temperature but 1."""
    sent = body.get("temperature", 1)
    if sent == 1:
        return None
    return (
        f"Unsupported value: 'temperature' does not support {sent} with this model. "
        "Only the default (1) value is supported."
    )


@pytest.mark.parametrize("mode", ["parallel", "budget"])
async def test_an_endpoint_with_its_own_temperature_sends_only_that_one(
    tmp_path: Path, mode: str
) -> None:
    behaviour = FakeBehaviour(reply=LONG, reject=_only_temperature_one)
    modes = ModeSettings(mode=mode, n=4, budget=32)
    async with FakeServer(behaviour, record_bodies=True) as server:
        endpoint = EndpointConfig(name="o", base_url=server.base_url, temperature=1.0)
        settings = RunSettings(modes=modes, temperature=0.7, out=tmp_path / "run")
        result = await execute(PROBLEMS, endpoint, settings)
        bodies = server.bodies
    assert bodies and all(b["temperature"] == 1 for b in bodies)
    assert result.metrics.answered == len(PROBLEMS)
    if mode == "parallel":  # the probe, sent at 1 too, found what the server can do
        assert result.capabilities.native_n and result.capabilities.token_ids
    # the run says what it was sampled at, not what was asked
    for name in ("results.json", "run.json"):
        saved = json.loads((tmp_path / "run" / name).read_text())
        assert saved["settings"]["temperature"] == 1


def test_a_refused_temperature_fails_in_one_line_that_names_the_key_to_set(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(
        json.dumps({"id": "q", "question": "Yes?", "answer_type": "yesno", "answer": "yes"}) + "\n"
    )
    config = tmp_path / "thinktree.toml"
    behaviour = FakeBehaviour(reply="It is.\nAnswer: yes", reject=_only_temperature_one)
    with fake_server_in_thread(behaviour) as server:
        table = f'[endpoints.o]\nbase_url = "{server.base_url}"\ncontinuation = "chat"\n'
        runs: list[subprocess.CompletedProcess[str]] = []
        for extra in ("", "temperature = 1\n"):
            config.write_text(table + extra)
            out = tmp_path / f"runs{len(runs)}"
            runs.append(
                cli("run", str(data), "--endpoint", "o", "--config", str(config), "--out", str(out))
            )
    refused, fixed = runs
    assert refused.returncode != 0
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert "does not support 0.0" in lines[0]
    assert "set temperature = 1 for endpoint 'o' in thinktree.toml" in lines[0]
    assert fixed.returncode == 0, fixed.stderr
    assert "samples at its own temperature" in fixed.stderr


async def test_sequential_falls_back_to_a_revision_turn(tmp_path: Path) -> None:
    async with FakeServer(LIMITED, record_bodies=True) as server:
        result = await _run(server, tmp_path, ModeSettings(mode="sequential", steps=3, budget=32))
        bodies = server.bodies
    assert result.capabilities.continuation == "revision"
    for tree in result.trees:
        steps = tree.of_kind(NodeKind.STEP)
        assert [s.continuation for s in steps] == ["new", "revision", "revision"]
        assert all(s.answer == "B" for s in steps)
    revision_turns = [
        b
        for b in bodies
        if b.get("messages")
        and b["messages"][-1]["role"] == "user"
        and "Re-check" in b["messages"][-1]["content"]
    ]
    assert len(revision_turns) == 2 * len(PROBLEMS)
    assert not any(b.get("continue_final_message") for b in revision_turns)


async def test_budget_forcing_over_a_revision_turn(tmp_path: Path) -> None:
    async with FakeServer(FakeBehaviour(native_n=False, continuation=False, reply=LONG)) as s:
        result = await _run(s, tmp_path, ModeSettings(mode="budget", budget=5))
    for tree in result.trees:
        think = tree.nodes[f"{tree.problem_id}/think"]
        assert think.finish_reason == "length" and think.completion_tokens == 5
        forced = tree.of_kind(NodeKind.FORCED_ANSWER)
        assert len(forced) == 1 and forced[0].continuation == "revision"
        assert tree.answer == "B"


async def test_tree_tokens_equal_the_servers_usage(tmp_path: Path) -> None:
    async with FakeServer(FakeBehaviour(reply=LONG)) as server:
        result = await _run(
            server,
            tmp_path,
            ModeSettings(mode="hybrid", n=2, steps=2, total_budget=40),
            continuation="chat",
            native_n="yes",
        )
    tokens = sum(t.completion_tokens() for t in result.trees)
    assert tokens == result.metrics.completion_tokens
    for tree in result.trees:
        assert tree.completion_tokens() <= 40
        steps = tree.of_kind(NodeKind.STEP)
        assert len(steps) == 4
        assert all(s.completion_tokens <= 10 for s in steps)


def test_model_not_served_is_one_line(tmp_path: Path) -> None:
    with fake_server_in_thread(FakeBehaviour(model="served-model")) as server:
        proc = cli(
            "run",
            "--endpoint",
            server.base_url,
            "--model",
            "other-model",
            "--out",
            str(tmp_path / "run"),
        )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert "model 'other-model' is not served" in proc.stderr
    assert "served-model" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_run_whose_every_call_failed_says_how_to_resume_it(tmp_path: Path) -> None:
    """No problem answered because every call failed: exit 4, a run to resume, with the
    command that does (it exited 3, as a model that answers nothing, and said no more)."""

    def refuse(body: dict[str, Any]) -> str | None:  # the probe's short calls go through
        return "overloaded, try later" if body.get("max_tokens", 0) >= 32 else None

    behaviour = FakeBehaviour(reply="It is B.\nAnswer: B", reject=refuse)
    with fake_server_in_thread(behaviour) as server:
        proc = cli(
            "run",
            "--endpoint",
            server.base_url,
            "--limit",
            "2",
            "--budget",
            "64",
            "--out",
            str(tmp_path / "run"),
        )
    assert proc.returncode == 4, proc.stderr
    said = proc.stderr.strip()
    assert said.startswith("error: no problem was answered: 2 model call(s) failed, the first ")
    assert "overloaded, try later" in said and "\n" not in said
    assert said.endswith(
        f"once the cause is fixed, send them again with: thinktree run --resume {tmp_path / 'run'}"
    )


def test_a_model_that_never_answers_fails_the_command(tmp_path: Path) -> None:
    silent = FakeBehaviour(reply="I am not sure what to say about this at all.")
    with fake_server_in_thread(silent) as server:
        proc = cli(
            "run",
            "--endpoint",
            server.base_url,
            "--limit",
            "3",
            "--budget",
            "8",
            "--out",
            str(tmp_path / "run"),
        )
    assert proc.returncode == 3
    assert "stated no answer on any of the 3 problems" in proc.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["metrics"]["answered"] == 0
    assert all(p["error"] == "no candidate stated an answer" for p in results["problems"])
    # graded, as wrong, and done: not failed, which an error that left it ungraded is
    assert results["metrics"]["failed"] == 0
    assert all(p["correct"] is False for p in results["problems"])
    roots = [n for p in results["problems"] for n in p["nodes"] if n["kind"] == "problem"]
    assert [n["status"] for n in roots] == ["done"] * 3
    conn = sqlite3.connect(tmp_path / "run" / "run.sqlite")
    try:
        statuses = conn.execute("SELECT status FROM problems").fetchall()
    finally:
        conn.close()
    assert statuses == [("done",)] * 3


@pytest.mark.parametrize(("reply", "budget", "forced"), [(None, 64, False), (LONG, 8, True)])
async def test_n_choice_branches_settle_or_go_on_to_a_forced_answer(
    tmp_path: Path, reply: str | None, budget: int, forced: bool
) -> None:
    """Branches whose first call answered settle at once; capped ones force an answer."""
    behaviour = FakeBehaviour() if reply is None else FakeBehaviour(reply=reply)
    async with FakeServer(behaviour) as server:
        result = await _run(
            server, tmp_path, ModeSettings(mode="parallel", n=4, budget=budget), continuation="chat"
        )
    for tree in result.trees:
        # a branch is its first call's node, and a forced answer hangs under it
        branches = [tree.nodes[c] for c in tree.root.children]
        assert [b.id for b in branches] == [f"{tree.problem_id}/b{i}" for i in range(1, 5)]
        assert all(b.kind is NodeKind.GENERATION and b.status == NodeStatus.DONE for b in branches)
        answers = tree.of_kind(NodeKind.FORCED_ANSWER)
        assert [a.parent_id for a in answers] == ([b.id for b in branches] if forced else [])
        assert all(n.answer == "B" for n in (answers if forced else branches))
        assert tree.vote is not None and tree.vote.counts == {"B": 4}
        assert tree.answer == "B"


@pytest.mark.parametrize(
    ("what", "fault", "faults", "found"),
    [
        # a 429 or a reset connection says nothing about the feature: asked again
        ({"n"}, Fault.RATE_LIMIT, 1, True),
        ({"n"}, Fault.RESET, 1, True),
        ({"logprobs"}, Fault.RATE_LIMIT, 1, True),
        ({"stream_usage"}, Fault.RATE_LIMIT, 1, True),
        # one 5xx may be a busy moment: asked once more, and the feature is found
        ({"n"}, Fault.SERVER_ERROR, 1, True),
        ({"logprobs"}, Fault.SERVER_ERROR, 1, True),
        ({"stream_usage"}, Fault.SERVER_ERROR, 1, True),
        # some servers answer an unknown field with a 500: two in a row mean "not supported"
        ({"n"}, Fault.SERVER_ERROR, 2, False),
        ({"logprobs"}, Fault.SERVER_ERROR, 2, False),
        ({"stream_usage"}, Fault.SERVER_ERROR, 2, False),
    ],
)
async def test_a_probe_asks_again_after_a_passing_fault_and_once_after_a_server_error(
    what: set[str], fault: Fault, faults: int, found: bool
) -> None:
    from thinktree.agents.capabilities import probe
    from thinktree.agents.endpoint import EndpointClient

    # a plain chat request comes first (can the server generate at all?), then the n
    # probe's own request; the token-ids request is the one to fault
    first = 2 if what == {"n"} else 1
    faulted = range(first, first + faults)
    server = FakeServer(faults=lambda i: fault if i in faulted else None, retry_after_s=0.01)
    async with server:
        config = EndpointConfig(
            name="fake", base_url=server.base_url, model="fake-model", continuation="chat"
        )
        client = EndpointClient(config)
        try:
            caps = await probe(client, what=what)
        finally:
            await client.aclose()
    feature = {"n": "token_ids", "logprobs": "logprobs", "stream_usage": "stream_usage"}
    (name,) = (feature[w] for w in what)
    assert getattr(caps, name) is found, caps.notes
    assert server.faulted[fault] == faults
    assert server.requests == first + faults + found  # asked again only while it could help


async def test_a_probe_whose_answers_are_all_configured_sends_nothing() -> None:
    """Not even the plain chat check: it goes before the probe's first request, and a run
    whose endpoint config sets what it needs makes none."""
    from thinktree.agents.capabilities import probe
    from thinktree.agents.endpoint import EndpointClient

    async with FakeServer() as server:
        config = EndpointConfig(
            name="fake",
            base_url=server.base_url,
            model="fake-model",
            continuation="chat",
            native_n="no",
            thinking="cue",
        )
        client = EndpointClient(config)
        try:
            with capture_logs() as logs:
                caps = await probe(client, what={"n", "continuation", "thinking"})
        finally:
            await client.aclose()
    assert (caps.native_n, caps.continuation, caps.thinking_budget) == (False, "chat", "cue")
    assert server.requests == 0
    # the log says what was set and what was not probed, not the defaults as findings
    (logged,) = [e for e in logs if e["event"] == "probed endpoint"]
    said = {"native_n": False, "continuation": "chat", "thinking_budget": "cue", "think_end": ""}
    assert {k: logged[k] for k in said} == said
    assert "logprobs" not in logged and "seed" not in logged
    assert logged["unprobed"] == [
        "token_ids",
        "completions",
        "logprobs",
        "seed",
        "reasoning",
        "constraints",
        "stream_usage",
    ]


async def test_a_probe_asks_at_once_what_needs_no_other_finding_and_the_seed_alone() -> None:
    """A round trip to a remote API costs as much for five requests as for one: the probe
    sends what needs no other finding together. The seed's two requests compare their
    replies, so each goes with nothing else in flight (a server that batches requests may
    answer one differently in other company)."""
    from thinktree.agents.capabilities import _NOTE_ORDER, probe
    from thinktree.agents.endpoint import EndpointClient

    seed_company: list[int] = []

    def reply(body: dict[str, Any], index: int) -> str:
        if "seed" in body:
            seed_company.append(server.in_flight)
        return "one two three four"

    server = FakeServer(FakeBehaviour(reply=reply, delay_s=0.05))
    async with server:
        config = EndpointConfig(name="fake", base_url=server.base_url, model="fake-model")
        client = EndpointClient(config)
        try:
            with capture_logs() as logs:
                caps = await probe(client)
        finally:
            await client.aclose()
    (logged,) = [e for e in logs if e["event"] == "probed endpoint"]
    assert logged["unprobed"] == [] and logged["logprobs"] is caps.logprobs is True
    # the first round: /v1/completions, n, continuation, stream usage and logprobs at once
    assert server.peak_in_flight >= 5
    assert seed_company == [1, 1] and caps.seed
    assert caps.native_n and caps.token_ids and caps.continuation == "chat"
    # every finding noted, in one order, whichever request answered first
    assert list(caps.notes) == list(_NOTE_ORDER)

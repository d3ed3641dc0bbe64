"""Verifiers: the registry, the panel, aggregation with scores, and the verifier metrics.

Judges talk to a real HTTP server on 127.0.0.1 (thinktree.testing.fake_server) that
plays both the solver and the judge.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from thinktree.agents.aggregators import Vote, verifier_tiebreak
from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.errors import ConfigError
from thinktree.metrics import auroc
from thinktree.orchestrator.events import PAST_CONTEXT, NodeKind, NodeStatus
from thinktree.orchestrator.run import CALLS, RunResult, RunSettings, execute, validate
from thinktree.orchestrator.store import StoreReader
from thinktree.pricing import Price
from thinktree.problems import AnswerType, Problem
from thinktree.testing.fake_server import (
    FakeBehaviour,
    FakeServer,
    Fault,
    fake_server_in_thread,
)
from thinktree.verifiers.base import options
from thinktree.verifiers.judge import JUDGE_SYSTEM, read_rating
from thinktree.verifiers.registry import (
    BUILTIN_VERIFIERS,
    check_verifiers,
    labels,
    split_spec,
    verifier_names,
)

PROBLEM = Problem(
    id="q1",
    question="Which one?",
    answer_type=AnswerType.CHOICE,
    options={"A": "alpha", "B": "beta", "C": "gamma"},
    answer="B",
)


def test_auroc_known_values() -> None:
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9], [True, True, False]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [True, False, True, False]) == 0.5
    # one positive above one of two negatives, tied with the other: (1 + 0.5) / 2
    assert auroc([0.7, 0.7, 0.3], [True, False, False]) == 0.75
    assert auroc([0.3, 0.4], [True, True]) is None


def test_tiebreak_keeps_the_majority_and_breaks_ties_by_score() -> None:
    majority = verifier_tiebreak(
        [Vote("A", 5, 0.1), Vote("A", 5, 0.1), Vote("B", 5, 0.9)]
    )  # two votes beat one, whatever the scores
    assert majority.answer == "A"
    tied = verifier_tiebreak([Vote("A", 5, 0.1), Vote("B", 5, 0.9), Vote("B", 5, 0.2)][:2])
    assert (tied.answer, tied.winner) == ("B", 1)


def test_options_parse_bare_and_keyed_items() -> None:
    assert options("gpt,score=rating") == {"": "gpt", "score": "rating"}
    assert options(None) == {}


def test_unknown_verifier_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        check_verifiers(["nosuch"])
    message = str(caught.value)
    assert "unknown verifier 'nosuch'" in message
    for name in BUILTIN_VERIFIERS:
        assert name in message
    assert verifier_names()[: len(BUILTIN_VERIFIERS)] == list(BUILTIN_VERIFIERS)


def test_bad_verifier_settings_fail_before_the_run() -> None:
    with pytest.raises(ConfigError, match="given twice"):
        check_verifiers(["judge", "judge"])
    with pytest.raises(ConfigError, match="judge score 'best' is unknown"):
        check_verifiers(["judge:score=best"])
    with pytest.raises(ConfigError, match="needs a verifier"):
        validate(RunSettings(aggregate="best-of-n"))


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    return subprocess.run(
        [sys.executable, "-m", "thinktree.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )


def test_cli_unknown_verifier_is_one_line_and_leaves_no_folder(tmp_path: Path) -> None:
    proc = cli("run", "--verifier", "oracle", "--out", "r", cwd=tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown verifier 'oracle'" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()
    listed = cli("verifier", "list", cwd=tmp_path)
    assert listed.returncode == 0
    assert re.search(r"^judge +built-in$", listed.stdout, re.MULTILINE), listed.stdout


def refuse_logprobs(body: dict[str, Any]) -> str | None:
    """A server with no token logprobs (as many APIs): it refuses a request for them."""
    return "logprobs are not supported" if body.get("logprobs") else None


@pytest.mark.parametrize(
    "verifier",
    ["judge,score=yes-prob", "pairwise:score=yes-prob", "judge:{url},score=yes-prob"],
)
def test_a_yes_prob_judge_on_an_endpoint_without_logprobs_is_refused_before_the_run(
    tmp_path: Path, verifier: str
) -> None:
    """Not a run whose every verdict fails once its samples are paid for: one line, exit 2,
    no folder and no sample asked for; it says to use another score or another endpoint."""
    asked: list[str] = []

    def reply(body: dict[str, Any], index: int) -> str:
        asked.append(json.dumps(body.get("messages")))
        return ["Answer: A", "Answer: B"][index % 2]

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "q1", "question": "Which one?", "answer": "A"}) + "\n")
    with fake_server_in_thread(FakeBehaviour(reply=reply, reject=refuse_logprobs)) as server:
        url = server.base_url
        args = ("run", str(data), "--endpoint", url, "--mode", "parallel", "--n", "2")
        spec = verifier.format(url=url)
        proc = cli(*args, "--verifier", spec, "--out", "r", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert f"which the judge's endpoint '{url}' does not return" in lines[0]
    assert "use score=rating or score=auto, or a judge endpoint that returns logprobs" in lines[0]
    assert not (tmp_path / "r").exists()
    assert not [m for m in asked if "Which one?" in m]  # no sample was paid for


def _judging(rating: dict[str, str]) -> Any:
    """Solver replies A, B, A by choice index; the judge rates by the candidate's answer."""

    def reply(body: dict[str, Any], index: int) -> str:
        messages = body.get("messages") or []
        if messages and messages[0].get("content") == JUDGE_SYSTEM:
            final = messages[-1]["content"].split("Final answer: ")[-1][:1]
            return rating.get(final, "5")
        return ["I think A. Answer: A", "It is B. Answer: B", "Surely A. Answer: A"][index % 3]

    return reply


async def _run(
    tmp_path: Path, behaviour: FakeBehaviour, verifiers: tuple[str, ...], aggregate: str | None
) -> RunResult:
    async with FakeServer(behaviour) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, model="fake-model")
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=3, budget=32),
            verifiers=verifiers,
            aggregate=aggregate,
            out=tmp_path / "run",
        )
        return await execute([PROBLEM], endpoint, settings)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "samples",
    [
        # two abstain, one says B: abstentions never win
        ["I cannot tell.", "Hard to say.", "It is beta. Answer: B"],
        # a tie of one A and one B: it went to the first seen, not the shorter reasoning
        ["Let me weigh alpha against beta and gamma at length. Answer: A", "Answer: B"],
    ],
)
async def test_the_plain_vote_beside_a_verifier_counts_as_the_runs_default_vote(
    tmp_path: Path, samples: list[str]
) -> None:
    """The verifier figures' plain vote is the unweighted shortest-majority vote of the
    same candidates, as the run's default vote decides: B here, right. A tie went to the
    answer seen first."""

    def reply(body: dict[str, Any], index: int) -> str:
        messages = body.get("messages") or []
        if messages and messages[0].get("content") == JUDGE_SYSTEM:
            return "5"
        return samples[index % len(samples)]  # one request of n, as the server allows

    async with FakeServer(FakeBehaviour(reply=reply)) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, model="fake-model")
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=len(samples), budget=32),
            verifiers=("judge:score=rating",),
            aggregate="verifier-weighted",
            out=tmp_path / "run",
        )
        result = await execute([PROBLEM], endpoint, settings)
    m = result.metrics.verifier
    assert m is not None and m.problems == 1
    assert m.vote_accuracy == 1.0


@pytest.mark.anyio
async def test_judge_verdicts_are_nodes_events_and_rerank_the_vote(tmp_path: Path) -> None:
    behaviour = FakeBehaviour(reply=_judging({"A": "1", "B": "9"}))
    result = await _run(tmp_path, behaviour, ("judge:score=rating",), None)
    tree = result.trees[0]
    assert tree.vote is not None and tree.vote.rule == "verifier-weighted"
    assert tree.answer == "B" and tree.correct  # majority would have said A
    assert tree.vote.winner_node == "q1/b2"
    assert tree.vote.scores == pytest.approx({"A": 0.2, "B": 0.9})
    verdicts = tree.of_kind(NodeKind.VERDICT)
    assert [v.parent_id for v in verdicts] == ["q1/b1", "q1/b2", "q1/b3"]
    assert [v.score for v in verdicts] == [0.1, 0.9, 0.1]
    assert all(v.status is NodeStatus.DONE and v.prompt_tokens > 0 for v in verdicts)
    assert tree.nodes["q1/b2"].scores == {"judge:score=rating": 0.9}
    m = result.metrics.verifier
    assert m is not None
    assert (m.pick_accuracy, m.vote_accuracy, m.oracle, m.auroc) == (1.0, 0.0, 1.0, 1.0)
    assert m.verdicts == 3 and m.failed_verdicts == 0
    assert m.prompt_tokens == sum(v.prompt_tokens for v in verdicts)
    with StoreReader.open(result.folder / "run.sqlite") as store:
        stored = store.verdicts()
        nodes = {n["id"]: n for n in store.nodes("q1")}
    assert [v["score"] for v in stored] == [0.1, 0.9, 0.1]
    assert nodes["q1/b2/verdict:judge:score=rating"]["kind"] == "verdict"
    results = json.loads((result.folder / "results.json").read_text())
    assert results["metrics"]["verifier"]["pick_accuracy"] == 1.0
    assert [b["score"] for b in results["problems"][0]["vote"]["ballots"]] == [0.1, 0.9, 0.1]


@pytest.mark.anyio
async def test_a_rating_is_read_past_the_scale_the_judge_restates(tmp_path: Path) -> None:
    """A rating 'On a scale of 0 to 10: 9' was read as 0, the first number; '7.5' as 7."""
    ratings = {"A": "On a scale of 0 to 10: 2", "B": "7.5/10"}
    behaviour = FakeBehaviour(reply=_judging(ratings))
    result = await _run(tmp_path, behaviour, ("judge:score=rating",), None)
    verdicts = result.trees[0].of_kind(NodeKind.VERDICT)
    assert [(v.score, v.text) for v in verdicts] == [
        (0.2, "rating 2/10"),
        (0.75, "rating 7.5/10"),
        (0.2, "rating 2/10"),
    ]


@pytest.mark.parametrize(
    ("text", "rating"),
    [
        ("9", 9.0),
        ("8 out of 10", 8.0),
        ("0-10: 4", 4.0),
        ("10", 10.0),
        ("Rating: 0.", 0.0),
        ("-3", None),  # not a rating of 3
        ("100", None),
        ("no idea", None),
    ],
)
def test_read_rating(text: str, rating: float | None) -> None:
    assert read_rating(text) == rating


@pytest.mark.anyio
async def test_unreadable_ratings_fail_the_verdicts_not_the_run(tmp_path: Path) -> None:
    behaviour = FakeBehaviour(reply=_judging({"A": "no idea", "B": "cannot say"}))
    result = await _run(tmp_path, behaviour, ("judge:score=rating",), "best-of-n")
    tree = result.trees[0]
    verdicts = tree.of_kind(NodeKind.VERDICT)
    assert len(verdicts) == 3
    assert all(v.status is NodeStatus.FAILED for v in verdicts)
    assert all("rating is unreadable" in (v.error or "") for v in verdicts)
    assert tree.answer == "A" and tree.error is None
    assert tree.vote is not None and tree.vote.rule == "majority"  # no score: the plain vote
    m = result.metrics.verifier
    assert m is not None and m.failed_verdicts == 3
    assert (m.problems, m.pick_accuracy, m.auroc) == (0, None, None)


@pytest.mark.anyio
async def test_a_judge_endpoint_that_refuses_fails_the_verdicts(tmp_path: Path) -> None:
    def refuse(body: dict[str, Any]) -> str | None:
        messages = body.get("messages") or []
        judging = messages and messages[0].get("content") == JUDGE_SYSTEM
        return "judging is not allowed here" if judging else None

    behaviour = FakeBehaviour(reply=_judging({}), reject=refuse)
    result = await _run(tmp_path, behaviour, ("judge:score=rating",), "verifier-tiebreak")
    verdicts = result.trees[0].of_kind(NodeKind.VERDICT)
    assert all("judge call failed" in (v.error or "") for v in verdicts)
    assert "400" in (verdicts[0].error or "")
    assert result.trees[0].answer == "A"  # the majority stands when the verifier fails


@pytest.mark.anyio
async def test_a_judge_prompt_past_the_context_fails_its_verdict_for_good(
    tmp_path: Path,
) -> None:
    """A candidate too long for the judge's context: its verdict fails, the vote goes on,
    and it is no judge call a resume would send again (the same 400 would come back)."""

    def refuse(body: dict[str, Any]) -> str | None:
        messages = body.get("messages") or []
        if messages and messages[0].get("content") == JUDGE_SYSTEM:
            return "This model's maximum context length is 2048 tokens. However, you requested 2100"
        return None

    behaviour = FakeBehaviour(reply=_judging({}), reject=refuse)
    result = await _run(tmp_path, behaviour, ("judge:score=rating",), "verifier-tiebreak")
    verdicts = result.trees[0].of_kind(NodeKind.VERDICT)
    assert verdicts and all((v.error or "").startswith(PAST_CONTEXT) for v in verdicts)
    assert result.trees[0].answer == "A"
    assert result.failed_calls() == []


@pytest.mark.anyio
async def test_a_yes_prob_judge_is_retried_and_its_calls_are_kept(tmp_path: Path) -> None:
    """P("Yes") calls are the client's own: a 503 is retried, the call stored for a resume."""

    def reply(body: dict[str, Any], index: int) -> str:
        messages = body.get("messages") or []
        if messages and messages[0].get("content") == JUDGE_SYSTEM:
            final = messages[-1]["content"].split("Final answer: ")[-1][:1]
            return "Yes" if final == "B" else "No"
        return ["I think A. Answer: A", "It is B. Answer: B", "Surely A. Answer: A"][index % 3]

    servers: list[FakeServer] = []
    judged: set[str] = set()

    def first_judging_fails(_: int) -> Fault | None:
        body = servers[0].bodies[-1]  # this request's (recorded just before)
        messages = body.get("messages") or []
        judging = bool(messages) and messages[0].get("content") == JUDGE_SYSTEM
        if judging and messages[-1]["content"] not in judged:
            judged.add(messages[-1]["content"])
            return Fault.UNAVAILABLE
        return None

    behaviour = FakeBehaviour(reply=reply)
    async with FakeServer(behaviour, faults=first_judging_fails, record_bodies=True) as server:
        servers.append(server)
        endpoint = EndpointConfig(
            name="fake", base_url=server.base_url, model="fake-model", max_backoff_s=0.05
        )
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=3, budget=32),
            verifiers=("judge:score=yes-prob",),
            out=tmp_path / "run",
        )
        result = await execute([PROBLEM], endpoint, settings)
    assert server.faulted[Fault.UNAVAILABLE] == 3  # each judging call failed once
    tree = result.trees[0]
    verdicts = tree.of_kind(NodeKind.VERDICT)
    assert [v.status for v in verdicts] == [NodeStatus.DONE] * 3
    assert [v.score for v in verdicts] == [0.0, 1.0, 0.0]
    assert tree.answer == "B" and tree.correct
    with sqlite3.connect(result.folder / CALLS) as conn:
        stored = conn.execute(
            "SELECT attempts FROM responses WHERE request LIKE '%top_logprobs%'"
        ).fetchall()
    assert sorted(stored) == [(2,), (2,), (2,)]  # kept, each after its retry


def _pairwise_judge(always: str | None = None) -> Any:
    """Solver replies A, B, A; the judge picks the response whose final answer is B."""

    def reply(body: dict[str, Any], index: int) -> str:
        messages = body.get("messages") or []
        if messages and messages[0].get("content") == JUDGE_SYSTEM:
            if always is not None:
                return always
            text = messages[-1]["content"]
            one = text.split("Response 2:")[0].split("Final answer: ")[-1][:1]
            return "1" if one == "B" else "2"
        return ["I think A. Answer: A", "It is B. Answer: B", "Surely A. Answer: A"][index % 3]

    return reply


@pytest.mark.anyio
async def test_pairwise_knockout_swaps_positions_and_scores_groups(tmp_path: Path) -> None:
    behaviour = FakeBehaviour(reply=_pairwise_judge())
    result = await _run(tmp_path, behaviour, ("pairwise:score=rating",), "best-of-n")
    tree = result.trees[0]
    verdicts = {v.parent_id: v for v in tree.of_kind(NodeKind.VERDICT)}
    assert {k: v.score for k, v in verdicts.items()} == {
        "q1/b1": 0.0,
        "q1/b2": 1.0,
        "q1/b3": 0.0,
    }
    assert tree.answer == "B" and tree.vote is not None
    assert tree.vote.winner_node == "q1/b2"
    # one match, judged in both orders; A's shortest candidate represents it
    assert "A vs B: P(A better) = 0.00" in verdicts["q1/b3"].text
    assert "representative, q1/b3" in verdicts["q1/b1"].text
    assert verdicts["q1/b3"].prompt_tokens > 0


@pytest.mark.anyio
async def test_pairwise_cancels_a_judge_that_always_prefers_the_first(tmp_path: Path) -> None:
    behaviour = FakeBehaviour(reply=_pairwise_judge(always="1"))
    result = await _run(tmp_path, behaviour, ("pairwise:score=rating",), "best-of-n")
    verdicts = result.trees[0].of_kind(NodeKind.VERDICT)
    assert "P(A better) = 0.50" in verdicts[2].text  # 1 first, 0 swapped: no preference
    assert result.trees[0].answer == "A"  # the tie goes to the group with more votes


@pytest.mark.anyio
async def test_the_live_view_labels_show_the_scores(tmp_path: Path) -> None:
    from thinktree.tui.render import node_label, subtree_tokens, winner_path

    behaviour = FakeBehaviour(reply=_judging({"A": "1", "B": "9"}))
    result = await _run(tmp_path, behaviour, ("judge:score=rating",), None)
    tree = result.trees[0]
    tokens = subtree_tokens(tree)
    winners = winner_path(tree)
    verdict = tree.nodes["q1/b2/verdict:judge:score=rating"]
    assert "score 0.90" in node_label(tree, verdict, tokens[verdict.id], winners).plain
    candidate = tree.nodes["q1/b2"]
    label = node_label(tree, candidate, tokens[candidate.id], winners).plain
    assert "★" in label and "score 0.90" in label


def test_judge_options_without_an_endpoint_read_as_documented() -> None:
    assert split_spec("judge,score=rating") == ("judge", "score=rating")
    assert split_spec("reward:http://127.0.0.1:1/v1,route=score") == (
        "reward",
        "http://127.0.0.1:1/v1,route=score",
    )
    check_verifiers(["judge,score=rating"])
    with pytest.raises(ConfigError, match="judge score 'best' is unknown"):
        check_verifiers(["judge,score=best"])
    with pytest.raises(ConfigError, match="names the same as judge,score=rating"):
        check_verifiers(["judge,score=rating", "judge:score=rating"])


@pytest.mark.anyio
@pytest.mark.parametrize(
    "specs",
    [
        # the run's own endpoint named beside it, as judge:embedded beside judge on embedded
        ("judge:{url}", "judge"),
        ("judge", "judge:grader"),  # a named endpoint at the run's URL, the same model
        ("judge", "judge,score=yes-prob"),  # auto reads P("Yes") where logprobs come back
        ("pairwise:grader,score=rating", "pairwise:{url}/,score=rating"),
        ("judge:{url}", "judge:{localhost}"),  # one loopback server, under two names
    ],
)
async def test_the_same_judge_given_twice_is_refused_before_the_run(
    tmp_path: Path, specs: tuple[str, str]
) -> None:
    """Two specs that are one judge (its kind, server, model and way of scoring) would
    ask the same and count twice in each candidate's mean score: one line, no folder."""
    async with FakeServer(FakeBehaviour(reply=_judging({}))) as server:
        url = server.base_url
        localhost = url.replace("127.0.0.1", "localhost")
        given = tuple(spec.format(url=url, localhost=localhost) for spec in specs)
        endpoint = EndpointConfig(name="fake", base_url=url, model="fake-model")
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=3, budget=32),
            verifiers=given,
            out=tmp_path / "run",
            config={"endpoints": {"grader": {"base_url": url}}},
        )
        with pytest.raises(ConfigError) as caught:
            await execute([PROBLEM], endpoint, settings)
    message = str(caught.value)
    said = f"--verifier {given[1]} is the same verifier as --verifier {given[0]} "
    said += "(model 'fake-model'"
    assert message.startswith(said), message
    assert message.endswith("give one of them") and "\n" not in message
    assert not (tmp_path / "run").exists()


@pytest.mark.anyio
async def test_judges_that_differ_each_give_their_verdicts(tmp_path: Path) -> None:
    """Another kind of judge on the same endpoint, another way of scoring, or another
    model: each is a judge of its own."""
    behaviour = FakeBehaviour(reply=_judging({"A": "2", "B": "9"}))
    judging = FakeBehaviour(reply=_judging({"A": "2", "B": "9"}), model="judge-model")
    async with FakeServer(behaviour) as server, FakeServer(judging) as judge_server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, model="fake-model")
        verifiers = ("judge", "judge:score=rating", "pairwise", "judge:grader")
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=3, budget=32),
            verifiers=verifiers,
            out=tmp_path / "run",
            config={"endpoints": {"grader": {"base_url": judge_server.base_url}}},
        )
        result = await execute([PROBLEM], endpoint, settings)
    labels_seen = sorted({v.label for v in result.trees[0].of_kind(NodeKind.VERDICT)})
    assert labels_seen == sorted(verifiers)


def test_cli_refuses_the_same_judge_twice_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(PROBLEM.model_dump(mode="json")) + "\n")
    with fake_server_in_thread(FakeBehaviour(reply=_judging({}))) as server:
        url = server.base_url
        args = ("run", str(data), "--endpoint", url, "--mode", "parallel", "--n", "2")
        judges = ("--verifier", f"judge:{url}", "--verifier", "judge")
        proc = cli(*args, *judges, "--out", "r", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert (
        len(lines) == 1
        and f"--verifier judge is the same verifier as --verifier judge:{url}" in (lines[0])
    ), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("judge,scroe=rating", "--verifier judge takes no option 'scroe'; its options: "),
        ("pairwise:http://127.0.0.1:1/v1,agg=min", "--verifier pairwise takes no option 'agg'"),
        ("reward:http://127.0.0.1:1/v1,agg=min", "--verifier reward takes no option 'agg'"),
        ("prm:http://127.0.0.1:1/v1,lable=1", "--verifier prm takes no option 'lable'"),
    ],
)
def test_an_option_a_verifier_does_not_take_is_refused(spec: str, message: str) -> None:
    """A misspelt option was ignored: the verifier ran on its default, without a word."""
    with pytest.raises(ConfigError) as caught:
        check_verifiers([spec])
    assert str(caught.value).startswith(message)
    check_verifiers(["prm:http://127.0.0.1:1/v1,agg=min,label=1", "pairwise,score=rating"])


def test_verifiers_on_files_of_the_same_name_get_distinct_labels() -> None:
    found = labels(["trained:d1/my.json", "trained:d2/my.json", "trained:other/v.json"])
    assert found == ["trained:d1/my.json", "trained:d2/my.json", "trained:v.json"]
    assert len(set(labels(["trained:my.json", "trained:d1/my.json"]))) == 2


@pytest.mark.anyio
async def test_a_judge_given_options_without_an_endpoint_judges(tmp_path: Path) -> None:
    behaviour = FakeBehaviour(reply=_judging({"A": "1", "B": "9"}))
    result = await _run(tmp_path, behaviour, ("judge,score=rating",), None)
    tree = result.trees[0]
    assert tree.answer == "B"
    assert tree.nodes["q1/b2"].scores == {"judge:score=rating": 0.9}


@pytest.mark.anyio
async def test_failed_judge_verdicts_still_cost_what_they_spent(tmp_path: Path) -> None:
    price = Price(prompt_per_m=0.15, completion_per_m=0.60)
    behaviour = FakeBehaviour(reply=_judging({"A": "no idea", "B": "9"}))
    async with FakeServer(behaviour) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, model="fake-model")
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=3, budget=32),
            verifiers=("judge:score=rating",),
            out=tmp_path / "run",
            prices={"fake-model": price},
        )
        result = await execute([PROBLEM], endpoint, settings)
    verdicts = result.trees[0].verdicts
    assert [v.score is None for v in verdicts] == [True, False, True]
    assert all(v.cost_usd is not None and v.cost_usd > 0 for v in verdicts)
    m = result.metrics.verifier
    assert m is not None and m.failed_verdicts == 2
    assert m.cost_usd == round(price.cost(m.prompt_tokens, m.completion_tokens), 6)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("limits", "raised", "limit"),
    [
        ({"max_run_tokens": 45}, {"max_run_tokens": 1000}, "token limit of 45"),
        ({"max_cost": 0.045}, {"max_cost": 1.0}, "money limit of $0.045"),
    ],
)
async def test_judge_calls_count_under_the_run_limits(
    tmp_path: Path, limits: dict[str, Any], raised: dict[str, Any], limit: str
) -> None:
    """Two problems of three 6-token samples (14 tokens spent), each judged in 4 tokens
    ("9 out of ten"), under 45 tokens or $0.045 ($0.001 a token). The second problem's
    samples leave 5: its first verdict gets them, its second the 1 left, its third none.
    Solver and judge together stay within the limit (the judge's calls used to come on
    top), the run says the limit stopped it, and a resume under a higher one judges again
    what the limit cut short or refused, reading the rest back: the first verdict's reply
    ended by itself within the 5 tokens it got, as under a larger grant."""
    from thinktree.orchestrator.run import load_resume

    prices = {"fake-model": Price(prompt_per_m=0.0, completion_per_m=1000.0)}

    def reply(body: dict[str, Any], index: int) -> str:
        messages = body.get("messages") or []
        if messages and messages[0].get("content") == JUDGE_SYSTEM:
            final = messages[-1]["content"].split("Final answer: ")[-1][:1]
            return ("9" if final == "B" else "1") + " out of ten"
        return ["I think A. Answer: A", "It is B. Answer: B", "Surely A. Answer: A"][index % 3]

    problems = [PROBLEM, PROBLEM.model_copy(update={"id": "q2"})]
    async with FakeServer(FakeBehaviour(reply=reply)) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, model="fake-model")
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=3, budget=6),
            verifiers=("judge:score=rating",),
            concurrency=1,
            out=tmp_path / "run",
            prices=prices,
            **limits,
        )
        first = await execute(problems, endpoint, settings)
        m, v = first.metrics, first.metrics.verifier
        assert v is not None and m.completion_tokens == 28
        assert m.completion_tokens + v.completion_tokens <= 45
        if m.cost_usd is not None:
            assert v.cost_usd is not None and m.cost_usd + v.cost_usd <= 0.045 + 1e-12
        why = f"run stopped: its {limit} cut calls short"
        assert first.stopped_by == why and [t.stopped for t in first.trees] == [None, why]
        refused = [
            n for n in first.trees[1].of_kind(NodeKind.VERDICT) if n.status is not NodeStatus.DONE
        ]
        assert len(refused) == 1 and f"run stopped: its {limit} is reached" in str(refused[0].error)
        state = load_resume(first.folder, prices=prices, new_limits=True)
        again = await execute(
            state.problems, endpoint, dataclasses.replace(state.settings, **raised), resume=state
        )
    # read back: each problem's samples (one request of three), the first one's verdicts,
    # and the second one's first verdict
    assert again.stopped_by is None and again.cached_calls == 2 + 3 + 1
    verdicts = [n for t in again.trees for n in t.of_kind(NodeKind.VERDICT)]
    assert len(verdicts) == 6 and all(n.status is NodeStatus.DONE for n in verdicts)
    assert again.metrics.verifier is not None and again.metrics.verifier.completion_tokens == 24


FOUR = PROBLEM.model_copy(update={"options": {"A": "alpha", "B": "beta", "C": "gamma", "D": "d"}})
SAMPLES = ["Surely A. Answer: A", "Surely B. Answer: B", "Maybe C. Answer: C", "Maybe D. Answer: D"]


Reply = Callable[[dict[str, Any], int], str]  # a fake server's reply to a request


def _preferring(order: str, samples: int, second: str = "2") -> Reply:
    """Solver replies A, B, C… by choice index; the judge prefers answers in ``order``,
    saying "1" or ``second``."""

    def reply(body: dict[str, Any], index: int) -> str:
        messages = body.get("messages") or []
        if messages and messages[0].get("content") == JUDGE_SYSTEM:
            one, two = (
                part.split("Final answer: ")[-1][:1]
                for part in messages[-1]["content"].split("Response 2:")
            )
            return "1" if order.index(one) < order.index(two) else second
        return SAMPLES[index % samples]

    return reply


def _judge_usage(server: FakeServer) -> tuple[int, int]:
    """The prompt and completion tokens the fake server counted for the judge's calls."""
    prompt = completion = 0
    reply = server.behaviour.reply
    assert callable(reply)
    for body in server.bodies:
        messages = body.get("messages") or []
        if messages and messages[0].get("content") == JUDGE_SYSTEM:
            prompt += sum(len(str(m["content"]).split()) + 4 for m in messages) + 3
            completion += min(len(reply(body, 0).split()), body["max_tokens"])
    return prompt, completion


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("samples", "limits", "limit"),
    [
        (3, {"max_run_tokens": 14}, "token limit of 14"),
        (3, {"max_cost": 0.014}, "money limit of $0.014"),
        (4, {"max_run_tokens": 19}, "token limit of 19"),
    ],
)
async def test_a_limit_refusing_a_pairwise_match_keeps_the_matches_judged(
    tmp_path: Path, samples: int, limits: dict[str, Any], limit: str
) -> None:
    """Samples A, B, C(, D) of 4 tokens each use 12 (16) of the limit's tokens or
    thousandths of a dollar (a token costs $0.001), which leaves the judge (one token a
    call, P("1") from logprobs) two (three).

    Three answers: round 1 (B vs C, B wins; A, the top seed, has the bye) is judged, the
    final A vs B is refused. Four (seeded A, B, C, D): both round-1 matches (A vs D,
    B vs C) start at once; A vs D is judged (D wins), the other's swapped call is refused.
    The match judged keeps its verdict; the refused one says why; a group scores the round
    its judged wins took it to, so the winner (B, D) always outranks the loser (a failed
    verdict for it would rank it below the loser). The problem reads stopped, and the
    verdicts count every token the judge spent."""
    prices = {"fake-model": Price(prompt_per_m=0.0, completion_per_m=1000.0)}
    behaviour = FakeBehaviour(reply=_preferring("BCDA", samples))
    async with FakeServer(behaviour, record_bodies=True) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, model="fake-model")
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=samples, budget=4),
            verifiers=("pairwise:score=yes-prob",),
            out=tmp_path / "run",
            prices=prices,
            **limits,
        )
        result = await execute([FOUR], endpoint, settings)
    tree = result.trees[0]
    assert tree.stopped is not None and tree.stopped.startswith(f"run stopped: its {limit}")
    assert result.stopped_by == tree.stopped
    verdicts = {v.parent_id: v for v in tree.of_kind(NodeKind.VERDICT)}
    assert all(v.status is NodeStatus.DONE for v in verdicts.values())
    a, b, c = (verdicts[f"q1/b{i}"] for i in (1, 2, 3))
    won = b if samples == 3 else verdicts["q1/b4"]
    assert won.score == 0.5 and "not decided: a run limit stopped the tournament" in won.text
    refused = "round 2: A vs B" if samples == 3 else "round 1: B vs C"
    assert f"{refused}: not judged: run stopped: its {limit} is reached" in b.text + c.text
    if samples == 3:  # C lost round 1; A sat it out, and the final that would decide is refused
        assert "round 1: B vs C: P(B better) = 1.00" in c.text and c.score == 0.0
        assert a.score == 0.5 and a.text.startswith("round 1: a bye"), a.text
        assert tree.answer == "A"  # A and B tie at 0.5: the tie goes to the answer seen first
    else:  # A lost round 1 to D; B and C stayed in it
        assert "round 1: A vs D: P(A better) = 0.00" in a.text and a.score == 0.0
        assert b.score == c.score == 0.0
        assert tree.answer == "D"
    assert tree.vote is not None and tree.vote.rule == "verifier-weighted"
    m = result.metrics.verifier
    assert m is not None and (m.prompt_tokens, m.completion_tokens) == _judge_usage(server)
    assert m.failed_verdicts == 0


@pytest.mark.anyio
async def test_a_limit_refusing_every_pairwise_match_fails_the_verdicts(tmp_path: Path) -> None:
    """The samples spend the whole limit: no match is judged, so nothing was decided; the
    verdicts fail with the limit's reason and the plain vote decides."""
    behaviour = FakeBehaviour(reply=_preferring("BCDA", 3))
    async with FakeServer(behaviour) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, model="fake-model")
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=3, budget=4),
            verifiers=("pairwise:score=yes-prob",),
            out=tmp_path / "run",
            max_run_tokens=12,
        )
        result = await execute([FOUR], endpoint, settings)
    tree = result.trees[0]
    assert tree.stopped is not None and tree.stopped.startswith("run stopped: its token limit")
    verdicts = tree.of_kind(NodeKind.VERDICT)
    assert [v.status for v in verdicts] == [NodeStatus.FAILED] * 3
    why = "no pairwise match was judged: run stopped: its token limit of 12 is reached"
    assert all(why in str(v.error) for v in verdicts)
    assert tree.vote is not None and tree.vote.rule == "majority" and tree.answer == "A"


async def _pairwise_four(server: FakeServer, tmp_path: Path, samples: int = 3) -> RunResult:
    """parallel@samples on FOUR against ``server``, re-ranked by the pairwise judge's choices."""
    endpoint = EndpointConfig(name="fake", base_url=server.base_url, model="fake-model")
    settings = RunSettings(
        modes=ModeSettings(mode="parallel", n=samples, budget=4),
        verifiers=("pairwise:score=rating",),
        out=tmp_path / "run",
    )
    return await execute([FOUR], endpoint, settings)


def _unreadable_for(answer: str, samples: int) -> Reply:
    """As ``_preferring("BCDA", samples)``, but a match with ``answer`` gets "neither"."""

    def reply(body: dict[str, Any], index: int) -> str:
        messages = body.get("messages") or []
        if messages and messages[0].get("content") == JUDGE_SYSTEM:
            if f"Final answer: {answer}" in messages[-1]["content"]:
                return "neither"
            return _preferring("BCDA", samples)(body, index)
        return SAMPLES[index % samples]

    return reply


@pytest.mark.anyio
async def test_an_unreadable_pairwise_match_keeps_the_matches_judged(tmp_path: Path) -> None:
    """Round 1 (B vs C, B wins; A, the top seed, has the bye) is judged; the final's
    choice (A vs B) is unreadable. That match is undecided, as one a limit refused: the
    tournament ends there, C keeps the round it lost in, A and B score the round they
    reached, and their rationale says which match was not judged and why. The verdicts
    still carry every token the judge spent, and the problem is not stopped (no limit
    refused anything)."""
    async with FakeServer(FakeBehaviour(reply=_unreadable_for("A", 3)), record_bodies=True) as s:
        result = await _pairwise_four(s, tmp_path)
    tree = result.trees[0]
    verdicts = {v.parent_id: v for v in tree.of_kind(NodeKind.VERDICT)}
    assert all(v.status is NodeStatus.DONE for v in verdicts.values())
    a, b, c = (verdicts[f"q1/b{i}"] for i in (1, 2, 3))
    assert (a.score, b.score, c.score) == (0.5, 0.5, 0.0)
    assert "round 1: B vs C: P(B better) = 1.00" in c.text
    unreadable = "round 2: A vs B: not judged: the judge's choice is unreadable: 'neither'"
    ended = "not decided: the tournament ended in round 2, where a match was not judged"
    assert unreadable in a.text and unreadable in b.text
    assert ended in a.text and ended in b.text and "not decided" not in c.text
    assert tree.stopped is None and result.stopped_by is None
    assert tree.vote is not None and tree.vote.rule == "verifier-weighted"
    m = result.metrics.verifier
    assert m is not None and m.failed_verdicts == 0
    assert (m.prompt_tokens, m.completion_tokens) == _judge_usage(s)


@pytest.mark.anyio
async def test_a_pairwise_match_whose_call_fails_is_played_again_on_resume(
    tmp_path: Path,
) -> None:
    """Four answers, seeded A, B, C, D: round 1 is A vs D and B vs C. A vs D is judged (D
    wins); B vs C's call fails for good (the server refuses it). The tournament is not
    finished and a resume can finish it, so every verdict fails, one of them as the failed
    judge call it was, the matches judged notwithstanding (they were recorded done, and a
    resume never revisited them): the plain vote decides, and the run counts one failed
    call (it counted one per candidate). Resumed, with the server judging again, the
    tournament is played out, A vs D read back from the call store, and B beats D."""
    from thinktree.orchestrator.run import load_resume

    judging = {"refused": True}

    def refuse(body: dict[str, Any]) -> str | None:
        text = json.dumps(body.get("messages"))
        judged_c = JUDGE_SYSTEM in text and "Final answer: C" in text
        return "no judging of C" if judging["refused"] and judged_c else None

    behaviour = FakeBehaviour(reply=_preferring("BCDA", 4), reject=refuse)
    async with FakeServer(behaviour, record_bodies=True) as server:
        first = await _pairwise_four(server, tmp_path, samples=4)
        tree = first.trees[0]
        verdicts = {v.parent_id: v for v in tree.of_kind(NodeKind.VERDICT)}
        assert [v.status for v in verdicts.values()] == [NodeStatus.FAILED] * 4
        why = "the tournament stopped in round 1, where B vs C was not judged"
        errors = [str(v.error) for v in verdicts.values()]
        assert sum(e.startswith(f"judge call failed: {why}") for e in errors) == 1, errors
        assert all(why in e and "no judging of C" in e for e in errors), errors
        assert tree.vote is not None and tree.vote.rule == "majority"
        assert len(first.failed_calls()) == 1 and first.metrics.verifier is not None
        assert first.metrics.verifier.failed_verdicts == 4
        m = first.metrics.verifier  # A vs D's two calls (a token each) count, though failed
        assert m is not None and m.completion_tokens == 2 and m.prompt_tokens > 0

        judging["refused"] = False
        sent = len(server.bodies)
        state = load_resume(first.folder)
        assert state.retrying > 0
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, model="fake-model")
        again = await execute(state.problems, endpoint, state.settings, resume=state)
        resent = [json.dumps(body.get("messages")) for body in server.bodies[sent:]]
    assert again.failed_calls() == []
    tree = again.trees[0]
    verdicts = {v.parent_id: v for v in tree.of_kind(NodeKind.VERDICT)}
    assert [verdicts[f"q1/b{i}"].score for i in (1, 2, 3, 4)] == [0.0, 1.0, 0.0, 0.5]
    assert tree.answer == "B" and tree.vote is not None and tree.vote.rule == "verifier-weighted"
    assert not any(JUDGE_SYSTEM in text and "Final answer: A" in text for text in resent)


@pytest.mark.anyio
async def test_a_failed_pairwise_call_is_said_beside_an_unreadable_match(tmp_path: Path) -> None:
    """Round 1: A vs D's choice is unreadable, B vs C's call fails. No match was judged;
    the failed call is what the verdicts say (the unreadable match came first, and hid it),
    so the run counts failed calls and a resume asks the judge again."""

    def refuse(body: dict[str, Any]) -> str | None:
        text = json.dumps(body.get("messages"))
        return "no judging of C" if JUDGE_SYSTEM in text and "Final answer: C" in text else None

    behaviour = FakeBehaviour(reply=_unreadable_for("A", 4), reject=refuse)
    async with FakeServer(behaviour) as server:
        result = await _pairwise_four(server, tmp_path, samples=4)
    verdicts = result.trees[0].of_kind(NodeKind.VERDICT)
    errors = [str(v.error) for v in verdicts]
    why = "no pairwise match was judged: "
    assert sum(e.startswith(f"judge call failed: {why}") for e in errors) == 1, errors
    assert all(why in e and "no judging of C" in e for e in errors)
    assert len(result.failed_calls()) == 1  # one match's call failed


@pytest.mark.anyio
async def test_a_pairwise_tournament_with_no_match_judged_fails_its_verdicts(
    tmp_path: Path,
) -> None:
    """Two answers, and the one match's choice unreadable: nothing was decided; the verdicts
    fail with why, still counting what the judge spent, and the plain vote decides."""
    async with FakeServer(FakeBehaviour(reply=_unreadable_for("B", 2)), record_bodies=True) as s:
        result = await _pairwise_four(s, tmp_path, samples=2)
    tree = result.trees[0]
    verdicts = tree.of_kind(NodeKind.VERDICT)
    why = "no pairwise match was judged: the judge's choice is unreadable: 'neither'"
    assert [v.status for v in verdicts] == [NodeStatus.FAILED] * 2
    assert all(why in str(v.error) for v in verdicts)
    assert tree.vote is not None and tree.vote.rule == "majority"
    m = result.metrics.verifier
    assert m is not None and (m.prompt_tokens, m.completion_tokens) == _judge_usage(s)


@pytest.mark.anyio
async def test_pairwise_verdicts_count_every_token_the_judge_spent(tmp_path: Path) -> None:
    """A match's tokens are split between its two groups with none lost to rounding: here
    each match spends 3 completion tokens ("1", and "pick 2" swapped)."""
    behaviour = FakeBehaviour(reply=_preferring("BCDA", 3, second="pick 2"))
    async with FakeServer(behaviour, record_bodies=True) as server:
        result = await _pairwise_four(server, tmp_path)
    assert result.trees[0].answer == "B"
    m = result.metrics.verifier
    assert m is not None and (m.prompt_tokens, m.completion_tokens) == _judge_usage(server)


@pytest.mark.anyio
async def test_pairwise_draws_the_top_seed_against_the_bottom_one(tmp_path: Path) -> None:
    """Four answers of one vote each, seeded A, B, C, D (first seen first): round 1 is
    A vs D and B vs C, as in a seeded draw, so the two top seeds can meet only in the
    final (pairing neighbours had A meet B, the second seed, in round 1)."""
    async with FakeServer(FakeBehaviour(reply=_preferring("BCDA", 4))) as server:
        result = await _pairwise_four(server, tmp_path, samples=4)
    verdicts = {v.parent_id: v for v in result.trees[0].of_kind(NodeKind.VERDICT)}
    assert "round 1: A vs D: P(A better) = 0.00" in verdicts["q1/b1"].text
    assert "round 1: B vs C: P(B better) = 1.00" in verdicts["q1/b3"].text
    assert "round 2: B vs D: P(B better) = 1.00" in verdicts["q1/b4"].text  # B: seed 2
    scores = [verdicts[f"q1/b{i}"].score for i in (1, 2, 3, 4)]
    assert scores == [0.0, 1.0, 0.0, 0.5] and result.trees[0].answer == "B"


@pytest.mark.anyio
async def test_pairwise_gives_the_bye_to_the_most_voted_answer(tmp_path: Path) -> None:
    """Samples A, B, C, C: C has the most votes, so it is the top seed and sits round 1
    out (groups are seeded by votes); A meets B there, and A, whom the judge prefers to
    every other, beats C in the final. C reaches the final: 0.5, where the bye going to
    the least-voted answer had C meet A in round 1 and score 0."""
    samples = ["Surely A. Answer: A", "Surely B. Answer: B", *["Maybe C. Answer: C"] * 2]
    judge = _preferring("ABCD", 4)

    def reply(body: dict[str, Any], index: int) -> str:
        messages = body.get("messages") or []
        if messages and messages[0].get("content") == JUDGE_SYSTEM:
            return str(judge(body, index))
        return samples[index % 4]

    async with FakeServer(FakeBehaviour(reply=reply)) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, model="fake-model")
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=4, budget=4),
            verifiers=("pairwise:score=rating",),
            out=tmp_path / "run",
        )
        result = await execute([FOUR], endpoint, settings)
    verdicts = {v.parent_id: v for v in result.trees[0].of_kind(NodeKind.VERDICT)}
    scores = [verdicts[f"q1/b{i}"].score for i in (1, 2, 3, 4)]
    assert scores == [1.0, 0.0, 0.5, 0.5]
    c = verdicts["q1/b3"].text  # C's representative: the first of its equal two
    assert "round 1: a bye (the top seed sits out an odd round)" in c, c
    assert "round 1: A vs" not in c and "round 2: C vs A: P(C better) = 0.00" in c, c
    assert "round 1: A vs B: P(A better) = 1.00" in verdicts["q1/b2"].text


@pytest.mark.anyio
async def test_a_judge_on_its_own_endpoint_is_probed_before_the_run_starts(tmp_path: Path) -> None:
    """The judge's endpoint is probed when the run's is, before the run and its limits
    start: the probe's few requests count under no limit, for the judge as for the run's
    own endpoint, and none goes out once a limit is reached. Here the samples spend the
    whole token limit, so every judge call is refused; the judge's endpoint heard only the
    probe, before the first sample was asked for."""
    seen: list[str] = []

    def solver(body: dict[str, Any], index: int) -> str:
        if "Which one?" in json.dumps(body.get("messages")):
            seen.append("sample")
        return SAMPLES[index % 3]

    def judge(body: dict[str, Any], index: int) -> str:
        messages = body.get("messages") or []
        judging = bool(messages) and messages[0].get("content") == JUDGE_SYSTEM
        seen.append("judged" if judging else "judge probed")
        return "9"

    async with (
        FakeServer(FakeBehaviour(reply=solver)) as server,
        FakeServer(FakeBehaviour(reply=judge, model="judge-model")) as judge_server,
    ):
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, model="fake-model")
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=3, budget=4),
            verifiers=("judge:grader,score=rating",),
            out=tmp_path / "run",
            max_run_tokens=12,
            config={"endpoints": {"grader": {"base_url": judge_server.base_url}}},
        )
        result = await execute([FOUR], endpoint, settings)
    assert "judge probed" in seen and "judged" not in seen
    assert seen.index("sample") > max(i for i, s in enumerate(seen) if s == "judge probed")
    verdicts = result.trees[0].of_kind(NodeKind.VERDICT)
    assert all("token limit of 12 is reached" in str(v.error) for v in verdicts)
    assert result.stopped_by is not None


@pytest.mark.anyio
async def test_a_judge_endpoint_that_cannot_be_probed_is_one_line_before_the_folder(
    tmp_path: Path,
) -> None:
    """As the run's own endpoint: not a run whose every verdict fails."""
    async with (
        FakeServer(FakeBehaviour(reply=_judging({}))) as server,
        FakeServer(FakeBehaviour(model="judge-model")) as judge_server,
    ):
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, model="fake-model")
        grader = {"base_url": judge_server.base_url, "model": "other-model"}
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=3, budget=32),
            verifiers=("pairwise:grader",),
            out=tmp_path / "run",
            config={"endpoints": {"grader": grader}},
        )
        with pytest.raises(ConfigError, match="judge endpoint: model 'other-model' is not served"):
            await execute([PROBLEM], endpoint, settings)
    assert not (tmp_path / "run").exists()


def test_a_problem_s_tokens_add_up_to_the_run_s_without_the_judge_s(tmp_path: Path) -> None:
    """The per-problem tokens `run` prints, and the terminal view's header and problem
    lines, are the solver's, as the summary's completion tokens are: a judge's are its
    own line (they used to be in the problems', and not in the summary's)."""
    from thinktree.orchestrator.trace import read_trace
    from thinktree.tui.render import header, subtree_tokens
    from thinktree.tui.state import RunView

    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(
            json.dumps({**PROBLEM.model_dump(mode="json"), "id": f"q{i}"}) + "\n" for i in range(3)
        )
    )
    behaviour = FakeBehaviour(reply=_judging({"A": "2 out of ten", "B": "9 out of ten"}))
    with fake_server_in_thread(behaviour) as server:
        args = ("run", str(data), "--endpoint", server.base_url, "--mode", "parallel", "--n", "3")
        proc = cli(*args, "--verifier", "judge:score=rating", "--out", "r", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((tmp_path / "r" / "results.json").read_text())["metrics"]
    assert metrics["verifier"]["completion_tokens"] > 0  # the judge spent some of its own
    rows = [line.split("│") for line in proc.stdout.splitlines() if line.startswith("│ q")]
    assert len(rows) == 3
    said = re.search(r"completion (\d+)", proc.stdout)
    assert said is not None
    assert sum(int(row[5]) for row in rows) == int(said[1]) == metrics["completion_tokens"]

    view = RunView(work_out_budget=False)
    for event in read_trace(tmp_path / "r" / "trace.jsonl"):
        view.apply(event)
    assert view.completion_tokens == metrics["completion_tokens"]
    top = header(view, elapsed=1.0, source="trace").plain
    assert f"tokens {metrics['completion_tokens']:,}" in top
    for problem in view.tree.problems.values():
        assert subtree_tokens(problem)[problem.root_id] == problem.completion_tokens()


@pytest.mark.anyio
async def test_a_run_records_its_judges_price_and_a_resume_at_another_is_refused(
    tmp_path: Path,
) -> None:
    """run.json records the prices of the run's model and of its judge's, not of a model
    the run does not use; a resume whose prices give the judge's model another is refused
    in one line (its verdicts' costs would mix two prices: it was accepted), and one
    that leaves the run's models unpriced goes on at the recorded prices."""
    from thinktree.orchestrator.run import load_resume

    prices = {
        "fake-model": Price(1.0, 2.0),
        "judge-model": Price(3.0, 4.0),
        "unused": Price(5.0, 6.0),
    }
    async with (
        FakeServer(FakeBehaviour(reply=lambda body, i: SAMPLES[i % 3])) as server,
        FakeServer(FakeBehaviour(reply="9", model="judge-model")) as judge_server,
    ):
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, model="fake-model")
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=3, budget=8),
            verifiers=("judge:grader,score=rating",),
            out=tmp_path / "run",
            prices=prices,
            config={"endpoints": {"grader": {"base_url": judge_server.base_url}}},
        )
        first = await execute([FOUR], endpoint, settings)
        manifest = json.loads((first.folder / "run.json").read_text())
        assert manifest["prices"] == {
            "fake-model": {"prompt": 1.0, "completion": 2.0},
            "judge-model": {"prompt": 3.0, "completion": 4.0},
        }
        (first.folder / "results.json").unlink()  # killed just before its end
        other = {**prices, "judge-model": Price(3.0, 8.0)}
        with pytest.raises(ConfigError, match=r"'judge-model' at 3/4, now 3/8\): resume it"):
            load_resume(first.folder, prices=other)
        state = load_resume(first.folder, prices={"unused": Price(7.0, 8.0)})
        assert state.settings.prices == {**prices, "unused": Price(7.0, 8.0)}
        resumed = dataclasses.replace(state.settings, config=settings.config)
        again = await execute(state.problems, endpoint, resumed, resume=state)
    assert first.metrics.verifier is not None and again.metrics.verifier is not None
    assert first.metrics.verifier.cost_usd is not None and first.metrics.cost_usd is not None
    assert again.metrics.verifier.cost_usd == first.metrics.verifier.cost_usd
    assert again.metrics.cost_usd == first.metrics.cost_usd


def _installed(monkeypatch: pytest.MonkeyPatch, *points: tuple[str, str]) -> None:
    """Entry points of the verifier group as installed plugins would register them."""
    from importlib.metadata import EntryPoint

    from thinktree.verifiers import registry

    found = [EntryPoint(name, value, registry.VERIFIER_GROUP) for name, value in points]
    monkeypatch.setattr(
        registry, "entry_points", lambda group: [p for p in found if p.group == group]
    )


def test_a_name_two_plugins_register_is_one_line_naming_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # one of them would have won silently, whichever was installed last
    _installed(
        monkeypatch,
        ("mine", "tests_a:make"),
        ("mine", "tests_b:make"),
        ("mine", "tests_a:make"),  # the same one, found twice on the path: no conflict
        ("other", "tests_c:make"),
    )
    with pytest.raises(ConfigError) as caught:
        check_verifiers(["mine"])
    assert str(caught.value) == (
        "verifier 'mine' is registered by 2 plugins (tests_a:make, tests_b:make); "
        "uninstall one or rename its entry point"
    )
    assert verifier_names() == [*BUILTIN_VERIFIERS, "mine", "other"]
    from typer.testing import CliRunner

    from thinktree.cli import app

    listed = CliRunner().invoke(app, ["verifier", "list"])  # it says so too, not only a run
    assert listed.exit_code == 0, listed.output
    assert (
        "mine             plugin registered by 2 plugins (tests_a:make, tests_b:make): "
        "uninstall one or rename its entry point"
    ) in listed.output
    assert "other            plugin\n" in listed.output


def test_a_plugin_named_as_a_built_in_is_said_to_be_hidden(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # --verifier reward runs the built-in: the plugin's author is told, not left guessing
    _installed(monkeypatch, ("reward", "my_rm:make"))
    with capture_logs() as logs:
        check_verifiers(["reward:http://127.0.0.1:9/v1"])
        check_verifiers(["reward:http://127.0.0.1:9/v1"])  # a run checks, then builds: said once
    hidden = [e for e in logs if e["event"].startswith("a plugin's verifier is hidden")]
    assert len(hidden) == 1, hidden
    assert hidden[0]["plugin"] == "my_rm:make" and hidden[0]["verifier"] == "reward"
    from typer.testing import CliRunner

    from thinktree.cli import app

    listed = CliRunner().invoke(app, ["verifier", "list"])
    assert listed.exit_code == 0, listed.output
    assert "reward           plugin my_rm:make, hidden by the built-in" in listed.output

"""Run metrics: accuracy and coverage count the same problems, a call is a request, and the
tokens allowed take every limit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from choice_set import case_problems
from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.metrics import ReadBack, accuracy_by_step, compute, tokens_allowed
from thinktree.orchestrator.events import CandidateScored, NodeKind, NodeStatus, failed_calls_in
from thinktree.orchestrator.run import RunSettings, execute
from thinktree.orchestrator.store import list_runs
from thinktree.orchestrator.tree import Node, ProblemTree
from thinktree.pricing import Price
from thinktree.problems import AnswerType, Problem
from thinktree.testing.fake_server import FakeBehaviour, FakeServer

pytestmark = pytest.mark.anyio


def _tree(pid: str, correct: bool | None, covered: bool | None) -> ProblemTree:
    return ProblemTree(
        problem_id=pid, root_id=pid, question="q", gold="1", correct=correct, covered=covered
    )


def test_accuracy_and_coverage_share_one_denominator() -> None:
    trees = [
        _tree("a", True, True),
        _tree("b", False, False),
        _tree("c", False, True),
        _tree("d", None, True),  # a gold that could not be graded, covered all the same
    ]
    metrics = compute(trees, tokens_allowed=10)
    assert metrics.graded == 3
    assert metrics.accuracy == pytest.approx(1 / 3)
    assert metrics.coverage == pytest.approx(2 / 3)


def _stepped(pid: str, answers: list[str | None], forced: str | None = None) -> ProblemTree:
    """A sequential problem whose steps stated ``answers`` (gold "B"), graded on its answer:
    the last stated, or ``forced`` after its steps."""
    tree = _tree(pid, None, None)
    root = Node(id=pid, problem_id=pid, parent_id=None, kind=NodeKind.PROBLEM, label=pid)
    tree.nodes[pid] = root
    kinds = [(NodeKind.STEP, a) for a in answers]
    kinds += [(NodeKind.FORCED_ANSWER, forced)] if forced else []
    for i, (kind, answer) in enumerate(kinds, 1):
        node_id = f"{pid}/step{i}" if kind == NodeKind.STEP else f"{pid}/answer"
        root.children.append(node_id)
        tree.nodes[node_id] = Node(
            id=node_id, problem_id=pid, parent_id=pid, kind=kind, label="", answer=answer
        )
    final = forced or next((a for a in reversed(answers) if a is not None), None)
    tree.answer, tree.correct, tree.covered = final, final == "B", final == "B"
    return tree


def test_accuracy_by_step_grades_the_answer_standing_after_each_step() -> None:
    problems = [
        Problem(id=p, question="?", options={"A": "a", "B": "b"}, answer="B") for p in "uvwxyz"
    ]
    trees = [
        _stepped("w", ["A", "B", "B"]),  # revised into the right answer at step 2
        _stepped("x", ["B", None, "A"]),  # step 2 stated nothing: B stands until step 3
        _stepped("y", ["B"]),  # its line ended after step 1 (a failed call): B stands
        _stepped("z", [None, None, None], forced="B"),  # only the forced answer is right
    ]
    assert compute(trees, tokens_allowed=1).accuracy == 3 / 4
    assert accuracy_by_step(trees, problems) == [2 / 4, 3 / 4, 2 / 4]
    ungraded = _stepped("u", ["B"])
    ungraded.correct = None  # a problem the run did not grade counts in neither
    assert accuracy_by_step([*trees, ungraded], problems) == [2 / 4, 3 / 4, 2 / 4]
    assert accuracy_by_step([_stepped("v", [], forced="B")], problems) is None  # no step ran


def test_accuracy_by_step_of_branches_votes_their_answers_standing_after_each_step() -> None:
    """Hybrid: after step k each branch's standing answer is a ballot (its tokens up to k),
    and the run's vote decides; a verifier's vote, which only scored the final candidates,
    cannot (None)."""
    from thinktree.agents.aggregators import majority, shortest_majority

    problems = [Problem(id="h", question="?", options={"A": "a", "B": "b"}, answer="B")]
    tree = _stepped("h", [])
    for b, (answers, tokens) in enumerate([(["A", "A"], 9), (["B", "B"], 1)], 1):
        branch = f"h/b{b}"
        tree.root.children.append(branch)
        tree.nodes[branch] = Node(
            id=branch, problem_id="h", parent_id="h", kind=NodeKind.BRANCH, label=""
        )
        for k, answer in enumerate(answers, 1):
            step = f"{branch}/step{k}"
            tree.nodes[branch].children.append(step)
            tree.nodes[step] = Node(
                id=step,
                problem_id="h",
                parent_id=branch,
                kind=NodeKind.STEP,
                label="",
                answer=answer,
                completion_tokens=tokens,
            )
    tree.correct, tree.covered = True, True
    # a tie: majority goes to A (seen first), shortest-majority to B (1 token, not 9)
    assert accuracy_by_step([tree], problems, majority) == [0.0, 0.0]
    assert accuracy_by_step([tree], problems, shortest_majority) == [1.0, 1.0]
    assert accuracy_by_step([tree], problems, None) is None


async def test_a_gold_that_cannot_be_graded_counts_in_neither_metric(tmp_path: Path) -> None:
    # datasets refuse such a gold; a problem built in code can still carry one
    ungradable = Problem.model_construct(
        id="n7",
        question="How many?",
        answer_type=AnswerType.NUMERIC,
        options=None,
        context=None,
        answer="1,5",
        lower_limit=None,
        upper_limit=None,
        benchmark=None,
        meta={},
    )
    right = Problem(id="n1", question="How many?", answer_type=AnswerType.NUMERIC, answer="15")
    wrong = Problem(id="n2", question="How many?", answer_type=AnswerType.NUMERIC, answer="3")
    async with FakeServer(FakeBehaviour(reply="Answer: 15")) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, continuation="chat")
        settings = RunSettings(modes=ModeSettings(mode="budget", budget=16), out=tmp_path / "r")
        result = await execute([right, ungradable, wrong], endpoint, settings)
    tree = result.trees[1]
    assert tree.correct is None and tree.covered is None
    assert result.metrics.graded == 2
    assert result.metrics.accuracy == result.metrics.coverage == 0.5


def _call_node(nid: str, call_id: str | None, status: NodeStatus, latency: float = 0.0) -> Node:
    return Node(
        id=nid,
        problem_id="a",
        parent_id="a",
        kind=NodeKind.GENERATION,
        label=nid,
        status=status,
        completion_tokens=10 if status == NodeStatus.DONE else 0,
        latency_s=latency,
        call_id=call_id,
        finished_at=1.0,
        error=None if status == NodeStatus.DONE else "failed",
    )


def test_a_call_is_one_request_with_one_latency() -> None:
    """Four samples of one slow request and four quick single calls: eight nodes, five
    calls, and the latencies are the five calls' (the slow request used to count four
    times, so p50 read as the slow one's)."""
    tree = _tree("a", True, True)
    nodes = [_call_node(f"a/b{i}/think", "slow", NodeStatus.DONE, 0.5) for i in range(4)]
    nodes += [_call_node(f"a/q{i}/think", f"quick{i}", NodeStatus.DONE, 0.001) for i in range(4)]
    # one failed request of two samples, and a node a limit refused before it was sent
    nodes += [_call_node(f"a/f{i}/think", "a/f0/think", NodeStatus.FAILED) for i in range(2)]
    nodes.append(_call_node("a/never/think", None, NodeStatus.FAILED))
    tree.nodes = {n.id: n for n in nodes}
    metrics = compute([tree], tokens_allowed=1000)
    assert metrics.calls == 6  # slow, four quick ones, the failed request
    assert metrics.latency_p50_s == pytest.approx(0.001)
    assert metrics.latency_p95_s is not None and metrics.latency_p95_s > 0.4
    assert metrics.completion_tokens == 80


def test_calls_read_back_count_their_tokens_but_not_their_cost_or_latency() -> None:
    """A call read back from another run's store: its tokens are the run's (its answer
    took them), its cost and latency are not; it is still one of the run's calls."""
    tree = _tree("a", True, True)
    nodes = [_call_node(f"a/b{i}/think", "borrowed", NodeStatus.DONE, 0.9) for i in range(2)]
    nodes += [_call_node("a/own/think", "own", NodeStatus.DONE, 0.1)]
    nodes += [_call_node("a/plan", None, NodeStatus.DONE, 0.2)]  # a call with no call id
    nodes[-1].prompt_tokens = 5
    for node in nodes:
        node.prompt_tokens += 100
    nodes.append(Node(id="a/b0", problem_id="a", parent_id="a", kind=NodeKind.BRANCH, label="b0"))
    tree.nodes = {n.id: n for n in nodes}
    price = Price(prompt_per_m=1_000_000, completion_per_m=2_000_000)  # 1 USD a prompt token
    read_back = {"borrowed": (200, 20)}
    metrics = compute([tree], tokens_allowed=1000, price=price, read_back=read_back)
    assert (metrics.calls, metrics.prompt_tokens, metrics.completion_tokens) == (3, 405, 40)
    assert metrics.thinking_tokens == 40
    assert metrics.latency_p50_s == pytest.approx(0.15)  # the two own calls' only
    assert metrics.cost_usd == pytest.approx(205 + 2 * 20)
    assert metrics.read_back is not None
    assert (metrics.read_back.calls, metrics.read_back.prompt_tokens) == (1, 200)
    assert metrics.read_back.completion_tokens == 20
    assert metrics.read_back.cost_usd == pytest.approx(200 + 2 * 20)


def test_judge_calls_read_back_count_their_tokens_but_not_their_cost() -> None:
    """A read-back call that no solver node made is a judge's: the verdicts keep their
    tokens, and their cost is what was left after the calls another run paid for."""
    tree = _tree("a", True, True)
    tree.nodes["a/own/think"] = _call_node("a/own/think", "own", NodeStatus.DONE, 0.1)
    price = Price(prompt_per_m=1_000_000, completion_per_m=2_000_000)  # 1 USD a prompt token
    for i, cost in enumerate((12.0, 7.0)):
        tree.verdicts.append(
            CandidateScored(
                problem_id="a",
                node_id=f"a/own/think/judge{i}",
                candidate_node="a/own/think",
                verifier="judge",
                score=0.5,
                prompt_tokens=10 if i == 0 else 5,
                completion_tokens=1,
                cost_usd=cost,
            )
        )
    metrics = compute([tree], tokens_allowed=1000, price=price, read_back={"judged": (5, 1)})
    assert metrics.read_back is None  # no solver call was read back
    assert metrics.cost_usd == pytest.approx(2 * 10)  # the solver's own call
    verifier = metrics.verifier
    assert verifier is not None and (verifier.prompt_tokens, verifier.completion_tokens) == (15, 2)
    assert verifier.cost_usd == pytest.approx(12.0)
    assert verifier.read_back == ReadBack(calls=1, prompt_tokens=5, completion_tokens=1, cost_usd=7)
    unpriced = compute([tree], tokens_allowed=1000, read_back={"judged": (5, 1)}).verifier
    assert unpriced is not None and unpriced.cost_usd is None  # what was paid is not known


def test_failed_counts_problems_an_error_left_ungraded() -> None:
    """A problem the model left without an answer is graded (wrong): it is not also
    failed, so graded and failed never add up to more than the problems."""
    wrong = _tree("a", False, False)
    wrong.error = "no candidate stated an answer"
    failed = _tree("b", None, None)
    failed.error = "1 model call(s) failed, the first with: HTTP 500"
    metrics = compute([wrong, failed, _tree("c", True, True)], tokens_allowed=30)
    assert (metrics.graded, metrics.failed, metrics.problems) == (2, 1, 3)


@pytest.mark.parametrize(
    ("problem_limit", "run_limit", "allowed"),
    [(None, None, 400), (60, None, 240), (None, 150, 150), (60, 1000, 240), (60, 200, 200)],
)
def test_tokens_allowed_take_every_limit(
    problem_limit: int | None, run_limit: int | None, allowed: int
) -> None:
    """Four problems of 100 tokens each, under a problem and a run limit."""
    assert (
        tokens_allowed(100, 4, max_problem_tokens=problem_limit, max_run_tokens=run_limit)
        == allowed
    )


async def test_one_failed_n_sample_request_is_one_failed_call(tmp_path: Path) -> None:
    """Three problems of four samples in one request each; the server refuses q1's. The
    run made three calls and one failed (it said six calls, four of them failed)."""

    def refuse_q1(body: dict[str, Any]) -> str | None:
        return "refused" if "Case 1?" in str(body.get("messages")) else None

    behaviour = FakeBehaviour(native_n=True, reject=refuse_q1)
    async with FakeServer(behaviour) as server:
        cfg = EndpointConfig(name="fake", base_url=server.base_url, native_n="yes")
        settings = RunSettings(modes=ModeSettings(mode="parallel", n=4), out=tmp_path / "run")
        result = await execute(case_problems(3), cfg, settings)
    assert result.metrics.calls == 3
    assert len(result.failed_calls()) == 4 and result.failed_requests() == 1
    saved = json.loads((result.folder / "results.json").read_text())
    assert failed_calls_in(saved["problems"]) == 1
    (summary,) = list_runs(tmp_path)
    assert summary.calls_failed == 1 and summary.problems_failed == 1


async def test_a_run_limit_shows_in_the_tokens_allowed(tmp_path: Path) -> None:
    """A run that spent its whole --max-tokens used all it was allowed (it said 6.5 %)."""
    async with FakeServer(FakeBehaviour(native_n=False)) as server:
        cfg = EndpointConfig(name="fake", base_url=server.base_url, native_n="no")
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=4, budget=16),
            out=tmp_path / "run",
            max_run_tokens=40,
        )
        result = await execute(case_problems(4), cfg, settings)
    assert result.metrics.tokens_allowed == 40
    assert result.metrics.utilisation == pytest.approx(result.metrics.completion_tokens / 40)

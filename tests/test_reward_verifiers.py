"""Reward-model verifiers against a real HTTP scorer on 127.0.0.1 (vLLM's pooling shapes)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.errors import ConfigError, EndpointError
from thinktree.orchestrator.events import NodeKind, NodeStatus
from thinktree.orchestrator.run import RunResult, RunSettings, execute
from thinktree.orchestrator.store import StoreReader
from thinktree.problems import AnswerType, Problem
from thinktree.testing.fake_server import FakeBehaviour, FakeServer
from thinktree.testing.reward_server import RewardServer
from thinktree.verifiers.base import CheckedOnce
from thinktree.verifiers.registry import check_verifiers
from thinktree.verifiers.reward import aggregate_steps, split_steps

pytestmark = pytest.mark.anyio

PROBLEM = Problem(
    id="q1",
    question="Which one?",
    answer_type=AnswerType.CHOICE,
    options={"A": "alpha", "B": "beta"},
    answer="B",
)
REPLIES = [
    "First I read the question.\n\nThen a wrong turn.\n\nAnswer: A",
    "First I read the question.\n\nThen a sound step.\n\nAnswer: B",
    "Quick guess.\n\nAnswer: A",
]


def _solver(body: dict[str, Any], index: int) -> str:
    return REPLIES[index % 3]


def _outcome(text: str) -> float:
    return 0.9 if "Final answer: B" in text else 0.2


def _process(text: str) -> float:
    return 0.1 if "wrong" in text else 0.6 if "guess" in text else 0.8


async def _run(tmp_path: Path, spec: str, aggregate: str = "best-of-n") -> RunResult:
    async with FakeServer(FakeBehaviour(reply=_solver)) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, model="fake-model")
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=3, budget=64),
            verifiers=(spec,),
            aggregate=aggregate,
            out=tmp_path / "run",
        )
        return await execute([PROBLEM], endpoint, settings)


def test_steps_split_on_blank_lines_and_aggregate() -> None:
    assert split_steps("a\n\nb\n  \nc\n") == ["a", "b", "c"]
    assert split_steps("one line\nsame step") == ["one line\nsame step"]
    scores = [0.9, 0.5, 0.8]
    assert aggregate_steps(scores, "min") == 0.5
    assert aggregate_steps(scores, "last") == 0.8
    assert aggregate_steps(scores, "product") == pytest.approx(0.36)
    assert aggregate_steps(scores, "mean") == pytest.approx(2.2 / 3)


@pytest.mark.parametrize("route", ["classify", "pooling", "score"])
async def test_reward_model_scores_every_candidate(tmp_path: Path, route: str) -> None:
    async with RewardServer(_outcome) as scorer:
        result = await _run(tmp_path, f"reward:{scorer.url}/v1,route={route}")
        seen = [r for r, _ in scorer.requests]
    # one tiny pair before the run starts (the scorer's check), then the whole problem
    # in one request
    assert seen == [route, route]
    tree = result.trees[0]
    verdicts = tree.of_kind(NodeKind.VERDICT)
    assert [v.score for v in verdicts] == pytest.approx([0.2, 0.9, 0.2])
    assert all(v.status is NodeStatus.DONE and v.prompt_tokens > 0 for v in verdicts)
    assert tree.answer == "B" and tree.vote is not None
    assert tree.vote.winner_node == "q1/b2"
    with StoreReader.open(result.folder / "run.sqlite") as store:
        assert [round(v["score"], 3) for v in store.verdicts()] == [0.2, 0.9, 0.2]
    m = result.metrics.verifier
    assert m is not None and m.auroc == 1.0 and m.pick_accuracy == 1.0


async def test_runs_that_share_their_checks_try_the_scorer_once(tmp_path: Path) -> None:
    """As a bench's cells: the second run's verifier takes what the first one's check found."""
    checked = CheckedOnce()
    async with RewardServer(_outcome) as scorer, FakeServer(FakeBehaviour(reply=_solver)) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, model="fake-model")
        for run in ("one", "two"):
            settings = RunSettings(
                modes=ModeSettings(mode="parallel", n=3, budget=64),
                verifiers=(f"reward:{scorer.url}",),
                aggregate="best-of-n",
                out=tmp_path / run,
            )
            result = await execute([PROBLEM], endpoint, settings, verifier_checks=checked)
            assert result.trees[0].answer == "B"
        inputs = [len(body["input"]) for _, body in scorer.requests]
    assert inputs == [1, 3, 3]  # the check's one tiny pair, then each run's problem


@pytest.mark.parametrize(("agg", "expected"), [("min", 0.1), ("last", 0.1), ("mean", 0.275)])
async def test_process_reward_scores_steps(tmp_path: Path, agg: str, expected: float) -> None:
    async with RewardServer(_process) as scorer:
        result = await _run(tmp_path, f"prm:{scorer.url},agg={agg}")
        assert len(scorer.requests) == 2  # the scorer's check, then the problem
        inputs = scorer.requests[1][1]["input"]
    # 4 + 4 + 3 prefixes: every step of every candidate, the final answer being the last
    assert len(inputs) == 11
    assert inputs[1].endswith("Then a wrong turn.")
    verdicts = result.trees[0].of_kind(NodeKind.VERDICT)
    first = verdicts[0]
    assert first.score == pytest.approx(expected)  # 0.8, 0.1, 0.1, 0.1 for the wrong turn
    assert first.text.startswith("4 steps: 0.80 0.10 0.10 0.10")
    assert verdicts[1].score == pytest.approx(0.8)
    assert result.trees[0].answer == "B"


async def test_a_scorer_that_breaks_mid_run_fails_the_verdicts_not_the_run(
    tmp_path: Path,
) -> None:
    scorers: list[RewardServer] = []

    def breaks_after_the_check(text: str) -> float:
        scorers[0].malformed = True  # every request after the check before the run
        return _outcome(text)

    async with RewardServer(breaks_after_the_check) as scorer:
        scorers.append(scorer)
        result = await _run(tmp_path, f"reward:{scorer.url}", aggregate="verifier-tiebreak")
    verdicts = result.trees[0].of_kind(NodeKind.VERDICT)
    assert all(v.status is NodeStatus.FAILED for v in verdicts)
    assert "returned 0 scores for 3 texts" in (verdicts[0].error or "")
    assert result.trees[0].answer == "A"  # the majority stands


@pytest.mark.parametrize("spec", ["reward", "prm"])
async def test_a_scorer_that_is_down_fails_its_verdicts_as_calls_a_resume_makes_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str
) -> None:
    """The scorer answers 503 once the run has begun: each request is sent again a few
    times, then its verdicts fail as calls that failed, so the run says calls failed and a
    resume scores them. They failed once, for good: exit 0, and nothing to resume."""
    from thinktree.orchestrator.run import load_resume
    from thinktree.verifiers import reward

    monkeypatch.setattr(reward, "_WAIT_S", 0.001)
    scorers: list[RewardServer] = []
    breaking = [True]

    def down_after_the_check(text: str) -> float:
        scorers[0].down = breaking[0]
        return _process(text) if spec == "prm" else _outcome(text)

    async with (
        RewardServer(down_after_the_check) as scorer,
        FakeServer(FakeBehaviour(reply=_solver)) as server,
    ):
        scorers.append(scorer)
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, model="fake-model")
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=3, budget=64),
            verifiers=(f"{spec}:{scorer.url}",),
            out=tmp_path / "run",
        )
        first = await execute([PROBLEM], endpoint, settings)
        assert len(scorer.requests) == 1 + reward._ATTEMPTS  # the check, then each attempt
        verdicts = first.trees[0].of_kind(NodeKind.VERDICT)
        assert [v.status for v in verdicts] == [NodeStatus.FAILED] * 3
        assert (verdicts[0].error or "").startswith("judge call failed: ")
        assert "the scorer answered HTTP 503 on /classify, 4 times" in (verdicts[0].error or "")
        assert first.failed_requests() == 3
        scorer.down = breaking[0] = False
        state = load_resume(first.folder)
        again = await execute(state.problems, endpoint, state.settings, resume=state)
    assert again.failed_calls() == []
    assert [v.status for v in again.trees[0].of_kind(NodeKind.VERDICT)] == [NodeStatus.DONE] * 3
    assert again.trees[0].vote is not None and again.trees[0].vote.rule == "verifier-weighted"


def test_bad_reward_arguments_are_one_line() -> None:
    with pytest.raises(ConfigError, match="needs its scorer"):
        check_verifiers(["reward"])
    with pytest.raises(ConfigError, match="route 'embed' is unknown"):
        check_verifiers(["reward:http://127.0.0.1:1,route=embed"])
    with pytest.raises(ConfigError, match="agg 'max' is unknown"):
        check_verifiers(["prm:http://127.0.0.1:1,agg=max"])


async def test_a_scorer_that_answers_nan_fails_those_verdicts_not_the_run(tmp_path: Path) -> None:
    def nan_for_b(text: str) -> float:
        return float("nan") if "Final answer: B" in text else 0.2

    async with RewardServer(nan_for_b) as scorer:
        result = await _run(tmp_path, f"reward:{scorer.url}/v1,route=classify")
    tree = result.trees[0]
    verdicts = tree.of_kind(NodeKind.VERDICT)
    assert [v.status for v in verdicts] == [NodeStatus.DONE, NodeStatus.FAILED, NodeStatus.DONE]
    assert "gave a non-finite score (nan)" in (verdicts[1].error or "")
    assert tree.answer == "A"  # B's only candidate has no score: it ranks below A's
    assert (result.folder / "results.json").exists()


async def test_a_priced_scorer_counts_under_the_money_limit(tmp_path: Path) -> None:
    """The solver's model is free; the scorer costs $0.0001 a prompt token. Its one
    request could cost up to its prompt's bound (every byte a token, about $0.07), which
    $0.001 does not pay for (its words alone would have passed it): the request is
    refused, the verdicts fail saying so, the run is 'stopped', and a resume under a
    higher limit scores them."""
    import dataclasses

    from thinktree.orchestrator.run import load_resume
    from thinktree.pricing import Price

    prices = {"fake-model": Price(0.0, 0.0), "fake-reward": Price(100.0, 0.0)}
    async with RewardServer(_outcome) as scorer, FakeServer(FakeBehaviour(reply=_solver)) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, model="fake-model")
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=3, budget=64),
            verifiers=(f"reward:{scorer.url}/v1",),
            out=tmp_path / "run",
            prices=prices,
            max_cost=0.001,
        )
        first = await execute([PROBLEM], endpoint, settings)
        assert len(scorer.requests) == 1  # only the check before the run, unmetered
        verdicts = first.trees[0].of_kind(NodeKind.VERDICT)
        assert all("money limit of $0.001 is reached" in str(v.error) for v in verdicts)
        assert first.stopped_by is not None and "money limit of $0.001" in first.stopped_by
        state = load_resume(first.folder, prices=prices, new_limits=True)
        raised = dataclasses.replace(state.settings, max_cost=1.0)
        again = await execute(state.problems, endpoint, raised, resume=state)
    assert again.stopped_by is None
    assert [v.score for v in again.trees[0].of_kind(NodeKind.VERDICT)] == pytest.approx(
        [0.2, 0.9, 0.2]
    )
    spent = again.metrics.verifier.cost_usd if again.metrics.verifier else None
    assert spent is not None and 0.001 < spent < 0.07


@pytest.mark.parametrize("broken", ["malformed", "unreachable", "not a scorer", "nan"])
async def test_a_scorer_that_cannot_score_stops_the_run_before_its_folder(
    tmp_path: Path, broken: str
) -> None:
    """Every verdict would fail and the vote fall back to majority, unnoticed: the run
    is refused in one line, as for a judge whose endpoint cannot be probed (a scorer that
    gave nan passed the check, and failed every verdict)."""
    score = (lambda text: math.nan) if broken == "nan" else _outcome
    async with RewardServer(score, malformed=broken == "malformed") as scorer:
        url = {"malformed": scorer.url, "nan": scorer.url, "unreachable": "http://127.0.0.1:9"}.get(
            broken
        )
        async with FakeServer(FakeBehaviour(reply=_solver)) as solver:
            with pytest.raises(EndpointError) as raised:
                await _run(tmp_path, f"prm:{url or solver.base_url}")
    message = str(raised.value)
    assert message.startswith("the scorer at http://127.0.0.1:") and "cannot score" in message
    assert "\n" not in message
    assert not (tmp_path / "run").exists()
    if broken == "nan":
        assert message.endswith("cannot score: it gave a test pair nan, no score in [0, 1]")


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ("reward:{url}", "reward:{root}/", True),  # the same server, spelt with and without /v1
        ("reward:{url}", "reward:{localhost}", True),  # loopback as localhost or 127.0.0.1
        ("prm:{url}", "prm:{url},agg=min", True),  # min is prm's default
        ("reward:{url}", "reward:{url},route=score", False),  # another route reads otherwise
        ("prm:{url}", "prm:{url},agg=mean", False),  # the steps' scores pooled otherwise
        ("reward:{url}", "prm:{url}", False),  # a whole response vs its steps
    ],
)
async def test_the_same_scorer_given_twice_is_refused_before_the_run(
    tmp_path: Path, first: str, second: str, same: bool
) -> None:
    """As for a judge: the same scorer asked the same way would count twice in each
    candidate's mean score. One line, no folder; scorers that differ each give theirs."""
    async with RewardServer(_outcome) as scorer, FakeServer(FakeBehaviour(reply=_solver)) as solver:
        root = scorer.url.removesuffix("/v1")
        localhost = scorer.url.replace("127.0.0.1", "localhost")
        specs = tuple(
            spec.format(url=scorer.url, root=root, localhost=localhost) for spec in (first, second)
        )
        endpoint = EndpointConfig(name="fake", base_url=solver.base_url, model="fake-model")
        settings = RunSettings(
            modes=ModeSettings(mode="parallel", n=3, budget=64),
            verifiers=specs,
            out=tmp_path / "run",
        )
        if not same:
            result = await execute([PROBLEM], endpoint, settings)
            labels = {v.label for v in result.trees[0].of_kind(NodeKind.VERDICT)}
            assert len(labels) == 2, labels
            return
        with pytest.raises(ConfigError) as caught:
            await execute([PROBLEM], endpoint, settings)
    message = str(caught.value)
    assert message.startswith(
        f"--verifier {specs[1]} is the same verifier as --verifier {specs[0]}"
    )
    assert message.endswith("give one of them") and "\n" not in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("outputs", "scores"),
    [
        # raw rewards, one value each: all through the sigmoid, in their order (a value
        # already in [0, 1] was kept as it was, so 0.2 outranked -1 but not 0.27, -1's)
        ([[0.2], [-1.0], [1.5], [0.9]], [0.5498, 0.2689, 0.8176, 0.7109]),
        ([0.2, -1.0], [0.5498, 0.2689]),  # a bare number per text
        ([[-800.0], [800.0]], [0.0, 1.0]),  # no overflow at either end
        # a process reward model's class probabilities per step: the last step's positive
        ([[[0.7, 0.3], [0.4, 0.6]], [[0.1, 0.9]]], [0.6, 0.9]),
    ],
)
async def test_pooling_outputs_are_read_by_their_shape_not_their_value(
    outputs: list[Any], scores: list[float]
) -> None:
    from thinktree.verifiers.reward import _pooled

    assert [round(_pooled(o), 4) for o in outputs] == scores


async def test_pooling_values_that_are_neither_a_reward_nor_probabilities_are_refused() -> None:
    from thinktree.verifiers.reward import _pooled

    with pytest.raises(ValueError, match=r"ends in \[2.0, 3.0\]: neither one reward nor class"):
        _pooled([[2.0, 3.0]])


async def test_a_score_route_value_outside_0_1_fails_the_verdicts(tmp_path: Path) -> None:
    # a /score that gives logits: -0.2 for the right answer and -0.3 for the others would
    # have been added up as they came, so that the answer with more votes lost
    calls = iter(range(100))

    def logits(text: str) -> float:
        return 0.5 if next(calls) == 0 else -0.2  # the scorer's check sees 0.5

    async with RewardServer(logits) as scorer:
        result = await _run(tmp_path, f"reward:{scorer.url},route=score", "verifier-weighted")
    verdicts = result.trees[0].of_kind(NodeKind.VERDICT)
    assert [v.status for v in verdicts] == [NodeStatus.FAILED] * 3
    assert verdicts[0].error == (
        "reward model: the scorer's score -0.2 is outside [0, 1]: the score route reads a "
        "probability (a cross-encoder's)"
    )
    assert result.trees[0].vote is not None and result.trees[0].vote.rule == "majority"

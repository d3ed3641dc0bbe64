"""Adaptive voting: the stopping rule (properties), and the mode against a real fake server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thinktree.agents.adaptive import Adaptive, decide, majority_posterior
from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings, build_strategy
from thinktree.errors import ConfigError
from thinktree.orchestrator.events import NodeKind
from thinktree.orchestrator.run import RunResult, RunSettings, execute
from thinktree.problems import Problem
from thinktree.testing.fake_server import FakeBehaviour, FakeServer, fake_server_in_thread

ANSWERS = st.sampled_from(["A", "B", "C", None])


def _majority(votes: list[str | None]) -> str | None:
    """The majority rule itself: most votes, ties to the answer seen first."""
    counts = Counter(v for v in votes if v is not None)
    return counts.most_common(1)[0][0] if counts else None


def _exact(leader: int, others: int) -> Fraction:
    """P(Beta(1 + leader, 1 + others) > 1/2) by integrating the density exactly."""
    a, b = leader + 1, others + 1
    # density of Beta(a, b) for integers: x^(a-1) (1-x)^(b-1) / B(a, b); expand (1-x)^(b-1)
    from math import comb

    def integral(lo: Fraction, hi: Fraction) -> Fraction:
        total = Fraction(0)
        for k in range(b):
            coef = Fraction(comb(b - 1, k) * (-1) ** k, a + k)
            total += coef * (hi ** (a + k) - lo ** (a + k))
        return total

    return integral(Fraction(1, 2), Fraction(1)) / integral(Fraction(0), Fraction(1))


@given(st.integers(0, 30), st.integers(0, 30))
def test_posterior_is_the_beta_tail(leader: int, others: int) -> None:
    assert majority_posterior(leader, others) == pytest.approx(float(_exact(leader, others)))


@given(st.integers(0, 40), st.integers(0, 40))
def test_posterior_is_symmetric_and_monotone(leader: int, others: int) -> None:
    p = majority_posterior(leader, others)
    assert p + majority_posterior(others, leader) == pytest.approx(1.0)
    assert majority_posterior(leader + 1, others) > p
    assert majority_posterior(leader, others + 1) < p


def test_known_posteriors() -> None:
    assert majority_posterior(0, 0) == 0.5
    assert majority_posterior(4, 0) == 31 / 32  # four agreeing votes: stop at 0.95
    assert majority_posterior(3, 0) == 15 / 16  # three are not enough
    with pytest.raises(ValueError):
        majority_posterior(-1, 0)


@settings(max_examples=300)
@given(st.lists(ANSWERS, max_size=16), st.integers(0, 16), st.data())
def test_an_unbeatable_leader_wins_however_the_rest_vote(
    votes: list[str | None], remaining: int, data: st.DataObject
) -> None:
    decision = decide(votes, remaining, confidence=0.999999)
    if decision.rule != "unbeatable":
        return
    rest = data.draw(st.lists(st.sampled_from(["A", "B", "C", "D", None]), min_size=remaining))
    assert _majority(votes + rest[:remaining]) == decision.leader


@settings(max_examples=300)
@given(st.lists(ANSWERS, max_size=16), st.integers(0, 16), st.floats(0.51, 0.99))
def test_decide_names_the_current_majority_and_stops_only_for_a_reason(
    votes: list[str | None], remaining: int, confidence: float
) -> None:
    decision = decide(votes, remaining, confidence)
    assert decision.leader == _majority(votes)
    counts = [*sorted(Counter(v for v in votes if v is not None).values(), reverse=True), 0, 0]
    if remaining == 0:
        assert decision.stop and decision.rule == "exhausted"
    elif decision.stop:
        assert decision.leader is not None
        assert counts[0] - counts[1] > remaining or decision.posterior >= confidence
    else:
        assert counts[0] - counts[1] <= remaining and decision.posterior < confidence


def test_all_abstaining_never_stops_early() -> None:
    decision = decide([None] * 8, 8, 0.95)
    assert not decision.stop and decision.leader is None


def test_bad_knobs_are_one_line_config_errors() -> None:
    with pytest.raises(ConfigError, match="--wave"):
        Adaptive(n=4, wave=5)
    with pytest.raises(ConfigError, match="--wave"):
        build_strategy(ModeSettings(mode="adaptive", n=8, wave=0))
    with pytest.raises(ConfigError, match="confidence"):
        Adaptive(n=4, confidence=1.0)
    assert build_strategy(ModeSettings(mode="adaptive", n=16, wave=4)).name == "adaptive"


# -- the mode, end to end against a real HTTP server ---------------------------------------


def _reply_by_seed(split: int) -> Any:
    """Answer B, except for seeds in one residue class (a divided model)."""

    def reply(body: dict[str, Any], index: int) -> str:
        seed = int(body.get("seed") or 0) + index
        letter = "C" if split and seed % split == 0 else "B"
        return f"Thinking it over. Answer: {letter}"

    return reply


async def _run(
    server: FakeServer, tmp_path: Path, *, n: int, wave: int, native_n: str, name: str = "run"
) -> RunResult:
    endpoint = EndpointConfig(
        name="fake",
        base_url=server.base_url,
        model="fake-model",
        native_n=native_n,  # type: ignore[arg-type]
        continuation="chat",
    )
    problems = [
        Problem(id=f"q{i}", question="Which letter?", options={"B": "b", "C": "c"}, answer="B")
        for i in range(6)
    ]
    settings = RunSettings(
        modes=ModeSettings(mode="adaptive", n=n, wave=wave, budget=32), out=tmp_path / name
    )
    return await execute(problems, endpoint, settings)


@pytest.mark.anyio
async def test_a_unanimous_vote_stops_after_the_first_wave(tmp_path: Path) -> None:
    async with FakeServer(FakeBehaviour(reply=_reply_by_seed(0))) as server:
        result = await _run(server, tmp_path, n=16, wave=4, native_n="yes")
    for tree in result.trees:
        branches = tree.of_kind(NodeKind.BRANCH)
        assert [b.id for b in branches] == [f"{tree.problem_id}/b{i}" for i in range(1, 5)]
        # one wave is one request with n=4
        calls = {tree.nodes[f"{b.id}/think"].call_id for b in branches}
        assert len(calls) == 1
        stop = tree.nodes[f"{tree.problem_id}/stop"]
        assert stop.kind is NodeKind.VOTE and stop.finish_reason == "posterior"
        assert stop.label == "stopped at 4/16"
        assert tree.answer == "B" and tree.vote is not None and tree.vote.counts == {"B": 4}
    assert result.metrics.completion_tokens == 6 * 4 * 5  # 4 samples of 5 tokens (words)


@pytest.mark.anyio
async def test_a_divided_vote_draws_more_and_agrees_with_the_full_vote(tmp_path: Path) -> None:
    async with FakeServer(FakeBehaviour(reply=_reply_by_seed(3))) as server:
        adaptive = await _run(server, tmp_path, n=16, wave=2, native_n="no")
        full = await _run(server, tmp_path, n=16, wave=16, native_n="no", name="full")
    drawn = []
    for a, f in zip(adaptive.trees, full.trees, strict=True):
        branches = a.of_kind(NodeKind.BRANCH)
        drawn.append(len(branches))
        assert len(f.of_kind(NodeKind.BRANCH)) == 16
        # per-node seeds: adaptive's samples are the full run's first samples
        for b in branches:
            assert a.nodes[f"{b.id}/think"].text == f.nodes[f"{b.id}/think"].text
        rule = a.nodes[f"{a.problem_id}/stop"].finish_reason
        if rule in ("unbeatable", "exhausted"):
            assert a.answer == f.answer
    assert max(drawn) > 4  # a split vote needs more than one small wave
    assert sum(drawn) < 16 * len(drawn)
    assert adaptive.metrics.completion_tokens < full.metrics.completion_tokens


def test_the_cli_runs_adaptive_mode(tmp_path: Path) -> None:
    with fake_server_in_thread(FakeBehaviour(reply=_reply_by_seed(0))) as server:
        data = tmp_path / "d.jsonl"
        data.write_text(
            '{"id": "q1", "question": "Which?", "answer_type": "choice", '
            '"options": {"B": "b", "C": "c"}, "answer": "B"}\n'
        )
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "thinktree.cli",
                "run",
                str(data),
                "--endpoint",
                server.base_url,
                "--mode",
                "adaptive",
                "--n",
                "8",
                "--wave",
                "4",
                "--budget",
                "16",
                "--out",
                str(tmp_path / "run"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "results.json").is_file()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["settings"]["mode"] == "adaptive"
    assert results["settings"]["confidence"] == 0.95

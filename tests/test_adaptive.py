"""Adaptive voting: the stopping rule (properties), and the mode against a real fake server."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thinktree.agents.adaptive import (
    Adaptive,
    decide,
    leader_holds,
    next_wave,
    overtake_probability,
)
from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import MODES, USED_BY, ModeSettings, build_strategy, check_given
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


def _urn(
    weights: dict[Any, Fraction], draws: int, new_weight: Fraction | None = None
) -> list[tuple[Fraction, dict[Any, Fraction]]]:
    """Every outcome of ``draws`` Pólya-urn draws with its exact probability.

    Each draw picks a colour in proportion to its weight and adds one to it; with
    ``new_weight``, a draw may also (in proportion to it) open a colour never seen.
    """
    outcomes = [(Fraction(1), dict(weights))]
    for _ in range(draws):
        grown = []
        for p, state in outcomes:
            total = sum(state.values()) + (new_weight or 0)
            for colour, w in state.items():
                if w:
                    grown.append((p * w / total, {**state, colour: w + 1}))
            if new_weight:
                grown.append((p * new_weight / total, {**state, object(): Fraction(1)}))
        outcomes = grown
    return outcomes


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(0, 5),
    st.integers(0, 4),
    st.integers(0, 5),
    st.booleans(),
)
def test_overtaking_is_the_exact_urn_sum(
    leader: int, rival: int, rest: int, remaining: int, wins_ties: bool
) -> None:
    start = {"L": Fraction(leader), "R": Fraction(rival), "X": Fraction(rest)}
    exact = sum(
        (
            p
            for p, end in _urn(start, remaining)
            if end["R"] > end["L"] or (end["R"] == end["L"] and not wins_ties)
        ),
        Fraction(0),
    )
    found = overtake_probability(leader, rival, rest, remaining, leader_wins_ties=wins_ties)
    assert found == pytest.approx(float(exact), abs=1e-12)


def _rising(x: Fraction, k: int) -> Fraction:
    """x (x + 1) ... (x + k - 1)."""
    out = Fraction(1)
    for i in range(k):
        out *= x + i
    return out


def _dirichlet_multinomial_overtake(
    leader: int, rival: int, weight: Fraction, rest: Fraction, remaining: int, wins_ties: bool
) -> Fraction:
    """P(the rival ends level with or ahead), summed over every pair of gains (a, b) of the
    three-way Dirichlet-multinomial, in exact rationals."""
    total = Fraction(leader) + weight + rest
    norm = _rising(total, remaining)
    found = Fraction(0)
    for a in range(remaining + 1):
        for b in range(remaining - a + 1):
            c = remaining - a - b
            ahead = rival + b > leader + a or (rival + b == leader + a and not wins_ties)
            if not ahead or (c and rest == 0):
                continue
            ways = Fraction(math.factorial(remaining), math.factorial(a) * math.factorial(b))
            ways /= math.factorial(c)
            found += (
                ways * _rising(Fraction(leader), a) * _rising(weight, b) * _rising(rest, c) / norm
            )
    return found


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 12),
    st.integers(0, 12),
    st.fractions(0, 6, max_denominator=4),
    st.integers(0, 30),
    st.booleans(),
    st.none() | st.fractions(Fraction(1, 4), 4, max_denominator=4),
)
def test_overtaking_over_many_samples_matches_the_sum_over_every_pair_of_gains(
    leader: int,
    rival: int,
    rest: Fraction,
    remaining: int,
    wins_ties: bool,
    weight: Fraction | None,
) -> None:
    """The one-pass sum, at sizes the urn's enumeration cannot reach, and with weights that
    are not counts (as the answers not seen yet weigh)."""
    exact = _dirichlet_multinomial_overtake(
        leader,
        rival,
        Fraction(rival) if weight is None else weight,
        rest,
        remaining,
        wins_ties,
    )
    found = overtake_probability(
        leader,
        rival,
        float(rest),
        remaining,
        leader_wins_ties=wins_ties,
        rival_weight=None if weight is None else float(weight),
    )
    assert found == pytest.approx(float(exact), abs=1e-12)


def test_overtaking_over_hundreds_of_samples() -> None:
    """At ``--n`` in the hundreds: against the sum over every pair of gains, and a level
    pair's symmetry."""
    exact = _dirichlet_multinomial_overtake(30, 10, Fraction(10), Fraction(5), 200, wins_ties=True)
    found = overtake_probability(30, 10, 5, 200, leader_wins_ties=True)
    assert found == pytest.approx(float(exact), abs=1e-12)
    assert 0.0 < found < 0.5
    # two answers level at 7 votes and nothing else drawn: by symmetry the rival ends
    # ahead as often as behind, so the two rules differ by exactly the chance of a tie
    level = overtake_probability(7, 7, 0, 300, leader_wins_ties=False)
    ahead = overtake_probability(7, 7, 0, 300, leader_wins_ties=True)
    assert level + ahead == pytest.approx(1.0, abs=1e-12)
    assert level - ahead == pytest.approx(float(_level_end(7, 300)), abs=1e-12)


def _level_end(votes: int, remaining: int) -> Fraction:
    """P(two answers level at ``votes`` each end level after ``remaining`` draws between
    them alone): each split of a two-colour urn from equal counts."""
    if remaining % 2:
        return Fraction(0)
    half = remaining // 2
    ways = Fraction(math.factorial(remaining), math.factorial(half) ** 2)
    start = Fraction(votes)
    return ways * _rising(start, half) ** 2 / _rising(2 * start, remaining)


def _exact_hold(votes: list[str | None], remaining: int) -> Fraction:
    """P(the full vote elects today's leader) under the Chinese restaurant process, exactly."""
    leader = _majority(votes)
    weights = {v: Fraction(votes.count(v)) for v in dict.fromkeys(votes)}  # first-seen order
    held = Fraction(0)
    for p, end in _urn(weights, remaining, new_weight=Fraction(1)):
        tallies = Counter({k: int(w) for k, w in end.items() if k is not None})
        # most_common keeps first-seen order among ties, as the majority rule does
        if tallies and tallies.most_common(1)[0][0] == leader:
            held += p
    return held


@settings(max_examples=120, deadline=None)
@given(st.lists(ANSWERS, min_size=1, max_size=6), st.integers(0, 4))
def test_leader_holds_never_overstates_the_exact_chance(
    votes: list[str | None], remaining: int
) -> None:
    bound = leader_holds(votes, remaining)
    if _majority(votes) is None:
        assert bound == 0.0
        return
    exact = float(_exact_hold(votes, remaining))
    assert 0.0 <= bound <= exact + 1e-12
    if remaining == 0:
        assert bound == pytest.approx(1.0)


def test_known_stops() -> None:
    # four agreeing votes of sixteen: the full vote is theirs with P >= 0.98
    assert leader_holds(["A"] * 4, 12) == pytest.approx(0.9808, abs=1e-4)
    assert leader_holds(["A"] * 3, 13) == pytest.approx(0.9375, abs=1e-4)  # three are not enough
    assert decide(["A"] * 4, 12, 0.95).rule == "posterior"
    assert not decide(["A"] * 3 + ["B"], 12, 0.95).stop  # P = 0.865
    # a plurality that a majority rule on p > 1/2 would never stop for: 6 3 2 1 of 16
    votes = ["A"] * 6 + ["B"] * 3 + ["C"] * 2 + ["D"]
    assert decide(votes, 4, 0.95).rule == "posterior"
    with pytest.raises(ValueError):
        overtake_probability(0, 1, 1, 3, leader_wins_ties=True)


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
@given(st.lists(ANSWERS, max_size=16), st.integers(1, 16))
def test_a_leader_not_called_unbeatable_can_be_beaten(
    votes: list[str | None], remaining: int
) -> None:
    decision = decide(votes, remaining, confidence=0.999999)
    if decision.leader is None or decision.rule == "unbeatable":
        return
    rivals = [v for v in dict.fromkeys(votes) if v not in (None, decision.leader)] + ["Z"]
    # one rival taking every sample left wins the vote from the leader
    assert any(_majority(votes + [r] * remaining) != decision.leader for r in rivals)


@settings(max_examples=300)
@given(st.lists(ANSWERS, max_size=16), st.integers(0, 16), st.floats(0.51, 0.99))
def test_decide_names_the_current_majority_and_stops_only_for_a_reason(
    votes: list[str | None], remaining: int, confidence: float
) -> None:
    decision = decide(votes, remaining, confidence)
    assert decision.leader == _majority(votes)
    if remaining == 0:
        assert decision.stop and decision.rule == "exhausted"
    elif decision.stop:
        assert decision.leader is not None and decision.rule in ("unbeatable", "posterior")
        assert decision.posterior >= confidence
    else:
        assert decision.rule == "undecided" and decision.posterior < confidence


def _strict_majority(votes: list[str | None]) -> str | None:
    """The answer with more votes than any other; None where two tie at the top."""
    top = Counter(v for v in votes if v is not None).most_common(2)
    return top[0][0] if top and (len(top) == 1 or top[0][1] > top[1][1]) else None


@settings(max_examples=300)
@given(st.lists(ANSWERS, max_size=16), st.integers(0, 16), st.data())
def test_where_ties_are_not_the_first_seen_s_an_unbeatable_leader_wins_outright(
    votes: list[str | None], remaining: int, data: st.DataObject
) -> None:
    """Under shortest-majority a tie turns on lengths not known yet: unbeatable means
    ahead of every rival, however the rest vote."""
    decision = decide(votes, remaining, confidence=0.999999, ties_to_first=False)
    if decision.rule != "unbeatable":
        return
    rest = data.draw(st.lists(st.sampled_from(["A", "B", "C", "D", None]), min_size=remaining))
    assert _strict_majority(votes + rest[:remaining]) == decision.leader


def test_a_tie_within_reach_settles_majority_but_not_shortest_majority() -> None:
    votes = ["D"] * 5 + ["B", "C", None]  # B taking the 4 left ends level with D
    assert decide(votes, 4, 0.95).rule == "unbeatable"  # ties go to D, seen first
    undecided = decide(votes, 4, 0.95, ties_to_first=False)
    assert undecided.rule != "unbeatable"
    assert leader_holds(votes, 4, ties_to_first=False) < leader_holds(votes, 4)
    # a new answer taking all that is left would tie too: not settled either
    assert decide(["A"] * 4, 4, 0.95).rule == "unbeatable"
    assert decide(["A"] * 4, 4, 0.95, ties_to_first=False).rule != "unbeatable"


@settings(max_examples=120, deadline=None)
@given(st.lists(ANSWERS, min_size=1, max_size=6), st.integers(0, 4))
def test_leader_holds_without_ties_never_overstates_an_outright_win(
    votes: list[str | None], remaining: int
) -> None:
    leader = _majority(votes)
    bound = leader_holds(votes, remaining, ties_to_first=False)
    if leader is None:
        assert bound == 0.0
        return
    weights = {v: Fraction(votes.count(v)) for v in dict.fromkeys(votes)}
    exact = Fraction(0)
    for p, end in _urn(weights, remaining, new_weight=Fraction(1)):
        tallies = [(k, int(w)) for k, w in end.items() if k is not None]
        if _strict_majority([k for k, w in tallies for _ in range(w)]) == leader:
            exact += p
    assert 0.0 <= bound <= float(exact) + 1e-12


@pytest.mark.parametrize(
    ("aggregate", "ties_to_first"),
    [("majority", True), ("shortest-majority", False), ("verifier-tiebreak", False)],
)
def test_adaptive_decides_the_run_s_own_vote(aggregate: str, ties_to_first: bool) -> None:
    strategy = build_strategy(ModeSettings(mode="adaptive"), aggregate)
    assert isinstance(strategy, Adaptive) and strategy.ties_to_first is ties_to_first


@pytest.mark.parametrize("aggregate", ["length-weighted", "best-of-n", "verifier-weighted"])
def test_adaptive_refuses_a_vote_that_is_no_count(aggregate: str) -> None:
    with pytest.raises(ConfigError, match=f"--aggregate {aggregate} is not a count of votes"):
        build_strategy(ModeSettings(mode="adaptive"), aggregate)


def test_adaptive_with_a_verifier_breaks_ties_with_it_by_default() -> None:
    with_verifier = RunSettings(modes=ModeSettings(mode="adaptive"), verifiers=("judge",))
    assert with_verifier.aggregate_name() == "verifier-tiebreak"
    parallel = RunSettings(modes=ModeSettings(mode="parallel"), verifiers=("judge",))
    assert parallel.aggregate_name() == "verifier-weighted"


def test_all_abstaining_never_stops_early() -> None:
    decision = decide([None] * 8, 8, 0.95)
    assert not decision.stop and decision.leader is None


def test_an_explicit_wave_must_fit_in_n_a_default_one_shrinks() -> None:
    with pytest.raises(ConfigError, match=r"--wave must be between 1 and --n \(4\), not 8"):
        check_given(ModeSettings(mode="adaptive", n=4, wave=8), ["n", "wave"])
    check_given(ModeSettings(mode="adaptive", n=2), ["n"])  # the default wave (4): no error
    assert build_strategy(ModeSettings(mode="adaptive", n=2)).name == "adaptive"


@pytest.mark.parametrize(
    ("mode", "option"),
    [
        ("budget", "n"),
        ("budget", "steps"),
        ("budget", "wave"),
        ("budget", "total-budget"),
        ("sequential", "min-thinking"),
        ("parallel", "stop-confidence"),
        ("hybrid", "min-thinking"),
        ("auto", "wave"),
    ],
)
def test_an_option_given_for_a_mode_that_ignores_it_is_refused(mode: str, option: str) -> None:
    with pytest.raises(ConfigError, match=f"--{option} is not used in mode '{mode}'"):
        check_given(ModeSettings(mode=mode), [option])


def test_every_mode_takes_the_options_it_uses() -> None:
    for option, modes in USED_BY.items():
        for mode in modes:
            check_given(ModeSettings(mode=mode), [option])
    for mode in MODES:
        check_given(ModeSettings(mode=mode), ["budget", "answer-tokens"])
    check_given(ModeSettings(mode="a-plugins-mode"), list(USED_BY))  # a plugin reads any


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
        # a sample is its branch: its call's node, under the problem
        samples = tree.of_kind(NodeKind.GENERATION)
        assert [s.id for s in samples] == [f"{tree.problem_id}/b{i}" for i in range(1, 5)]
        assert {s.parent_id for s in samples} == {tree.root_id}
        assert not tree.of_kind(NodeKind.BRANCH)
        # one wave is one request with n=4
        calls = {s.call_id for s in samples}
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
        samples = a.of_kind(NodeKind.GENERATION)
        drawn.append(len(samples))
        assert len(f.of_kind(NodeKind.GENERATION)) == 16
        # per-node seeds: adaptive's samples are the full run's first samples
        for sample in samples:
            assert sample.text == f.nodes[sample.id].text
        rule = a.nodes[f"{a.problem_id}/stop"].finish_reason
        if rule in ("unbeatable", "exhausted"):
            assert a.answer == f.answer
    assert max(drawn) > 4  # a split vote needs more than one small wave
    assert sum(drawn) < 16 * len(drawn)
    assert adaptive.metrics.completion_tokens < full.metrics.completion_tokens


@given(
    st.lists(st.sampled_from(["A", "B", "C", None]), min_size=1, max_size=15),
    st.integers(min_value=1, max_value=8),
    st.sampled_from([0.8, 0.9, 0.95, 0.99]),
    st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_a_later_wave_is_the_fewest_samples_that_could_decide(
    answers: list[str | None], most: int, confidence: float, ties_to_first: bool
) -> None:
    remaining = 16 - len(answers)
    size = next_wave(answers, remaining, confidence, most, ties_to_first=ties_to_first)
    cap = min(most, remaining)
    assert 1 <= size <= cap
    leader = decide(answers, remaining, confidence, ties_to_first=ties_to_first).leader
    if leader is None:  # nothing says which answer's votes would decide it
        assert size == cap
        return

    def stops(k: int) -> bool:
        votes = [*answers, *[leader] * k]
        return decide(votes, remaining - k, confidence, ties_to_first=ties_to_first).stop

    assert not any(stops(k) for k in range(1, size))  # fewer could not stop it
    assert stops(size) or size == cap


def test_a_later_wave_sizes_by_the_vote_so_far() -> None:
    assert next_wave(["B", "B", "B", "C"], 12, 0.95, 4) == 1  # one more B decides it
    assert next_wave(["B", "B", "B", "C"], 12, 0.99, 4) == 3
    assert next_wave(["B", "C", "B", "C"], 12, 0.99, 4) == 4  # the cap
    assert next_wave([None, None, None, None], 12, 0.95, 4) == 4  # no leader
    assert next_wave([None, None], 2, 0.95, 4) == 2  # no more than are left


@pytest.mark.anyio
async def test_a_wave_after_the_first_draws_only_what_could_decide(tmp_path: Path) -> None:
    def reply(body: dict[str, Any], index: int) -> str:  # the first wave: B, B, B, C
        return f"Thinking it over. Answer: {'C' if body.get('n') == 4 and index == 3 else 'B'}"

    async with FakeServer(FakeBehaviour(reply=reply), record_bodies=True) as server:
        endpoint = EndpointConfig(
            name="fake", base_url=server.base_url, native_n="yes", continuation="chat"
        )
        problem = Problem(id="q", question="Which letter?", options={"B": "b", "C": "c"})
        settings = RunSettings(
            modes=ModeSettings(mode="adaptive", n=16, wave=4, budget=32), out=tmp_path / "run"
        )
        result = await execute([problem], endpoint, settings)
    asked = [b.get("n", 1) for b in server.bodies if "Which letter?" in json.dumps(b)]
    assert asked == [4, 1]  # waves of 4 would have drawn 8: 4 more after 3 to 1
    (tree,) = result.trees
    assert tree.vote is not None and tree.vote.counts == {"B": 4, "C": 1}
    stop = tree.nodes["q/stop"]
    assert stop.label == "stopped at 5/16" and stop.finish_reason == "posterior"


def test_a_tie_the_vote_breaks_by_length_has_no_leader() -> None:
    """Under majority a tie is the first seen's; under shortest-majority no count says
    whose it is, so the stop names none (it named the first seen, against the vote)."""
    assert decide(["A", "B"], 0, 0.95).leader == "A"
    tied = decide(["A", "B", None], 0, 0.95, ties_to_first=False)
    assert tied.stop and tied.rule == "exhausted" and tied.leader is None
    assert tied.posterior == 0.0
    assert decide(["A", "B", "B"], 0, 0.95, ties_to_first=False).leader == "B"


@pytest.mark.anyio
async def test_the_stop_node_never_names_an_answer_the_vote_did_not_elect(tmp_path: Path) -> None:
    samples = ["Weighing every option at length, it is alpha. Answer: A", "Answer: B"]

    def reply(body: dict[str, Any], index: int) -> str:
        return samples[index % 2]

    async with FakeServer(FakeBehaviour(reply=reply)) as server:
        endpoint = EndpointConfig(name="fake", base_url=server.base_url, native_n="yes")
        problem = Problem(id="q", question="Which?", options={"A": "a", "B": "b"}, answer="B")
        settings = RunSettings(
            modes=ModeSettings(mode="adaptive", n=2, wave=2, budget=32),
            aggregate="shortest-majority",
            out=tmp_path / "run",
        )
        result = await execute([problem], endpoint, settings)
    (tree,) = result.trees
    assert tree.answer == "B"  # the shorter of the tied two
    stop = tree.nodes["q/stop"]
    assert stop.finish_reason == "exhausted" and stop.answer is None
    assert "the run's vote breaks the tie" in stop.text


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

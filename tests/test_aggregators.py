"""Tests for the aggregation rules: examples for each rule, then properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thinktree.agents.aggregators import (
    AGGREGATORS,
    Aggregator,
    Decision,
    MissingScores,
    Vote,
    best_of_n,
    get_aggregator,
    length_weighted,
    majority,
    shortest_majority,
    verifier_tiebreak,
    verifier_weighted,
)


def v(answer: str | None, tokens: int = 100, score: float | None = None) -> Vote:
    return Vote(answer=answer, reasoning_tokens=tokens, score=score)


# --- examples ---------------------------------------------------------------------------


def test_majority_picks_most_votes() -> None:
    d = majority([v("A"), v("B"), v("B"), v(None), v("C")])
    assert d == Decision(
        answer="B",
        winner=1,
        counts={"A": 1, "B": 2, "C": 1},
        scores={"A": 1.0, "B": 2.0, "C": 1.0},
        rule="majority",
    )


def test_majority_tie_goes_to_answer_seen_first() -> None:
    d = majority([v("B"), v("A"), v("A"), v("B")])
    assert (d.answer, d.winner) == ("B", 0)
    assert list(d.counts) == ["B", "A"]


def test_shortest_majority_picks_most_votes_and_its_shortest_member() -> None:
    d = shortest_majority([v("A", 10), v("B", 500), v("B", 300), v("B", 300)])
    assert (d.answer, d.winner) == ("B", 2)
    assert d.counts == {"A": 1, "B": 3}
    assert d.rule == "shortest-majority"


def test_shortest_majority_tie_goes_to_group_with_shortest_member() -> None:
    # A and B have two votes each; B's shortest member (50) beats A's (80).
    d = shortest_majority([v("A", 80), v("B", 900), v("A", 90), v("B", 50)])
    assert (d.answer, d.winner) == ("B", 3)


def test_shortest_majority_full_tie_goes_to_answer_seen_first() -> None:
    d = shortest_majority([v("A", 70), v("B", 50), v("B", 90), v("A", 50)])
    assert (d.answer, d.winner) == ("A", 3)


def test_length_weighted_favours_short_reasoning() -> None:
    # A: 2 votes, mean 1000 -> 0.002; B: 1 vote, mean 100 -> 0.01.
    d = length_weighted([v("A", 900), v("A", 1100), v("B", 100)])
    assert (d.answer, d.winner) == ("B", 2)
    assert d.scores == pytest.approx({"A": 0.002, "B": 0.01})
    assert d.rule == "length-weighted"


def test_length_weighted_treats_zero_mean_as_one() -> None:
    d = length_weighted([v("A", 0), v("A", 0), v("B", 1)])
    assert d.scores == {"A": 2.0, "B": 1.0}
    assert (d.answer, d.winner) == ("A", 0)


def test_length_weighted_tie_goes_to_answer_seen_first() -> None:
    d = length_weighted([v("B", 100), v("A", 100), v("A", 300)])  # both score 1/100
    assert d.scores["A"] == d.scores["B"]
    assert (d.answer, d.winner) == ("B", 0)


def test_best_of_n_picks_highest_score_and_that_candidate() -> None:
    d = best_of_n([v("A", score=0.2), v("A", score=0.3), v("B", score=0.9), v("A", score=0.95)])
    assert (d.answer, d.winner) == ("A", 3)
    assert d.scores == {"A": 0.95, "B": 0.9}
    assert d.counts == {"A": 3, "B": 1}


def test_best_of_n_tie_goes_to_vote_seen_first() -> None:
    d = best_of_n([v("A", score=0.1), v("B", score=0.8), v("A", score=0.8)])
    assert (d.answer, d.winner) == ("B", 1)


def test_best_of_n_allows_abstentions_without_score() -> None:
    d = best_of_n([v(None), v("A", score=0.4)])
    assert (d.answer, d.winner) == ("A", 1)


SCORE_RULES = [best_of_n, verifier_weighted, verifier_tiebreak]


@pytest.mark.parametrize("aggregate", SCORE_RULES)
def test_score_rules_reject_votes_without_any_score(aggregate: Aggregator) -> None:
    with pytest.raises(MissingScores, match=r"needs a verifier score.*votes \[0, 2\] have none"):
        aggregate([v("A"), v(None), v("B")])


@pytest.mark.parametrize("aggregate", SCORE_RULES)
@pytest.mark.parametrize("scale", [1.0, -1.0], ids=["positive", "negative"])
def test_a_vote_without_a_score_ranks_below_every_scored_one(
    aggregate: Aggregator, scale: float
) -> None:
    # A's only verdict failed; B's two scored, below zero on the negative scale
    d = aggregate([v("A"), v("B", score=0.25 * scale), v("B", score=0.5 * scale), v("C")])
    assert d.answer == "B"
    assert d.winner == (2 if scale > 0 else 1)  # B's best-scored member
    assert set(d.scores) == {"B"}  # unscored groups were ranked by nothing
    single = aggregate([v("A"), v("B", score=-5.0)])
    assert (single.answer, single.winner) == ("B", 1)


def test_verifier_weighted_sums_scores() -> None:
    d = verifier_weighted([v("A", score=0.9), v("B", score=0.5), v("B", score=0.5)])
    assert (d.answer, d.winner) == ("B", 1)
    assert d.scores == {"A": 0.9, "B": 1.0}


def test_verifier_weighted_tie_goes_to_answer_seen_first() -> None:
    d = verifier_weighted([v("B", score=0.5), v("A", score=0.25), v("A", score=0.25)])
    assert (d.answer, d.winner) == ("B", 0)


@pytest.mark.parametrize("name", list(AGGREGATORS))
@pytest.mark.parametrize("votes", [[], [v(None), v(None, 0)]], ids=["no-votes", "all-abstain"])
def test_all_abstaining_gives_no_answer(name: str, votes: list[Vote]) -> None:
    d = get_aggregator(name)(votes)
    assert d == Decision(answer=None, winner=None, counts={}, scores={}, rule=name)


def test_vote_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="reasoning_tokens"):
        Vote("A", -1)
    with pytest.raises(ValueError, match="finite"):
        Vote("A", 1, float("nan"))


def test_get_aggregator() -> None:
    assert get_aggregator("shortest-majority") is shortest_majority
    assert set(AGGREGATORS) == {
        "majority",
        "shortest-majority",
        "length-weighted",
        "best-of-n",
        "verifier-weighted",
        "verifier-tiebreak",
    }
    with pytest.raises(ValueError, match=r"unknown aggregator 'x'; choose one of: majority, "):
        get_aggregator("x")


def test_rule_names_match_registry() -> None:
    for name, aggregate in AGGREGATORS.items():
        assert aggregate([v("A", score=1.0)]).rule == name


# --- properties -------------------------------------------------------------------------

answers = st.one_of(st.none(), st.sampled_from(["A", "B", "C", "D"]))
scored_votes = st.builds(
    Vote,
    answer=answers,
    reasoning_tokens=st.integers(min_value=0, max_value=4000),
    score=st.floats(min_value=0.0, max_value=1.0),
)
vote_lists = st.lists(scored_votes, max_size=12)
any_rule = st.sampled_from(sorted(AGGREGATORS))
count_rules = st.sampled_from([majority, shortest_majority])


@given(vote_lists, count_rules)
def test_winner_has_the_most_votes(votes: list[Vote], aggregate: Aggregator) -> None:
    d = aggregate(votes)
    if d.answer is not None:
        assert d.counts[d.answer] == max(d.counts.values())


@given(st.data(), vote_lists)
def test_permuting_votes_keeps_majority_count(data: st.DataObject, votes: list[Vote]) -> None:
    shuffled = data.draw(st.permutations(votes))
    d, e = majority(votes), majority(shuffled)
    assert (d.answer is None) == (e.answer is None)
    if d.answer is not None and e.answer is not None:
        assert d.counts[d.answer] == e.counts[e.answer]
        assert sorted(d.counts.values()) == sorted(e.counts.values())


@given(vote_lists, any_rule)
def test_abstentions_never_win(votes: list[Vote], name: str) -> None:
    d = get_aggregator(name)(votes)
    if any(vote.answer is not None for vote in votes):
        assert d.answer is not None
    else:
        assert (d.answer, d.winner, d.counts) == (None, None, {})


@given(vote_lists, any_rule)
def test_winner_index_holds_the_answer(votes: list[Vote], name: str) -> None:
    d = get_aggregator(name)(votes)
    if d.winner is None:
        assert d.answer is None
    else:
        assert d.answer == votes[d.winner].answer
    assert sum(d.counts.values()) == sum(vote.answer is not None for vote in votes)
    assert list(d.scores) == list(d.counts)


@given(
    vote_lists,
    st.integers(min_value=0, max_value=4000),
    st.floats(min_value=0.0, max_value=1.0),
    st.sampled_from([majority, shortest_majority, verifier_weighted]),
)
def test_adding_a_vote_for_the_winner_keeps_it(
    votes: list[Vote], tokens: int, score: float, aggregate: Aggregator
) -> None:
    d = aggregate(votes)
    if d.answer is None:
        return
    e = aggregate([*votes, Vote(d.answer, tokens, score)])
    assert e.answer == d.answer
    if aggregate is majority:
        assert e.winner == d.winner


@given(vote_lists)
def test_shortest_majority_winner_is_shortest_of_its_group(votes: list[Vote]) -> None:
    d = shortest_majority(votes)
    if d.winner is None:
        return
    group = [i for i, vote in enumerate(votes) if vote.answer == d.answer]
    fewest = min(votes[i].reasoning_tokens for i in group)
    assert votes[d.winner].reasoning_tokens == fewest
    assert d.winner == next(i for i in group if votes[i].reasoning_tokens == fewest)

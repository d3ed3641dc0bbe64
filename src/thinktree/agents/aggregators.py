"""Aggregation rules: turn the votes of several candidates into one decision.

Every rule is a pure function ``(votes) -> Decision``. Votes are grouped by their
normalised answer; abstentions (``answer is None``) are ignored and never win. Groups keep
the order in which their answer was first seen, and ties fall to the earliest group unless
a rule says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Vote:
    """One candidate's extracted answer and what it cost."""

    answer: str | None
    """Normalised extracted answer; ``None`` means the candidate abstains."""
    reasoning_tokens: int
    """Tokens the candidate spent reasoning."""
    score: float | None = None
    """Verifier score, if a verifier ran."""

    def __post_init__(self) -> None:
        if self.reasoning_tokens < 0:
            raise ValueError(f"reasoning_tokens must be >= 0, not {self.reasoning_tokens}")
        if self.score is not None and not math.isfinite(self.score):
            raise ValueError(f"score must be a finite number, not {self.score}")


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of an aggregation rule."""

    answer: str | None
    """The winning answer; ``None`` when every vote abstained."""
    winner: int | None
    """Index into the votes of the winning group's representative candidate."""
    counts: dict[str, int]
    """Votes per answer, in first-seen order."""
    scores: dict[str, float]
    """The score each answer group was ranked by, in first-seen order (a verifier rule
    leaves out groups none of whose votes has a score)."""
    rule: str
    """Name of the rule that decided (a key of ``AGGREGATORS``)."""


Aggregator = Callable[[Sequence[Vote]], Decision]


def _groups(votes: Sequence[Vote]) -> dict[str, list[int]]:
    """Indices of the votes for each answer, answers in first-seen order."""
    groups: dict[str, list[int]] = {}
    for index, vote in enumerate(votes):
        if vote.answer is not None:
            groups.setdefault(vote.answer, []).append(index)
    return groups


def _decide(
    rule: str,
    groups: dict[str, list[int]],
    scores: dict[str, float],
    *,
    rank: Callable[[str], tuple[float, ...]] | None = None,
    representative: Callable[[list[int]], int] | None = None,
) -> Decision:
    """Pick the group with the highest ``rank`` (default: its score); ties go to the first."""
    if not groups:
        return Decision(answer=None, winner=None, counts={}, scores={}, rule=rule)
    counts = {answer: len(members) for answer, members in groups.items()}
    # max() keeps the first of equal keys, and groups are in first-seen order.
    answer = max(groups, key=rank or (lambda a: (scores[a],)))
    members = groups[answer]
    winner = representative(members) if representative else members[0]
    return Decision(answer=answer, winner=winner, counts=counts, scores=scores, rule=rule)


class MissingScores(ValueError):
    """A verifier rule met votes that answer but none with a score (every verdict failed)."""


def _scores(votes: Sequence[Vote], rule: str) -> list[float | None]:
    """Each vote's verifier score; None for abstentions and for votes whose verdicts failed.

    A vote that answers without a score ranks below every scored one, whatever the scale.
    Raises :class:`MissingScores` if votes answer but none has a score: such a rule has
    nothing to rank by (run a verifier first, or fall back to ``majority``).
    """
    answering = [i for i, v in enumerate(votes) if v.answer is not None]
    if answering and all(votes[i].score is None for i in answering):
        raise MissingScores(
            f"the {rule!r} aggregator needs a verifier score on the votes that answer; "
            f"votes {answering} have none (run a verifier first, or use 'majority')"
        )
    return [v.score if v.answer is not None else None for v in votes]


def _ranked(score: float | None) -> tuple[float, float]:
    """A score as a sort key: any score above none at all."""
    return (0.0, 0.0) if score is None else (1.0, score)


def _best(score: list[float | None], members: list[int]) -> int:
    """The best-scored member (the first of equal ones; the first when none is scored)."""
    return max(members, key=lambda i: _ranked(score[i]))


def _summed(score: list[float | None], groups: dict[str, list[int]]) -> dict[str, float]:
    """Each group's sum of its members' scores; groups without a scored member are left out."""
    return {
        answer: math.fsum(s for i in members if (s := score[i]) is not None)
        for answer, members in groups.items()
        if any(score[i] is not None for i in members)
    }


def majority(votes: Sequence[Vote]) -> Decision:
    """Most votes wins; ties go to the answer seen first."""
    groups = _groups(votes)
    scores = {answer: float(len(members)) for answer, members in groups.items()}
    return _decide("majority", groups, scores)


def shortest_majority(votes: Sequence[Vote]) -> Decision:
    """Most votes wins; ties go to the group whose shortest member reasoned least.

    Remaining ties go to the answer seen first. The representative is the group's
    shortest member (the first of equally short ones).
    """
    groups = _groups(votes)
    scores = {answer: float(len(members)) for answer, members in groups.items()}

    def shortest(members: list[int]) -> int:
        return min(members, key=lambda i: votes[i].reasoning_tokens)

    def rank(answer: str) -> tuple[float, ...]:
        return (scores[answer], -votes[shortest(groups[answer])].reasoning_tokens)

    return _decide("shortest-majority", groups, scores, rank=rank, representative=shortest)


def length_weighted(votes: Sequence[Vote]) -> Decision:
    """Each group scores its votes divided by its members' mean reasoning tokens.

    A mean of 0 counts as 1. Ties go to the answer seen first.
    """
    groups = _groups(votes)
    scores: dict[str, float] = {}
    for answer, members in groups.items():
        mean = sum(votes[i].reasoning_tokens for i in members) / len(members)
        scores[answer] = len(members) / (mean or 1.0)
    return _decide("length-weighted", groups, scores)


def best_of_n(votes: Sequence[Vote]) -> Decision:
    """The single highest verifier score wins; ties go to the vote seen first.

    Each group is ranked by its best score, and the representative is that best-scored
    member rather than the group's first. A vote without a score ranks below every scored
    one; raises :class:`MissingScores` if no vote that answers has a score.
    """
    score = _scores(votes, "best-of-n")
    groups = _groups(votes)

    def rank(answer: str) -> tuple[float, ...]:
        top = _best(score, groups[answer])
        return (*_ranked(score[top]), -top)

    scores = {
        answer: top_score
        for answer, members in groups.items()
        if (top_score := score[_best(score, members)]) is not None
    }
    return _decide("best-of-n", groups, scores, rank=rank, representative=lambda m: _best(score, m))


def verifier_weighted(votes: Sequence[Vote]) -> Decision:
    """Each group scores the sum of its verifier scores; ties go to the answer seen first.

    The representative is the group's best-scored member (the first of equal ones). Votes
    without a score add nothing, and a group with none scored ranks below every scored
    group; raises :class:`MissingScores` if no vote that answers has a score.
    """
    score = _scores(votes, "verifier-weighted")
    groups = _groups(votes)
    scores = _summed(score, groups)

    def rank(answer: str) -> tuple[float, ...]:
        return _ranked(scores.get(answer))

    return _decide(
        "verifier-weighted", groups, scores, rank=rank, representative=lambda m: _best(score, m)
    )


def verifier_tiebreak(votes: Sequence[Vote]) -> Decision:
    """Most votes wins; ties go to the group with the highest summed verifier score.

    Remaining ties go to the answer seen first; the representative is the group's
    best-scored member. Votes without a score add nothing, and a group with none scored
    loses a tie to a scored group; raises :class:`MissingScores` if no vote that answers
    has a score.
    """
    score = _scores(votes, "verifier-tiebreak")
    groups = _groups(votes)
    sums = _summed(score, groups)

    def rank(answer: str) -> tuple[float, ...]:
        return (float(len(groups[answer])), *_ranked(sums.get(answer)))

    return _decide(
        "verifier-tiebreak", groups, sums, rank=rank, representative=lambda m: _best(score, m)
    )


#: Rules that need a verifier score on every vote that answers.
VERIFIER_RULES = ("best-of-n", "verifier-weighted", "verifier-tiebreak")

AGGREGATORS: dict[str, Aggregator] = {
    "majority": majority,
    "shortest-majority": shortest_majority,
    "length-weighted": length_weighted,
    "best-of-n": best_of_n,
    "verifier-weighted": verifier_weighted,
    "verifier-tiebreak": verifier_tiebreak,
}


def get_aggregator(name: str) -> Aggregator:
    """Look an aggregator up by name; ``ValueError`` names the valid choices."""
    try:
        return AGGREGATORS[name]
    except KeyError:
        choices = ", ".join(AGGREGATORS)
        raise ValueError(f"unknown aggregator {name!r}; choose one of: {choices}") from None

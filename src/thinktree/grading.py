"""Grading of an extracted answer against a problem's gold answer."""

from __future__ import annotations

import math

from thinktree._numbers import parse_number
from thinktree.problems import AnswerType, Problem

__all__ = ["RELATIVE_TOLERANCE", "ZERO_TOLERANCE", "grade", "parse_number"]

#: Numeric answers without limits are right within this fraction of the gold.
RELATIVE_TOLERANCE = 0.05
#: ... or within this absolute distance when the gold is 0.
ZERO_TOLERANCE = 1e-9
# Slack for the rounding of ``RELATIVE_TOLERANCE * |gold|``, so that exactly 5 % off still counts.
_ROUNDING_SLACK = 1e-12


def grade(answer: str | None, problem: Problem) -> bool | None:
    """Whether ``answer`` matches the gold answer of ``problem``.

    None when there is no gold to grade against (``problem.answer is None``, or a numeric gold
    that is not a number); False when ``answer`` is None, since an abstention counts as wrong.
    Choice letters and yes/no/maybe words compare case-insensitively; free text compares
    ignoring case and runs of whitespace; numeric answers are right inside
    ``[lower_limit, upper_limit]`` (inclusive) when the problem sets them, else within
    :data:`RELATIVE_TOLERANCE` of the gold.
    """
    gold = problem.answer
    if gold is None:
        return None
    if answer is None:
        return False
    match problem.answer_type:
        case AnswerType.CHOICE | AnswerType.YESNO:
            return answer.strip().casefold() == gold.strip().casefold()
        case AnswerType.NUMERIC:
            return _grade_numeric(answer, gold, problem)
        case AnswerType.FREE:
            return " ".join(answer.split()).casefold() == " ".join(gold.split()).casefold()


def _grade_numeric(answer: str, gold: str, problem: Problem) -> bool | None:
    value = parse_number(answer)
    if problem.lower_limit is not None and problem.upper_limit is not None:
        return value is not None and problem.lower_limit <= value <= problem.upper_limit
    target = parse_number(gold)
    if target is None:
        return None
    if value is None:
        return False
    if target == 0:
        return abs(value) <= ZERO_TOLERANCE
    allowed = RELATIVE_TOLERANCE * abs(target) * (1 + _ROUNDING_SLACK)
    return math.isfinite(value) and abs(value - target) <= allowed

"""Tests for thinktree.grading: every branch of grade, and parse_number."""

from __future__ import annotations

import math
import re

import pytest
from pydantic import ValidationError

from thinktree.grading import RELATIVE_TOLERANCE, ZERO_TOLERANCE, grade, parse_number
from thinktree.problems import AnswerType, Problem


def _choice(answer: str | None = "D") -> Problem:
    options = {"A": "Factor VII", "B": "Factor VIII", "C": "Factor IX", "D": "Factor XII"}
    return Problem(
        id="c", question="q", answer_type=AnswerType.CHOICE, options=options, answer=answer
    )


def _yesno(answer: str | None = "no") -> Problem:
    return Problem(id="y", question="q", answer_type=AnswerType.YESNO, answer=answer)


def _numeric(answer: str | None, lower: float | None = None, upper: float | None = None) -> Problem:
    return Problem(
        id="n",
        question="q",
        answer_type=AnswerType.NUMERIC,
        answer=answer,
        lower_limit=lower,
        upper_limit=upper,
    )


def _free(answer: str | None = "Hirschsprung disease") -> Problem:
    return Problem(id="f", question="q", answer_type=AnswerType.FREE, answer=answer)


# --- no gold, abstention --------------------------------------------------------------------


@pytest.mark.parametrize(
    "problem",
    [_choice(None), _yesno(None), _numeric(None), _numeric(None, -1.0, 1.0), _free(None)],
)
@pytest.mark.parametrize("answer", ["A", "yes", "1.5", None])
def test_no_gold_gives_none(problem: Problem, answer: str | None) -> None:
    assert grade(answer, problem) is None


@pytest.mark.parametrize(
    "problem", [_choice(), _yesno(), _numeric("2"), _numeric("-1.39", -1.4595, -1.3205), _free()]
)
def test_abstention_is_wrong(problem: Problem) -> None:
    assert grade(None, problem) is False


# --- choice, yes/no, free -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("D", True), ("d", True), (" D ", True), ("C", False), ("Factor XII", False), ("", False)],
)
def test_choice(answer: str, expected: bool) -> None:
    assert grade(answer, _choice("D")) is expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("no", True), ("No", True), ("NO ", True), ("yes", False), ("maybe", False)],
)
def test_yesno(answer: str, expected: bool) -> None:
    assert grade(answer, _yesno("no")) is expected


def test_yesno_gold_case_is_ignored() -> None:
    assert grade("maybe", _yesno("Maybe")) is True


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Hirschsprung disease", True),
        ("hirschsprung   DISEASE", True),
        ("  Hirschsprung\tdisease\n", True),
        ("Hirschsprung", False),
        ("Meconium ileus", False),
    ],
)
def test_free(answer: str, expected: bool) -> None:
    assert grade(answer, _free("Hirschsprung disease")) is expected


# --- numeric with limits --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("-1.39", True),
        ("-1.4595", True),  # lower edge, inclusive
        ("-1.3205", True),  # upper edge, inclusive
        ("-1.4596", False),
        ("-1.3204", False),
        ("-1.39 L", True),
        ("1.39", False),
        ("not a number", False),
    ],
)
def test_numeric_limits(answer: str, expected: bool) -> None:
    assert grade(answer, _numeric("-1.39", -1.4595, -1.3205)) is expected


def test_numeric_limits_override_tolerance() -> None:
    # An integer score with both limits at the gold: 5 % of 9 would allow 9.4, the limits do not.
    problem = _numeric("9", 9.0, 9.0)
    assert grade("9", problem) is True
    assert grade("9.4", problem) is False


def _unchecked_numeric(
    answer: str, lower: float | None = None, upper: float | None = None
) -> Problem:
    """A numeric problem whose gold is not a number: datasets refuse one, code may build one."""
    return Problem.model_construct(
        id="n",
        question="q",
        answer_type=AnswerType.NUMERIC,
        options=None,
        context=None,
        answer=answer,
        lower_limit=lower,
        upper_limit=upper,
        benchmark=None,
        meta={},
    )


def test_numeric_limits_apply_even_when_gold_is_not_a_number() -> None:
    assert grade("5", _unchecked_numeric("five", 4.0, 6.0)) is True


# --- numeric with relative tolerance --------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("100", True),
        ("105", True),  # exactly +5 %
        ("95", True),  # exactly -5 %
        ("105.01", False),
        ("94.99", False),
        ("1e2", True),
        ("100 mL/min", True),
        ("abc", False),
    ],
)
def test_numeric_tolerance(answer: str, expected: bool) -> None:
    assert grade(answer, _numeric("100")) is expected


def test_numeric_tolerance_edge_for_decimal_gold() -> None:
    gold = 1.39
    assert grade(str(gold * (1 + RELATIVE_TOLERANCE)), _numeric("1.39")) is True
    assert grade(str(gold * (1 - RELATIVE_TOLERANCE)), _numeric("1.39")) is True
    assert grade("1.4596", _numeric("1.39")) is False


def test_numeric_tolerance_for_negative_gold() -> None:
    assert grade("-1.33", _numeric("-1.39")) is True
    assert grade("1.39", _numeric("-1.39")) is False


@pytest.mark.parametrize(
    ("answer", "expected"),
    [("0", True), ("-0", True), (str(ZERO_TOLERANCE), True), ("1e-8", False), ("0.01", False)],
)
def test_numeric_zero_gold(answer: str, expected: bool) -> None:
    assert grade(answer, _numeric("0")) is expected


def test_numeric_gold_with_thousands_separator() -> None:
    assert grade("1500", _numeric("1,500")) is True


def test_numeric_gold_that_is_not_a_number_gives_none() -> None:
    assert grade("5", _unchecked_numeric("five")) is None


@pytest.mark.parametrize("gold", ["five", "lots", "1,5", "3-4", ""])
def test_numeric_gold_that_is_not_a_number_is_refused(gold: str) -> None:
    with pytest.raises(ValidationError, match="a 'numeric' answer must be one number"):
        _numeric(gold)


@pytest.mark.parametrize(
    ("lower", "upper", "message"),
    [
        (10.0, 1.0, "'lower_limit' (10.0) is above 'upper_limit' (1.0)"),
        (math.nan, 1.0, "finite number"),
        (1.0, math.inf, "finite number"),
    ],
)
def test_numeric_limits_that_grade_nothing_right_are_refused(
    lower: float, upper: float, message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        _numeric("5", lower, upper)


# --- parse_number ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1500", 1500.0),
        ("1,500", 1500.0),
        ("1,234.5 mL", 1234.5),
        ("-1.39 L", -1.39),
        ("−2", -2.0),
        ("+3", 3.0),
        (".5", 0.5),
        ("0.343", 0.343),
        ("1.5e-3", 0.0015),
        ("2E3", 2000.0),
        ("1.2 × 10^3", 1200.0),
        ("5 x 10^-3 g", 0.005),
        ("≈ 56.667 mm Hg", 56.667),
        ("~3.36 mg", 3.36),
        ("approximately 7", 7.0),
        ("about 12%", 12.0),
        ("**42**", 42.0),
        ("$-0.75$", -0.75),
        ("120 mL/min/1.73 m²", 120.0),
        ("9 points", 9.0),
        ("  8  ", 8.0),
    ],
)
def test_parse_number(text: str, value: float) -> None:
    assert parse_number(text) == pytest.approx(value)


@pytest.mark.parametrize(
    "text",
    [
        *("", "abc", "the answer is 5", "3-4", "1,5", "1,2345", "120/80", "1 2", "1.2.3"),
        *("1e999", "-", "3.14 × (a - b)", "2 + (3 × 4)"),
    ],
)
def test_parse_number_refuses(text: str) -> None:
    assert parse_number(text) is None

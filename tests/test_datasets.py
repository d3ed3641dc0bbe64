"""Tests for loading problems from JSONL files and the built-in demo set."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from thinktree.datasets import DatasetError, load_demo, load_problems, select
from thinktree.problems import AnswerType, Problem

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_FILES = sorted(SHARED_DATA.glob("*.jsonl")) if SHARED_DATA.is_dir() else []


def record(id: str, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": id,
        "benchmark": "test",
        "question": f"Question {id}?",
        "options": {"A": "one", "B": "two"},
        "answer": "A",
        "answer_type": "choice",
        "context": None,
        "meta": {},
    }
    return base | fields


def write(tmp_path: Path, *lines: str | dict[str, Any]) -> Path:
    path = tmp_path / "set.jsonl"
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def error_of(path: Path, **kwargs: Any) -> str:
    with pytest.raises(DatasetError) as info:
        load_problems(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- loading ----------------------------------------------------------------------------


def test_loads_all_fields_and_skips_blank_lines(tmp_path: Path) -> None:
    numeric = record(
        "n1",
        question="Dose?",
        options=None,
        answer="300",
        answer_type="numeric",
        lower_limit=285.0,
        upper_limit=315.0,
        meta={"topic": "dosing"},
    )
    path = write(tmp_path, "", record("c1"), "   ", numeric, "")
    problems = load_problems(path)
    assert [p.id for p in problems] == ["c1", "n1"]
    assert problems[0].options == {"A": "one", "B": "two"}
    assert problems[1].answer_type is AnswerType.NUMERIC
    assert (problems[1].lower_limit, problems[1].upper_limit) == (285.0, 315.0)
    assert problems[1].meta == {"topic": "dosing"}


def test_accepts_str_path_and_crlf_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "crlf.jsonl"
    body = "\r\n".join(json.dumps(record(i)) for i in ("a", "b"))
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert [p.id for p in load_problems(str(path))] == ["a", "b"]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, ["p0", "p1", "p2", "p3", "p4"]),
        ({"limit": 2}, ["p0", "p1"]),
        ({"offset": 3}, ["p3", "p4"]),
        ({"offset": 1, "limit": 2}, ["p1", "p2"]),
        ({"offset": 4, "limit": 10}, ["p4"]),
        ({"offset": 9}, []),
        ({"limit": 0}, []),
    ],
)
def test_limit_and_offset_count_problems(
    tmp_path: Path, kwargs: dict[str, int], expected: list[str]
) -> None:
    path = write(tmp_path, record("p0"), "", record("p1"), record("p2"), record("p3"), record("p4"))
    assert [p.id for p in load_problems(path, **kwargs)] == expected


# --- errors -----------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    assert error_of(path) == f"dataset not found: {path}"


def test_directory(tmp_path: Path) -> None:
    assert error_of(tmp_path).startswith(f"{tmp_path}: is a directory")


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, record("a"), "", '{"id": "b", ')
    assert re.fullmatch(rf"{re.escape(str(path))}:3: not valid JSON \(.+\).*", error_of(path))


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (
            '{"id": "b", "question": "?", "answer_type": "free", "meta": {"n": '
            + "9" * 5000
            + "}}",
            "Exceeds the limit",
        ),
        ('{"meta":' * 100_000 + "1" + "}" * 100_000, "nested too deeply"),
    ],
    ids=["huge-integer", "deep-nesting"],
)
def test_json_that_python_will_not_read_is_one_line_too(
    tmp_path: Path, line: str, reason: str
) -> None:
    path = write(tmp_path, record("a"), line)
    message = error_of(path)
    assert message.startswith(f"{path}:2: not valid JSON for a problem (") and reason in message


def test_option_keys_that_are_not_capital_letters_are_refused(tmp_path: Path) -> None:
    """An answer is read as a letter: options keyed "a", "1" or "AB" could never be right."""
    for options, answer in (
        ({"a": "x", "b": "y"}, "a"),
        ({"1": "x", "2": "y"}, "1"),
        ({"A": "x", "AB": "y"}, "A"),
    ):
        path = write(tmp_path, record("a"), record("b", options=options, answer=answer))
        message = error_of(path)
        assert (
            message.startswith(f"{path}:2: ") and "option keys must be capital letters" in message
        )


def test_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = write(tmp_path, "[1, 2]")
    assert error_of(path).startswith(f"{path}:1: expected a JSON object, got list")


def test_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(json.dumps(record("a")).encode() + b"\n\xff\xfe\n")
    assert error_of(path).startswith(f"{path}:2: not valid UTF-8")


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (record("b", question=""), "question: String should have at least 1 character"),
        (record("b", answer_type="essay"), "answer_type: Input should be 'choice', "),
        (record("b", options={"A": 1}), "options.A: Input should be a valid string"),
        (
            {k: val for k, val in record("b").items() if k != "id"},
            "id: Field required",
        ),
        (record("b", options=None), "problem: a 'choice' problem needs 'options'"),
        (
            record("b", options=None, answer="1", answer_type="numeric", lower_limit=1.0),
            "problem: give both 'lower_limit' and 'upper_limit', or neither",
        ),
        # "a/think" would name problem a's thinking node, and overwrite its records
        (record("a/think"), "id: 'a/think' holds '/', which names the nodes under a problem"),
        (record("b", question=" \n\t"), "question: 'question' is only whitespace"),
    ],
    ids=[
        "empty-question",
        "bad-type",
        "bad-option",
        "no-id",
        "no-options",
        "one-limit",
        "slash-in-id",
        "blank-question",
    ],
)
def test_validation_error_names_line_and_field(
    tmp_path: Path, bad: dict[str, Any], expected: str
) -> None:
    path = write(tmp_path, record("a"), bad)
    assert error_of(path).startswith(f"{path}:2: {expected}")


def without(line: dict[str, Any], key: str, instead: str) -> dict[str, Any]:
    """``line`` with ``key`` written as ``instead`` (its value unchanged)."""
    return {(instead if k == key else k): v for k, v in line.items()}


@pytest.mark.parametrize(
    ("bad", "key", "meant"),
    [
        (without(record("b"), "answer", "anwser"), "anwser", "answer"),
        (without(record("b"), "answer", "answr"), "answr", "answer"),
        (without(record("b"), "answer", "Answer"), "Answer", "answer"),
        (without(record("b"), "answer", "answers"), "answers", "answer"),
        (without(record("b"), "question", "questoin"), "questoin", "question"),
        (without(record("b"), "options", "optons"), "optons", "options"),
        (without(record("b"), "answer_type", "answertype"), "answertype", "answer_type"),
        (without(record("b", context="c"), "context", "contexts"), "contexts", "context"),
        (without(record("b"), "id", "ID"), "ID", "id"),
        (
            without(
                record("n", options=None, answer_type="numeric", answer="3")
                | {"lower_limit": 2, "upper_limit": 4},
                "upper_limit",
                "upper_limt",
            ),
            "upper_limt",
            "upper_limit",
        ),
    ],
)
def test_a_misspelt_known_key_is_refused_with_the_key_it_looks_like(
    tmp_path: Path, bad: dict[str, Any], key: str, meant: str
) -> None:
    """It would be ignored like a field of the dataset's own: a problem without its gold
    (or options, context, limits) changes the run's accuracy without a word."""
    path = write(tmp_path, record("a"), bad)
    assert error_of(path) == (
        f"{path}:2: unknown key {key!r} — did you mean {meant!r}? (a field of the dataset's "
        "own that is meant to be there can go under 'meta')"
    )


@pytest.mark.parametrize(
    "own",
    [
        {"answers": ["A", "one"]},  # beside "answer": not a misspelling of a key it lacks
        {"Answer": "A"},
        {"text": "…"},  # not "context"
        {"answer_idx": 0},  # not "answer" (MedQA's own field)
        {"explanation": "…", "subject_name": "Dental", "choice_type": "single"},
        {"question_id": "q-1", "benchmark_name": "medqa"},
    ],
)
def test_fields_of_a_datasets_own_are_still_ignored(tmp_path: Path, own: dict[str, Any]) -> None:
    path = write(tmp_path, record("a") | own)
    (problem,) = load_problems(path)
    assert problem.answer == "A" and problem.question == "Question a?"


def test_a_problem_made_in_python_with_a_misspelt_key_is_refused() -> None:
    """``Problem(anwser="B")`` dropped the key as a dataset's own: a problem without its
    gold, graded as having none. Fields of a dataset's own are still taken and ignored."""
    with pytest.raises(ValidationError) as caught:
        Problem(id="a", question="Q?", anwser="B")  # type: ignore[call-arg]
    assert "unknown key 'anwser' — did you mean 'answer'?" in str(caught.value)
    assert Problem(id="a", question="Q?", answer_idx=0).answer is None  # type: ignore[call-arg]


def untyped(line: dict[str, Any]) -> dict[str, Any]:
    """``line`` without its ``answer_type``."""
    return {k: v for k, v in line.items() if k != "answer_type"}


def test_options_without_an_answer_type_are_refused(tmp_path: Path) -> None:
    """Graded as free text, a choice question's "(B) Factor VIII" never matches its gold
    "B": the run's accuracy would be wrong without a word."""
    path = write(tmp_path, record("a"), untyped(record("b", answer="B")))
    assert error_of(path) == (
        f"{path}:2: the line has 'options' but no 'answer_type', so it would be graded as "
        'free text; add "answer_type": "choice"'
    )


def test_a_free_problem_with_options_is_refused(tmp_path: Path) -> None:
    """Free-text grading never reads an answer as one of the options."""
    path = write(tmp_path, record("a"), record("b", answer_type="free", answer="two"))
    message = error_of(path)
    assert message.startswith(f"{path}:2: a 'free' problem has 'options'")
    assert '"answer_type": "choice"' in message and "drop 'options'" in message


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (record("b", answer_type="yesno", answer="yes"), "a 'yesno' problem has 'options'"),
        (
            record("b", lower_limit=1, upper_limit=3),
            "a 'choice' problem has 'lower_limit' and 'upper_limit', which only a numeric",
        ),
        (
            record("b", options=None, answer_type="free", answer="x", lower_limit=1, upper_limit=2),
            "a 'free' problem has 'lower_limit'",
        ),
    ],
)
def test_fields_the_grading_of_a_line_never_reads_are_refused(
    tmp_path: Path, line: dict[str, Any], says: str
) -> None:
    """Options on a yes/no problem, limits on any but a numeric one: each was taken and
    never read, as options on a free one (refused already) would be."""
    path = write(tmp_path, record("a"), line)
    assert error_of(path).startswith(f"{path}:2: {says}")


@pytest.mark.parametrize("gold", ["yes", "no", "maybe", "Yes", " MAYBE ", "No"])
def test_a_yes_no_gold_without_an_answer_type_is_refused(tmp_path: Path, gold: str) -> None:
    """Graded as free text, "Yes, it does." would not match the gold "yes"; whether the
    problem is yes/no/maybe or really free text, only its author can say."""
    line = untyped(record("b", options=None, answer=gold))
    path = write(tmp_path, record("a"), line)
    assert error_of(path) == (
        f"{path}:2: the answer {gold!r} reads as yes/no/maybe but the line has no "
        """'answer_type'; add "answer_type": "yesno" (or "free" if it really is free text)"""
    )


@pytest.mark.parametrize("gold", ["12", "-1.5", " 0.25 ", "1,500", "2e-3"])
def test_a_numeric_gold_without_an_answer_type_is_refused(tmp_path: Path, gold: str) -> None:
    """Graded as free text, a calculator's "12.0" would not match the gold "12", nor "12 mg"."""
    line = untyped(record("b", options=None, answer=gold))
    path = write(tmp_path, record("a"), line)
    assert error_of(path) == (
        f"{path}:2: the answer {gold!r} is a number but the line has no 'answer_type', so it "
        'would be graded as free text (12.0 would not match 12); add "answer_type": '
        '"numeric" (or "free" if it really is free text)'
    )


def test_limits_without_an_answer_type_are_refused(tmp_path: Path) -> None:
    """Free-text grading never reads a line's limits."""
    line = untyped(record("b", options=None, answer="about five", lower_limit=4, upper_limit=6))
    path = write(tmp_path, line)
    assert error_of(path) == (
        f"{path}:1: the line has 'lower_limit' and 'upper_limit' but no 'answer_type', so it "
        "would be graded as free text and its limits never read; "
        'add "answer_type": "numeric"'
    )


@pytest.mark.parametrize(
    "line",
    [
        {"id": "f", "question": "How long?", "answer": "3 days"},
        {"id": "f", "question": "Which?", "answer": "1-2"},
        {"id": "f", "question": "Which?", "answer_type": "free", "answer": "12"},
        {"id": "f", "question": "Which enzyme?", "answer": "lactase"},
        {"id": "f", "question": "Which enzyme?", "answer": "lactase", "options": None},
        {"id": "f", "question": "Which enzyme?"},
        {"id": "f", "question": "Is it?", "answer_type": "free", "answer": "yes"},
        {"id": "f", "question": "Is it?", "answer_type": "free", "answer": "Yes, it is."},
    ],
    ids=[
        "number-and-unit",
        "range",
        "number-said-free",
        "free-gold",
        "null-options",
        "no-gold",
        "yes-said-free",
        "free-sentence",
    ],
)
def test_a_free_text_line_without_options_still_loads_as_free(
    tmp_path: Path, line: dict[str, Any]
) -> None:
    (problem,) = load_problems(write(tmp_path, line))
    assert problem.answer_type is AnswerType.FREE
    assert problem.answer == line.get("answer")


def numeric(id: str, answer: str, **fields: Any) -> dict[str, Any]:
    return record(id, options=None, answer_type="numeric", answer=answer) | fields


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        (numeric("n7", "1,5"), "a 'numeric' answer must be one number (like 1.39, -2 or 1,500), "),
        (numeric("n8", "lots"), "a 'numeric' answer must be one number"),
        (
            numeric("n9", "5", lower_limit=10, upper_limit=1),
            "problem: 'lower_limit' (10.0) is above 'upper_limit' (1.0)",
        ),
        (numeric("n10", "5", lower_limit=math.nan, upper_limit=6), "lower_limit: "),
        (numeric("n11", "5", lower_limit=4, upper_limit=math.inf), "upper_limit: "),
        (
            numeric("n12", "5", lower_limit=6, upper_limit=7),
            "answer '5' lies outside its own limits [6.0, 7.0]",
        ),
    ],
    ids=["ambiguous-gold", "word-gold", "limits-reversed", "nan-limit", "inf-limit", "gold-out"],
)
def test_a_numeric_gold_that_cannot_be_graded_is_refused_at_load(
    tmp_path: Path, bad: dict[str, Any], expected: str
) -> None:
    path = write(tmp_path, numeric("n1", "1.39", lower_limit=1.32, upper_limit=1.46), bad)
    message = error_of(path)
    assert message.startswith(f"{path}:2: ")
    assert expected in message and "\n" not in message


def test_several_validation_errors_report_the_first_and_a_count(tmp_path: Path) -> None:
    path = write(tmp_path, record("", question=""))
    message = error_of(path)
    assert message.startswith(f"{path}:1: id: String should have at least 1 character")
    assert message.endswith("(and 1 more error(s))")


def test_duplicate_id(tmp_path: Path) -> None:
    path = write(tmp_path, record("x"), record("y"), "", record("x"))
    assert error_of(path).startswith(f"{path}:4: duplicate id 'x' (first on line 1)")


def test_no_partial_results_when_a_late_line_is_bad(tmp_path: Path) -> None:
    path = write(tmp_path, record("a"), record("b"), "not json")
    with pytest.raises(DatasetError, match=r":3: not valid JSON"):
        load_problems(path, limit=1)


@pytest.mark.parametrize("content", ["", "\n\n   \n"], ids=["empty", "blank-lines"])
def test_empty_dataset(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    assert error_of(path).startswith(f"{path}: the dataset is empty")


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [({"limit": -1}, "limit must be 0 or more"), ({"offset": -2}, "offset must be 0 or more")],
)
def test_negative_limit_or_offset(tmp_path: Path, kwargs: dict[str, int], expected: str) -> None:
    path = write(tmp_path, record("a"))
    assert error_of(path, **kwargs).startswith(expected)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"limit": 10**20}, "limit must be at most 1000000000000, not 10"),
        ({"offset": 10**20}, "offset must be at most 1000000000000, not 10"),
    ],
)
def test_absurdly_large_limit_or_offset(
    tmp_path: Path, kwargs: dict[str, int], expected: str
) -> None:
    path = write(tmp_path, record("a"))
    assert error_of(path, **kwargs).startswith(expected)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"offset": -3}, "offset must be 0 or more, not -3"),
        ({"limit": -1}, "limit must be 0 or more"),
        ({"offset": 10**20}, "offset must be at most"),
    ],
)
def test_selecting_from_the_demo_set_checks_as_loading_a_file_does(
    kwargs: dict[str, int], expected: str
) -> None:
    with pytest.raises(DatasetError, match=re.escape(expected)):
        select(load_demo(), limit=kwargs.get("limit"), offset=kwargs.get("offset", 0))
    assert [p.id for p in select(load_demo(), limit=2, offset=18)] == [
        p.id for p in load_demo()[18:]
    ]


def test_dataset_error_is_a_value_error() -> None:
    assert issubclass(DatasetError, ValueError)


# --- the demo set and the shared samples ------------------------------------------------


def test_demo_set() -> None:
    problems = load_demo()
    assert len(problems) == 20
    assert Counter(p.answer_type for p in problems) == {
        AnswerType.CHOICE: 8,
        AnswerType.YESNO: 6,
        AnswerType.NUMERIC: 6,
    }
    for p in problems:
        assert p.benchmark == "demo"
        assert p.id.startswith(f"demo-{p.answer_type.value}-")
        assert p.answer is not None
        assert len(p.question) + len(p.context or "") < 250
        if p.answer_type is AnswerType.CHOICE:
            assert p.options is not None and sorted(p.options) == ["A", "B", "C", "D"]
        if p.answer_type is AnswerType.NUMERIC:
            assert p.lower_limit is not None and p.upper_limit is not None
            gold = float(p.answer)
            assert p.lower_limit <= gold <= p.upper_limit
            assert p.upper_limit - p.lower_limit == pytest.approx(0.1 * gold, rel=0.02)


@pytest.mark.parametrize(
    "path",
    [pytest.param(f, id=f.name) for f in SHARED_FILES]
    or [pytest.param(None, marks=pytest.mark.skip(reason=f"no shared data at {SHARED_DATA}"))],
)
def test_shared_data_loads(path: Path) -> None:
    problems = load_problems(path)
    assert problems
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    assert len(problems) == len(lines)

"""Loading problems from JSONL files: one JSON object per line, in the ``Problem`` schema.

The whole file is validated before anything is returned. Every failure raises
``DatasetError`` with a one-line message that names the file (and line) and what to fix.
"""

from __future__ import annotations

import json
import os
from importlib.resources import files
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from thinktree._numbers import LARGEST_SETTING, is_bare_number
from thinktree.problems import YESNO_ANSWERS, AnswerType, Problem, misspelt_key

DEMO_RESOURCE = "data/demo.jsonl"
"""Where the built-in demo set lives inside the ``thinktree`` package."""


class DatasetError(ValueError):
    """A dataset could not be loaded; the message says where and what to fix."""


def load_problems(
    path: str | os.PathLike[str], *, limit: int | None = None, offset: int = 0
) -> list[Problem]:
    """Load and validate every problem in a JSONL file, then return a slice of them.

    Blank lines are skipped. ``offset`` problems are dropped from the front and at most
    ``limit`` are kept (``None``: all); both count problems, not lines.
    """
    check_slice(limit=limit, offset=offset)
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory; give the path of a .jsonl file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the dataset ({exc.strerror or exc})") from exc
    return select(parse_problems(data, source=str(path)), limit=limit, offset=offset)


def check_slice(*, limit: int | None, offset: int) -> None:
    """A one-line DatasetError unless ``limit`` and ``offset`` can slice a list of problems."""
    if not 0 <= offset <= LARGEST_SETTING:
        bound = f"at most {LARGEST_SETTING}" if offset > 0 else "0 or more"
        raise DatasetError(f"offset must be {bound}, not {offset}")
    if limit is not None and not 0 <= limit <= LARGEST_SETTING:
        bound = f"at most {LARGEST_SETTING}" if limit > 0 else "0 or more (or omitted for all)"
        raise DatasetError(f"limit must be {bound}, not {limit}")


def select(problems: list[Problem], *, limit: int | None, offset: int = 0) -> list[Problem]:
    """``problems`` less the first ``offset``, at most ``limit`` of them (``None``: all);
    a one-line DatasetError for a negative or absurdly large ``limit`` or ``offset``."""
    check_slice(limit=limit, offset=offset)
    end = None if limit is None else offset + limit
    return problems[offset:end]


def none_left(source: str, total: int, offset: int, *, option: str = "--offset") -> str:
    """The one-line error for an ``offset`` that leaves none of ``source``'s ``total``."""
    held = f"{total} problem{'s' if total != 1 else ''}"
    return f"{source} holds {held}: {option} {offset} leaves none; give an offset below {total}"


def load_demo() -> list[Problem]:
    """Load the built-in demo set shipped in ``thinktree/data/demo.jsonl``."""
    resource = files("thinktree") / DEMO_RESOURCE
    try:
        data = resource.read_bytes()
    except OSError as exc:
        raise DatasetError(
            f"the built-in demo set thinktree/{DEMO_RESOURCE} is missing; reinstall thinktree"
        ) from exc
    return parse_problems(data, source=f"thinktree/{DEMO_RESOURCE}")


def parse_problems(data: bytes, *, source: str) -> list[Problem]:
    """Parse JSONL bytes into problems; ``source`` names the data in error messages."""
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(data.splitlines(), start=1):
        where = f"{source}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{where}: not valid UTF-8 ({exc.reason})") from exc
        if number == 1:
            line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        problem = _parse_line(line, where)
        if problem.id in first_line:
            raise DatasetError(
                f"{where}: duplicate id {problem.id!r} (first on line {first_line[problem.id]}); "
                "ids must be unique"
            )
        first_line[problem.id] = number
        problems.append(problem)
    if not problems:
        raise DatasetError(f"{source}: the dataset is empty; add one JSON object per line")
    return problems


def _parse_line(line: str, where: str) -> Problem:
    """Decode and validate one non-blank line."""
    try:
        record: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); "
            "each line must hold one JSON object"
        ) from exc
    except (ValueError, RecursionError) as exc:  # a number of 4,300+ digits, deep nesting
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise DatasetError(
            f"{where}: not valid JSON for a problem ({reason}); each line must hold one JSON object"
        ) from None
    if not isinstance(record, dict):
        raise DatasetError(
            f"{where}: expected a JSON object, got {type(record).__name__}; "
            "each line must hold one problem"
        )
    misspelt = misspelt_key(record)
    if misspelt is not None:
        key, meant = misspelt
        raise DatasetError(
            f"{where}: unknown key {key!r} — did you mean {meant!r}? (a field of the "
            "dataset's own that is meant to be there can go under 'meta')"
        )
    try:
        problem = Problem.model_validate(record)
    except ValidationError as exc:
        raise DatasetError(f"{where}: {describe_validation_error(exc)}") from exc
    unclear = _unclear_answer_type(problem, given="answer_type" in record)
    if unclear is not None:
        raise DatasetError(f"{where}: {unclear}")
    return problem


def _unclear_answer_type(problem: Problem, *, given: bool) -> str | None:
    """What to fix where a line's answer type is not what its options or gold say (``given``:
    whether the line names its ``answer_type``); None when it is clear.

    A line without ``answer_type`` would be graded as free text, compared with the gold as
    a string: a choice question's "(B) Factor VIII" against the gold "B", or a yes/no
    question's "Yes, it does." against "yes", would count wrong, and the run's accuracy
    would be wrong without a word. Free text has no use for options either: its answer is
    never read as one of them.
    """
    if problem.options and not given:
        return (
            "the line has 'options' but no 'answer_type', so it would be graded as free "
            'text; add "answer_type": "choice"'
        )
    if problem.options and problem.answer_type is AnswerType.FREE:
        return (
            "a 'free' problem has 'options', which free-text grading never reads; "
            """make it "answer_type": "choice", or drop 'options'"""
        )
    if problem.options and problem.answer_type is AnswerType.YESNO:
        return (
            "a 'yesno' problem has 'options', which its grading never reads (its answer "
            """is yes, no or maybe); make it "answer_type": "choice", or drop 'options'"""
        )
    if given and problem.lower_limit is not None and problem.answer_type is not AnswerType.NUMERIC:
        return (
            f"a '{problem.answer_type}' problem has 'lower_limit' and 'upper_limit', which "
            """only a numeric answer is graded by; make it "answer_type": "numeric", or """
            "drop them"
        )
    if not given and problem.answer is not None and problem.answer.strip().lower() in YESNO_ANSWERS:
        return (
            f"the answer {problem.answer!r} reads as yes/no/maybe but the line has no "
            """'answer_type'; add "answer_type": "yesno" (or "free" if it really is free text)"""
        )
    if not given and problem.lower_limit is not None:
        return (
            "the line has 'lower_limit' and 'upper_limit' but no 'answer_type', so it would "
            'be graded as free text and its limits never read; add "answer_type": "numeric"'
        )
    if not given and problem.answer is not None and is_bare_number(problem.answer):
        return (
            f"the answer {problem.answer!r} is a number but the line has no 'answer_type', "
            "so it would be graded as free text (12.0 would not match 12); add "
            """"answer_type": "numeric" (or "free" if it really is free text)"""
        )
    return None


def describe_validation_error(exc: ValidationError) -> str:
    """The first validation error as ``field: message``, on one line."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    field = ".".join(str(part) for part in first["loc"]) or "problem"
    message = " ".join(str(first["msg"]).removeprefix("Value error, ").split())
    more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    return f"{field}: {message}{more}"

"""Structured answers: the final answer produced under a constraint, then validated.

After free reasoning, a candidate's answer can be generated under a constraint that only
admits a countable answer: one of the option letters, yes/no/maybe, a number, a short
line, or a JSON object (answer plus an optional confidence, from a pydantic schema).
outlines expresses the output types and turns them into each endpoint dialect's request
fields:

- ``vllm``: ``structured_outputs`` (``choice``/``regex``/``json``; vLLM ≥ 0.12);
- ``json_schema``: OpenAI's ``response_format`` of type ``json_schema``;
- ``json_object``: ``response_format`` of type ``json_object`` with a ``schema`` (llama.cpp's
  chat requests);
- ``gbnf``: a ``grammar`` field in llama.cpp's GBNF, written here for the few answer shapes
  (llama.cpp honours it on ``/v1/completions`` too, where its answers continue).

Whatever the path, the output is validated here: an endpoint that silently ignores the
constraint is caught, and the answer then comes from extraction, recorded on the node.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, create_model

from thinktree.errors import ConfigError
from thinktree.extraction import extract_answer
from thinktree.problems import AnswerType, Problem

AnswerFormat = Literal["free", "constrained", "json"]
ANSWER_FORMATS: tuple[str, ...] = ("free", "constrained", "json")
Dialect = Literal["vllm", "json_schema", "json_object", "gbnf"]
DIALECTS: tuple[Dialect, ...] = ("vllm", "json_schema", "json_object", "gbnf")

# Bounded, so a constrained number always ends inside a small token cap.
NUMBER_PATTERN = r"-?(0|[1-9][0-9]{0,11})(\.[0-9]{1,6})?"
LINE_PATTERN = r"[^\n]{1,120}"
_YESNO = ("yes", "no", "maybe")


def check_format(name: str) -> AnswerFormat:
    """``name`` as an answer format; a one-line ConfigError otherwise."""
    if name not in ANSWER_FORMATS:
        raise ConfigError(
            f"unknown answer format '{name}'; choose one of: {', '.join(ANSWER_FORMATS)}"
        )
    return name  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Constraint:
    """What one answer call is constrained to, and the request fields that say so."""

    kind: str  # "letters", "yesno", "number", "line", plus "+json" for the schema form
    dialect: Dialect | None  # None: the endpoint cannot constrain; the answer is extracted
    fields: dict[str, Any]
    json: bool
    max_tokens: int
    unavailable: str | None = None  # why there is no constraint (dialect None)


@dataclass(frozen=True, slots=True)
class Parsed:
    """A validated constrained output."""

    answer: str
    confidence: float | None = None


def _value_type(problem: Problem) -> tuple[str, Any]:
    """The outlines output type of the bare answer, and its kind."""
    from outlines.types import Regex

    match problem.answer_type:
        case AnswerType.CHOICE:
            letters = tuple(sorted(problem.options or {}))
            return "letters", Literal[letters]
        case AnswerType.YESNO:
            return "yesno", Literal[_YESNO]
        case AnswerType.NUMERIC:
            return "number", Regex(NUMBER_PATTERN)
        case _:
            return "line", Regex(LINE_PATTERN)


def answer_model(problem: Problem) -> type[BaseModel]:
    """The pydantic schema of a JSON answer: the answer, and an optional confidence."""
    match problem.answer_type:
        case AnswerType.CHOICE:
            letters = tuple(sorted(problem.options or {}))
            answer: Any = (Literal[letters], ...)
        case AnswerType.YESNO:
            answer = (Literal[_YESNO], ...)
        case AnswerType.NUMERIC:
            answer = (str, Field(pattern=f"^{NUMBER_PATTERN}$", max_length=20))
        case _:
            answer = (str, Field(min_length=1, max_length=120))
    model: type[BaseModel] = create_model(
        "Answer",
        answer=answer,
        confidence=(float | None, Field(default=None, ge=0, le=1)),
    )
    return model


def unconstrained(problem: Problem, why: str, max_tokens: int) -> Constraint:
    """A free answer call standing in for a constrained one (recorded with ``why``)."""
    kind, _ = _value_type(problem)
    return Constraint(
        kind=kind, dialect=None, fields={}, json=False, max_tokens=max_tokens, unavailable=why
    )


def constraint_for(problem: Problem, fmt: AnswerFormat, dialect: Dialect) -> Constraint:
    """The constraint of ``problem``'s final answer in ``dialect``.

    The ``json`` format, and any format on a dialect that only speaks JSON schemas, uses
    the pydantic schema; ``constrained`` on vLLM constrains the bare answer.
    """
    from outlines.models.openai import OpenAITypeAdapter
    from outlines.models.vllm import VLLMTypeAdapter

    kind, value_type = _value_type(problem)
    as_json = fmt == "json" or dialect not in ("vllm", "gbnf")
    output: Any = answer_model(problem) if as_json else value_type
    fields: dict[str, Any]
    if dialect == "gbnf":
        fields = {"grammar": _gbnf(kind, problem, as_json=as_json)}
    elif dialect == "vllm" and as_json:
        # The schema as a bounded regex: a small model otherwise pads JSON with
        # whitespace, or a confidence with digits, until the token cap cuts it off.
        fields = {"structured_outputs": {"regex": _json_regex(kind, value_type)}}
    elif dialect == "vllm":
        fields = VLLMTypeAdapter().format_output_type(output)
    elif dialect == "json_schema":
        fields = OpenAITypeAdapter().format_output_type(output)
    else:
        schema = output.model_json_schema()
        fields = {"response_format": {"type": "json_object", "schema": schema}}
    budget = {"letters": 4, "yesno": 4, "number": 16, "line": 48}[kind]
    return Constraint(
        kind=kind + ("+json" if as_json else ""),
        dialect=dialect,
        fields=fields,
        json=as_json,
        max_tokens=budget + (48 if as_json else 0),
    )


CONFIDENCE_PATTERN = r"(0(\.[0-9]{1,3})?|1(\.0{1,3})?|null)"


def _gbnf(kind: str, problem: Problem, *, as_json: bool) -> str:
    """The answer of ``kind`` as a GBNF grammar (the JSON form: :func:`answer_model`'s)."""
    values = {
        "letters": " | ".join(f'"{letter}"' for letter in sorted(problem.options or {})),
        "yesno": " | ".join(f'"{word}"' for word in _YESNO),
        "number": '"-"? ("0" | [1-9] [0-9]?[0-9]?[0-9]?[0-9]?[0-9]?) ("." [0-9] [0-9]?[0-9]?)?',
        "line": "[^\\n]+" if not as_json else '[^"\\\\\\n]+',
    }
    if not as_json:
        return f"root ::= {values[kind]}"
    return "\n".join(
        [
            'root ::= "{\\"answer\\": \\"" answer "\\"" confidence? "}"',
            f"answer ::= {values[kind]}",
            'confidence ::= ", \\"confidence\\": " ("0" ("." [0-9] [0-9]?)? | "1" | "null")',
        ]
    )


def _json_regex(kind: str, value_type: Any) -> str:
    """A regex admitting exactly the compact JSON answers of :func:`answer_model`."""
    from outlines.types.dsl import python_types_to_terms, to_regex

    if kind == "line":
        value = r'"[^"\\\n]{1,120}"'
    else:
        value = f'"{to_regex(python_types_to_terms(value_type))}"'
    return rf'\{{"answer": ?{value}(, ?"confidence": ?{CONFIDENCE_PATTERN})?\}}'


def validate(text: str, constraint: Constraint, problem: Problem) -> Parsed | None:
    """The answer in a constrained output, or None when the output breaks the constraint."""
    raw = text.strip()
    confidence = None
    if constraint.json:
        try:
            obj = answer_model(problem).model_validate_json(raw)
        except (ValidationError, ValueError):
            return None
        raw = str(getattr(obj, "answer", "")).strip()
        confidence = getattr(obj, "confidence", None)
    kind = constraint.kind.removesuffix("+json")
    if kind == "letters" and raw not in (problem.options or {}):
        return None
    if kind == "yesno" and raw.lower() not in _YESNO:
        return None
    if kind == "number" and not re.fullmatch(NUMBER_PATTERN, raw):
        return None
    found = extract_answer(raw, problem)
    if found is None:
        return None
    return Parsed(answer=found.answer, confidence=confidence)

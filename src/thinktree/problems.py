"""The problem model: one question with its optional options, context and gold answer."""

from __future__ import annotations

import difflib
import functools
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from thinktree._numbers import parse_number


class AnswerType(StrEnum):
    """How an answer is compared with the gold."""

    CHOICE = "choice"
    YESNO = "yesno"
    NUMERIC = "numeric"
    FREE = "free"


YESNO_ANSWERS = frozenset({"yes", "no", "maybe"})
"""The answers of a 'yesno' problem (compared in lower case)."""


class Problem(BaseModel):
    """One question. ``answer`` is the gold answer when known."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str = Field(min_length=1)
    question: str = Field(min_length=1)
    answer_type: AnswerType = AnswerType.FREE
    options: dict[str, str] | None = None
    context: str | None = None
    answer: str | None = None
    lower_limit: float | None = Field(default=None, allow_inf_nan=False)
    upper_limit: float | None = Field(default=None, allow_inf_nan=False)
    benchmark: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _no_misspelt_key(cls, value: Any) -> Any:
        # other keys are a dataset's own and ignored; one like a missing field's name
        # ("anwser") would leave the problem without its gold, options or context
        misspelt = misspelt_key(value) if isinstance(value, dict) else None
        if misspelt is not None:
            key, meant = misspelt
            raise ValueError(
                f"unknown key {key!r} — did you mean {meant!r}? (a field of the dataset's "
                "own that is meant to be there can go under 'meta')"
            )
        return value

    @field_validator("id")
    @classmethod
    def _id_names_no_path(cls, value: str) -> str:
        # a node is named by its path under the problem ("q1/b2/wait1"): an id holding
        # "/" could name another problem's node, whose records it would overwrite
        if "/" in value:
            raise ValueError(
                f"{value!r} holds '/', which names the nodes under a problem; "
                "use another character there (such as '-')"
            )
        return value

    @field_validator("question")
    @classmethod
    def _question_says_something(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("'question' is only whitespace")
        return value

    @field_validator("meta", mode="before")
    @classmethod
    def _none_meta(cls, value: Any) -> Any:
        return {} if value is None else value

    @model_validator(mode="after")
    def _check_consistency(self) -> Problem:
        if self.answer_type is AnswerType.CHOICE:
            if not self.options:
                raise ValueError("a 'choice' problem needs 'options'")
            odd = [key for key in self.options if len(key) != 1 or not "A" <= key <= "Z"]
            if odd:  # answers are read as letters ("B.", "(C)", "option D")
                raise ValueError(f"option keys must be capital letters A, B, C, …, not {odd[0]!r}")
            if self.answer is not None and self.answer not in self.options:
                letters = sorted(self.options)
                raise ValueError(
                    f"answer {self.answer!r} is not one of the option letters {letters}"
                )
        if (
            self.answer_type is AnswerType.YESNO
            and self.answer is not None
            and self.answer.strip().lower() not in YESNO_ANSWERS
        ):
            raise ValueError(f"a 'yesno' answer must be yes, no or maybe, not {self.answer!r}")
        if (
            self.answer_type is AnswerType.NUMERIC
            and self.answer is not None
            and parse_number(self.answer) is None
        ):
            raise ValueError(
                f"a 'numeric' answer must be one number (like 1.39, -2 or 1,500), "
                f"not {self.answer!r}"
            )
        if (self.lower_limit is None) != (self.upper_limit is None):
            raise ValueError("give both 'lower_limit' and 'upper_limit', or neither")
        if (
            self.lower_limit is not None
            and self.upper_limit is not None
            and self.lower_limit > self.upper_limit
        ):
            raise ValueError(
                f"'lower_limit' ({self.lower_limit}) is above 'upper_limit' "
                f"({self.upper_limit}); give the smaller first"
            )
        gold = parse_number(self.answer) if self.answer is not None else None
        if (
            self.answer_type is AnswerType.NUMERIC
            and gold is not None
            and self.lower_limit is not None
            and self.upper_limit is not None
            and not self.lower_limit <= gold <= self.upper_limit
        ):
            raise ValueError(
                f"answer {self.answer!r} lies outside its own limits "
                f"[{self.lower_limit}, {self.upper_limit}]: the gold itself would be graded wrong"
            )
        return self


def misspelt_key(record: dict[str, Any]) -> tuple[str, str] | None:
    """An unknown key of ``record`` and the known key it looks like a misspelling of, where
    the record lacks that known key; None when it has no such key.

    A line may carry fields of its own, which loading ignores; but one that is a known key
    misspelt (``anwser``, ``questoin``, ``Options``) would leave a problem without its gold,
    options or context, and change the run's accuracy without a word.
    """
    unknown = [key for key in record if key not in _KNOWN]
    if not unknown:
        return None
    missing = tuple(key for key in _KNOWN_KEYS if key not in record)
    for key in unknown:
        meant = _looks_like(key, missing)
        if meant is not None:
            return key, meant
    return None


_KNOWN_KEYS = tuple(Problem.model_fields)
_KNOWN = frozenset(_KNOWN_KEYS)
# how alike a key and a known one must be (difflib's ratio): one letter missing, added,
# swapped or changed in a key of 5 letters or more, or the same key in other capitals; not
# "text" for "context" (0.73) or "answer_idx" for "answer" (0.75)
_ALIKE = 0.8


@functools.lru_cache(maxsize=4096)
def _looks_like(key: str, missing: tuple[str, ...]) -> str | None:
    """The known key among ``missing`` that ``key`` is most like, if alike enough (cached:
    the lines of a dataset mostly carry the same keys)."""
    close = difflib.get_close_matches(key.lower(), missing, n=1, cutoff=_ALIKE)
    return close[0] if close else None

"""Two-option problems whose answer is B, for tests of the run's machinery (the fake
server's replies in those tests name B), and a dataset file of them for the command."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from thinktree.problems import AnswerType, Problem


def beta_problems(count: int) -> list[Problem]:
    """``q0 … q{count-1}``: "Question i?", options A (alpha) and B (beta), answer B."""
    return [
        Problem(
            id=f"q{i}",
            question=f"Question {i}?",
            answer_type=AnswerType.CHOICE,
            options={"A": "alpha", "B": "beta"},
            answer="B",
        )
        for i in range(count)
    ]


def case_problems(count: int) -> list[Problem]:
    """``q0 … q{count-1}``: "Case i?", options A (a) and B (b), answer B (fake servers in
    the limit tests tell the problems apart by the "Case i?" in a request)."""
    return [
        Problem(
            id=f"q{i}",
            question=f"Case {i}?",
            answer_type=AnswerType.CHOICE,
            options={"A": "a", "B": "b"},
            answer="B",
        )
        for i in range(count)
    ]


def write_dataset(path: Path, problems: Sequence[Problem]) -> Path:
    """``problems`` as a JSONL dataset at ``path``."""
    lines = (
        json.dumps(
            {
                "id": p.id,
                "question": p.question,
                "answer_type": p.answer_type.value,
                "options": p.options,
                "answer": p.answer,
            }
        )
        for p in problems
    )
    path.write_text("".join(line + "\n" for line in lines))
    return path

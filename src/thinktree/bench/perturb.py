"""Robustness perturbations: the user-driven factors of the medical test-time scaling paper.

Each perturbation maps a problem to a changed copy with the same id (so a perturbed run
pairs with the original problem by problem), and records what it did in ``meta``:

- ``misleading``: a statement that another physician believes a wrong answer;
- ``expert-hint``: an expert-definitive hint naming a wrong answer;
- ``shuffle``: the options in another order (the gold letter follows its text).

The wrong answer and the order are drawn from the problem's id, so they are the same in
every run. A problem a perturbation cannot apply to (no gold to contradict, no options to
shuffle) is left as it is and says so in ``meta``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

from thinktree.errors import ConfigError
from thinktree.grading import parse_number
from thinktree.problems import AnswerType, Problem

NONE = "none"


def _rng(problem: Problem, salt: str) -> random.Random:
    digest = hashlib.blake2b(f"{salt}:{problem.id}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def wrong_answer(problem: Problem) -> str | None:
    """A wrong answer to hint at, stable per problem; None when none can be named."""
    gold = problem.answer
    if gold is None:
        return None
    rng = _rng(problem, "wrong")
    match problem.answer_type:
        case AnswerType.CHOICE:
            others = sorted(k for k in problem.options or {} if k != gold)
            return rng.choice(others) if others else None
        case AnswerType.YESNO:
            return rng.choice([w for w in ("yes", "no", "maybe") if w != gold.strip().lower()])
        case AnswerType.NUMERIC:
            value = parse_number(gold)
            if value is None:
                return None
            wrong = value * 2 if value else 1.0
            return f"{wrong:g}"
        case _:
            return None


def _with_statement(problem: Problem, name: str, template: str) -> Problem:
    wrong = wrong_answer(problem)
    if wrong is None:
        return _unchanged(problem, name, "no gold answer to contradict")
    shown = wrong
    if problem.answer_type is AnswerType.CHOICE and problem.options:
        shown = f"{wrong}. {problem.options[wrong]}"
    question = f"{problem.question.rstrip()}\n\n{template.format(answer=shown)}"
    meta = {**problem.meta, "perturbation": name, "hinted": wrong}
    return problem.model_copy(update={"question": question, "meta": meta})


def misleading(problem: Problem) -> Problem:
    """Add that another physician believes a wrong answer."""
    return _with_statement(
        problem,
        "misleading",
        "Another physician who saw this case believes the answer is {answer}.",
    )


def expert_hint(problem: Problem) -> Problem:
    """Add an expert's definitive, wrong, answer."""
    return _with_statement(
        problem,
        "expert-hint",
        "A senior expert has reviewed this question and states with certainty that the "
        "correct answer is {answer}.",
    )


def shuffle(problem: Problem) -> Problem:
    """Reorder the options; letters stay A, B, C… and the gold letter follows its text."""
    if not problem.options or len(problem.options) < 2:
        return _unchanged(problem, "shuffle", "no options to shuffle")
    letters = list(problem.options)
    order = letters[:]
    rng = _rng(problem, "shuffle")
    while order == letters:
        rng.shuffle(order)
    options = {new: problem.options[old] for new, old in zip(letters, order, strict=True)}
    gold = None if problem.answer is None else letters[order.index(problem.answer)]
    meta = {**problem.meta, "perturbation": "shuffle", "order": order}
    return problem.model_copy(update={"options": options, "answer": gold, "meta": meta})


def _unchanged(problem: Problem, name: str, why: str) -> Problem:
    return problem.model_copy(
        update={"meta": {**problem.meta, "perturbation": name, "unchanged": why}}
    )


PERTURBATIONS: dict[str, Callable[[Problem], Problem]] = {
    NONE: lambda p: p,
    "misleading": misleading,
    "expert-hint": expert_hint,
    "shuffle": shuffle,
}


def perturb(problems: list[Problem], name: str) -> list[Problem]:
    """``problems`` under the perturbation ``name`` (one-line ConfigError for an unknown one)."""
    try:
        change = PERTURBATIONS[name]
    except KeyError:
        raise ConfigError(
            f"unknown perturbation '{name}'; choose from: {', '.join(PERTURBATIONS)}"
        ) from None
    return [change(p) for p in problems]

"""Robustness perturbations: what each does to a problem, stably, and what it leaves alone."""

from __future__ import annotations

import pytest

from thinktree.bench.perturb import perturb, wrong_answer
from thinktree.errors import ConfigError
from thinktree.grading import grade
from thinktree.problems import AnswerType, Problem

DRUGS = {"A": "aspirin", "B": "heparin", "C": "warfarin", "D": "statin"}
CHOICE = Problem(
    id="c1", question="Which drug?", answer_type=AnswerType.CHOICE, options=DRUGS, answer="C"
)
YESNO = Problem(id="y1", question="Does it work?", answer_type=AnswerType.YESNO, answer="maybe")
NUMERIC = Problem(id="n1", question="What dose?", answer_type=AnswerType.NUMERIC, answer="12.5")
FREE = Problem(id="f1", question="Name it.", answer="fever")


def test_misleading_and_expert_hints_name_a_wrong_answer_stably() -> None:
    (misled,) = perturb([CHOICE], "misleading")
    hinted = misled.meta["hinted"]
    assert hinted in DRUGS and hinted != "C"
    assert misled.question.startswith("Which drug?\n\n")
    assert f"believes the answer is {hinted}. {DRUGS[hinted]}" in misled.question
    assert misled.answer == "C" and misled.options == CHOICE.options and misled.id == "c1"
    assert perturb([CHOICE], "misleading") == [misled]  # the same every time
    (expert,) = perturb([CHOICE], "expert-hint")
    assert "states with certainty that the correct answer is" in expert.question
    for problem in (YESNO, NUMERIC):
        wrong = wrong_answer(problem)
        assert wrong is not None and grade(wrong, problem) is False
        (changed,) = perturb([problem], "expert-hint")
        assert changed.question.endswith(f"correct answer is {wrong}.")
    assert wrong_answer(FREE) is None
    (untouched,) = perturb([FREE], "misleading")
    assert untouched.question == FREE.question
    assert untouched.meta["unchanged"] == "no gold answer to contradict"


def test_shuffle_moves_the_gold_with_its_text() -> None:
    problems = [CHOICE.model_copy(update={"id": f"c{i}"}) for i in range(20)]
    shuffled = perturb(problems, "shuffle")
    moved = 0
    for before, after in zip(problems, shuffled, strict=True):
        assert list(after.options or {}) == ["A", "B", "C", "D"]
        assert sorted((after.options or {}).values()) == sorted(DRUGS.values())
        assert (after.options or {})[after.answer or ""] == "warfarin"
        assert after.options != before.options
        moved += after.answer != "C"
    assert moved >= 10  # the gold letter really moves
    assert perturb([YESNO], "shuffle")[0].meta["unchanged"] == "no options to shuffle"


def test_none_is_the_identity_and_unknown_names_fail() -> None:
    assert perturb([CHOICE, YESNO], "none") == [CHOICE, YESNO]
    with pytest.raises(ConfigError, match="unknown perturbation 'x'; choose from: none"):
        perturb([CHOICE], "x")

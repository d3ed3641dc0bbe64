"""Benchmarks by name: rows in each source's own format map to thinktree's problems offline."""

from __future__ import annotations

import builtins
from typing import Any

import pytest

from thinktree.bench.hub import SOURCES, load_hub, map_rows
from thinktree.datasets import DatasetError
from thinktree.grading import grade
from thinktree.problems import AnswerType

# One row per source as Hugging Face `datasets` yields it (fields abridged, shapes kept).
PUBMEDQA = {
    "pubid": 21645374,
    "question": "Do mitochondria play a role in remodelling lace plant leaves?",
    "context": {
        "contexts": ["Programmed cell death (PCD) is ...", "The following hypotheses ..."],
        "labels": ["BACKGROUND", "RESULTS"],
        "meshes": ["Alismataceae", "Apoptosis"],
    },
    "long_answer": "Results depicted mitochondrial dynamics ...",
    "final_decision": "yes",
}
MEDQA = {
    "question": "A 23-year-old pregnant woman at 22 weeks gestation presents with burning "
    "upon urination. Which is the best treatment?",
    "answer": "Nitrofurantoin",
    "options": {"A": "Ampicillin", "B": "Ceftriaxone", "C": "Doxycycline", "D": "Nitrofurantoin"},
    "meta_info": "step2&3",
    "answer_idx": "D",
}
MEDMCQA = {
    "id": "e9ad821a-c438-4965-9f77-760819dfa155",
    "question": "Chronic urethral obstruction due to benign prismatic hyperplasia can lead "
    "to the following change in kidney parenchyma",
    "opa": "Hyperplasia",
    "opb": "Hyperophy",
    "opc": "Atrophy",
    "opd": "Dyplasia",
    "cop": 2,
    "choice_type": "single",
    "exp": "Chronic urethral obstruction ...",
    "subject_name": "Anatomy",
    "topic_name": "Urinary tract",
}
MEDBULLETS: dict[str, Any] = {
    "idx": "17",
    "question": "A 45-year-old man presents with chest pain. What is the next step?",
    "options": {"A": "ECG", "B": "CT", "C": "Troponin", "D": "Aspirin", "E": None},
    "answer": "A",
    "explanation": "...",
    "link": "https://step2.medbullets.com/cardiology/120001",
}
TEN = ["One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine", "Ten"]
MEDXPERTQA = {
    "id": "Text-0",
    "question": "A 68-year-old male presents with ... What is the most likely diagnosis?\n"
    "Answer Choices: (A) One (B) Two (C) Three (D) Four (E) Five (F) Six (G) Seven "
    "(H) Eight (I) Nine (J) Ten",
    "options": dict(zip("ABCDEFGHIJ", TEN, strict=True)),
    "label": "C",
    "medical_task": "Diagnosis",
    "body_system": "Cardiovascular",
    "question_type": "Reasoning",
}
MEDCALC = {
    "Row Number": 1,
    "Calculator ID": 2,
    "Calculator Name": "Creatinine Clearance (Cockcroft-Gault Equation)",
    "Category": "lab",
    "Output Type": "decimal",
    "Note ID": "usmle-1",
    "Note Type": "Extracted",
    "Patient Note": "A 47-year-old man ...",
    "Question": "What is the patient's Creatinine Clearance in mL/min?",
    "Relevant Entities": "{}",
    "Ground Truth Answer": "58.449",
    "Lower Limit": "55.527",
    "Upper Limit": "61.371",
    "Ground Truth Explanation": "...",
}
MEDCALC_DATE = {
    **MEDCALC,
    "Row Number": 2,
    "Category": "date",
    "Output Type": "date",
    "Ground Truth Answer": "10/06/2021",
    "Lower Limit": "10/06/2021",
    "Upper Limit": "10/06/2021",
}


def test_every_source_maps_its_own_rows() -> None:
    (p,) = map_rows("pubmedqa", [PUBMEDQA])
    assert (p.id, p.answer_type, p.answer) == ("pubmedqa-21645374", AnswerType.YESNO, "yes")
    assert p.context == "Programmed cell death (PCD) is ...\nThe following hypotheses ..."

    (q,) = map_rows("medqa", [MEDQA])
    assert q.answer == "D" and q.options and q.options["D"] == "Nitrofurantoin"

    (m,) = map_rows("medmcqa", [MEDMCQA])
    assert m.answer == "C" and m.options == {
        "A": "Hyperplasia",
        "B": "Hyperophy",
        "C": "Atrophy",
        "D": "Dyplasia",
    }
    assert m.meta["subject_name"] == "Anatomy"

    (b4,) = map_rows("medbullets_op4", [MEDBULLETS])
    (b5,) = map_rows(
        "medbullets_op5", [{**MEDBULLETS, "options": {**MEDBULLETS["options"], "E": "MRI"}}]
    )
    assert list(b4.options or {}) == list("ABCD") and list(b5.options or {}) == list("ABCDE")
    assert b4.id == "medbullets_op4-17" and b4.meta["link"].endswith("120001")
    by_text = map_rows("medbullets_op4", [{**MEDBULLETS, "answer": "Troponin"}])[0]
    assert by_text.answer == "C"

    (x,) = map_rows("medxpertqa_text", [MEDXPERTQA])
    assert x.question.endswith("most likely diagnosis?") and "Answer Choices" not in x.question
    assert len(x.options or {}) == 10 and x.answer == "C"

    calc, date = map_rows("medcalc_bench", [MEDCALC, MEDCALC_DATE])
    assert calc.answer_type is AnswerType.NUMERIC
    assert (calc.lower_limit, calc.upper_limit) == (55.527, 61.371)
    assert grade("58.0", calc) and not grade("62", calc)
    assert date.answer_type is AnswerType.FREE and grade("10/06/2021", date)
    assert set(SOURCES) == {
        "pubmedqa",
        "medqa",
        "medmcqa",
        "medbullets_op4",
        "medbullets_op5",
        "medxpertqa_text",
        "medcalc_bench",
    }


def test_a_negative_medcalc_gold_keeps_its_limits_in_order() -> None:
    # MedCalc-Bench writes gold ± 5 % as lower and upper limit: for a negative gold the
    # "lower" is the larger; the interval is the same, and a problem wants it in order
    row = MEDCALC | {
        "Ground Truth Answer": "-2.0",
        "Lower Limit": "-1.9",
        "Upper Limit": "-2.1",
    }
    (calc,) = map_rows("medcalc_bench", [row])
    assert (calc.lower_limit, calc.upper_limit) == (-2.1, -1.9)
    assert grade("-2", calc) and not grade("2", calc)


def test_a_medcalc_row_whose_range_misses_its_gold_is_graded_on_the_gold() -> None:
    # a JSONL line like it is refused (the gold would be graded wrong); a benchmark's own
    # row cannot be fixed by the user, so the range goes and the gold alone decides
    row = MEDCALC | {"Ground Truth Answer": "5", "Lower Limit": "6", "Upper Limit": "7"}
    (calc,) = map_rows("medcalc_bench", [row])
    assert (calc.lower_limit, calc.upper_limit) == (None, None)
    assert grade("5", calc) and not grade("6.5", calc)


def test_rows_in_another_format_and_unknown_names_fail_in_one_line() -> None:
    with pytest.raises(DatasetError, match=r"medqa row 0: not in the format of GBaker"):
        map_rows("medqa", [{"question": "Q?"}])
    with pytest.raises(DatasetError, match="unknown benchmark 'medqa2'; known: pubmedqa"):
        map_rows("medqa2", [])


def test_loading_without_the_hub_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = builtins.__import__

    def no_datasets(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "datasets":
            raise ImportError("no datasets")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(DatasetError, match=r"\.venv/bin/pip install -e '\.\[hub\]'"):
        load_hub("medqa")

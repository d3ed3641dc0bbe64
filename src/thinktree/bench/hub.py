"""Public medical benchmarks by name, from Hugging Face datasets (the ``hub`` extra).

Each source's rows are mapped to thinktree's problem schema by a pure function, so the
mapping is tested offline on rows written in the source's own format; only
:func:`load_hub` needs the ``datasets`` package and the network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from thinktree.datasets import DatasetError
from thinktree.grading import parse_number
from thinktree.problems import AnswerType, Problem

Row = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class HubSource:
    """Where a benchmark lives on the hub and how its rows become problems."""

    repo: str
    config: str | None
    split: str
    to_problem: Callable[[Row, int], Problem]


def _letters(options: Mapping[str, Any]) -> dict[str, str]:
    """Options with empty entries dropped (some sources pad to five with null)."""
    return {str(k): str(v) for k, v in options.items() if v not in (None, "")}


def _strip_choices(question: str) -> str:
    """The stem without a trailing "Answer Choices: (A) …" block."""
    head, sep, _ = question.rpartition("\nAnswer Choices:")
    return head.rstrip() if sep else question.strip()


def pubmedqa(row: Row, index: int) -> Problem:
    """qiaojin/PubMedQA (pqa_labeled): pubid, question, context{contexts,labels}, final_decision."""
    context = row.get("context") or {}
    return Problem(
        id=f"pubmedqa-{row['pubid']}",
        benchmark="pubmedqa",
        question=row["question"],
        answer_type=AnswerType.YESNO,
        context="\n".join(context.get("contexts") or []) or None,
        answer=str(row["final_decision"]).strip().lower(),
        meta={"pmid": row["pubid"], "context_labels": context.get("labels")},
    )


def medqa(row: Row, index: int) -> Problem:
    """GBaker/MedQA-USMLE-4-options: question, options{A..D}, answer (text), answer_idx."""
    return Problem(
        id=f"medqa-{index}",
        benchmark="medqa",
        question=_strip_choices(row["question"]),
        answer_type=AnswerType.CHOICE,
        options=_letters(row["options"]),
        answer=str(row["answer_idx"]).strip(),
        meta={"source_index": index, "meta_info": row.get("meta_info")},
    )


def medmcqa(row: Row, index: int) -> Problem:
    """openlifescienceai/medmcqa: id, question, opa..opd, cop (0-3), subject_name, topic_name."""
    options = {letter: row[f"op{letter.lower()}"] for letter in "ABCD"}
    cop = row.get("cop")
    answer = "ABCD"[int(cop)] if isinstance(cop, int) and 0 <= cop < 4 else None
    return Problem(
        id=f"medmcqa-{row['id']}",
        benchmark="medmcqa",
        question=row["question"],
        answer_type=AnswerType.CHOICE,
        options=_letters(options),
        answer=answer,
        meta={
            "source_id": row["id"],
            "subject_name": row.get("subject_name"),
            "topic_name": row.get("topic_name"),
        },
    )


def _medbullets(variant: str, letters: str) -> Callable[[Row, int], Problem]:
    def convert(row: Row, index: int) -> Problem:
        """mkieffer/Medbullets: idx, question, options{A..E}, answer (letter), link."""
        options = {k: v for k, v in _letters(row["options"]).items() if k in letters}
        answer = str(row["answer"]).strip()
        if answer not in options:  # some copies give the option's text instead of its letter
            answer = next((k for k, v in options.items() if v.strip() == answer), answer)
        return Problem(
            id=f"medbullets_{variant}-{row.get('idx', index)}",
            benchmark=f"medbullets_{variant}",
            question=_strip_choices(row["question"]),
            answer_type=AnswerType.CHOICE,
            options=options,
            answer=answer,
            meta={"source_row": row.get("idx", index), "link": row.get("link")},
        )

    return convert


def medxpertqa(row: Row, index: int) -> Problem:
    """TsinghuaC3I/MedXpertQA (Text): id, question (with choices), options{A..J}, label."""
    return Problem(
        id=f"medxpertqa_text-{row['id']}",
        benchmark="medxpertqa_text",
        question=_strip_choices(row["question"]),
        answer_type=AnswerType.CHOICE,
        options=_letters(row["options"]),
        answer=str(row["label"]).strip(),
        meta={
            "source_id": row["id"],
            "medical_task": row.get("medical_task"),
            "body_system": row.get("body_system"),
            "question_type": row.get("question_type"),
        },
    )


def medcalc(row: Row, index: int) -> Problem:
    """ncbi/MedCalc-Bench-v1.0: Patient Note, Question, Ground Truth Answer, Lower/Upper Limit.

    Date answers (due dates, gestational ages) are not numbers: they are compared as text.
    """
    gold = str(row["Ground Truth Answer"]).strip()
    low, high = (
        parse_number(str(row.get("Lower Limit", ""))),
        parse_number(str(row.get("Upper Limit", ""))),
    )
    numeric = parse_number(gold) is not None and row.get("Category") != "date"
    if low is not None and high is not None and low > high:  # a negative gold's ±5 %
        low, high = high, low
    value = parse_number(gold)
    if value is not None and low is not None and high is not None and not low <= value <= high:
        low = high = None  # a row whose range misses its own gold: graded on the gold alone
    return Problem(
        id=f"medcalc_bench-{row['Row Number']}",
        benchmark="medcalc_bench",
        question=row["Question"],
        context=row["Patient Note"],
        answer_type=AnswerType.NUMERIC if numeric else AnswerType.FREE,
        answer=gold,
        lower_limit=low if numeric and low is not None and high is not None else None,
        upper_limit=high if numeric and low is not None and high is not None else None,
        meta={
            "row_number": row["Row Number"],
            "calculator_id": row.get("Calculator ID"),
            "calculator_name": row.get("Calculator Name"),
            "category": row.get("Category"),
            "output_type": row.get("Output Type"),
        },
    )


SOURCES: dict[str, HubSource] = {
    "pubmedqa": HubSource("qiaojin/PubMedQA", "pqa_labeled", "train", pubmedqa),
    "medqa": HubSource("GBaker/MedQA-USMLE-4-options", None, "test", medqa),
    "medmcqa": HubSource("openlifescienceai/medmcqa", None, "validation", medmcqa),
    "medbullets_op4": HubSource(
        "mkieffer/Medbullets", None, "op4_test", _medbullets("op4", "ABCD")
    ),
    "medbullets_op5": HubSource(
        "mkieffer/Medbullets", None, "op5_test", _medbullets("op5", "ABCDE")
    ),
    "medxpertqa_text": HubSource("TsinghuaC3I/MedXpertQA", "Text", "test", medxpertqa),
    "medcalc_bench": HubSource("ncbi/MedCalc-Bench-v1.0", None, "test", medcalc),
}


def map_rows(name: str, rows: Iterable[Row]) -> list[Problem]:
    """The problems of benchmark ``name`` from its rows in the source's own format."""
    source = _source(name)
    out: list[Problem] = []
    for index, row in enumerate(rows):
        try:
            out.append(source.to_problem(row, index))
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise DatasetError(
                f"{name} row {index}: not in the format of {source.repo} "
                f"({' '.join(detail.split())[:200]})"
            ) from None
    return out


def load_hub(
    name: str, *, split: str | None = None, limit: int | None = None, offset: int = 0
) -> list[Problem]:
    """Download benchmark ``name`` with Hugging Face ``datasets`` and map it to problems."""
    source = _source(name)
    try:
        import datasets  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise DatasetError(
            f"loading '{name}' by name needs the hub extra (Hugging Face datasets): "
            ".venv/bin/pip install -e '.[hub]' in thinktree's folder"
        ) from None
    try:
        table = datasets.load_dataset(source.repo, source.config, split=split or source.split)
    except Exception as exc:  # network, missing split, gated repo: one line either way
        raise DatasetError(
            f"cannot load {source.repo} from Hugging Face: {' '.join(str(exc).split())[:200]}"
        ) from None
    end = None if limit is None else offset + limit
    rows = table.select(range(offset, min(len(table), end or len(table))))
    return map_rows(name, rows)


def _source(name: str) -> HubSource:
    try:
        return SOURCES[name]
    except KeyError:
        raise DatasetError(f"unknown benchmark '{name}'; known: {', '.join(SOURCES)}") from None

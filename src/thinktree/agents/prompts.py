"""Prompts: how a problem is put to a model, and the cues that steer its thinking."""

from __future__ import annotations

from thinktree.problems import AnswerType, Problem

SYSTEM_PROMPT = (
    "You are a careful expert. Reason step by step, then give your final answer on its own line."
)

# The sequential mode's revision cue: the bare word, as s1 appends it. After "Wait." (a
# finished sentence) the embedded model ended its message at once in 42 of 96 revision
# steps (3 steps of 128 tokens on 16 problems each of MedQA, MedMCQA and PubMedQA), so
# they added nothing; after "Wait" in none of them.
WAIT_CUE = "\n\nWait"
EXTEND_CUE = "\nWait"
# The answer forced at the end of the thinking is a sentence the model completes. After a
# bare "Final Answer:" heading the embedded model ended its message at once in half of the
# forced answers (53 of 106, on 215 problems of the seven sample sets); after this sentence
# it ended none at once and 69 of the 106 stated an answer, against 30.
FORCE_ANSWER_CUE = "\n\nThe final answer is"
# What an answer asked for in a turn of its own (where the endpoint cannot continue an
# assistant message) is read under, and what a constrained answer follows: there the
# model cannot end before its answer.
ANSWER_HEADING = "Final Answer:"
REVISION_PROMPT = (
    "Re-check your reasoning above step by step. If you find a mistake, correct it. "
    "Then give your final answer on its own line as 'Answer: ...'."
)

_ANSWER_FORMAT = {
    AnswerType.CHOICE: "the letter of the correct option",
    AnswerType.YESNO: "yes, no or maybe",
    AnswerType.NUMERIC: "a single number",
    AnswerType.FREE: "a short answer",
}


def user_prompt(problem: Problem) -> str:
    """The question, its context and options, and how to state the answer."""
    parts: list[str] = []
    if problem.context:
        parts.append(f"Context:\n{problem.context.strip()}")
    parts.append(f"Question: {problem.question.strip()}")
    if problem.options:
        lines = "\n".join(f"{key}. {text}" for key, text in problem.options.items())
        parts.append(f"Options:\n{lines}")
    parts.append(
        f"Think it through, then end with a line 'Answer: X' where X is "
        f"{_ANSWER_FORMAT[problem.answer_type]}."
    )
    return "\n\n".join(parts)


def messages_for(problem: Problem) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": user_prompt(problem)},
    ]

"""The constrained final answer of a line of thought, in a node of its own."""

from __future__ import annotations

from thinktree.agents.prompts import ANSWER_HEADING, FORCE_ANSWER_CUE
from thinktree.agents.solver import Branch, Segment, SegmentRequest, Solver
from thinktree.agents.structured import Constraint, constraint_for, unconstrained
from thinktree.errors import BudgetExhausted, RunLimitReached
from thinktree.orchestrator.events import CONSTRAINT_REFUSED, NodeKind
from thinktree.orchestrator.ledger import Budget

ANSWER_PROMPT = "Stop here and state your final answer now."


async def constrained_answer(
    solver: Solver, branch: Branch, parent: str, pool: Budget, answer_tokens: int
) -> Segment | None:
    """End the thinking and generate the answer under the best dialect the endpoint honours.

    Where the endpoint honours none, or refuses this constraint (HTTP 400), the answer
    is generated freely and extracted, and the node's ``extraction`` says so. Returns
    None when no answer node could be made (budget spent, call failed).
    """
    problem = solver.problem
    dialects = solver.caps.constraints
    if dialects:
        first = dialects[0]
        constraint = constraint_for(problem, solver.answer_format, first)  # type: ignore[arg-type]
    else:
        constraint = unconstrained(
            problem, "the endpoint honours no constraint dialect", answer_tokens
        )
    seg = await _answer(solver, branch, parent, pool, constraint, answer_tokens, "answer")
    if seg is not None and seg.failed and (seg.error or "").startswith(CONSTRAINT_REFUSED):
        why = f"the endpoint refused the {constraint.dialect} constraint"
        free = unconstrained(problem, why, answer_tokens)
        seg = await _answer(solver, branch, parent, pool, free, answer_tokens, "answer-free")
    return None if seg is None or seg.failed else seg


async def _answer(
    solver: Solver,
    branch: Branch,
    parent: str,
    pool: Budget,
    constraint: Constraint,
    answer_tokens: int,
    name: str,
) -> Segment | None:
    cap = min(constraint.max_tokens, answer_tokens) if constraint.dialect else answer_tokens
    label = f"answer ({constraint.kind})" if constraint.dialect else "forced answer"
    req = SegmentRequest(
        node_id=f"{parent}/{name}",
        parent_id=parent,
        kind=NodeKind.FORCED_ANSWER,
        label=label,
        budget=pool.child(f"{parent} {name}", answer_tokens),
        max_tokens=cap,
        # under a constraint the model cannot end before its answer: the heading will do
        cue=f"\n\n{ANSWER_HEADING}" if constraint.dialect else FORCE_ANSWER_CUE,
        revision_prompt=ANSWER_PROMPT,
        extract_from="cue",
        constraint=constraint,
    )
    try:
        return await solver.segment(branch, req)
    except BudgetExhausted:
        return None
    except RunLimitReached as exc:  # the thinking's answer stands; its problem says why
        pool.stopped_by_run(str(exc))
        return None

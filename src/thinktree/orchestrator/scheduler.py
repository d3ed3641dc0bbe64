"""The scheduler: runs every problem's strategy, a bounded number at a time.

It only schedules: the strategy grows the tree, the aggregator picks the answer, the
grader grades it, and every outcome leaves as an event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from structlog.contextvars import bind_contextvars

from thinktree.agents.aggregators import Aggregator, MissingScores, Vote, majority
from thinktree.agents.prompts import messages_for
from thinktree.agents.solver import Branch, Candidate, Solver
from thinktree.agents.strategies import Strategy
from thinktree.errors import RunLimitReached, RunStopping, ThinktreeError, find_error
from thinktree.grading import grade
from thinktree.orchestrator.bus import EventBus
from thinktree.orchestrator.events import (
    PAST_CONTEXT,
    ProblemFinished,
    ProblemStarted,
    VoteCast,
)
from thinktree.orchestrator.ledger import Budget
from thinktree.problems import Problem

log = structlog.get_logger(__name__)

SolverFactory = Callable[[Problem], Solver]
Verify = Callable[[Solver, list[Candidate], Budget], Awaitable[list[float | None]]]
"""Scores a problem's candidates (the run's verifiers); None for those that abstain and
for those whose every verdict failed. Where a run limit cut or refused a verifier's call,
it says so on the problem's pool (the last argument)."""


async def solve_problem(
    problem: Problem,
    strategy: Strategy,
    aggregate: Aggregator,
    make_solver: SolverFactory,
    bus: EventBus,
    run_pool: Budget,
    problem_limit: int | None = None,
    verify: Verify | None = None,
) -> None:
    """Grow one problem's tree, have the verifiers score it, vote, grade, and announce."""
    root = problem.id
    await bus.emit(
        ProblemStarted(
            problem_id=problem.id,
            node_id=root,
            question=problem.question,
            gold=problem.answer,
            options=dict(problem.options) if problem.options else None,
        )
    )
    solver = make_solver(problem)
    pool = run_pool.child(problem.id, strategy.allowed_tokens(), cap=problem_limit)
    if solver.recorded:  # a resumed run: the problem's recorded calls are held for it
        solver.recorded.problem_pool(problem.id, pool)
    try:
        candidates = await strategy.run(solver, Branch(messages_for(problem)), root, pool)
    except (ThinktreeError, ExceptionGroup) as exc:
        found = user_error(exc)
        if found is None or isinstance(found, RunStopping):
            raise  # not this problem's failure: the run cannot go on
        if isinstance(found, RunLimitReached):  # the run's end says so once, not per problem
            log.info("problem not run", problem=problem.id, reason=str(found))
        else:
            log.warning("problem failed", problem=problem.id, error=str(found))
        await _unanswered(bus, problem, str(found))
        return
    if not candidates and pool.run_stopped is not None:  # the run's limit refused every start
        log.info("problem not run", problem=problem.id, reason=pool.run_stopped)
        await _unanswered(bus, problem, pool.run_stopped)
        return
    scores: list[float | None] = [None] * len(candidates)
    if verify is not None:
        scores = await verify(solver, candidates, pool)
    # positional (answer, reasoning_tokens, score): one per sample
    votes = [Vote(c.answer, c.reasoning_tokens, s) for c, s in zip(candidates, scores, strict=True)]
    try:
        decision = aggregate(votes)
    except MissingScores:  # every verdict failed: the plain vote decides, and says so
        log.warning("no verifier score; the majority decides", problem=problem.id)
        decision = majority(votes)
    winner = candidates[decision.winner].node_id if decision.winner is not None else None
    await bus.emit(
        VoteCast(
            problem_id=problem.id,
            node_id=root,
            rule=decision.rule,
            answer=decision.answer,
            winner_node=winner,
            counts=dict(decision.counts),
            scores=dict(decision.scores),
            ballots=[_ballot(c, s) for c, s in zip(candidates, scores, strict=True)],
        )
    )
    correct = grade(decision.answer, problem)
    covered = None
    if correct is not None:  # a gold that cannot be graded counts in neither metric
        covered = any(grade(c.answer, problem) for c in candidates if c.answer is not None)
    # the run's limit refused later calls of it (the answers it stated decide it) or cut
    # its calls short, or its own limit cut them short
    stopped = pool.run_stopped or pool.run_cut
    cut = problem_limit is not None and problem_limit < strategy.allowed_tokens() and pool.cut
    if stopped is None and cut:
        stopped = f"problem stopped: its token limit of {problem_limit} cut its calls short"
    error = None
    if candidates and all(c.answer is None for c in candidates):
        error = "no candidate stated an answer"
        if solver.failures:
            # its calls failed, not the model: it is not graded (it would count as wrong),
            # and a resume sends them again
            count = len(solver.failures)
            error = f"{count} model call(s) failed, the first with: {solver.failures[0]}"
            correct = covered = None
        elif stopped is not None:
            # a limit cut it short before any answer: not graded either, as a resume
            # under a higher limit asks it again
            error = f"no answer before {stopped}"
            correct = covered = None
        elif solver.past_context:
            # graded, as wrong: the model cannot read it, and no resume changes that
            count, first = len(solver.past_context), solver.past_context[0]
            error = f"{error}: {count} model call(s) {PAST_CONTEXT}, the first with: {first}"
    await bus.emit(
        ProblemFinished(
            problem_id=problem.id,
            answer=decision.answer,
            correct=correct,
            covered=covered,
            error=error,
            stopped=stopped,
        )
    )


async def run_problems(
    problems: Sequence[Problem],
    strategy: Strategy,
    aggregate: Aggregator,
    make_solver: SolverFactory,
    bus: EventBus,
    *,
    concurrency: int = 8,
    run_pool: Budget | None = None,
    problem_limit: int | None = None,
    verify: Verify | None = None,
) -> None:
    """Solve every problem, at most ``concurrency`` at once, all inside one task group.

    ``run_pool`` caps the tokens of the whole run: once it is spent no call starts,
    calls in flight finish, and every problem not done ends with the reason.
    """
    pool = run_pool or Budget(name="run", limit=None)
    waiting = iter(problems)

    async def worker() -> None:
        # Each worker takes the next problem as it finishes one: problems start in order,
        # at most ``concurrency`` at once, and one waiting costs nothing (no task of its own
        # parked on a limiter). The first starts as soon as its worker does.
        for problem in waiting:
            # nothing logs in the worker's context between two problems: binding is enough
            # (a bound_contextvars block costs five times as much)
            bind_contextvars(problem=problem.id)
            await solve_problem(
                problem, strategy, aggregate, make_solver, bus, pool, problem_limit, verify
            )

    # asyncio's own task group: a task costs a third of an anyio one, and every task of a
    # run runs on asyncio (anyio's cancel scopes work inside it, see Parallel)
    async with asyncio.TaskGroup() as tg:
        for _ in range(min(concurrency, len(problems))):
            tg.create_task(worker())


async def _unanswered(bus: EventBus, problem: Problem, error: str) -> None:
    """A problem that ends with no answer at all: failed, or not run (the run's limit)."""
    await bus.emit(
        ProblemFinished(problem_id=problem.id, answer=None, correct=None, covered=None, error=error)
    )


def _ballot(c: Candidate, score: float | None) -> dict[str, Any]:
    """One candidate as the vote saw it (what a trained verifier learns from)."""
    return {
        "node": c.node_id,
        "answer": c.answer,
        "reasoning_tokens": c.reasoning_tokens,
        "revisions": c.revisions,
        "forced": c.forced,
        "score": score,
    }


def user_error(exc: BaseException) -> ThinktreeError | None:
    """The first user-facing error inside ``exc`` (task groups wrap errors in groups)."""
    return find_error(exc, ThinktreeError)

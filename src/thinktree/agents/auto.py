"""The ``auto`` mode: a cheap pilot per problem picks the strategy and the budget.

Following the medical test-time scaling paper: parallel scaling suits easy problems,
sequential scaling hard ones, and a model that leaves most of its budget unused gains
nothing from a larger one. The pilot is two short samples:

- they agree on an answer → easy → ``parallel`` (``n`` samples, majority of them);
- they disagree, or one states none → hard → ``sequential`` (``steps`` revisions);
- they used at least ``low_use`` of their thinking budget → the chosen mode gets
  ``scale`` × the budget; below it, the base budget (more would go unused).

The decision and its reason go out as a :class:`StrategyChosen` event, so they are in
the trace, the run store and the results, next to the problem. Where a limit leaves the
chosen strategy no call (the pilot spent the problem's tokens), the pilot's samples
decide; where the run's limit refuses the pilot's own calls, nothing is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio
import structlog

from thinktree.agents.solver import Branch, Candidate, SegmentRequest, Solver
from thinktree.agents.strategies import (
    BudgetForcing,
    First,
    Parallel,
    Sequential,
    Strategy,
    _ended_by,
)
from thinktree.errors import BudgetExhausted, ConfigError, RunLimitReached
from thinktree.orchestrator.events import (
    NodeFailed,
    NodeFinished,
    NodeKind,
    NodeStarted,
    StrategyChosen,
)
from thinktree.orchestrator.ledger import Budget

log = structlog.get_logger(__name__)

PILOT_SAMPLES = 2


@dataclass(frozen=True, slots=True)
class Auto:
    """Pilot, decide, then run the chosen strategy under the same problem node."""

    budget: int = 512  # thinking tokens per sample (parallel) or per step (sequential)
    n: int = 4
    steps: int = 2
    answer_tokens: int = 64
    pilot_tokens: int = 0  # 0: a quarter of the budget (at least 16)
    scale: int = 2
    low_use: float = 0.30
    name: str = "auto"

    def __post_init__(self) -> None:
        for knob, value in (("budget", self.budget), ("n", self.n), ("steps", self.steps)):
            if value <= 0:
                raise ConfigError(f"--{knob} must be a positive number, not {value}")
        if self.scale < 1:
            raise ConfigError(f"auto's budget scale must be 1 or more, not {self.scale}")

    @property
    def pilot_budget(self) -> int:
        return self.pilot_tokens or max(16, self.budget // 4)

    def _pilot(self) -> Parallel:
        inner = BudgetForcing(budget=self.pilot_budget, answer_tokens=self.answer_tokens)
        return Parallel(n=PILOT_SAMPLES, inner=inner)

    def _choice(self, mode: str, budget: int) -> Strategy:
        if mode == "parallel":
            return Parallel(
                n=self.n, inner=BudgetForcing(budget=budget, answer_tokens=self.answer_tokens)
            )
        return Sequential(steps=self.steps, step_tokens=budget, answer_tokens=self.answer_tokens)

    def allowed_tokens(self) -> int:
        """The pilot plus the costlier of the two choices at the larger budget."""
        big = self.budget * self.scale
        return self._pilot().allowed_tokens() + max(
            self._choice("parallel", big).allowed_tokens(),
            self._choice("sequential", big).allowed_tokens(),
        )

    def first_request(self, parent: str, pool: Budget) -> SegmentRequest:
        return self._pilot().first_request(f"{parent}/pilot", pool)

    def settle(self, solver: Solver, first: First) -> list[Candidate] | None:
        return None  # its branches settle themselves

    def decide(self, pilot: list[Candidate]) -> tuple[str, int, str, bool, float]:
        """(mode, budget, reason, agreement, utilisation) from the pilot's candidates."""
        answers = [c.answer for c in pilot]
        agree = len(answers) == PILOT_SAMPLES and None not in answers and len(set(answers)) == 1
        used = sum(c.reasoning_tokens for c in pilot) / (PILOT_SAMPLES * self.pilot_budget)
        if agree:
            mode, why = "parallel", f"the pilot's samples agree ({answers[0]}): easy"
        else:
            shown = ", ".join("none" if a is None else a for a in answers)
            mode, why = "sequential", f"the pilot's samples disagree ({shown}): hard"
        if used >= self.low_use:
            budget = self.budget * self.scale
            why += f"; they used {used:.0%} of their budget, so {self.scale}× budget"
        else:
            budget = self.budget
            why += f"; they used {used:.0%} (< {self.low_use:.0%}), so more budget would go unused"
        return mode, budget, why, agree, used

    async def run(
        self,
        solver: Solver,
        branch: Branch,
        parent: str,
        pool: Budget,
        first: First | None = None,
    ) -> list[Candidate]:
        pilot_id = f"{parent}/pilot"
        await solver.bus.emit(
            NodeStarted(
                node_id=pilot_id,
                problem_id=solver.problem.id,
                parent_id=parent,
                kind=NodeKind.BRANCH,
                label="pilot",
                max_tokens=self._pilot().allowed_tokens(),
            )
        )
        try:
            pilot = await self._pilot().run(solver, branch.fork(), pilot_id, pool, first)
        except BaseException as exc:  # the pilot's node ends with the reason, whatever it is
            with anyio.CancelScope(shield=True):
                await solver.bus.emit(NodeFailed(node_id=pilot_id, error=_ended_by(exc)))
            raise
        if pool.run_stopped is not None:
            # the run's limit refused pilot calls: nothing chosen could run, and what the
            # pilot's samples stated decides
            if pilot:
                await solver.bus.emit(_pilot_ended(pilot_id, pool.run_stopped))
            else:
                await solver.bus.emit(NodeFailed(node_id=pilot_id, error=pool.run_stopped))
            return pilot
        mode, budget, reason, agree, used = self.decide(pilot)
        await solver.bus.emit(_pilot_ended(pilot_id, reason))
        await solver.bus.emit(
            StrategyChosen(
                problem_id=solver.problem.id,
                node_id=pilot_id,
                mode=mode,
                budget=budget,
                reason=reason,
                agreement=agree,
                utilisation=round(used, 4),
            )
        )
        try:
            chosen = await self._choice(mode, budget).run(solver, branch, parent, pool)
        except (BudgetExhausted, RunLimitReached) as exc:  # its first call was refused
            if isinstance(exc, RunLimitReached):
                pool.stopped_by_run(str(exc))
            chosen = []
        if not chosen:  # a limit left the chosen strategy no call: the pilot's samples decide
            log.info("the chosen strategy made no call; the pilot decides", node=parent)
            return pilot
        return chosen


def _pilot_ended(pilot_id: str, text: str) -> NodeFinished:
    """The pilot's node, ended with what it decided (or why nothing was)."""
    return NodeFinished(
        node_id=pilot_id,
        text=text,
        finish_reason=None,
        prompt_tokens=0,
        completion_tokens=0,
        answer=None,
        extraction="pilot",
    )

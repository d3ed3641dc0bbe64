"""Adaptive voting: parallel sampling in waves that stops once the vote is decided.

After each wave the votes so far are checked against two rules, and sampling stops at
the first that holds:

- **unbeatable**: the leader is ahead of the runner-up by more than the samples still
  to come, so no outcome of the rest can change the majority;
- **posterior**: under a uniform Beta prior on the leader's share ``p`` of all votes,
  the posterior ``Beta(1 + leader, 1 + others)`` gives ``P(p > 1/2) >= confidence``,
  that is, the leader very probably holds the majority of the full distribution.

Samples that state no answer abstain: they count as spent, not as votes. Each wave is
one request with ``n`` choices where the endpoint allows it (as in ``parallel``);
branches keep the node ids ``b1, b2, …`` that ``parallel`` gives them, so with per-node
seeds the first k samples of an adaptive run are the first k of a parallel one.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from thinktree.agents.solver import Branch, Candidate, SegmentRequest, Solver
from thinktree.agents.strategies import BudgetForcing, First, Parallel, Strategy
from thinktree.errors import ConfigError
from thinktree.orchestrator.events import NodeFinished, NodeKind, NodeStarted
from thinktree.orchestrator.ledger import Budget

__all__ = ["Adaptive", "Decision", "decide", "majority_posterior"]


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether to stop sampling, and why."""

    stop: bool
    leader: str | None
    rule: str  # "unbeatable", "posterior", "exhausted" or "undecided"
    posterior: float


def majority_posterior(leader: int, others: int) -> float:
    """``P(p > 1/2)`` for ``p ~ Beta(1 + leader, 1 + others)``, exactly.

    For integer parameters the Beta tail is a binomial sum:
    ``P(Beta(a, b) > 1/2) = P(Binomial(a + b - 1, 1/2) <= a - 1)``.
    """
    if leader < 0 or others < 0:
        raise ValueError("vote counts cannot be negative")
    trials = leader + others + 1
    below = sum(math.comb(trials, i) for i in range(leader + 1))
    return below / (1 << trials)


def decide(answers: Sequence[str | None], remaining: int, confidence: float) -> Decision:
    """Whether the votes ``answers`` (None abstains) settle the majority vote.

    ``remaining`` is how many samples could still be drawn. The leader is the answer
    with most votes, ties going to the one seen first (as in ``majority``).
    """
    counts = Counter(a for a in answers if a is not None)
    ranked = counts.most_common()  # stable: ties keep first-seen order
    leader, top = ranked[0] if ranked else (None, 0)
    second = ranked[1][1] if len(ranked) > 1 else 0
    posterior = majority_posterior(top, sum(counts.values()) - top)
    if remaining <= 0:
        return Decision(True, leader, "exhausted", posterior)
    if leader is not None and top - second > remaining:
        return Decision(True, leader, "unbeatable", posterior)
    if leader is not None and posterior >= confidence:
        return Decision(True, leader, "posterior", posterior)
    return Decision(False, leader, "undecided", posterior)


@dataclass(frozen=True, slots=True)
class Adaptive:
    """Up to ``n`` branches of ``inner``, ``wave`` at a time, until the vote is decided."""

    n: int = 16
    wave: int = 4
    confidence: float = 0.95
    inner: Strategy = field(default_factory=BudgetForcing)
    name: str = "adaptive"

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ConfigError(f"--n must be a positive number of samples, not {self.n}")
        if not 0 < self.wave <= self.n:
            raise ConfigError(f"--wave must be between 1 and --n ({self.n}), not {self.wave}")
        if not 0.5 < self.confidence < 1:
            raise ConfigError(
                f"--stop-confidence must be above 0.5 and below 1, not {self.confidence}"
            )

    def allowed_tokens(self) -> int:
        return self.n * self.inner.allowed_tokens()

    def first_request(self, parent: str, pool: Budget) -> SegmentRequest:
        return self.inner.first_request(f"{parent}/b1", pool)

    def settle(self, solver: Solver, first: First) -> list[Candidate] | None:
        return None  # its branches settle themselves

    async def run(
        self,
        solver: Solver,
        branch: Branch,
        parent: str,
        pool: Budget,
        first: First | None = None,
    ) -> list[Candidate]:
        candidates: list[Candidate] = []
        drawn = 0
        decision = Decision(False, None, "undecided", 0.0)
        while drawn < self.n:
            size = min(self.wave, self.n - drawn)
            wave = Parallel(n=size, inner=self.inner, start=drawn + 1)
            candidates += await wave.run(solver, branch, parent, pool)
            drawn += size
            decision = decide([c.answer for c in candidates], self.n - drawn, self.confidence)
            if decision.stop:
                break
        await _record_stop(solver, parent, decision, drawn, self.n)
        return candidates


async def _record_stop(
    solver: Solver, parent: str, decision: Decision, drawn: int, most: int
) -> None:
    """A node under the problem saying when and why sampling stopped."""
    node_id = f"{parent}/stop"
    why = {
        "unbeatable": "the leader cannot be overtaken by the samples left",
        "posterior": f"P(leader holds the majority) = {decision.posterior:.3f}",
        "exhausted": "every sample drawn",
    }.get(decision.rule, decision.rule)
    await solver.bus.emit(
        NodeStarted(
            node_id=node_id,
            problem_id=solver.problem.id,
            parent_id=parent,
            kind=NodeKind.VOTE,
            label=f"stopped at {drawn}/{most}",
        )
    )
    await solver.bus.emit(
        NodeFinished(
            node_id=node_id,
            text=f"stopped after {drawn} of {most} samples: {why}",
            finish_reason=decision.rule,
            prompt_tokens=0,
            completion_tokens=0,
            answer=decision.leader,
            extraction="adaptive",
        )
    )

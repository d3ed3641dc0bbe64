"""Run metrics, computed from the finished trees (never from counters kept on the side)."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from thinktree.orchestrator.events import NodeKind
from thinktree.orchestrator.tree import ProblemTree
from thinktree.pricing import Price

_STRUCTURAL = {NodeKind.PROBLEM, NodeKind.BRANCH, NodeKind.VOTE, NodeKind.VERDICT}
_THINKING = {NodeKind.GENERATION, NodeKind.EXTENSION, NodeKind.STEP}


@dataclass(frozen=True, slots=True)
class Metrics:
    problems: int
    answered: int
    graded: int
    correct: int
    accuracy: float | None
    coverage: float | None
    failed: int
    prompt_tokens: int
    completion_tokens: int
    thinking_tokens: int
    tokens_allowed: int
    utilisation: float | None
    calls: int
    retries: int
    latency_p50_s: float | None
    latency_p95_s: float | None
    cost_usd: float | None = None  # None when the model has no price

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0–100) by linear interpolation; None for no values."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, int(q) - 1))]


def compute(
    trees: list[ProblemTree], *, tokens_allowed: int, retries: int = 0, price: Price | None = None
) -> Metrics:
    graded = [t for t in trees if t.correct is not None]
    covered = [t for t in trees if t.covered is not None]
    calls = [n for t in trees for n in t.nodes.values() if n.kind not in _STRUCTURAL]
    finished_calls = [n for n in calls if n.finished_at is not None and n.error is None]
    completion = sum(n.completion_tokens for n in calls)
    latencies = sorted(n.latency_s for n in finished_calls if n.latency_s > 0)
    allowed = tokens_allowed * len(trees)
    return Metrics(
        problems=len(trees),
        answered=sum(1 for t in trees if t.answer is not None),
        graded=len(graded),
        correct=sum(1 for t in graded if t.correct),
        accuracy=(sum(1 for t in graded if t.correct) / len(graded)) if graded else None,
        coverage=(sum(1 for t in covered if t.covered) / len(covered)) if covered else None,
        failed=sum(1 for t in trees if t.error),
        prompt_tokens=sum(n.prompt_tokens for n in calls),
        completion_tokens=completion,
        thinking_tokens=sum(n.completion_tokens for n in calls if n.kind in _THINKING),
        tokens_allowed=allowed,
        utilisation=(completion / allowed) if allowed else None,
        calls=len({n.call_id or n.id for n in calls}),
        retries=retries,
        latency_p50_s=percentile(latencies, 50),
        latency_p95_s=percentile(latencies, 95),
        cost_usd=None
        if price is None
        else round(price.cost(sum(n.prompt_tokens for n in calls), completion), 6),
    )

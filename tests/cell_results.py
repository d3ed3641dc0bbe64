"""A finished cell for the report's tests, built from its problems' outcomes alone."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from thinktree.bench.results import CellResult, ProblemOutcome


def cell_result(
    outcomes: Sequence[bool],
    *,
    mode: str = "budget",
    completion_tokens: int = 10,
    dataset: str = "d",
) -> CellResult:
    """A cell of ``mode`` whose problems were right as ``outcomes`` says, and which spent
    ``completion_tokens`` in all."""
    problems = [
        ProblemOutcome(f"q{i}", right, right, True, 10, completion_tokens // len(outcomes))
        for i, right in enumerate(outcomes)
    ]
    return CellResult(
        name=f"{mode}-{completion_tokens}",
        folder=Path("unused"),
        dataset=dataset,
        options={"mode": mode},
        mode=mode,
        model="m",
        endpoint="e",
        settings={},
        metrics={
            "accuracy": sum(outcomes) / len(outcomes),
            "completion_tokens": completion_tokens,
        },
        problems=problems,
        tokens_allowed_per_problem=64,
    )

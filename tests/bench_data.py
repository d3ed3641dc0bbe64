"""Shared by the bench and resume tests: a small choice dataset, and results to compare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_choice_problems(path: Path, prefix: str, count: int = 2) -> None:
    """``count`` three-option problems with ids ``{prefix}0, {prefix}1, …`` as JSONL."""
    with path.open("w") as f:
        for i in range(count):
            problem = {
                "id": f"{prefix}{i}",
                "question": f"Which one, {prefix} case {i}?",
                "answer_type": "choice",
                "options": {"A": "alpha", "B": "beta", "C": "gamma"},
                "answer": "ABC"[i % 3],
            }
            f.write(json.dumps(problem) + "\n")


def without_timing(results: dict[str, Any]) -> dict[str, Any]:
    """A results file's metrics and problems without wall-clock figures or the server's
    own response ids: what two runs of the same calls must agree on."""
    metrics = {k: v for k, v in results["metrics"].items() if not k.startswith("latency")}
    problems = [
        {
            **p,
            "nodes": [
                {k: v for k, v in n.items() if k not in ("latency_s", "call_id")}
                for n in p["nodes"]
            ],
        }
        for p in results["problems"]
    ]
    return {"metrics": metrics, "problems": problems}

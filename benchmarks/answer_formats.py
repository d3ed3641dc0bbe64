"""Parse rate of free vs constrained answers on samples of five medical benchmark sets.

Run: .venv/bin/python benchmarks/answer_formats.py [--data DIR] [--base-url URL] [--per-set 5]
DIR holds one JSONL file per set in thinktree's dataset schema, named ``<set>.sample.jsonl``
for each of :data:`SETS` (default: ``shared/data`` beside the repository).
Without --base-url it starts the embedded server (or reuses one from `thinktree serve`).
For each set, the same problems run with ``--answer-format free`` and ``constrained``
(alternating per set); it prints, per set and in all, the share of candidates whose
answer could be counted (free: extracted; constrained: generated under the constraint
and validated, fallbacks not counted) and the accuracy.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import anyio

from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.config import url_option
from thinktree.datasets import load_problems
from thinktree.embedded import embedded_server
from thinktree.orchestrator.events import NodeKind
from thinktree.orchestrator.run import RunSettings, execute
from thinktree.orchestrator.tree import ProblemTree

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SETS = ("pubmedqa", "medqa", "medmcqa", "medbullets_op4", "medcalc_bench")


def rates(trees: list[ProblemTree], constrained: bool) -> tuple[int, int, int]:
    """(candidates, parsed, correct) over ``trees``; one candidate per line of thought."""
    candidates = parsed = correct = 0
    for tree in trees:
        lines = tree.of_kind(NodeKind.BRANCH) or [tree.root]
        for line in lines:
            candidates += 1
            nodes = tree.walk(line.id)
            if constrained:
                ok = any(
                    n.kind is NodeKind.FORCED_ANSWER and (n.extraction or "").startswith("constr")
                    for n in nodes
                )
            else:
                ok = line.answer is not None
            parsed += ok
        correct += bool(tree.correct)
    return candidates, parsed, correct


async def measure(
    base_url: str, model: str, data: Path, per_set: int, budget: int, out: Path
) -> None:
    endpoint = EndpointConfig(name="bench", base_url=base_url, model=model)
    totals = {"free": [0, 0, 0], "constrained": [0, 0, 0]}
    print(f"{'set':16} {'format':12} {'parsed':>10} {'accuracy':>9}")
    for name in SETS:
        problems = load_problems(data / f"{name}.sample.jsonl", limit=per_set)
        for fmt in ("free", "constrained"):
            settings = RunSettings(
                modes=ModeSettings(mode="budget", budget=budget),
                answer_format=fmt,
                out=out / f"{name}-{fmt}",
            )
            result = await execute(problems, endpoint, settings)
            c, p, ok = rates(result.trees, fmt == "constrained")
            for i, v in enumerate((c, p, ok)):
                totals[fmt][i] += v
            print(f"{name:16} {fmt:12} {p:>4}/{c:<4} {ok:>4}/{len(problems):<4}", flush=True)
    for fmt, (c, p, ok) in totals.items():
        print(
            f"{'all':16} {fmt:12} {p:>4}/{c:<4} ({100 * p / c:.1f} % parsed, "
            f"{100 * ok / c:.1f} % right)"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DATA, help="folder of the sample sets")
    parser.add_argument("--base-url", type=url_option)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--per-set", type=int, default=5)
    parser.add_argument("--budget", type=int, default=128)
    args = parser.parse_args()
    missing = [
        f"{name}.sample.jsonl"
        for name in SETS
        if not (args.data / f"{name}.sample.jsonl").is_file()
    ]
    if missing:
        parser.error(f"{args.data} lacks {', '.join(missing)}; point --data at the sample sets")
    with tempfile.TemporaryDirectory() as tmp:
        if args.base_url:
            await measure(
                args.base_url, args.model, args.data, args.per_set, args.budget, Path(tmp)
            )
            return
        async with embedded_server() as server:
            await measure(
                server.base_url, server.model, args.data, args.per_set, args.budget, Path(tmp)
            )


if __name__ == "__main__":
    anyio.run(main)

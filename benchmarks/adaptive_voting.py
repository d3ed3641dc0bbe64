"""Adaptive voting vs full majority@N on the embedded model: agreement and tokens spent.

Run: .venv/bin/python benchmarks/adaptive_voting.py --data FILE.jsonl [--limit 32]
     [--n 16] [--wave 4] [--budget 32] [--base-url URL]

Both modes run as ordinary thinktree runs on the same problems, with the same seed and
one request per sample (``native_n`` off), so every sample has its own per-node seed:
adaptive's k samples of a problem are exactly the first k samples of parallel@N, and
the comparison measures the stopping rule alone, not sampling luck. Printed: how often
adaptive's answer equals majority@N's (target >= 98 %), its completion tokens as a
share of majority@N's (target <= 50 %), samples drawn, and why each problem stopped.
Without --base-url it starts the embedded server (or reuses one from `thinktree serve`).
Without --data it uses the built-in demo set.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import anyio

from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings
from thinktree.datasets import load_demo, load_problems
from thinktree.embedded import embedded_server
from thinktree.orchestrator.events import NodeKind
from thinktree.orchestrator.run import RunResult, RunSettings, execute
from thinktree.problems import Problem


async def _run(
    url: str, problems: list[Problem], modes: ModeSettings, folder: Path, args: argparse.Namespace
) -> tuple[RunResult, float]:
    endpoint = EndpointConfig(
        name="embedded",
        base_url=url,
        native_n="no",
        continuation="chat",
        max_connections=args.in_flight,
    )
    settings = RunSettings(
        modes=modes,
        aggregate="majority",
        seed=0,
        temperature=args.temperature,
        concurrency=args.concurrency,
        out=folder,
    )
    started = time.perf_counter()
    result = await execute(problems, endpoint, settings)
    return result, time.perf_counter() - started


async def measure(url: str, problems: list[Problem], args: argparse.Namespace) -> None:
    common = {"n": args.n, "budget": args.budget, "answer_tokens": args.answer_tokens}
    with tempfile.TemporaryDirectory(prefix="tt-adaptive-") as tmp:
        full, full_s = await _run(
            url,
            problems,
            ModeSettings(mode="parallel", **common),
            Path(tmp) / "full",
            args,
        )
        adaptive, adaptive_s = await _run(
            url,
            problems,
            ModeSettings(mode="adaptive", wave=args.wave, confidence=args.confidence, **common),
            Path(tmp) / "adaptive",
            args,
        )
    agree = sum(a.answer == f.answer for a, f in zip(adaptive.trees, full.trees, strict=True))
    drawn = [len(t.of_kind(NodeKind.BRANCH)) for t in adaptive.trees]
    rules = Counter(
        t.nodes[f"{t.problem_id}/stop"].finish_reason
        for t in adaptive.trees
        if f"{t.problem_id}/stop" in t.nodes
    )
    tokens_full = full.metrics.completion_tokens
    tokens_adaptive = adaptive.metrics.completion_tokens
    share = tokens_adaptive / tokens_full if tokens_full else float("nan")
    count = len(problems)
    print(
        f"workload: {count} problems, majority@{args.n} vs adaptive (waves of {args.wave}, "
        f"stop at P(majority) >= {args.confidence} or an unbeatable leader), {args.budget}-token "
        f"thinking cap, temperature {args.temperature}, seed 0, one request per sample"
    )
    print(
        f"majority@{args.n}: {tokens_full} completion tokens, {full.metrics.calls} calls, "
        f"{full_s:.0f} s, accuracy {full.metrics.accuracy:.2f}"
    )
    print(
        f"adaptive:     {tokens_adaptive} completion tokens, {adaptive.metrics.calls} calls, "
        f"{adaptive_s:.0f} s, accuracy {adaptive.metrics.accuracy:.2f}"
    )
    print(
        f"samples drawn per problem: mean {sum(drawn) / count:.1f} of {args.n} "
        f"(min {min(drawn)}, max {max(drawn)}); stopped by: "
        + ", ".join(f"{rule} {k}" for rule, k in rules.most_common())
    )
    agreement = agree / count
    print(
        f"agreement with majority@{args.n}: {agree}/{count} = {agreement:.1%}; "
        f"target >= 98%: {'MET' if agreement >= 0.98 else 'NOT MET'}"
    )
    print(
        f"tokens spent vs majority@{args.n}: {share:.1%}; "
        f"target <= 50%: {'MET' if share <= 0.5 else 'NOT MET'}"
    )


def _problems(args: argparse.Namespace) -> list[Problem]:
    items = load_demo() if args.data is None else load_problems(args.data)
    return list(items)[args.offset : args.offset + args.limit]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, help="JSONL problems (default: the demo set)")
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--n", type=int, default=16, help="samples of the full vote")
    parser.add_argument("--wave", type=int, default=4, help="adaptive samples per wave")
    parser.add_argument(
        "--confidence", type=float, default=0.95, help="adaptive: the posterior stop level"
    )
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    parser.add_argument("--budget", type=int, default=32, help="thinking tokens per sample")
    parser.add_argument("--answer-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=2, help="problems at once")
    parser.add_argument("--in-flight", type=int, default=8, help="calls in flight at most")
    parser.add_argument("--base-url")
    args = parser.parse_args()
    problems = _problems(args)
    if not problems:
        parser.error("no problems selected: check --data, --limit and --offset")
    if args.base_url:
        await measure(args.base_url, problems, args)
        return 0
    async with embedded_server() as server:
        await measure(server.base_url, problems, args)
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))

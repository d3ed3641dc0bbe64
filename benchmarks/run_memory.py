"""What a run holds in memory per sample: parallel@16 at two sizes, replies of a set length.

A run keeps its tree (every node, with its text) until it writes ``results.json``. Each
size runs in a fresh process against a fast local server (in that process, answering
every sample the same reply of ``--reply-chars`` characters and "Answer: B"), with the
run store, trace and call store on; its peak RSS over what it held before the run is
printed, and the per-sample figure is the difference between the two sizes (which
leaves out what any run holds whatever its size).

Run: .venv/bin/python benchmarks/run_memory.py [--problems 500,2000] [--reply-chars 0,2000]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

SAMPLES = 16


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(problems: int, reply_chars: int) -> dict[str, float]:
    """One run in this process: its peak RSS over what the process held before it."""
    import anyio

    from thinktree.agents.endpoint import EndpointConfig
    from thinktree.agents.modes import ModeSettings
    from thinktree.orchestrator.run import RunSettings, execute
    from thinktree.problems import Problem
    from thinktree.testing.fake_server import FakeBehaviour, FakeServer

    thinking = ("Let me think about this carefully, step by step. " * (reply_chars // 49 + 1))[
        :reply_chars
    ]
    reply = thinking + "\nAnswer: B"
    items = [
        Problem(id=f"p{i:06d}", question="Which one? Options: A, B, C, D.", answer="B")
        for i in range(problems)
    ]

    async def main() -> tuple[float, int]:
        async with FakeServer(FakeBehaviour(reply=reply, native_n=True)) as server:
            endpoint = EndpointConfig(
                name="fake",
                base_url=server.base_url,
                model="fake-model",
                continuation="chat",
                native_n="yes",
                max_connections=64,
            )
            with tempfile.TemporaryDirectory(prefix="tt-memory-") as tmp:
                settings = RunSettings(
                    modes=ModeSettings(mode="parallel", n=SAMPLES, budget=4096),
                    aggregate="majority",
                    concurrency=64,
                    out=Path(tmp) / "run",
                )
                gc.collect()
                before = _rss_mib()
                result = await execute(items, endpoint, settings)
                right = sum(1 for tree in result.trees if tree.correct)
                return _rss_mib() - before, right

    grown, right = anyio.run(main)
    if right != problems:
        raise SystemExit(f"only {right}/{problems} problems were right: the run went wrong")
    return {"grown_mib": grown}


def _measure(problems: int, reply_chars: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", f"{problems},{reply_chars}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"the run of {problems} problems failed:\n{out.stderr[-2000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["grown_mib"])


def _sizes(text: str, what: str, count: int | None = None) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise SystemExit(f"{what} takes numbers separated by commas, not {text!r}") from None
    if any(size < 0 for size in sizes) or (count is not None and len(sizes) != count):
        raise SystemExit(f"{what} takes {count or 'some'} numbers of 0 or more, not {text!r}")
    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--problems", default="500,2000", help="the two run sizes (x16 samples)")
    parser.add_argument("--reply-chars", default="0,2000", help="reply lengths to measure")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        problems, reply_chars = _sizes(args.worker, "--worker", 2)
        print(json.dumps(worker(problems, reply_chars)))
        return 0
    small, large = _sizes(args.problems, "--problems", 2)
    if not 0 < small < large:
        raise SystemExit("--problems takes two sizes, the smaller first, both above 0")
    print(f"parallel@{SAMPLES}, {small} and {large} problems; peak RSS over the run's start")
    for reply_chars in _sizes(args.reply_chars, "--reply-chars"):
        low, high = _measure(small, reply_chars), _measure(large, reply_chars)
        per_sample = (high - low) * 1024 / ((large - small) * SAMPLES)
        print(
            f"replies of {reply_chars:,} chars: +{low:.0f} MiB for {small * SAMPLES:,} samples, "
            f"+{high:.0f} MiB for {large * SAMPLES:,}: {per_sample:.2f} KiB per sample"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A run against a rate-limited endpoint, with and without backing off.

    .venv/bin/python benchmarks/rate_limit.py [--problems 200] [--limit 4] [--in-flight 32]

The endpoint is a local OpenAI-compatible server on 127.0.0.1 that answers 429 (with a
short Retry-After) to any request arriving while ``--limit`` are already being answered,
as an API's concurrency limit does. The same run (one call per problem, ``--in-flight``
allowed) goes once as thinktree runs it, its calls in flight halving on a rate-limit
answer and growing back (``thinktree.agents.limiter``), and once with that switched off
(each refused call only waits and retries, up to its attempts). It prints the calls that
failed, the 429s the server sent and the wall time of each.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import anyio
import structlog

from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.limiter import AdaptiveLimiter
from thinktree.agents.modes import ModeSettings
from thinktree.orchestrator.run import RunSettings, execute
from thinktree.problems import AnswerType, Problem
from thinktree.testing.fake_server import FakeBehaviour, FakeServer


async def one_run(args: argparse.Namespace, back_off: bool, tmp: Path) -> tuple[int, int, float]:
    """(failed calls, 429s sent, seconds) of one run."""
    problems = [
        Problem(
            id=f"q{i}",
            question=f"Question {i}?",
            answer_type=AnswerType.CHOICE,
            options={"A": "alpha", "B": "beta"},
            answer="B",
        )
        for i in range(args.problems)
    ]
    behaviour = FakeBehaviour(reply="Beta. Answer: B", delay_s=0.02, max_in_flight=args.limit)
    cut = AdaptiveLimiter.rate_limited
    if not back_off:
        AdaptiveLimiter.rate_limited = lambda self, sent_at: None  # type: ignore[method-assign]
    try:
        async with FakeServer(behaviour, retry_after_s=0.01) as server:
            endpoint = EndpointConfig(
                name="api",
                base_url=server.base_url,
                continuation="chat",
                max_connections=args.in_flight,
                max_attempts=5,
            )
            settings = RunSettings(
                modes=ModeSettings(mode="budget", budget=32),
                concurrency=args.in_flight,
                out=tmp / ("backing-off" if back_off else "not-backing-off"),
            )
            started = time.monotonic()
            result = await execute(problems, endpoint, settings)
            return len(result.failed_calls()), server.rate_limited, time.monotonic() - started
    finally:
        AdaptiveLimiter.rate_limited = cut  # type: ignore[method-assign]


async def main(args: argparse.Namespace) -> None:
    print(
        f"{args.problems} calls, {args.in_flight} allowed in flight, against an endpoint "
        f"that refuses (429) a request arriving while {args.limit} are in flight"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for back_off in (False, True):
            failed, refused, seconds = await one_run(args, back_off, Path(tmp))
            label = "backing off (thinktree)" if back_off else "retrying only"
            print(
                f"{label:<24} failed calls {failed:>4} of {args.problems}, "
                f"429s {refused:>5}, {seconds:5.2f} s"
            )


if __name__ == "__main__":
    # the refused calls' retries would each log a line: only the figures are printed
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=200, help="calls, one per problem")
    parser.add_argument("--limit", type=int, default=4, help="the endpoint's limit in flight")
    parser.add_argument("--in-flight", type=int, default=32, help="calls the run allows")
    anyio.run(main, parser.parse_args())

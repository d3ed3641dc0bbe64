"""Adaptive voting vs full majority@N on the embedded model: agreement and tokens spent.

Run: .venv/bin/python benchmarks/adaptive_voting.py --data FILE.jsonl [--limit 32]
     [--n 16] [--wave 4] [--budget 32] [--confidence 0.95] [--levels 0.9,0.99]
     [--waves 1,2]
     [--base-url URL]

Both modes run as ordinary thinktree runs on the same problems, with the same seed and
one request per sample (``native_n`` off), so every sample has its own per-node seed
and adaptive's k samples of a problem are meant to be the first k of parallel@N. A
server batching requests differently can still change some of them (vLLM's CPU build
does, a few in ten), so adaptive runs twice: live against the server, and replayed on
majority@N's own samples (its calls read back from majority@N's call store), which
measures the stopping rule alone. Printed for each: how often adaptive's answer equals
majority@N's (target >= 98 %), its completion tokens as a share of majority@N's
(target <= 50 %), samples drawn, and why each problem stopped; and the floor, what a
clairvoyant rule that knew the full vote would spend.
--levels 0.9,0.98 also replays the rule at those stop levels on the same samples (no new
calls) and prints agreement and tokens for each: the trade-off to choose a level from.
--waves 1,2 does the same at those wave sizes (at every level). A wave size is the first
wave's and the most a later one draws (each later one draws the fewest samples that could
decide the vote): a smaller first wave can stop sooner, at the price of more rounds of
requests one after another.
Without --base-url it starts the embedded server (or reuses one from `thinktree serve`).
Without --data it uses the built-in demo set; a --data file that is not found where it is
named is looked for among the sample sets beside the repository (``shared/data``), so
``--data medmcqa.sample.jsonl`` names that set.
--simulate SHARE runs both against a simulated model instead (a local OpenAI-compatible
server, choice problems only): it answers each question right with probability SHARE
and otherwise with another option at random, drawn from each request's seed. How much
adaptive saves depends on how much a model's answers concentrate; this shows it for a
model as decided as asked.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

from thinktree.agents.adaptive import Decision, decide, next_wave
from thinktree.agents.endpoint import EndpointConfig
from thinktree.agents.modes import ModeSettings, build_strategy
from thinktree.agents.prompts import messages_for
from thinktree.config import url_option
from thinktree.datasets import DatasetError, load_demo, load_problems
from thinktree.embedded import embedded_server
from thinktree.errors import ConfigError
from thinktree.orchestrator.call_cache import SqliteCallCache
from thinktree.orchestrator.run import CALLS, RunResult, RunSettings, execute
from thinktree.orchestrator.tree import ProblemTree
from thinktree.problems import AnswerType, Problem
from thinktree.testing.fake_server import FakeBehaviour, FakeServer


async def _run(
    url: str,
    problems: list[Problem],
    modes: ModeSettings,
    folder: Path,
    args: argparse.Namespace,
    replay: Path | None = None,
) -> tuple[RunResult, float]:
    """One ordinary run; with ``replay``, calls found in that call store are read back."""
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
    if replay is None:
        result = await execute(problems, endpoint, settings)
    else:
        shared = SqliteCallCache(replay)
        try:
            result = await execute(problems, endpoint, settings, shared_calls=shared)
        finally:
            shared.close()
    return result, time.perf_counter() - started


async def measure(url: str, problems: list[Problem], args: argparse.Namespace) -> None:
    common = {"n": args.n, "budget": args.budget, "answer_tokens": args.answer_tokens}

    def adaptive(level: float, wave: int) -> ModeSettings:
        return ModeSettings(mode="adaptive", wave=wave, confidence=level, **common)

    levels = sorted({args.confidence, *args.levels})
    waves = sorted({args.wave, *args.waves})
    with tempfile.TemporaryDirectory(prefix="tt-adaptive-") as tmp:
        full_folder = Path(tmp) / "full"
        full, full_s = await _run(
            url, problems, ModeSettings(mode="parallel", **common), full_folder, args
        )
        live, live_s = await _run(
            url, problems, adaptive(args.confidence, args.wave), Path(tmp) / "live", args
        )
        replays = {
            (wave, level): (
                await _run(
                    url,
                    problems,
                    adaptive(level, wave),
                    Path(tmp) / f"replayed-{wave}-{level}",
                    args,
                    full_folder / CALLS,
                )
            )[0]
            for wave in waves
            for level in levels
        }
    replayed = replays[args.wave, args.confidence]
    count = len(problems)
    print(
        f"workload: {count} problems, majority@{args.n} vs adaptive (waves of {args.wave}, "
        f"stop at P(the full vote elects the leader) >= {args.confidence} or an unbeatable "
        f"leader), {args.budget}-token thinking cap, temperature {args.temperature}, seed 0, "
        "one request per sample"
    )
    print(
        f"majority@{args.n}: {full.metrics.completion_tokens} completion tokens, "
        f"{full.metrics.calls} calls, {full_s:.0f} s, accuracy {full.metrics.accuracy:.2f}"
    )
    print(
        f"adaptive, live: {live.metrics.completion_tokens} completion tokens, "
        f"{live.metrics.calls} calls, {live_s:.0f} s, accuracy {live.metrics.accuracy:.2f}"
    )
    _report("live", live, full, args)
    print(
        f"adaptive, replayed on majority@{args.n}'s own samples (its calls read back from "
        f"majority@{args.n}'s call store, {replayed.cached_calls} of {replayed.metrics.calls}): "
        "the stopping rule alone, without the server's run-to-run differences"
    )
    _report("replayed", replayed, full, args)
    for line in _disagreements(replayed, full, args.n):
        print(f"  replayed: {line}")
    if len(replays) > 1:
        print(
            f"  replayed at each wave size and stop level (agreement with majority@{args.n}, "
            "tokens spent):"
        )
        for (wave, level), run in replays.items():
            agree, share, drawn = _standing(run, full)
            rounds = offline(full.trees, args.n, wave, level, fixed=False)[2]
            print(
                f"    waves of {wave:<3d} {level:<6g} {agree}/{len(full.trees)} = "
                f"{agree / len(full.trees):6.1%}, tokens {share:6.1%}, "
                f"samples drawn per problem {drawn:.1f}, rounds {rounds:.1f}"
            )
        print(
            "  the same rule in fixed waves (each wave all its samples, however near the vote "
            "is to decided), on the same samples:"
        )
        for wave, level in replays:
            agree, share, rounds = offline(full.trees, args.n, wave, level, fixed=True)
            print(
                f"    fixed waves of {wave:<3d} {level:<6g} {agree}/{len(full.trees)} = "
                f"{agree / len(full.trees):6.1%}, tokens {share:6.1%}, rounds {rounds:.1f}"
            )
    for wave in waves:
        floor = clairvoyant_tokens(full.trees, args.n, wave)
        print(
            f"the floor for this model, waves of {wave}: a clairvoyant rule that stops at the "
            f"first sample from the first wave on after which the leader is majority@{args.n}'s "
            f"answer would spend {floor:.1%} of its tokens"
        )


def _standing(adaptive: RunResult, full: RunResult) -> tuple[int, float, float]:
    """Problems whose answer is majority@n's, the share of its tokens, mean samples drawn."""
    agree = sum(a.answer == f.answer for a, f in zip(adaptive.trees, full.trees, strict=True))
    tokens_full = full.metrics.completion_tokens
    share = adaptive.metrics.completion_tokens / tokens_full if tokens_full else float("nan")
    drawn = _drawn(adaptive)
    return agree, share, sum(drawn) / len(drawn)


def _drawn(run: RunResult) -> list[int]:
    """The samples each problem drew: the candidates its vote counted (one per sample)."""
    return [len(t.vote.ballots) if t.vote is not None else 0 for t in run.trees]


def _report(label: str, adaptive: RunResult, full: RunResult, args: argparse.Namespace) -> None:
    """Agreement, tokens and stops of one adaptive run against majority@n."""
    count = len(full.trees)
    agree, share, mean_drawn = _standing(adaptive, full)
    drawn = _drawn(adaptive)
    rules = Counter(
        t.nodes[f"{t.root_id}/stop"].finish_reason
        for t in adaptive.trees
        if f"{t.root_id}/stop" in t.nodes
    )
    agreement = agree / count
    print(
        f"  {label}: samples drawn per problem: mean {mean_drawn:.1f} of {args.n} "
        f"(min {min(drawn)}, max {max(drawn)}); stopped by: "
        + ", ".join(f"{rule} {k}" for rule, k in rules.most_common())
    )
    print(
        f"  {label}: agreement with majority@{args.n}: {agree}/{count} = {agreement:.1%}; "
        f"target >= 98%: {'MET' if agreement >= 0.98 else 'NOT MET'}"
    )
    print(
        f"  {label}: tokens spent vs majority@{args.n}: {share:.1%}; "
        f"target <= 50%: {'MET' if share <= 0.5 else 'NOT MET'}"
    )


def _samples(trees: list[ProblemTree], n: int) -> list[tuple[list[str | None], list[int]]]:
    """Each problem's ``n`` samples of majority@n in branch order: their answers (None
    abstains) and completion tokens."""
    found = []
    for tree in trees:
        branches = [f"{tree.root_id}/b{i}" for i in range(1, n + 1)]
        # a branch's answer is its candidate's (its node, or one under it: a forced answer)
        stated = {
            "/".join(str(ballot["node"]).split("/")[:2]): ballot["answer"]
            for ballot in (tree.vote.ballots if tree.vote is not None else [])
        }
        tokens = [
            sum(node.completion_tokens for node in tree.walk(b)) if b in tree.nodes else 0
            for b in branches
        ]
        found.append(([stated.get(b) for b in branches], tokens))
    return found


def clairvoyant_tokens(trees: list[ProblemTree], n: int, wave: int) -> float:
    """Tokens of a stop rule that knows the full vote, as a share of the full vote's.

    It reads majority@n's own samples in branch order and stops at the first sample, from
    the end of the first wave (``wave`` samples) on, after which the leader is the final
    answer: no rule that sees only the votes so far can stop sooner and still agree on
    every problem (adaptive's later waves may be smaller than the first).
    """
    spent = total = 0
    for answers, tokens in _samples(trees, n):
        final = _leader(answers)
        stop = next((k for k in range(min(wave, n), n + 1) if _leader(answers[:k]) == final), n)
        spent += sum(tokens[:stop])
        total += sum(tokens)
    return spent / total if total else float("nan")


def offline(
    trees: list[ProblemTree], n: int, wave: int, level: float, *, fixed: bool
) -> tuple[int, float, float]:
    """The stop rule at ``level`` replayed here on majority@n's samples, in waves sized as
    adaptive sizes them (:func:`next_wave`) or ``fixed`` (every wave ``wave`` samples):
    problems agreeing with majority@n, the share of its tokens, rounds per problem."""
    agree = spent = total = rounds = 0
    for answers, tokens in _samples(trees, n):
        drawn, decisions = replay_waves(answers, wave, level, fixed=fixed)
        agree += decisions[-1].leader == _leader(answers)
        spent, total = spent + sum(tokens[:drawn]), total + sum(tokens)
        rounds += len(decisions)
    return agree, spent / total if total else float("nan"), rounds / max(len(trees), 1)


def replay_waves(
    answers: Sequence[str | None], wave: int, level: float, *, fixed: bool = False
) -> tuple[int, list[Decision]]:
    """Adaptive's loop on one problem's samples in order, ``len(answers)`` at most: the
    samples it draws, and its decision after each wave (sized as adaptive sizes them, or
    ``fixed``: every wave ``wave`` samples)."""
    n, drawn = len(answers), 0
    decisions: list[Decision] = []
    while drawn < n and not (decisions and decisions[-1].stop):
        size = wave if fixed or not drawn else next_wave(answers[:drawn], n - drawn, level, wave)
        drawn = min(drawn + size, n)
        decisions.append(decide(answers[:drawn], n - drawn, level))
    return drawn, decisions


def _disagreements(adaptive: RunResult, full: RunResult, n: int) -> list[str]:
    """Each problem where adaptive's answer is not majority@n's: the votes, and the stop."""
    lines = []
    for mine, theirs in zip(adaptive.trees, full.trees, strict=True):
        if mine.answer == theirs.answer:
            continue
        votes = [
            theirs.nodes[b].answer if b in theirs.nodes else None
            for b in (f"{theirs.root_id}/b{i}" for i in range(1, n + 1))
        ]
        stop = mine.nodes.get(f"{mine.root_id}/stop")
        where = f"{stop.label} ({stop.finish_reason})" if stop is not None else "no stop node"
        lines.append(
            f"differs on {mine.problem_id}: {where} with {mine.answer!r}; majority@{n}'s "
            f"votes in order: {' '.join(str(v) for v in votes)} -> {theirs.answer!r}"
        )
    return lines


def _leader(answers: list[str | None]) -> str | None:
    """The majority rule's answer: most votes, ties to the one seen first."""
    counts = Counter(a for a in answers if a is not None)
    return counts.most_common(1)[0][0] if counts else None


def _level(text: str) -> float:
    """``--confidence``: one stop level."""
    (level,) = _levels(text) or (float("nan"),)
    return level


def _levels(text: str) -> tuple[float, ...]:
    """``--levels``: stop levels, comma-separated (each checked as --stop-confidence is)."""
    try:
        levels = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    for level in levels:
        try:
            build_strategy(ModeSettings(mode="adaptive", confidence=level))
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return levels


def _waves(text: str) -> tuple[int, ...]:
    """``--waves``: wave sizes, comma-separated (each a positive number of samples)."""
    try:
        waves = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of whole numbers: {text!r}") from None
    if any(wave <= 0 for wave in waves):
        raise argparse.ArgumentTypeError(f"a wave is a positive number of samples: {text!r}")
    return waves


def simulated_model(problems: list[Problem], share: float) -> FakeBehaviour:
    """A model that answers each of ``problems`` right with probability ``share``, and
    otherwise names another of its options at random, drawn from the request's seed."""
    options: dict[str, tuple[str, list[str]]] = {}
    for problem in problems:
        asked = next(m["content"] for m in messages_for(problem) if m["role"] == "user")
        right = str(problem.answer)  # every problem has one (main checks)
        options[asked] = (right, [letter for letter in problem.options or {} if letter != right])

    def reply(body: dict[str, Any], index: int) -> str:
        asked = next((m["content"] for m in body["messages"] if m["role"] == "user"), "")
        if asked not in options:  # the endpoint's probe: any plain text does
            return "one two three four five six seven eight nine ten"
        right, others = options[asked]
        draw = random.Random(f"{body.get('seed')}/{index}")
        answer = right if draw.random() < share or not others else draw.choice(others)
        return f"Let me think it through. The answer is {answer}.\nAnswer: {answer}"

    return FakeBehaviour(model="simulated", reply=reply, native_n=False)


def _share(text: str) -> float:
    """``--simulate``: the share of answers that are right, in (0, 1]."""
    try:
        share = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < share <= 1:
        raise argparse.ArgumentTypeError(f"a share of answers is in (0, 1], not {share:g}")
    return share


Measure = Callable[[str, list[Problem], argparse.Namespace], Awaitable[None]]


async def on_the_chosen_model(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    select: Callable[[argparse.Namespace], list[Problem]],
    measure: Measure,
) -> None:
    """Run ``measure`` on the problems ``select`` reads, against the model the options
    name: a simulated one right on ``--simulate`` of its answers, the endpoint at
    ``--base-url``, or the embedded model. A mistake in the options is a one-line error."""
    try:
        problems = select(args)
    except DatasetError as exc:
        parser.error(str(exc))
    if not problems:
        offset = hasattr(args, "offset")
        options = "--data, --limit and --offset" if offset else "--data and --limit"
        parser.error(f"no problems selected: check {options}")
    if args.simulate is not None:
        if args.base_url:
            parser.error("--simulate and --base-url exclude each other")
        if any(
            p.answer_type != AnswerType.CHOICE or not p.options or p.answer is None
            for p in problems
        ):
            parser.error("--simulate needs choice problems with options and gold (e.g. medmcqa)")
        async with FakeServer(simulated_model(problems, args.simulate)) as simulated:
            print(
                f"a simulated model, right on {args.simulate:.0%} of its answers "
                "(the rest spread over the other options)"
            )
            await measure(simulated.base_url, problems, args)
    elif args.base_url:
        await measure(args.base_url, problems, args)
    else:
        async with embedded_server() as server:
            await measure(server.base_url, problems, args)


SAMPLE_SETS = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _problems(args: argparse.Namespace) -> list[Problem]:
    """The problems ``--data`` names (a sample set's file name will do); raises DatasetError."""
    if args.data is None:
        return load_demo()[args.offset : args.offset + args.limit]
    path = args.data
    if not path.exists() and not path.is_absolute() and (SAMPLE_SETS / path).is_file():
        path = SAMPLE_SETS / path
    return load_problems(path, limit=args.limit, offset=args.offset)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, help="JSONL problems (default: the demo set)")
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--n", type=int, default=16, help="samples of the full vote")
    parser.add_argument("--wave", type=int, default=4, help="adaptive samples per wave, at most")
    parser.add_argument(
        "--confidence",
        type=_level,
        default=0.95,
        help="adaptive: stop once P(the full vote elects the leader) reaches this",
    )
    parser.add_argument(
        "--levels",
        type=_levels,
        default=(),
        help="more stop levels to replay on majority@n's samples, comma-separated",
    )
    parser.add_argument(
        "--waves",
        type=_waves,
        default=(),
        help="more wave sizes to replay on majority@n's samples, comma-separated",
    )
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    parser.add_argument("--budget", type=int, default=32, help="thinking tokens per sample")
    parser.add_argument("--answer-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=2, help="problems at once")
    parser.add_argument("--in-flight", type=int, default=8, help="calls in flight at most")
    parser.add_argument("--base-url", type=url_option)
    parser.add_argument(
        "--simulate",
        type=_share,
        metavar="SHARE",
        help="a simulated model right SHARE of the time instead of the embedded one",
    )
    args = parser.parse_args()
    if not 0 < args.wave <= args.n or any(wave > args.n for wave in args.waves):
        parser.error(f"--wave and --waves must be between 1 and --n ({args.n})")
    await on_the_chosen_model(parser, args, _problems, measure)
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))

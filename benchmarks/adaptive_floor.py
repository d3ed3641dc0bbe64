"""The least tokens any stop rule could spend on a model: adaptive voting's rule beside one
told each problem's answer distribution, one with a prior pooled across problems, and a
clairvoyant one.

Run: .venv/bin/python benchmarks/adaptive_floor.py --data FILE.jsonl [--data FILE ...]
     [--limit 20] [--n 16] [--blocks 3] [--wave 4] [--levels 0.9,0.95,0.97,0.98,0.99,0.995]
     [--base-url URL | --simulate SHARE] [--save-samples FILE | --load-samples FILE]

adaptive_voting.py measures the rule; this asks how much better any rule could do on the
same model. One parallel run draws ``n x blocks`` samples of each problem (48 by default,
one request each, seed 0). Each block of ``n`` in turn is the full vote, majority@n, and
the rules read its samples in order, stopping at the first sample (from the first wave of
``--wave`` on) where their confidence that the full vote elects the leader reaches a level:

- adaptive's rule (:func:`thinktree.agents.adaptive.decide`: the leader is unbeatable, or
  a Dirichlet process predicts that it holds). Its later waves are sized to stop where
  drawing one sample at a time would, as here.
- the informed rule: told the problem's answer distribution, estimated from the other
  blocks' samples (each answer's share, with half a vote added to each answer the
  problem's samples say, to abstaining, and to one answer none of them says), it computes
  exactly the chance that the samples left keep the leader ahead. Samples are drawn
  independently given that distribution, so nothing a rule could read from the samples
  drawn (their text, their logprobs) predicts the rest better: at a given agreement it
  spends about the least any rule can that stops on its confidence.
- the pooled-prior rule: adaptive's question asked with a prior learnt from the run
  instead of the Dirichlet process's: each other problem of the same benchmark is one
  profile (from all of its samples: more than a run could know of them, so the prior is
  an optimistic one), its answers' shares in order of size and the share that
  abstains; which profile the problem has, and which of its answers takes which share,
  follow from the samples drawn, and the rest of the vote is simulated from that
  posterior (:data:`PATHS` paths, seeded). It asks whether knowing how decided a run's
  problems tend to be (empirical Bayes) is worth more than the urn's caution.
- with the distribution known exactly: the same rules on problems simulated from each
  problem's distribution (all its samples), which removes the estimate's own error.
- clairvoyant: stops at the first sample after which the leader is the full vote's
  answer (it knows the full vote; no rule can).

Printed for each level: agreement with majority@n and the share of its tokens (of its
samples, for the simulated problems), and for each rule the fewest tokens at which it
agrees on >= 98 % of problems (issue's target: <= 50 %); the last line says whether
adaptive's rule meets that target on the model's own samples.
--simulate SHARE runs against a simulated model instead (choice problems only) that
answers right with probability SHARE and otherwise with another option at random.
Without --base-url it starts the embedded server (or reuses one from `thinktree serve`).
--save-samples FILE writes the samples drawn (each problem's answers and tokens, JSONL) so
that other rules can be studied on them offline; --load-samples FILE reads such a file
instead of drawing (no model, no calls).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import numpy as np

from adaptive_voting import (
    SAMPLE_SETS,
    _leader,
    _levels,
    _run,
    _samples,
    _share,
    on_the_chosen_model,
)
from thinktree.agents.adaptive import decide
from thinktree.agents.modes import ModeSettings
from thinktree.config import url_option
from thinktree.datasets import load_problems
from thinktree.problems import Problem

TARGET_AGREEMENT = 0.98
UNSEEN = "\x00unseen"
"""The key of "an answer none of the problem's samples says" in a distribution."""
PSEUDO_VOTES = 0.5
RANKS = 6
"""Answers a profile of the pooled prior tells apart; a vote showing more is never stopped
by that rule."""
PATHS = 4000
"""Simulated ends of the vote per decision of the pooled-prior rule."""


Samples = list[tuple[list[str | None], list[int]]]
"""Each problem's samples in order: their answers (None abstains) and completion tokens."""


@dataclass(frozen=True, slots=True)
class Block:
    """One full vote: its ``n`` samples in order (None abstains), their tokens, the
    problem's answer distribution as the informed rule is told it, and the profiles of
    the pooled prior (one row each, see :func:`profile`)."""

    answers: list[str | None]
    tokens: list[int]
    distribution: dict[str | None, float]
    prior: np.ndarray


def distribution(samples: Sequence[str | None], known: Sequence[str]) -> dict[str | None, float]:
    """Each answer's share of ``samples``, with :data:`PSEUDO_VOTES` added to each of
    ``known``, to abstaining (None) and to :data:`UNSEEN`."""
    counts = Counter(samples)
    keys: list[str | None] = [*dict.fromkeys(known), None, UNSEEN]
    weights = [counts.get(key, 0) + PSEUDO_VOTES for key in keys]
    total = sum(weights)
    return {key: weight / total for key, weight in zip(keys, weights, strict=True)}


def informed_holds(
    answers: Sequence[str | None], remaining: int, shares: dict[str | None, float]
) -> float:
    """P(the vote of ``answers`` and ``remaining`` more samples drawn from ``shares``
    elects today's leader), exactly; ties go to the answer seen first, as in ``majority``.

    The rest falls on the answers like a multinomial; for each gain ``a`` of the leader, the
    chance that every rival stays behind it is read off a product of truncated exponential
    generating functions (one per rival, the terms it may reach), abstentions free.
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return 0.0
    leader = counts.most_common(1)[0][0]  # stable: ties go to the first seen
    if remaining <= 0:
        return 1.0
    first_seen = {answer: i for i, answer in enumerate(counts)}
    lead = counts[leader]
    p_lead = shares.get(leader, 0.0)
    facts = [math.factorial(k) for k in range(remaining + 1)]
    total = 0.0
    for gain in range(remaining + 1):
        rest = remaining - gain
        final = lead + gain
        product = np.zeros(rest + 1)
        product[0] = 1.0
        for answer, share in shares.items():
            if answer == leader:
                continue
            if answer is None:  # abstaining elects nobody: any number
                reach = rest
            else:  # a rival seen before the leader wins a tie against it
                wins_tie = first_seen.get(answer, math.inf) < first_seen[leader]
                reach = min(rest, final - counts.get(answer, 0) - (1 if wins_tie else 0))
                if reach < 0:
                    product[:] = 0.0
                    break
            terms = np.array([share**x / facts[x] for x in range(reach + 1)])
            product = np.convolve(product, terms)[: rest + 1]
        total += facts[remaining] * p_lead**gain / facts[gain] * product[rest]
    return float(min(total, 1.0))


def profile(answers: Sequence[str | None]) -> np.ndarray:
    """The share that abstains, then the answers' shares largest first (:data:`RANKS` of
    them), each count with :data:`PSEUDO_VOTES` added so no share is nought."""
    counts = sorted(Counter(a for a in answers if a is not None).values(), reverse=True)
    ranked = [*counts[:RANKS], *[0] * (RANKS - len(counts[:RANKS]))]
    weights = np.array([sum(a is None for a in answers), *ranked], dtype=float) + PSEUDO_VOTES
    shares: np.ndarray = weights / weights.sum()
    return shares


def pooled_priors(samples: Samples, groups: Sequence[str]) -> list[np.ndarray]:
    """Each problem's pooled prior: the profiles of the other problems of its group (of
    every other problem where its group has none; a flat one where there is no other)."""
    profiles = np.array([profile(answers) for answers, _ in samples])
    priors = []
    for i, group in enumerate(groups):
        others = [j for j in range(len(samples)) if j != i]
        same = [j for j in others if groups[j] == group]
        rows = profiles[same or others]
        priors.append(rows if len(rows) else np.full((1, RANKS + 1), 1 / (RANKS + 1)))
    return priors


_ASSIGNMENTS = {
    seen: np.array(list(itertools.permutations(range(RANKS), seen)), dtype=int)
    for seen in range(1, RANKS + 1)
}
"""For each number of answers seen, every way to give them distinct ranks of a profile."""


def pooled_holds(
    answers: Sequence[str | None], remaining: int, prior: np.ndarray, seed: int
) -> float:
    """P(the vote of ``answers`` and ``remaining`` more elects today's leader) where the
    problem's distribution is one of ``prior``'s profiles, its ranks given to the answers
    in some order, equally likely before the samples; estimated on :data:`PATHS` simulated
    ends drawn from the posterior. Ties go to the answer seen first."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return 0.0
    if remaining <= 0:
        return 1.0
    labels = list(counts)  # first-seen order
    if len(labels) > RANKS:
        return 0.0
    leader = labels.index(counts.most_common(1)[0][0])  # stable: the first seen of the top
    votes = np.array([counts[label] for label in labels], dtype=float)
    orders = _ASSIGNMENTS[len(labels)]  # (orders, seen)
    logs = np.log(prior)
    # the log-likelihood of each profile and order: abstentions, then each answer's votes
    fit = sum(a is None for a in answers) * logs[:, :1] + (logs[:, 1:][:, orders] * votes).sum(
        axis=2
    )
    weight = np.exp(fit - fit.max()).ravel()
    rng = np.random.default_rng(seed)
    pick = rng.choice(weight.size, size=PATHS, p=weight / weight.sum())
    rows, order = np.divmod(pick, len(orders))
    shares = prior[rows]
    given = orders[order]
    seen = np.take_along_axis(shares[:, 1:], given, axis=1)
    unseen = shares[:, 1:].copy()  # ranks no answer seen holds: answers not seen yet
    np.put_along_axis(unseen, given, 0.0, axis=1)
    ends = rng.multinomial(remaining, np.concatenate([shares[:, :1], seen, unseen], axis=1))
    final = ends[:, 1 : 1 + len(labels)] + votes
    top = final[:, leader]
    holds = (ends[:, 1 + len(labels) :] <= top[:, None]).all(axis=1)  # seen after it
    for i in range(len(labels)):
        if i != leader:  # one seen before the leader wins a tie against it
            holds &= final[:, i] < top if i < leader else final[:, i] <= top
    return float(holds.mean())


def adaptive_holds(answers: Sequence[str | None], remaining: int) -> float:
    """Adaptive's confidence after ``answers``: 1 where the leader is unbeatable (or no
    sample is left), else its lower bound on the full vote electing the leader."""
    return decide(answers, remaining, math.nextafter(1.0, 0.0)).posterior


Confidence = Callable[[Block, int], float]


def stops(block: Block, confidence: Confidence, levels: Sequence[float], wave: int) -> list[int]:
    """For each level, the samples a rule with ``confidence`` draws before it stops."""
    n = len(block.answers)
    first = min(wave, n)
    held = {k: confidence(block, k) for k in range(first, n)}
    return [next((k for k in range(first, n) if held[k] >= level), n) for level in levels]


def clairvoyant_stop(block: Block, wave: int) -> int:
    """The first sample from the first wave on after which the leader is the full vote's."""
    n = len(block.answers)
    final = _leader(block.answers)
    return next(k for k in range(min(wave, n), n + 1) if _leader(block.answers[:k]) == final)


@dataclass(frozen=True, slots=True)
class Standing:
    """A rule at one level: blocks agreeing with the full vote, and the share of its tokens."""

    agree: int
    share: float


def standings(blocks: Sequence[Block], drawn: Sequence[Sequence[int]]) -> list[Standing]:
    """Agreement and token share at each level; ``drawn[b][i]``: block b's samples at level i."""
    total = sum(sum(block.tokens) for block in blocks)
    found = []
    for i in range(len(drawn[0]) if drawn else 0):
        agree = sum(
            _leader(block.answers[: d[i]]) == _leader(block.answers)
            for block, d in zip(blocks, drawn, strict=True)
        )
        spent = sum(sum(block.tokens[: d[i]]) for block, d in zip(blocks, drawn, strict=True))
        found.append(Standing(agree, spent / total if total else math.nan))
    return found


def fewest(
    levels: Sequence[float], found: Sequence[Standing], count: int
) -> tuple[float, float] | None:
    """The lowest share of tokens at which a rule agrees on >= 98 % of ``count`` blocks,
    and its level; None where it never agrees that often."""
    met = [
        (s.share, level)
        for level, s in zip(levels, found, strict=True)
        if s.agree >= TARGET_AGREEMENT * count
    ]
    return min(met, default=None)


NEVER = f"never >= {TARGET_AGREEMENT:.0%} at these levels"


def report(
    title: str, blocks: Sequence[Block], args: argparse.Namespace, unit: str
) -> dict[str, float]:
    """Each rule at each level and the clairvoyant one; returns each rule's fewest share
    at >= 98 % agreement (nan where it never agrees that often)."""
    levels, count = args.levels, len(blocks)

    def informed(block: Block, k: int) -> float:
        return informed_holds(block.answers[:k], len(block.answers) - k, block.distribution)

    def adaptive(block: Block, k: int) -> float:
        return adaptive_holds(block.answers[:k], len(block.answers) - k)

    def pooled(block: Block, k: int) -> float:
        return pooled_holds(block.answers[:k], len(block.answers) - k, block.prior, seed=k)

    rules = {"adaptive's rule": adaptive, "informed rule": informed, "pooled-prior rule": pooled}
    found = {
        name: standings(blocks, [stops(block, rule, levels, args.wave) for block in blocks])
        for name, rule in rules.items()
    }
    clairvoyant = standings(blocks, [[clairvoyant_stop(block, args.wave)] for block in blocks])[0]
    print(title)
    print(f"  {'level':<7}" + "".join(f"{name:<34}" for name in rules))
    for i, level in enumerate(levels):
        cells = "".join(
            f"{s.agree:>4}/{count} = {s.agree / count:6.1%}, {unit} {s.share:6.1%}    "
            for s in (found[name][i] for name in rules)
        )
        print(f"  {level:<7g}{cells}")
    print(f"  clairvoyant: {clairvoyant.agree}/{count}, {unit} {clairvoyant.share:.1%}")
    least = {name: fewest(levels, found[name], count) for name in rules}
    for name, met in least.items():
        said = NEVER if met is None else f"{met[0]:.1%} (at {met[1]:g})"
        print(f"  {name}: fewest {unit} at >= {TARGET_AGREEMENT:.0%} agreement: {said}")
    return {name: math.nan if met is None else met[0] for name, met in least.items()}


def real_blocks(samples: Samples, n: int, priors: Sequence[np.ndarray]) -> list[Block]:
    """Each problem's samples cut into blocks of ``n``; each block's distribution is
    estimated from the problem's other blocks."""
    blocks = []
    for (answers, tokens), prior in zip(samples, priors, strict=True):
        known = [a for a in answers if a is not None]
        for start in range(0, len(answers) - n + 1, n):
            others = answers[:start] + answers[start + n :]
            blocks.append(
                Block(
                    answers[start : start + n],
                    tokens[start : start + n],
                    distribution(others, known),
                    prior,
                )
            )
    return blocks


def simulated_blocks(
    samples: Samples, n: int, blocks: int, priors: Sequence[np.ndarray]
) -> list[Block]:
    """Blocks drawn from each problem's distribution (all its samples), which the informed
    rule is told exactly; each sample one token (so shares are of samples)."""
    draw = random.Random(0)
    made = []
    for (answers, _), prior in zip(samples, priors, strict=True):
        shares = distribution(answers, [a for a in answers if a is not None])
        shares.pop(UNSEEN)  # an answer never seen: a simulated sample can only say a known one
        keys, weights = list(shares), list(shares.values())
        norm = sum(weights)
        shares = {key: weight / norm for key, weight in shares.items()}
        for _ in range(blocks):
            made.append(Block(draw.choices(keys, weights, k=n), [1] * n, shares, prior))
    return made


async def measure(url: str, problems: list[Problem], args: argparse.Namespace) -> None:
    total = args.n * args.blocks
    modes = ModeSettings(
        mode="parallel", n=total, budget=args.budget, answer_tokens=args.answer_tokens
    )
    with tempfile.TemporaryDirectory(prefix="tt-floor-") as tmp:
        run, seconds = await _run(url, problems, modes, Path(tmp) / "samples", args)
    samples = _samples(run.trees, total)
    if args.save_samples is not None:
        save_samples(args.save_samples, problems, samples, args)
    groups = [problem.benchmark or "" for problem in problems]
    print(
        f"workload: {len(problems)} problems, parallel@{total} ({run.metrics.calls} calls, "
        f"{seconds:.0f} s), {args.budget}-token thinking cap, temperature {args.temperature}, "
        f"seed 0; {args.blocks} blocks of {args.n} a problem, each in turn majority@{args.n}'s "
        f"vote and the others its answer distribution; rules from the first wave of {args.wave}"
    )
    analyse(samples, groups, args)


def save_samples(
    path: Path, problems: Sequence[Problem], samples: Samples, args: argparse.Namespace
) -> None:
    """One JSON line per problem: its id and benchmark, answers and tokens, and how they
    were drawn."""
    drawn = {"temperature": args.temperature, "budget": args.budget, "seed": 0}
    lines = [
        json.dumps(
            {
                "id": problem.id,
                "benchmark": problem.benchmark,
                "answers": answers,
                "tokens": tokens,
                **drawn,
            }
        )
        for problem, (answers, tokens) in zip(problems, samples, strict=True)
    ]
    partial = path.with_name(f"{path.name}.partial")  # a reader never finds half a file
    partial.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    partial.replace(path)


class SamplesError(ValueError):
    """A --load-samples file that cannot be read; its message says what to fix."""


def load_samples(path: Path, total: int) -> tuple[Samples, list[str]]:
    """The samples ``save_samples`` wrote, each problem's first ``total`` of them, and
    each problem's benchmark ("" where the line names none)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SamplesError(f"cannot read --load-samples {path}: {exc.strerror}") from None
    samples: Samples = []
    groups: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            answers, tokens = list(row["answers"]), [int(t) for t in row["tokens"]]
            group = str(row.get("benchmark") or "")
        except (ValueError, KeyError, TypeError):
            raise SamplesError(
                f"{path}:{number}: not a line --save-samples writes (answers, tokens)"
            ) from None
        if len(answers) != len(tokens) or len(answers) < total:
            raise SamplesError(
                f"{path}:{number}: {len(answers)} answers and {len(tokens)} tokens, but "
                f"--n x --blocks asks for {total} samples a problem"
            )
        samples.append(([None if a is None else str(a) for a in answers[:total]], tokens[:total]))
        groups.append(group)
    if not samples:
        raise SamplesError(f"{path} holds no samples")
    return samples, groups


def analyse(samples: Samples, groups: Sequence[str], args: argparse.Namespace) -> None:
    """What the model's votes look like, each rule's standing, and the verdict;
    ``groups`` names each problem's benchmark (the pooled prior's problems)."""
    total = args.n * args.blocks
    votes = [answers[s : s + args.n] for answers, _ in samples for s in range(0, total, args.n)]
    tops = [max(Counter(a for a in v if a is not None).values(), default=0) for v in votes]
    abstain = sum(a is None for v in votes for a in v) / max(sum(len(v) for v in votes), 1)
    priors = pooled_priors(samples, groups)
    print(
        f"the model's votes: the leader holds {sum(tops) / len(tops):.1f} of {args.n} on average "
        f"and more than half on {sum(t > args.n / 2 for t in tops) / len(tops):.0%} of blocks; "
        f"{abstain:.1%} of samples abstain"
    )
    own = report(
        f"on the model's own samples ({len(votes)} blocks): agreement with majority@{args.n}, "
        "tokens spent",
        real_blocks(samples, args.n, priors),
        args,
        "tokens",
    )
    exact = report(
        f"on problems simulated from each one's {total} answers, the distribution known "
        f"exactly ({len(votes)} blocks): agreement, samples drawn",
        simulated_blocks(samples, args.n, args.blocks, priors),
        args,
        "samples",
    )
    found = [own["informed rule"], exact["informed rule"]]
    floor = min((share for share in found if not math.isnan(share)), default=math.nan)
    reachable = floor <= 0.5
    print(
        f"tokens <= 50 % of majority@{args.n}'s at >= {TARGET_AGREEMENT:.0%} agreement: "
        + (
            f"within reach on this model (the informed rule: {floor:.1%})"
            if reachable
            else "not within reach on this model of a rule that stops on its confidence, "
            + (
                f"even one told each problem's answer distribution ({floor:.1%})"
                if not math.isnan(floor)
                else f"none reached {TARGET_AGREEMENT:.0%} at these levels"
            )
        )
    )
    adaptive = own["adaptive's rule"]
    print(
        "adaptive's rule on the model's own samples: "
        + (
            NEVER
            if math.isnan(adaptive)
            else f"{adaptive:.1%} of the tokens at >= {TARGET_AGREEMENT:.0%} agreement, "
            + ("the target met" if adaptive <= 0.5 else "the target not met")
        )
    )


def _problems(args: argparse.Namespace) -> list[Problem]:
    """``--limit`` problems of each ``--data`` file (a sample set's file name will do)."""
    problems: list[Problem] = []
    for path in args.data:
        if not path.exists() and not path.is_absolute() and (SAMPLE_SETS / path).is_file():
            path = SAMPLE_SETS / path
        problems += load_problems(path, limit=args.limit)
    return problems


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--data", type=Path, action="append", default=[], help="JSONL problems (repeatable)"
    )
    parser.add_argument("--limit", type=int, default=20, help="problems of each --data file")
    parser.add_argument("--n", type=int, default=16, help="samples of the full vote")
    parser.add_argument("--blocks", type=int, default=3, help="full votes drawn per problem (>= 2)")
    parser.add_argument("--wave", type=int, default=4, help="the first wave's samples")
    parser.add_argument("--levels", type=_levels, default=(0.9, 0.95, 0.97, 0.98, 0.99, 0.995))
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature")
    parser.add_argument("--budget", type=int, default=32, help="thinking tokens per sample")
    parser.add_argument("--answer-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4, help="problems at once")
    parser.add_argument("--in-flight", type=int, default=16, help="calls in flight at most")
    parser.add_argument("--base-url", type=url_option)
    parser.add_argument("--simulate", type=_share, metavar="SHARE")
    parser.add_argument("--save-samples", type=Path, metavar="FILE", help="write the samples")
    parser.add_argument(
        "--load-samples", type=Path, metavar="FILE", help="read saved samples, draw none"
    )
    args = parser.parse_args()
    if args.n <= 0 or not 0 < args.wave <= args.n:
        parser.error("--n must be positive and --wave between 1 and --n")
    if args.blocks < 2:
        parser.error("--blocks must be at least 2: the others estimate each block's distribution")
    if not args.levels:
        parser.error("--levels names no level")
    if args.load_samples is not None:
        if args.data or args.save_samples or args.base_url or args.simulate is not None:
            parser.error(
                "--load-samples draws no samples: drop --data, --save-samples, --base-url "
                "and --simulate"
            )
        try:
            samples, groups = load_samples(args.load_samples, args.n * args.blocks)
        except SamplesError as exc:
            parser.error(str(exc))
        print(f"workload: {len(samples)} problems' samples read from {args.load_samples}")
        analyse(samples, groups, args)
        return 0
    if not args.data:
        parser.error("name the problems with --data (or saved samples with --load-samples)")
    if args.save_samples is not None and not args.save_samples.parent.is_dir():
        parser.error(f"--save-samples {args.save_samples}: no such folder to write it in")
    await on_the_chosen_model(parser, args, _problems, measure)
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))

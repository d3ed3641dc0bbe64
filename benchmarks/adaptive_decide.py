"""What adaptive's stopping rule costs the event loop per wave, at --n from 16 to 1,024.

Run: .venv/bin/python benchmarks/adaptive_decide.py [--n 16,64,256,1024] [--problems 6]
     [--rounds 2]

Each wave of an adaptive run decides on the event loop whether to stop (``decide``) and
how many samples the next wave draws (``next_wave``); both sum Dirichlet-multinomial
chances over the samples still to come, for each rival of the leader. This replays that
loop on simulated problems whose answers scatter as the embedded model's do at temperature
0.7 (the leader takes 45 % of the samples, three rivals 25, 12 and 7 %, 11 % abstain;
seeded), once with thinktree's one-pass sum and once with the direct sum over every pair
of gains (kept here as the reference), alternating round by round on the same votes. It
prints, for each ``--n``: waves per problem, the milliseconds of CPU per wave each way,
their ratio, and the largest difference between the two's chances (the stops must agree).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections.abc import Callable

from adaptive_voting import replay_waves
from thinktree.agents import adaptive

SHARES = {"A": 0.45, "B": 0.25, "C": 0.12, "D": 0.07, None: 0.11}
CONFIDENCE = 0.95


def direct_overtake(
    leader: int,
    rival: int,
    rest: float,
    remaining: int,
    *,
    leader_wins_ties: bool,
    rival_weight: float | None = None,
) -> float:
    """The same chance as ``adaptive.overtake_probability``, summed over every pair of gains
    (the leader's, the rival's): a cost in the square of ``remaining``."""
    weight = rival if rival_weight is None else rival_weight
    if weight == 0:
        return 0.0
    total = leader + weight + rest
    span = range(remaining + 1)
    fact = [math.lgamma(k + 1) for k in span]
    lead = [math.lgamma(leader + k) - math.lgamma(leader) for k in span]
    riv = [math.lgamma(weight + k) - math.lgamma(weight) for k in span]
    if rest > 0:
        other = [math.lgamma(rest + k) - math.lgamma(rest) - fact[k] for k in span]
    else:
        other = [0.0] + [-math.inf] * remaining
    scale = fact[remaining] + math.lgamma(total) - math.lgamma(total + remaining)
    margin = leader - rival + (1 if leader_wins_ties else 0)
    probability = 0.0
    for a in span:
        for b in range(max(0, margin + a), remaining - a + 1):
            c = remaining - a - b
            if other[c] != -math.inf:
                probability += math.exp(scale + lead[a] - fact[a] + riv[b] - fact[b] + other[c])
    return min(probability, 1.0)


def votes_for(n: int, problems: int, seed: int) -> list[list[str | None]]:
    """``problems`` sequences of ``n`` answers drawn from :data:`SHARES`."""
    rng = random.Random(seed)
    options, weights = list(SHARES), list(SHARES.values())
    return [rng.choices(options, weights, k=n) for _ in range(problems)]


def timed(
    sets: list[list[str | None]], wave: int, overtake: Callable[..., float]
) -> tuple[float, int, list[float]]:
    """CPU seconds to replay every problem with ``overtake`` as the rule's sum."""
    kept = adaptive.overtake_probability
    adaptive.overtake_probability = overtake  # leader_holds looks it up at each call
    try:
        started = time.process_time()
        waves, chances = 0, []
        for votes in sets:
            _, decisions = replay_waves(votes, wave, CONFIDENCE)
            waves += len(decisions)
            chances += [d.posterior for d in decisions]
        return time.process_time() - started, waves, chances
    finally:
        adaptive.overtake_probability = kept


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", default="16,64,256,1024", help="most samples, comma-separated")
    parser.add_argument("--problems", type=int, default=6, help="simulated problems per --n")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    parser.add_argument("--wave", type=int, default=4, help="first wave, most a later one draws")
    args = parser.parse_args()
    try:
        sizes = [int(x) for x in args.n.split(",")]
    except ValueError:
        parser.error(f"--n takes numbers separated by commas, not {args.n!r}")
    if min(sizes) < args.wave or args.problems <= 0 or args.rounds <= 0 or args.wave <= 0:
        parser.error("--n at least --wave, and --problems, --rounds and --wave positive")
    shares = ", ".join(f"{answer or 'abstain'} {share:.0%}" for answer, share in SHARES.items())
    print(
        f"adaptive's stopping rule on {args.problems} simulated problems per --n (answers "
        f"{shares}), first wave {args.wave}, stop level {CONFIDENCE}, {args.rounds} rounds "
        "alternating"
    )
    for n in sizes:
        sets = votes_for(n, args.problems, seed=n)
        spent = {"one-pass": 0.0, "direct": 0.0}
        found: dict[str, list[float]] = {}
        waves = 0
        for r in range(args.rounds):
            for name in ("one-pass", "direct") if r % 2 == 0 else ("direct", "one-pass"):
                rule = adaptive.overtake_probability if name == "one-pass" else direct_overtake
                seconds, waves, found[name] = timed(sets, args.wave, rule)
                spent[name] += seconds
        if len(found["one-pass"]) != len(found["direct"]):
            print(f"n={n}: the two sums stopped at different waves", file=sys.stderr)
            return 1
        worst = max(abs(a - b) for a, b in zip(found["one-pass"], found["direct"], strict=True))
        ours, theirs = (1000 * spent[k] / (args.rounds * waves) for k in ("one-pass", "direct"))
        print(
            f"--n {n:5d}: {waves / args.problems:5.1f} waves a problem; per wave "
            f"{ours:8.3f} ms (direct sum {theirs:8.3f} ms, {theirs / ours:5.1f}x); "
            f"largest difference in chance {worst:.1e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

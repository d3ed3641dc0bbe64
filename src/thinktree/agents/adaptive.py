"""Adaptive voting: parallel sampling in waves that stops once the vote is decided.

After each wave the votes so far are checked against two rules, and sampling stops at
the first that holds:

- **unbeatable**: no rival, not even one taking every sample still to come, can end
  ahead of the leader (or level with it: under ``majority`` a tie goes to the answer seen
  first, so only a rival seen first wins it; under ``shortest-majority`` and
  ``verifier-tiebreak`` what breaks a tie is not known before the samples are, so no
  tie may be within reach), so no outcome of the rest can change the vote;
- **posterior**: the probability that the full vote (all ``n`` samples) would elect the
  leader is at least ``confidence``. The samples still to come are predicted from those
  drawn so far by a Dirichlet process (a Chinese restaurant process with concentration
  1): each next sample repeats an answer seen ``c`` times with weight ``c``, and says
  an answer not seen yet with weight 1. The probability is a lower bound (see
  :func:`leader_holds`), so the rule errs towards drawing more.

The first wave draws ``wave`` samples; each later one the fewest that could decide the
vote were they all the leader's, at most ``wave`` (:func:`next_wave`). So sampling stops
where drawing one sample at a time would, in fewer rounds. Replayed on the samples of
majority@16 on 480 problems (six sets, the embedded model), that is as few tokens as
waves of 1 in 4.4 rounds instead of 10.4; against fixed waves of 4, which overshoot the
stop, about 4 points fewer of the full vote's tokens at matched agreement (72.0 % at 0.98
against 75.8 % at 0.95, 476 and 475 of 480 problems agreeing), in 1.5 more rounds.

A wave whose samples a token or money limit refuses stops the sampling too (rule
``limit``): a later wave would be refused as well, and the samples drawn decide.

The rules decide a count of votes, so the run's rule must be one (:data:`COUNTED_RULES`):
a length-weighted or verifier-scored vote could turn on samples never drawn.

Samples that state no answer abstain: they count as spent, not as votes. Each wave is
one request with ``n`` choices where the endpoint allows it (as in ``parallel``);
branches keep the node ids ``b1, b2, …`` that ``parallel`` gives them. Where each sample
is a request of its own, its node's seed makes the first k samples of an adaptive run
the first k of a parallel one; a request with ``n`` choices is sent with its first
node's seed, so there only the first wave's samples are parallel's (a later wave's
request starts at another node's seed).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from thinktree.agents.solver import Branch, Candidate, SegmentRequest, Solver
from thinktree.agents.strategies import BudgetForcing, First, Parallel, Strategy
from thinktree.errors import ConfigError
from thinktree.orchestrator.events import NodeFinished, NodeKind, NodeStarted
from thinktree.orchestrator.ledger import Budget

__all__ = [
    "COUNTED_RULES",
    "Adaptive",
    "Decision",
    "decide",
    "leader_holds",
    "next_wave",
    "overtake_probability",
]

COUNTED_RULES = {"majority": True, "shortest-majority": False, "verifier-tiebreak": False}
"""The voting rules the stop rules decide, each with whether its ties go to the answer seen
first (``majority``'s do; the others' turn on the samples' lengths or scores)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether to stop sampling, and why."""

    stop: bool
    leader: str | None
    rule: str  # "unbeatable", "posterior", "exhausted", "limit" or "undecided"
    posterior: float


NEW_ANSWER_WEIGHT = 1.0
"""The Dirichlet process's concentration: the weight of "an answer not seen yet"."""


def overtake_probability(
    leader: int,
    rival: int,
    rest: float,
    remaining: int,
    *,
    leader_wins_ties: bool,
    rival_weight: float | None = None,
) -> float:
    """P(a rival ends level with or ahead of the leader) after ``remaining`` more samples.

    ``leader`` and ``rival`` are their votes so far. The next samples fall to the leader,
    the rival or anything else like draws from a Pólya urn holding ``leader``,
    ``rival_weight`` (default: ``rival``) and ``rest`` balls, each draw adding a ball of
    its colour, so the gains follow a three-way Dirichlet-multinomial. A final tie counts
    against the leader unless it wins ties.

    Exact, in one pass over ``t``, what the two gain together: ``t`` is beta-binomial
    (the two's balls against the rest's), and given ``t`` the rival's share of it is
    beta-binomial too (the same urn with the two colours alone). The chance that the
    share reaches what overtaking needs is carried from one ``t`` to the next, so the
    cost grows with ``remaining``, not with its square (a sum over every pair of gains
    took a second a wave at ``--n 1024``).
    """
    weight = rival if rival_weight is None else rival_weight
    if leader <= 0 or rival < 0 or weight < 0 or rest < 0 or remaining < 0:
        raise ValueError("the leader needs a vote, and counts and weights cannot be negative")
    if weight == 0:
        return 0.0  # the rival is never drawn
    pair = leader + weight  # the two's balls
    margin = leader - rival + (1 if leader_wins_ties else 0)  # b - a must reach this
    if margin > remaining:
        return 0.0  # not even every sample left would do it
    lg = math.lgamma
    span = range(remaining + 2)
    fact = [lg(j + 1) for j in span]  # log j!
    rising_rival = [lg(j + weight) for j in span]  # log Γ(j + weight), and so on
    rising_leader = [lg(j + leader) for j in span]
    rising_pair = [lg(j + pair) for j in span]
    share_scale = lg(pair) - lg(weight) - lg(leader)

    def share(t: int, b: int) -> float:
        """P(the rival takes b of t draws between the two)."""
        if b < 0 or b > t:
            return 0.0
        return math.exp(
            share_scale
            + fact[t]
            - fact[b]
            - fact[t - b]
            + rising_rival[b]
            + rising_leader[t - b]
            - rising_pair[t]
        )

    if rest > 0:  # P(the two gain t of the remaining samples): beta-binomial
        rising_rest = [lg(j + rest) for j in span]
        scale = fact[remaining] + lg(pair + rest) - lg(pair) - lg(rest)
        scale -= lg(remaining + pair + rest)
        together = [
            math.exp(
                scale - fact[t] - fact[remaining - t] + rising_pair[t] + rising_rest[remaining - t]
            )
            for t in range(remaining + 1)
        ]
    else:  # nothing else can be drawn: every sample goes to the two
        together = [0.0] * remaining + [1.0]

    # k: the fewest of t draws between the two that the rival must take, b - (t - b) >=
    # margin; below t = margin it would need more than all t, so the sum starts there
    start = max(margin, 0)
    k = start if margin > 0 else 0
    reach = share(start, k)  # P(the rival's share of t draws >= k): all of them, or any
    probability = together[start] * reach
    for t in range(start, remaining):
        # one more draw between the two: the rival's share reaches k from k - 1
        if k > 0:
            reach += share(t, k - 1) * (weight + k - 1) / (pair + t)
        if (t + 1 + margin + 1) // 2 > k:  # it needs one more now
            reach -= share(t + 1, k)
            k += 1
        probability += together[t + 1] * max(reach, 0.0)
    return min(max(probability, 0.0), 1.0)


def leader_holds(
    answers: Sequence[str | None], remaining: int, *, ties_to_first: bool = True
) -> float:
    """A lower bound on P(the vote of these and ``remaining`` more samples elects the leader).

    The leader is the answer with most votes, ties going to the one seen first (as in
    ``majority``); without ``ties_to_first`` a tie at the end counts as lost. The chance
    that it loses is at most the sum, over each rival, of the chance that this rival alone
    ends level with or ahead of it (exact, by :func:`overtake_probability`); the answers
    not seen yet count as one rival holding every new answer's votes, which never has
    fewer than any one of them. Abstentions weigh like any answer in the prediction (they
    recur) but elect nobody. 0 when there is no leader.
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return 0.0
    order = {answer: i for i, answer in enumerate(counts)}  # first-seen order
    leader, top = counts.most_common(1)[0]  # stable: ties go to the first seen
    drawn = len(answers)
    lose = 0.0
    for answer, votes in counts.items():
        if answer != leader:
            lose += overtake_probability(
                top,
                votes,
                drawn - top - votes + NEW_ANSWER_WEIGHT,
                remaining,
                leader_wins_ties=ties_to_first and order[leader] < order[answer],
            )
    lose += overtake_probability(  # every answer not seen yet, together
        top,
        0,
        drawn - top,
        remaining,
        leader_wins_ties=ties_to_first,
        rival_weight=NEW_ANSWER_WEIGHT,
    )
    return max(0.0, 1.0 - lose)


def decide(
    answers: Sequence[str | None],
    remaining: int,
    confidence: float,
    *,
    ties_to_first: bool = True,
) -> Decision:
    """Whether the votes ``answers`` (None abstains) settle the majority vote.

    ``remaining`` is how many samples could still be drawn. The leader is the answer
    with most votes, ties going to the one seen first (as in ``majority``); without
    ``ties_to_first`` (see :data:`COUNTED_RULES`) a tie within reach is not settled.
    """
    counts = Counter(a for a in answers if a is not None)
    leader = _leader(counts, ties_to_first)
    if remaining <= 0:
        return Decision(True, leader, "exhausted", 1.0 if leader is not None else 0.0)
    if leader is not None and _unbeatable(counts, leader, remaining, ties_to_first):
        return Decision(True, leader, "unbeatable", 1.0)
    posterior = leader_holds(answers, remaining, ties_to_first=ties_to_first)
    if leader is not None and posterior >= confidence:
        return Decision(True, leader, "posterior", posterior)
    return Decision(False, leader, "undecided", posterior)


def next_wave(
    answers: Sequence[str | None],
    remaining: int,
    confidence: float,
    most: int,
    *,
    ties_to_first: bool = True,
) -> int:
    """How many samples the next wave draws: the fewest that could decide the vote, were
    every one of them the leader's, and at most ``most`` (and ``remaining``).

    Fewer would not stop it whatever they say, so none of them is wasted on a check that
    cannot hold; more could overshoot a stop. Where no one answer leads, ``most``.
    """
    most = min(most, remaining)
    leader = _leader(Counter(a for a in answers if a is not None), ties_to_first)
    if leader is None or most <= 1:
        return max(most, 0)

    def stops(k: int) -> bool:
        votes = [*answers, *[leader] * k]
        return decide(votes, remaining - k, confidence, ties_to_first=ties_to_first).stop

    low, high = 1, most  # more votes for the leader never undo a stop: the first that stops
    if not stops(high):
        return most
    while low < high:
        middle = (low + high) // 2
        if stops(middle):
            high = middle
        else:
            low = middle + 1
    return low


def _leader(counts: Counter[str], ties_to_first: bool) -> str | None:
    """The answer with most votes; of several level, the first seen where the run's vote
    gives it a tie, else none (the vote breaks it by what the counts do not hold: lengths,
    scores)."""
    top = counts.most_common(2)
    if not top or (len(top) == 2 and top[0][1] == top[1][1] and not ties_to_first):
        return None
    return top[0][0]  # stable: ties go to the first seen


def _unbeatable(counts: Counter[str], leader: str, remaining: int, ties_to_first: bool) -> bool:
    """Whether no rival taking all ``remaining`` samples could win the vote from ``leader``."""
    top = counts[leader]
    if remaining > top or (remaining == top and not ties_to_first):
        return False  # an answer not seen yet could outnumber it (or tie it)
    # a rival seen before the leader wins a tie against it; where ties do not go to the
    # first seen, a tie is not the leader's either
    wins_tie = True
    for answer, votes in counts.items():  # first-seen order
        if answer == leader:
            wins_tie = not ties_to_first
            continue
        reach = votes + remaining
        if reach > top or (reach == top and wins_tie):
            return False
    return True


@dataclass(frozen=True, slots=True)
class Adaptive:
    """Up to ``n`` branches of ``inner``, in waves of at most ``wave``, until the vote is
    decided."""

    n: int = 16
    wave: int = 4
    confidence: float = 0.95
    inner: Strategy = field(default_factory=BudgetForcing)
    name: str = "adaptive"
    ties_to_first: bool = True
    """Whether the run's vote gives a tie to the answer seen first (:data:`COUNTED_RULES`)."""

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ConfigError(f"--n must be a positive number of samples, not {self.n}")
        if not 0 < self.wave <= self.n:
            raise ConfigError(f"--wave must be between 1 and --n ({self.n}), not {self.wave}")
        if not 0.5 < self.confidence < 1:
            raise ConfigError(
                f"--stop-confidence must be above 0.5 and below 1, not {self.confidence}"
            )

    def allowed_tokens(self) -> int:
        return self.n * self.inner.allowed_tokens()

    def first_request(self, parent: str, pool: Budget) -> SegmentRequest:
        return self.inner.first_request(f"{parent}/b1", pool)

    def settle(self, solver: Solver, first: First) -> list[Candidate] | None:
        return None  # its branches settle themselves

    async def run(
        self,
        solver: Solver,
        branch: Branch,
        parent: str,
        pool: Budget,
        first: First | None = None,
    ) -> list[Candidate]:
        candidates: list[Candidate] = []
        drawn = 0
        decision = Decision(False, None, "undecided", 0.0)
        while drawn < self.n:
            size = (
                min(self.wave, self.n)
                if not candidates
                else next_wave(
                    [c.answer for c in candidates],
                    self.n - drawn,
                    self.confidence,
                    self.wave,
                    ties_to_first=self.ties_to_first,
                )
            )
            wave = Parallel(n=size, inner=self.inner, start=drawn + 1)
            drew = await wave.run(solver, branch, parent, pool)
            candidates += drew
            drawn += size
            if not drew or (pool.run_stopped is not None and len(candidates) < self.n):
                # a limit refused samples of this wave: every later one would be refused
                # too, so the samples drawn decide (all of them drawn, none was refused)
                decision = _limited([c.answer for c in candidates], self.n, self.ties_to_first)
                drawn = len(candidates)
                break
            answers = [c.answer for c in candidates]
            decision = decide(
                answers, self.n - drawn, self.confidence, ties_to_first=self.ties_to_first
            )
            if decision.stop:
                break
        if candidates:  # none: not one sample could be drawn, nothing to say
            await _record_stop(solver, parent, decision, drawn, self.n)
        return candidates


def _limited(answers: Sequence[str | None], most: int, ties_to_first: bool) -> Decision:
    """Sampling stopped by a token or money limit after ``answers`` of ``most`` samples."""
    leader = _leader(Counter(a for a in answers if a is not None), ties_to_first)
    held = leader_holds(answers, most - len(answers), ties_to_first=ties_to_first)
    return Decision(True, leader, "limit", held if leader is not None else 0.0)


async def _record_stop(
    solver: Solver, parent: str, decision: Decision, drawn: int, most: int
) -> None:
    """A node under the problem saying when and why sampling stopped."""
    node_id = f"{parent}/stop"
    why = {
        "unbeatable": "the leader cannot be overtaken by the samples left",
        "posterior": f"P(the full vote elects the leader) >= {decision.posterior:.3f}",
        "exhausted": "every sample drawn",
        "limit": "a token or money limit refused more samples",
    }.get(decision.rule, decision.rule)
    if decision.leader is None and drawn:
        why += " (no one answer leads: the run's vote breaks the tie)"
    await solver.bus.emit(
        NodeStarted(
            node_id=node_id,
            problem_id=solver.problem.id,
            parent_id=parent,
            kind=NodeKind.VOTE,
            label=f"stopped at {drawn}/{most}",
        )
    )
    await solver.bus.emit(
        NodeFinished(
            node_id=node_id,
            text=f"stopped after {drawn} of {most} samples: {why}",
            finish_reason=decision.rule,
            prompt_tokens=0,
            completion_tokens=0,
            answer=decision.leader,
            extraction="adaptive",
        )
    )

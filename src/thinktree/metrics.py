"""Run metrics, computed from the finished trees (never from counters kept on the side)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from thinktree.agents.aggregators import Aggregator, Vote, shortest_majority
from thinktree.grading import grade
from thinktree.orchestrator.events import PAST_CONTEXT, NodeKind, NodeStatus
from thinktree.orchestrator.tree import Node, ProblemTree
from thinktree.pricing import Price
from thinktree.problems import Problem

_STRUCTURAL = {NodeKind.PROBLEM, NodeKind.BRANCH, NodeKind.VOTE, NodeKind.VERDICT}
_THINKING = {NodeKind.GENERATION, NodeKind.EXTENSION, NodeKind.STEP}


@dataclass(frozen=True, slots=True)
class Metrics:
    problems: int
    answered: int
    graded: int
    correct: int
    accuracy: float | None
    coverage: float | None
    failed: int
    past_context: int  # requests refused as longer than the model's context (not resent)
    prompt_tokens: int
    completion_tokens: int
    thinking_tokens: int
    tokens_allowed: int
    utilisation: float | None
    calls: int
    retries: int
    latency_p50_s: float | None
    latency_p95_s: float | None
    cost_usd: float | None = None  # None when the model has no price
    verifier: VerifierMetrics | None = None  # None when no verifier ran
    read_back: ReadBack | None = None  # None when the run read back no other run's call
    accuracy_by_step: list[float] | None = None  # sequential, hybrid: see accuracy_by_step()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ReadBack:
    """The calls a run read back from a call store it shares with other runs (a bench's):
    another run made them and paid for them. Their tokens count among the run's (its
    answers took them), but not its cost, latency or retries; ``cost_usd`` is their price."""

    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None


@dataclass(frozen=True, slots=True)
class VerifierMetrics:
    """How well the verifiers picked, over problems with a gold answer and scored
    candidates.

    ``pick_accuracy``: the best-scored candidate's answer is right; ``vote_accuracy``:
    the plain vote of the same candidates, unweighted (``shortest-majority``, the run's
    default: abstentions never win, a tie goes to the shortest reasoning), is right;
    ``oracle``: any candidate is right (coverage). ``auroc``: how well a candidate's
    combined score separates right from wrong answers (None when only one kind was
    seen). Candidates whose every verdict failed have no score: they count in neither,
    and a problem without a scored candidate counts in none of the figures. Tokens and
    cost are the verifiers' own, on top of the solver's; as the solver's, the judge calls
    read back from another run's (``read_back``) count in the tokens, not in the cost.
    """

    problems: int
    pick_accuracy: float | None
    vote_accuracy: float | None
    oracle: float | None
    auroc: float | None
    verdicts: int
    failed_verdicts: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    read_back: ReadBack | None = None  # None when no judge call was read back


def auroc(scores: list[float], labels: list[bool]) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties count half); None without both classes.

    A NaN score ranks nowhere: it is left out (it would never equal itself when ranked).
    """
    kept = [(s, y) for s, y in zip(scores, labels, strict=True) if not math.isnan(s)]
    pos = [s for s, y in kept if y]
    neg = [s for s, y in kept if not y]
    if not pos or not neg:
        return None
    ranked = sorted(s for s, _ in kept)
    rank: dict[float, float] = {}
    i = 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j] == ranked[i]:
            j += 1
        rank[ranked[i]] = (i + j + 1) / 2  # mean 1-based rank of the tied block
        i = j
    total = sum(rank[s] for s in pos)
    return (total - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))


def verifier_metrics(
    trees: list[ProblemTree],
    read_back: Mapping[str, tuple[int, int]] | None = None,
    price: Price | None = None,
) -> VerifierMetrics | None:
    """The verifier block of the metrics, from each tree's verdicts (None without any).

    ``read_back``: the judge calls the run read back from another run's, with their
    prompt and completion tokens; only a judge on the run's own endpoint reads calls
    back, so ``price``, its model's, prices them."""
    if not any(t.verdicts for t in trees):
        return None
    verdicts = [v for t in trees for v in t.verdicts]
    picks: list[bool] = []
    votes: list[bool] = []
    oracle: list[bool] = []
    all_scores: list[float] = []
    all_labels: list[bool] = []
    for tree in trees:
        # one entry per candidate: (answer, correct, combined score), in first-scored order
        seen: dict[str, tuple[str | None, bool | None]] = {}
        for v in tree.verdicts:
            seen.setdefault(v.candidate_node, (v.answer, v.correct))
        if not seen or any(correct is None for _, correct in seen.values()):
            continue
        nodes = [node for node in seen if node in tree.nodes]
        rows = [(seen[n][0], bool(seen[n][1]), tree.nodes[n].combined_score) for n in nodes]
        scored = [(i, score) for i, (_, _, score) in enumerate(rows) if score is not None]
        if not scored:
            continue  # every verdict failed: the verifiers picked nothing here
        best = max(scored, key=lambda item: (item[1], -item[0]))[0]
        picks.append(rows[best][1])
        plain = shortest_majority([Vote(seen[n][0], _reasoned(tree, n)) for n in nodes])
        votes.append(plain.winner is not None and rows[plain.winner][1])
        oracle.append(any(correct for _, correct, _ in rows))
        all_scores += [score for _, _, score in rows if score is not None]
        all_labels += [correct for _, correct, score in rows if score is not None]
    # a verdict that spent tokens at no known price leaves the total unknown; one that
    # spent nothing (a failure before any call, a verifier that makes none) costs nothing
    unpriced = any(
        v.cost_usd is None and (v.prompt_tokens or v.completion_tokens) for v in verdicts
    )
    costs = [v.cost_usd for v in verdicts if v.cost_usd is not None]
    borrowed = _read_back(len(read_back), read_back.values(), price) if read_back else None

    def share(xs: list[bool]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    return VerifierMetrics(
        problems=len(picks),
        pick_accuracy=share(picks),
        vote_accuracy=share(votes),
        oracle=share(oracle),
        auroc=auroc(all_scores, all_labels),
        verdicts=len(verdicts),
        failed_verdicts=sum(1 for v in verdicts if v.score is None),
        prompt_tokens=sum(v.prompt_tokens for v in verdicts),
        completion_tokens=sum(v.completion_tokens for v in verdicts),
        cost_usd=None if unpriced or not costs else _own_cost(costs, borrowed),
        read_back=borrowed,
    )


def _own_cost(costs: list[float], borrowed: ReadBack | None) -> float | None:
    """What the verdicts cost less what the calls read back behind them cost (another
    run paid for those); None where those have no price."""
    if borrowed is None:
        return round(math.fsum(costs), 6)
    if borrowed.cost_usd is None:
        return None
    return max(0.0, round(math.fsum(costs) - borrowed.cost_usd, 6))


def accuracy_by_step(
    trees: Sequence[ProblemTree], problems: Sequence[Problem], vote: Aggregator | None = None
) -> list[float] | None:
    """A run's accuracy after each step of its lines of revisions (a sequential problem's
    one line, a hybrid problem's line in each branch), over the problems the run graded
    (its accuracy's). After step k, a line's answer is the last one its steps up to k
    stated (before any forced answer), and a problem's, its lines' answers under ``vote``
    (each line's tokens up to k). A line that ended early (a failed call, a limit) keeps
    its last answer. None when no step ran, or where lines are many and no ``vote`` can
    count them (a verifier's vote scores only the final candidates)."""
    gold = {p.id: p for p in problems}
    marks: list[list[bool]] = []
    for tree in trees:
        if tree.correct is None or tree.covered is None:  # ungraded: as in compute()
            continue
        lines = _lines(tree)
        if len(lines) > 1 and vote is None:
            return None
        right: list[bool] = []
        for k in range(max(map(len, lines), default=0)):
            ballots = [_standing(line[: k + 1]) for line in lines]
            answer = ballots[0].answer if vote is None else vote(ballots).answer
            right.append(grade(answer, gold[tree.problem_id]) is True)
        marks.append(right)
    steps = max(map(len, marks), default=0)
    if steps == 0:
        return None
    return [
        sum(1 for right in marks if right and right[min(k, len(right) - 1)]) / len(marks)
        for k in range(steps)
    ]


def _lines(tree: ProblemTree) -> list[list[Node]]:
    """The steps of each line of revisions in ``tree``: the root's own, or each branch's."""
    children = [tree.nodes[c] for c in tree.root.children]
    if any(node.kind == NodeKind.STEP for node in children):
        return [[node for node in children if node.kind == NodeKind.STEP]]
    return [
        [step for c in branch.children if (step := tree.nodes[c]).kind == NodeKind.STEP]
        for branch in children
        if branch.kind == NodeKind.BRANCH
    ]


def _standing(steps: list[Node]) -> Vote:
    """A line's ballot after ``steps``: the last answer they stated, and their tokens."""
    answer = next((n.answer for n in reversed(steps) if n.answer is not None), None)
    return Vote(answer, sum(n.completion_tokens for n in steps))


def _reasoned(tree: ProblemTree, node: str) -> int:
    """The tokens candidate ``node`` reasoned with, as the problem's vote counted them (its
    node's own where the vote has no ballot of it)."""
    ballots = tree.vote.ballots if tree.vote is not None else []
    tokens = next((b.get("reasoning_tokens") for b in ballots if b.get("node") == node), None)
    if type(tokens) is int and tokens >= 0:
        return tokens
    return tree.nodes[node].completion_tokens


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0–100) by linear interpolation; None for no values."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, int(q) - 1))]


def tokens_allowed(
    per_problem: int,
    problems: int,
    *,
    max_problem_tokens: int | None = None,
    max_run_tokens: int | None = None,
) -> int:
    """Completion tokens a run may spend: each problem's allowance (its mode's, under its
    own limit) over every problem, under the run's own limit."""
    each = per_problem if max_problem_tokens is None else min(per_problem, max_problem_tokens)
    total = each * problems
    return total if max_run_tokens is None else min(total, max_run_tokens)


def compute(
    trees: list[ProblemTree],
    *,
    tokens_allowed: int,
    retries: int = 0,
    price: Price | None = None,
    read_back: Mapping[str, tuple[int, int]] | None = None,
) -> Metrics:
    """The run's metrics; ``tokens_allowed`` is the whole run's (see :func:`tokens_allowed`).

    ``read_back``: the calls the run read back from another run's, by id, with their
    prompt and completion tokens (see :class:`ReadBack`): their tokens count, their cost
    and latency are not the run's. Those no node made are a judge's (see
    :func:`verifier_metrics`).

    A call is one request: the n samples of one request, or the thinking and answer of
    one, are one call, with one latency. A node never sent (a limit refused it, the run
    stopped first) is no call; a failed one names its request by ``call_id``. A problem
    counts as failed when an error left it ungraded (its calls failed, a limit stopped
    it before any answer): one the model left without an answer is graded, as wrong.
    """
    # one denominator for accuracy and coverage, so that accuracy never exceeds coverage
    graded = [t for t in trees if t.correct is not None and t.covered is not None]
    right = sum(1 for t in graded if t.correct)
    read_back = read_back or {}
    calls = _tally_calls(trees, read_back)
    completion = calls.completion_tokens
    borrowed = calls.borrowed
    prompt_spent = calls.prompt_tokens - sum(n.prompt_tokens for n in borrowed)
    completion_spent = completion - sum(n.completion_tokens for n in borrowed)
    latencies = sorted(calls.latencies.values())
    return Metrics(
        problems=len(trees),
        answered=sum(1 for t in trees if t.answer is not None),
        graded=len(graded),
        correct=right,
        accuracy=(right / len(graded)) if graded else None,
        coverage=(sum(1 for t in graded if t.covered) / len(graded)) if graded else None,
        failed=sum(1 for t in trees if t.error and t.correct is None),
        past_context=len(calls.past_context),
        prompt_tokens=calls.prompt_tokens,
        completion_tokens=completion,
        thinking_tokens=calls.thinking_tokens,
        tokens_allowed=tokens_allowed,
        utilisation=(completion / tokens_allowed) if tokens_allowed else None,
        calls=len(calls.sent),
        retries=retries,
        latency_p50_s=percentile(latencies, 50),
        latency_p95_s=percentile(latencies, 95),
        cost_usd=None if price is None else round(price.cost(prompt_spent, completion_spent), 6),
        verifier=verifier_metrics(
            trees, {k: v for k, v in read_back.items() if k not in calls.sent}, price
        ),
        read_back=_read_back(
            len({n.call_id for n in borrowed}),
            [(n.prompt_tokens, n.completion_tokens) for n in borrowed],
            price,
        )
        if borrowed
        else None,
    )


@dataclass(frozen=True, slots=True)
class _Calls:
    """What :func:`compute` counts over the call nodes (every node but the structural)."""

    prompt_tokens: int
    completion_tokens: int
    thinking_tokens: int
    sent: set[str]  # each request sent, by its call id (a node's own id where it has none)
    latencies: dict[str, float]  # each answered request's latency, by the same key
    borrowed: list[Node]  # the nodes of the calls read back from another run's
    past_context: set[str]  # the requests refused as longer than the model's context


def _tally_calls(trees: list[ProblemTree], read_back: Mapping[str, tuple[int, int]]) -> _Calls:
    """The call nodes' figures for :func:`compute`, in one pass over every node (a run's
    end walks each of its nodes once, not once per figure)."""
    sent: set[str] = set()
    latencies: dict[str, float] = {}
    borrowed: list[Node] = []
    past_context: set[str] = set()
    prompt = completion = thinking = 0
    for tree in trees:
        for n in tree.nodes.values():
            kind = n.kind
            if kind in _STRUCTURAL:
                continue
            prompt += n.prompt_tokens
            completion += n.completion_tokens
            if kind in _THINKING:
                thinking += n.completion_tokens
            call_id = n.call_id
            done = n.status == NodeStatus.DONE
            if done or call_id:
                sent.add(call_id or n.id)
            if call_id is not None and call_id in read_back:
                borrowed.append(n)
            elif done and n.error is None and n.latency_s > 0:
                latencies[call_id or n.id] = n.latency_s  # one request's n samples: one call
            elif not done and n.error is not None and n.error.startswith(PAST_CONTEXT):
                past_context.add(call_id or n.id)
    return _Calls(prompt, completion, thinking, sent, latencies, borrowed, past_context)


def _read_back(calls: int, spent: Iterable[tuple[int, int]], price: Price | None) -> ReadBack:
    """The :class:`ReadBack` of ``calls`` calls a run read back from another run's, whose
    nodes (or calls) spent ``spent``: prompt and completion tokens."""
    spent = list(spent)
    prompt = sum(p for p, _ in spent)
    completion = sum(c for _, c in spent)
    return ReadBack(
        calls=calls,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_usd=None if price is None else round(price.cost(prompt, completion), 6),
    )

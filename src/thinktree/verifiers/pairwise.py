"""The pairwise LLM judge: a knockout tournament among the distinct answers.

Each distinct answer is represented by its group's shortest candidate. Groups are seeded
by votes (most first, ties by first seen), and each round is drawn from the groups still
in, in seed order, as a seeded draw is: the top seed against the bottom one (with 4:
1 v 4, 2 v 3), so the most-voted answers meet last; where a round has an odd number, the
top seed gets the bye (it sits the round out). A match names the better seed first, and
a tie goes to it. Every match is judged twice, with the two responses swapped, and the
two verdicts averaged, so a judge that favours the first (or second) position cancels
out. The judge's preference
is P("1") vs P("2") from its logprobs where the endpoint returns them, else its
constrained choice. A group's score is how far it got: a first-round loser 0, the
champion 1; every candidate of a group gets its group's score.

Where the run's limits refuse a match (:class:`~thinktree.errors.RunLimitReached`), or
a match cannot be judged (a reply that names neither response, a prompt past the judge's
context), that match is undecided: the other matches of its round still finish (their
calls count), and no later round is played. Every group then scores the round it is
known to have reached: a group a judged match eliminated keeps its score, one still in
scores the round its judged wins took it to (a bye or an undecided match in the last
round takes it no further), so a group always outranks those it beat, and its rationale
says which match was not judged and why. Failing the groups still in instead would rank
each below every loser, those it beat included (a failed verdict ranks below every scored
one), and one unreadable reply would throw away every match judged. Where no match was
judged at all, nothing was decided: every verdict fails with the reason, and the plain
vote decides. Where a limit refused a match, the problem reads stopped.

Where a judge's call failed for good (its retries spent), the tournament is not finished
either, but unlike the cases above a resume can finish it: every verdict fails, however
many matches were judged, and as many of them as calls failed say so as a pointwise
judge's failed call does (:data:`JUDGE_CALL_FAILED`), so the run counts its failed calls
(and exits 4) and ``run --resume`` plays the tournament again, the judged matches' calls
read back from the call store where the judge is on the run's own endpoint. Scoring the
groups by the rounds they reached would record the problem as decided, and a resume
would never revisit it.

``--verifier pairwise[:ENDPOINT][,score=auto|yes-prob|rating]`` (as for ``judge``;
``rating`` here means the constrained choice, without logprobs).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio

from thinktree.agents.capabilities import Capabilities
from thinktree.agents.endpoint import Message
from thinktree.errors import ContextExceeded, EndpointError, RunLimitReached
from thinktree.orchestrator.events import JUDGE_CALL_FAILED
from thinktree.problems import Problem
from thinktree.verifiers.base import CandidateView, Verdict, VerifierSetup
from thinktree.verifiers.judge import (
    JUDGE_SYSTEM,
    JudgeClient,
    JudgeEndpoint,
    check_options,
    choice_fields,
    question_block,
    read_choice,
    response_block,
    token_probs,
)

_CHOICE = re.compile(r"\b([12])\b")
ASK = "Which response's final answer is correct? Reply 1 for Response 1 or 2 for Response 2."


@dataclass(slots=True)
class _Group:
    answer: str
    members: list[int]
    rep: int
    reached: int = 1  # the round it got to (a loser: the one it fell in)
    eliminated: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    notes: list[str] = field(default_factory=list)


def _share(a: _Group, b: _Group, prompt_tokens: int, completion_tokens: int) -> None:
    """Split a call's tokens between the two groups of its match, none lost to rounding."""
    a.prompt_tokens += prompt_tokens - prompt_tokens // 2
    b.prompt_tokens += prompt_tokens // 2
    a.completion_tokens += completion_tokens - completion_tokens // 2
    b.completion_tokens += completion_tokens // 2


def knockout_rounds(groups: int) -> int:
    """How many rounds a knockout of ``groups`` takes (each halves them, a bye rounding up)."""
    rounds = 0
    while groups > 1:
        groups = (groups + 1) // 2
        rounds += 1
    return rounds


@dataclass(frozen=True, slots=True)
class _Cut:
    """The round a match went undecided in (the last played), and why: a judge's call
    failed for good (``call_failed``: a resume asks it again), a run limit refused it
    (``limit``), or it could not be judged; ``match`` names it."""

    round: int
    reason: str
    limit: bool
    call_failed: bool = False
    match: str = ""
    failed_calls: int = 0  # matches of its round whose judge's call failed for good


class MatchFailed(Exception):
    """A match could not be judged (the reason is the message); what its call spent."""

    def __init__(self, reason: str, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        super().__init__(reason)
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens


class PairwiseJudge:
    kind = "pairwise"
    timeout_s = None  # its calls have their endpoint's timeouts, and wait on the run's limits

    def __init__(self, arg: str | None, setup: VerifierSetup) -> None:
        self.judge = JudgeEndpoint(arg, setup)

    async def prepare(self) -> None:
        """Probe the judge's endpoint before the run starts (see :meth:`JudgeEndpoint.prepare`)."""
        await self.judge.prepare()

    def models(self) -> list[str]:
        return self.judge.models()

    async def aclose(self) -> None:
        await self.judge.aclose()

    async def verify(self, problem: Problem, candidates: Sequence[CandidateView]) -> list[Verdict]:
        groups: dict[str, _Group] = {}
        for i, view in enumerate(candidates):
            answer = view.answer or ""
            group = groups.get(answer)
            if group is None:
                groups[answer] = _Group(answer=answer, members=[i], rep=i)
            else:
                group.members.append(i)
                if view.reasoning_tokens < candidates[group.rep].reasoning_tokens:
                    group.rep = i
        if len(groups) == 1:
            return [Verdict(score=1.0, rationale="the only answer: no match needed")] * len(
                candidates
            )
        endpoint, caps = await self.judge.ready()
        client = self.judge.calls_for(problem, endpoint)
        use_logprobs = self.judge.uses_logprobs(caps)
        cut = await self._tournament(client, caps, use_logprobs, problem, candidates, groups)
        judged = any(g.reached > 1 for g in groups.values())
        if cut is not None and cut.call_failed:
            # said as the pointwise judge's failed call is, even after matches were judged:
            # the run counts it as a failed call (its exit status says so) and a resume
            # plays the tournament again
            where = (
                f"the tournament stopped in round {cut.round}, where {cut.match} was not judged"
                if judged
                else "no pairwise match was judged"
            )
            # as many verdicts say a call failed as calls did (a run counts failed calls by
            # them); the others fail with the same reason
            said = f"{where}: {cut.reason}"
            failed = self._failed(candidates, groups, said)
            for i in range(min(cut.failed_calls, len(failed))):
                failed[i] = dataclasses.replace(failed[i], error=f"{JUDGE_CALL_FAILED}{said}")
            return failed
        if cut is not None and not judged:
            return self._failed(candidates, groups, f"no pairwise match was judged: {cut.reason}")
        rounds = knockout_rounds(len(groups))
        verdicts: list[Verdict] = [Verdict(score=None)] * len(candidates)
        for group in groups.values():
            if cut is not None and not group.eliminated:
                ended = (
                    f"a run limit stopped the tournament in round {cut.round}"
                    if cut.limit
                    else f"the tournament ended in round {cut.round}, where a match was not judged"
                )
                group.notes.append(
                    f"not decided: {ended}; scored by the round it reached, {group.reached}"
                )
            score = (group.reached - 1) / rounds
            for i in group.members:
                if i == group.rep:
                    verdicts[i] = Verdict(
                        score=score,
                        rationale="\n".join(group.notes),
                        prompt_tokens=group.prompt_tokens,
                        completion_tokens=group.completion_tokens,
                        cost_usd=self.judge.cost(group.prompt_tokens, group.completion_tokens),
                    )
                else:
                    note = f"scored as its answer's representative, {candidates[group.rep].node_id}"
                    verdicts[i] = Verdict(score=score, rationale=note)
        return verdicts

    def _failed(
        self, candidates: Sequence[CandidateView], groups: dict[str, _Group], reason: str
    ) -> list[Verdict]:
        """Every verdict failed with ``reason``; each representative's still counts what
        its group's matches spent."""
        verdicts = [Verdict.failed(reason)] * len(candidates)
        for group in groups.values():
            verdicts[group.rep] = Verdict.failed(
                reason,
                prompt_tokens=group.prompt_tokens,
                completion_tokens=group.completion_tokens,
                cost_usd=self.judge.cost(group.prompt_tokens, group.completion_tokens),
            )
        return verdicts

    async def _tournament(
        self,
        client: JudgeClient,
        caps: Capabilities,
        use_logprobs: bool,
        problem: Problem,
        candidates: Sequence[CandidateView],
        groups: dict[str, _Group],
    ) -> _Cut | None:
        """Play the knockout, marking how far each group got; None, or where and why a
        match went undecided (a run limit refused it, or it could not be judged): the round
        it came in is then the last played."""
        alive = sorted(groups.values(), key=lambda g: -len(g.members))  # stable: first seen
        seed = {id(g): k for k, g in enumerate(alive)}
        round_ = 0
        while len(alive) > 1:
            round_ += 1
            # an odd one out: the top seed (most votes) sits the round out; the rest pair
            # off as a seeded draw does, the top seed left against the bottom one, so the
            # most-voted answers meet last (the better seed first: a tie goes to it)
            byes: list[_Group] = alive[:1] if len(alive) % 2 else []
            rest = alive[len(byes) :]
            half = len(rest) // 2
            pairs = list(zip(rest[:half], reversed(rest[half:]), strict=True))
            outcome: list[_Group | Exception | None] = [None] * len(pairs)

            async def play(
                k: int, a: _Group, b: _Group, r: int, out: list[_Group | Exception | None]
            ) -> None:
                try:
                    out[k] = await self._match(
                        client, caps, use_logprobs, problem, candidates, a, b, r
                    )
                except (RunLimitReached, MatchFailed, EndpointError) as undecided:
                    out[k] = undecided  # the round's other matches finish and count

            async with anyio.create_task_group() as tg:
                for k, (a, b) in enumerate(pairs):
                    tg.start_soon(play, k, a, b, round_, outcome)
            won: list[_Group] = []
            cut: _Cut | None = None
            failed_calls = 0
            for (a, b), result in zip(pairs, outcome, strict=True):
                if isinstance(result, _Group):
                    loser = b if result is a else a
                    loser.eliminated = True
                    result.reached = round_ + 1
                    won.append(result)
                else:
                    why = str(result) or type(result).__name__
                    limit = isinstance(result, RunLimitReached)
                    failed = isinstance(result, EndpointError) and not isinstance(
                        result, ContextExceeded
                    )
                    # the cut says a failed call first (a resume plays the tournament
                    # again), then a limit (the problem reads stopped)
                    rank = (failed, limit)
                    failed_calls += failed
                    if cut is None or rank > (cut.call_failed, cut.limit):
                        cut = _Cut(round_, why, limit, failed, f"{a.answer} vs {b.answer}")
                    line = f"round {round_}: {a.answer} vs {b.answer}: not judged: {why}"
                    a.notes.append(line)
                    b.notes.append(line)
            if cut is not None:
                return dataclasses.replace(cut, failed_calls=failed_calls)
            for bye in byes:
                bye.reached = round_ + 1
                bye.notes.append(f"round {round_}: a bye (the top seed sits out an odd round)")
            alive = sorted([*byes, *won], key=lambda g: seed[id(g)])  # seeded again
        return None

    async def _match(
        self,
        client: JudgeClient,
        caps: Capabilities,
        use_logprobs: bool,
        problem: Problem,
        candidates: Sequence[CandidateView],
        a: _Group,
        b: _Group,
        round_: int,
    ) -> _Group:
        """Judge ``a`` against ``b`` in both orders; the winner (ties to ``a``). What each
        call spent counts on the two groups as it comes back, also where the match fails."""
        preferred: list[float] = []
        for one, two in ((a, b), (b, a)):
            try:
                p, spent_p, spent_c = await self._prefer_first(
                    client, caps, use_logprobs, problem, candidates, one, two
                )
            except MatchFailed as exc:
                _share(a, b, exc.prompt_tokens, exc.completion_tokens)
                raise
            _share(a, b, spent_p, spent_c)
            preferred.append(p)
        first, second = preferred
        p_a = (first + (1.0 - second)) / 2
        winner = a if p_a >= 0.5 else b
        line = (
            f"round {round_}: {a.answer} vs {b.answer}: P({a.answer} better) = {p_a:.2f} "
            f"(first {first:.2f}, swapped {1 - second:.2f}) → {winner.answer}"
        )
        a.notes.append(line)
        b.notes.append(line)
        return winner

    async def _prefer_first(
        self,
        client: JudgeClient,
        caps: Capabilities,
        use_logprobs: bool,
        problem: Problem,
        candidates: Sequence[CandidateView],
        one: _Group,
        two: _Group,
    ) -> tuple[float, int, int]:
        """P(the judge prefers Response 1), and the tokens it spent."""
        first, second = candidates[one.rep], candidates[two.rep]
        messages = _messages(problem, first, second)
        fields = choice_fields(caps, ("1", "2"))
        key = f"{first.node_id}/pairwise/{second.node_id}"  # the call store's name for it
        if use_logprobs:
            probs, prompt, completion = await token_probs(
                client, messages, fields, ("1", "2"), key=key
            )
            if not probs:
                raise MatchFailed(
                    "the judge put neither 1 nor 2 among its top tokens", prompt, completion
                )
            return probs["1"], prompt, completion
        result = await client.chat(messages, max_tokens=8, temperature=0.0, extra=fields, key=key)
        text = read_choice(result.choices[0].text if result.choices else "", fields)
        said = _CHOICE.findall(text)
        if not said:
            raise MatchFailed(
                f"the judge's choice is unreadable: {text[:40]!r}",
                result.prompt_tokens,
                result.completion_tokens,
            )
        return (1.0 if said[-1] == "1" else 0.0), result.prompt_tokens, result.completion_tokens


def _messages(problem: Problem, one: CandidateView, two: CandidateView) -> list[Message]:
    user = (
        f"{question_block(problem)}\n\nResponse 1:\n<<<\n{response_block(one)}\n>>>\n\n"
        f"Response 2:\n<<<\n{response_block(two)}\n>>>\n\n{ASK}"
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def pairwise(arg: str | None, setup: VerifierSetup) -> PairwiseJudge:
    """``--verifier pairwise[:ENDPOINT][,score=…]``."""
    return PairwiseJudge(arg, setup)


def _check(arg: str | None) -> None:
    check_options(arg, "pairwise")


pairwise.check = _check  # type: ignore[attr-defined]

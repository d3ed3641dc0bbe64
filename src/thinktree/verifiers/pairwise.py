"""The pairwise LLM judge: a knockout tournament among the distinct answers.

Each distinct answer is represented by its group's shortest candidate. Groups are seeded
by votes (most first) and paired off round by round (an odd one out gets a bye); every
match is judged twice, with the two responses swapped, and the two verdicts averaged, so
a judge that favours the first (or second) position cancels out. The judge's preference
is P("1") vs P("2") from its logprobs where the endpoint returns them, else its
constrained choice. A group's score is how far it got: a first-round loser 0, the
champion 1; every candidate of a group gets its group's score.

``--verifier pairwise[:ENDPOINT][,score=auto|yes-prob|rating]`` (as for ``judge``;
``rating`` here means the constrained choice, without logprobs).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio

from thinktree.agents.capabilities import Capabilities
from thinktree.agents.endpoint import Message
from thinktree.errors import EndpointError, RunLimitReached
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
    eliminated_in: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    notes: list[str] = field(default_factory=list)


def _share(a: _Group, b: _Group, prompt_tokens: int, completion_tokens: int) -> None:
    """Split a call's tokens between the two groups of its match, none lost to rounding."""
    a.prompt_tokens += prompt_tokens - prompt_tokens // 2
    b.prompt_tokens += prompt_tokens // 2
    a.completion_tokens += completion_tokens - completion_tokens // 2
    b.completion_tokens += completion_tokens // 2


class MatchFailed(Exception):
    """A match could not be judged (the reason is the message); what its call spent."""

    def __init__(self, reason: str, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        super().__init__(reason)
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens


class PairwiseJudge:
    def __init__(self, arg: str | None, setup: VerifierSetup) -> None:
        self.judge = JudgeEndpoint(arg, setup)

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
        failure: str | None = None
        rounds = 0
        try:
            rounds = await self._tournament(client, caps, use_logprobs, problem, candidates, groups)
        except* (MatchFailed, EndpointError, RunLimitReached) as failed:
            failure = "; ".join(str(e) or type(e).__name__ for e in failed.exceptions)
        if failure is not None:
            return self._failed(candidates, groups, f"a pairwise match failed: {failure}")
        verdicts: list[Verdict] = [Verdict(score=None)] * len(candidates)
        for group in groups.values():
            reached = rounds + 1 if group.eliminated_in is None else group.eliminated_in
            score = (reached - 1) / rounds
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
    ) -> int:
        """Play the knockout; marks the round each loser fell in; returns the rounds played."""
        alive = sorted(groups.values(), key=lambda g: -len(g.members))  # stable: first seen
        rounds = 0
        while len(alive) > 1:
            rounds += 1
            byes: list[_Group] = [alive[-1]] if len(alive) % 2 else []
            pairs = list(zip(alive[0::2], alive[1::2], strict=False))
            won: list[_Group] = [a for a, _ in pairs]

            async def play(k: int, a: _Group, b: _Group, r: int, out: list[_Group]) -> None:
                out[k] = await self._match(client, caps, use_logprobs, problem, candidates, a, b, r)

            async with anyio.create_task_group() as tg:
                for k, (a, b) in enumerate(pairs):
                    tg.start_soon(play, k, a, b, rounds, won)
            for (a, b), winner in zip(pairs, won, strict=True):
                (b if winner is a else a).eliminated_in = rounds
            alive = [*won, *byes]
        return rounds

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


pairwise.check = check_options  # type: ignore[attr-defined]

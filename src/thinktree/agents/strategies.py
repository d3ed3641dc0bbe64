"""The scaling modes as composable values.

A strategy grows candidates under a parent node within a token pool. ``budget`` and
``sequential`` grow one line of thought; ``parallel`` runs any inner strategy on N
branches; ``hybrid`` is simply ``parallel(n, sequential(k))`` under one total budget.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import anyio

from thinktree.agents.prompts import EXTEND_CUE, FORCE_ANSWER_CUE, REVISION_PROMPT, WAIT_CUE
from thinktree.agents.solver import (
    Branch,
    Candidate,
    Segment,
    SegmentRequest,
    Solver,
    refusal,
)
from thinktree.agents.structured_answer import constrained_answer
from thinktree.errors import BudgetExhausted, ConfigError, RunLimitReached
from thinktree.orchestrator.events import NodeFailed, NodeFinished, NodeKind, NodeStarted
from thinktree.orchestrator.ledger import Budget

FORCE_PROMPT = "Stop here and state your final answer now, as 'Answer: ...'."

First = tuple[SegmentRequest, Segment, Branch]


class Strategy(Protocol):
    """Grows candidates for one problem under ``parent`` within ``pool``."""

    @property
    def name(self) -> str: ...

    def allowed_tokens(self) -> int:
        """Completion tokens this strategy may spend on one problem."""
        ...

    def first_request(self, parent: str, pool: Budget) -> SegmentRequest:
        """The first call it would make (so a parent can batch several with ``n``)."""
        ...

    def settle(self, solver: Solver, first: First) -> list[Candidate] | None:
        """The candidates when that first call alone decides them (None: ``run`` goes on).

        A parent that made the first calls of its branches at once settles the branches
        that need nothing more without a task of their own each.
        """
        ...

    async def run(
        self,
        solver: Solver,
        branch: Branch,
        parent: str,
        pool: Budget,
        first: First | None = None,
    ) -> list[Candidate]: ...


def _positive(name: str, value: int) -> int:
    if value <= 0:
        raise ConfigError(f"--{name} must be a positive number of tokens or steps, not {value}")
    return value


@dataclass(frozen=True, slots=True)
class BudgetForcing:
    """s1-style budget forcing: think up to ``budget`` tokens, then force the answer.

    When the model stops before ``min_thinking`` tokens, "Wait" is appended and it goes
    on thinking (until it adds nothing, a limit refuses it or the call fails: then the
    thinking stands as it was, with its answer). When the cap is hit (or it stopped
    without an answer), the thinking is ended and a short answer is forced in its own
    node, capped at ``answer_tokens``.
    """

    budget: int = 1024
    min_thinking: int = 0
    answer_tokens: int = 64
    name: str = "budget"

    def __post_init__(self) -> None:
        _positive("budget", self.budget)
        _positive("answer-tokens", self.answer_tokens)
        if self.min_thinking < 0 or self.min_thinking > self.budget:
            raise ConfigError(
                f"--min-thinking must be between 0 and the budget ({self.budget}), "
                f"not {self.min_thinking}"
            )

    def allowed_tokens(self) -> int:
        return self.budget + self.answer_tokens

    def settle(self, solver: Solver, first: First) -> list[Candidate] | None:
        """The candidate when the first call alone decides it (no "Wait", nothing to force)."""
        _, seg, branch = first
        if seg.failed:
            return [Candidate(seg.node_id, None, seg.completion_tokens, branch.assistant)]
        if seg.capped or seg.completion_tokens < self.min_thinking or solver.constrains:
            return None
        answer = seg.answer if seg.text == branch.assistant else _latest_answer(solver, branch)
        if answer is None:
            return None
        return [Candidate(seg.node_id, answer, seg.completion_tokens, branch.assistant)]

    def first_request(self, parent: str, pool: Budget) -> SegmentRequest:
        thinking = pool.child(f"{parent} thinking", self.budget)
        # positional (node_id, parent_id, kind, label, budget, max_tokens): one per sample
        return SegmentRequest(
            f"{parent}/think", parent, NodeKind.GENERATION, "thinking", thinking, self.budget
        )

    async def run(
        self,
        solver: Solver,
        branch: Branch,
        parent: str,
        pool: Budget,
        first: First | None = None,
    ) -> list[Candidate]:
        if first is None and _server_thinking(self, solver):
            return await _think_and_answer(self, solver, branch, parent, pool)
        if first is None:
            req = self.first_request(parent, pool)
            seg = await solver.segment(branch, req)
        else:
            req, seg, branch = first
        thinking = req.budget
        used = seg.completion_tokens
        last = seg
        extensions = 0
        while not last.failed and not last.capped and used < self.min_thinking:
            # the rest of its own budget: the ledger grants it whole, waits while calls
            # under way hold what it needs, or grants what a spent limit leaves
            left = (thinking.limit or 0) - thinking.used - thinking.reserved
            if left <= 0:
                break
            before = (branch.messages, branch.assistant)
            _reopen_thinking(solver, branch)
            try:
                extension = await solver.segment(
                    branch,
                    SegmentRequest(
                        node_id=f"{parent}/wait{extensions + 1}",
                        parent_id=parent,
                        kind=NodeKind.EXTENSION,
                        label=f"wait {extensions + 1}",
                        budget=thinking,
                        max_tokens=left,
                        cue=EXTEND_CUE,
                        revision_prompt="Wait. Keep thinking about the problem before you answer.",
                        extract_from="message",
                    ),
                )
            except (BudgetExhausted, RunLimitReached) as exc:
                # a limit above it is spent: the thinking stands as is
                _refused(pool, exc)
                branch.messages, branch.assistant = before
                break
            if extension.failed:
                # its node says why, and a resume sends it again; meanwhile the answer
                # the thinking stated is not lost with it (as when a limit refuses it)
                branch.messages, branch.assistant = before
                break
            extensions += 1
            used += extension.completion_tokens
            if not extension.text.strip():
                # "Wait" got nothing back, and would again: the thinking stands as is
                branch.messages, branch.assistant = before
                break
            last = extension
            if extension.completion_tokens <= 0:  # no progress towards the minimum
                break
        if last.failed:
            return [Candidate(last.node_id, None, used, branch.assistant, extensions)]
        # the last segment's answer came from this very text when it is the whole message
        answer = (
            last.answer
            if last.text == branch.assistant
            else _latest_answer(solver, branch, cut_off=last.capped)
        )
        if answer is not None and not last.capped and not solver.constrains:
            return [Candidate(last.node_id, answer, used, branch.assistant, extensions)]
        forced = await _force_answer(solver, branch, parent, pool, self.answer_tokens)
        if forced is None or forced.answer is None:
            # The forced answer said nothing countable: the thinking's own answer stands.
            return [Candidate(last.node_id, answer, used, branch.assistant, extensions)]
        return [Candidate(forced.node_id, forced.answer, used, branch.assistant, extensions, True)]


@dataclass(frozen=True, slots=True)
class Sequential:
    """``steps`` revisions of one line of thought: after each, "Wait" and go on.

    Every step extracts the answer standing at its end, so accuracy by step comes for
    free. Where the endpoint cannot continue a message, each step after the first is a
    new user turn asking the model to re-check its reasoning.
    """

    steps: int = 2
    step_tokens: int = 512
    answer_tokens: int = 64
    force_final: bool = True
    name: str = "sequential"

    def __post_init__(self) -> None:
        _positive("steps", self.steps)
        _positive("budget", self.step_tokens)
        _positive("answer-tokens", self.answer_tokens)

    def allowed_tokens(self) -> int:
        return self.steps * self.step_tokens + (self.answer_tokens if self.force_final else 0)

    def _request(self, parent: str, pool: Budget, step: int) -> SegmentRequest:
        return SegmentRequest(
            node_id=f"{parent}/step{step}",
            parent_id=parent,
            kind=NodeKind.STEP,
            label=f"step {step}",
            budget=pool.child(f"{parent} step {step}", self.step_tokens),
            max_tokens=self.step_tokens,
            cue=WAIT_CUE if step > 1 else "",
            revision_prompt=REVISION_PROMPT,
            extract_from="message" if step > 1 else "segment",
        )

    def first_request(self, parent: str, pool: Budget) -> SegmentRequest:
        return self._request(parent, pool, 1)

    def settle(self, solver: Solver, first: First) -> list[Candidate] | None:
        """The candidate when there is one step and its answer needs no forcing."""
        _, seg, branch = first
        if self.steps > 1:
            return None
        needs_force = (seg.answer is None and self.force_final) or solver.constrains
        if needs_force and not seg.failed:
            return None
        return [Candidate(seg.node_id, seg.answer, seg.completion_tokens, branch.assistant)]

    async def run(
        self,
        solver: Solver,
        branch: Branch,
        parent: str,
        pool: Budget,
        first: First | None = None,
    ) -> list[Candidate]:
        if first is None:
            seg = await solver.segment(branch, self.first_request(parent, pool))
        else:
            _, seg, branch = first
        used = seg.completion_tokens
        answer = seg.answer
        last = seg
        steps = 0  # revisions after the first step
        for step in range(2, self.steps + 1):
            if last.failed:
                break
            try:
                seg = await solver.segment(branch, self._request(parent, pool, step))
            except (BudgetExhausted, RunLimitReached) as exc:  # the answer so far stands
                _refused(pool, exc)
                break
            if seg.failed:
                # its node says why, and a resume sends it again; the line ends at the
                # last step that came back, as when a limit refuses the next one
                break
            used += seg.completion_tokens
            answer = seg.answer if seg.answer is not None else answer
            last = seg
            steps += 1
        force = answer is None and self.force_final
        if (force or solver.constrains) and not last.failed:
            forced = await _force_answer(solver, branch, parent, pool, self.answer_tokens)
            if forced is not None and forced.answer is not None:
                return [
                    Candidate(forced.node_id, forced.answer, used, branch.assistant, steps, True)
                ]
        return [Candidate(last.node_id, answer, used, branch.assistant, steps)]


@dataclass(frozen=True, slots=True)
class Parallel:
    """``n`` independent branches of ``inner``; the run aggregates their candidates.

    When the endpoint returns ``n`` choices in one request, the branches' first calls
    go out as one request; otherwise they fan out as separate requests. A branch's node
    is its first call's (``<parent>/b<i>``, labelled "branch i"), with the calls it adds
    later under it; where :attr:`branch_nodes` (hybrid), each branch is a node of its own.
    """

    n: int = 4
    inner: Strategy = field(default_factory=BudgetForcing)
    split_budget: bool = False  # give each branch an equal share of the pool
    name: str = "parallel"
    start: int = 1  # the first branch's number (a later wave of adaptive sampling)
    branch_nodes: ClassVar[bool] = False  # each branch a node of its own (see run)

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ConfigError(f"--n must be a positive number of samples, not {self.n}")

    def allowed_tokens(self) -> int:
        return self.n * self.inner.allowed_tokens()

    def first_request(self, parent: str, pool: Budget) -> SegmentRequest:
        return self.inner.first_request(f"{parent}/b{self.start}", pool)

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
        share = None
        if self.split_budget and pool.limit is not None:
            share = pool.limit // self.n
        ids = [f"{parent}/b{i}" for i in range(self.start, self.start + self.n)]
        pools = [pool.child(node_id, share) for node_id in ids]
        server = _server_thinking(self.inner, solver)
        # A branch is a node of its own where it is a line of several calls from the start
        # (hybrid's revisions, a reasoning server's thinking and answer); otherwise its first
        # call's node is the branch, and what the branch adds later (a "Wait", a forced
        # answer) hangs under that node. Half a parallel run's nodes and events were branch
        # nodes that only repeated their one call's answer.
        grouped = self.branch_nodes or server
        emit, problem_id = solver.bus.emit, solver.problem.id
        if grouped:
            await solver.bus.emit_all(
                [
                    NodeStarted(
                        node_id=node_id,
                        problem_id=problem_id,
                        parent_id=parent,
                        kind=NodeKind.BRANCH,
                        label=f"branch {i}",
                        max_tokens=share,
                    )
                    for i, node_id in enumerate(ids, start=self.start)
                ]
            )
        native = solver.caps.native_n and self.n > 1 and not server
        reqs: list[SegmentRequest] = []  # the branches' first calls, where made here
        if native or not grouped:  # (a grouped branch's inner makes its own first call)
            reqs = [self.inner.first_request(b, p) for b, p in zip(ids, pools, strict=True)]
            if not grouped:
                for i, req in enumerate(reqs, start=self.start):
                    req.node_id, req.parent_id, req.label = f"{parent}/b{i}", parent, f"branch {i}"
                    req.branch = True
        firsts: list[First | None] = [None] * self.n
        if native:
            try:
                grown = await solver.segments_n(branch, reqs)
            except BaseException as exc:
                # no branch could start (the run stopped, a limit is spent): each ends
                # with the reason, none is left "running"
                refused = exc if isinstance(exc, (BudgetExhausted, RunLimitReached)) else None
                error = _ended_by(exc) if refused is None else refusal(refused)
                if grouped:
                    with anyio.CancelScope(shield=True):
                        for node_id in ids:
                            await solver.bus.emit(NodeFailed(node_id=node_id, error=error))
                if refused is None:
                    raise
                _refused(pool, refused)
                return []
            firsts = [(r, seg, own) for r, (seg, own) in zip(reqs, grown, strict=True)]
        results: list[list[Candidate]] = [[] for _ in range(self.n)]
        ended: set[int] = set()  # the branches whose node has ended
        settle = self.inner.settle

        async def grow(i: int) -> None:
            own = branch.fork()
            first_i = firsts[i]
            try:
                if first_i is None and not grouped:
                    req = reqs[i]
                    # the branch's first call is its node: made here, as one of n would be
                    first_i = (req, await solver.segment(own, req), own)
                    settled = settle(solver, first_i)
                    if settled is not None:
                        results[i] = settled
                        return
                results[i] = await self.inner.run(solver, own, ids[i], pools[i], first_i)
            except (BudgetExhausted, RunLimitReached) as exc:
                # a limit left this branch no call: it has no candidate, and the other
                # branches (their calls under way finish and count) still decide the problem
                _refused(pool, exc)
                if grouped:
                    await solver.bus.emit(NodeFailed(node_id=ids[i], error=refusal(exc)))
                ended.add(i)
                return
            except BaseException as exc:
                # the branch ends with the reason (a stopped run, a cancelled sibling)
                with anyio.CancelScope(shield=True):
                    if grouped:
                        await solver.bus.emit(NodeFailed(node_id=ids[i], error=_ended_by(exc)))
                    ended.add(i)
                raise
            if grouped:
                await emit(_branch_finished(ids[i], results[i]))
            ended.add(i)

        # asyncio's own task group: a branch task costs a fifth of an anyio one, and a
        # run's every task runs on asyncio (anyio's cancel scopes work inside it).
        try:
            async with asyncio.TaskGroup() as tg:
                settled_now: list[int] = []  # branches whose first call settled them
                for i, first_i in enumerate(firsts):
                    settled = None if first_i is None else settle(solver, first_i)
                    if settled is None:
                        tg.create_task(grow(i))
                    else:
                        results[i] = settled
                        settled_now.append(i)
                if grouped:
                    await solver.bus.emit_all(
                        [_branch_finished(ids[i], results[i]) for i in settled_now]
                    )
                ended.update(settled_now)
        except BaseException as exc:
            # a branch task cancelled before it ran ends here, not left "running"
            if grouped:
                with anyio.CancelScope(shield=True):
                    for i in sorted(set(range(self.n)) - ended):
                        await solver.bus.emit(NodeFailed(node_id=ids[i], error=_ended_by(exc)))
            raise
        if share is not None and any(p.cut for p in pools):
            pool.cut = True  # a branch's share of the limit cut it: the limit did
        return [c for branch_candidates in results for c in branch_candidates]


def _branch_finished(node_id: str, candidates: list[Candidate]) -> NodeFinished:
    """The end of a branch: its node carries its last candidate's answer."""
    best = candidates[-1] if candidates else None
    return NodeFinished(
        node_id=node_id,
        text="",
        finish_reason=None,
        prompt_tokens=0,
        completion_tokens=0,
        answer=best.answer if best else None,
        extraction="branch",
    )


def _ended_by(exc: BaseException) -> str:
    """Why a branch ended early, as its node says."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]  # a task group's: the first error inside it
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        return "cancelled: the run stopped"
    return str(exc) or type(exc).__name__


_LEAST_STEP_TOKENS = 4
"""The fewest tokens a hybrid step may get: enough to state a short answer ("Answer: B")."""


def hybrid(
    n: int,
    steps: int,
    total_budget: int,
    *,
    step_tokens: int | None = None,
    answer_tokens: int = 64,
) -> Parallel:
    """``n`` branches × ``steps`` revisions within ``total_budget`` tokens in all.

    Each branch gets ``total_budget / n`` and each step ``total_budget / (n·steps)``
    unless ``step_tokens`` is given; the ledger refuses any call that would pass the total.
    """
    _positive("total-budget", total_budget)
    _positive("n", n)
    _positive("steps", steps)
    per_step = step_tokens or total_budget // (n * steps)
    if per_step < _LEAST_STEP_TOKENS:  # no step could state an answer: nothing would decide
        raise ConfigError(
            f"--total-budget {total_budget} is too small for {n} branches × {steps} steps: "
            f"each step would get {per_step} token(s), and needs {_LEAST_STEP_TOKENS} or more "
            "to state an answer"
        )
    inner = Sequential(
        steps=steps, step_tokens=per_step, answer_tokens=answer_tokens, force_final=False
    )
    return _Hybrid(n=n, inner=inner, split_budget=True, total=total_budget)


@dataclass(frozen=True, slots=True)
class _Hybrid(Parallel):
    """Parallel over sequential, capped at one total budget."""

    total: int = 0
    name: str = "hybrid"
    branch_nodes: ClassVar[bool] = True  # a branch is a line of revisions

    def allowed_tokens(self) -> int:
        return self.total


async def _force_answer(
    solver: Solver, branch: Branch, parent: str, pool: Budget, answer_tokens: int
) -> Segment | None:
    """End the thinking and make the model state its answer, in a node of its own.

    With a constrained answer format the answer is generated under the constraint the
    endpoint honours (see :mod:`thinktree.agents.structured`).
    """
    if solver.constrains:
        return await constrained_answer(solver, branch, parent, pool, answer_tokens)
    req = SegmentRequest(
        node_id=f"{parent}/answer",
        parent_id=parent,
        kind=NodeKind.FORCED_ANSWER,
        label="forced answer",
        budget=pool.child(f"{parent} answer", answer_tokens),
        max_tokens=answer_tokens,
        cue=_answer_cue(solver, branch),
        revision_prompt=FORCE_PROMPT,
        extract_from="cue",
    )
    try:
        seg = await solver.segment(branch, req)
    except (BudgetExhausted, RunLimitReached) as exc:
        _refused(pool, exc)
        return None
    return None if seg.failed else seg


def _refused(pool: Budget, exc: BudgetExhausted | RunLimitReached) -> None:
    """A later call of a line of thought was refused by a limit, and it goes on with what it
    has: where the run's limit did it, its problem is marked as cut short by the run."""
    if isinstance(exc, RunLimitReached):
        pool.stopped_by_run(str(exc))


def _latest_answer(solver: Solver, branch: Branch, *, cut_off: bool = False) -> str | None:
    """The answer the branch's whole message states; ``cut_off``: its last call ended at
    its token cap, so a number the message ends with may be cut short (not read)."""
    from thinktree.extraction import extract_answer

    found = extract_answer(branch.assistant, solver.problem, cut_off=cut_off)
    return found.answer if found else None


# --- reasoning models --------------------------------------------------------------------------


def _server_thinking(strategy: Strategy, solver: Solver) -> bool:
    """Budget forcing the server does itself (``thinking_token_budget``); not for a minimum."""
    return (
        isinstance(strategy, BudgetForcing)
        and strategy.min_thinking == 0
        and solver.caps.thinking_budget == "server"
    )


async def _think_and_answer(
    strategy: BudgetForcing, solver: Solver, branch: Branch, parent: str, pool: Budget
) -> list[Candidate]:
    """One call: the server ends the thinking at the budget and the model answers."""
    think = strategy.first_request(parent, pool)
    answer = SegmentRequest(
        node_id=f"{parent}/answer",
        parent_id=parent,
        kind=NodeKind.FORCED_ANSWER,
        label="answer",
        budget=pool.child(f"{parent} answer", strategy.answer_tokens),
        max_tokens=strategy.answer_tokens,
    )
    thought, said = await solver.think_and_answer(branch, think, answer)
    if said.failed:
        return [Candidate(node_id=said.node_id, answer=None, reasoning_tokens=0)]
    found = said.answer if said.answer is not None else thought.answer
    return [
        Candidate(node_id=said.node_id, answer=found, reasoning_tokens=thought.completion_tokens)
    ]


def _answer_cue(solver: Solver, branch: Branch) -> str:
    """The cue that forces the answer: for a reasoning model still thinking, its own
    end-of-thinking marker first."""
    end = solver.caps.think_end
    if solver.caps.thinking_budget != "cue" and end and end not in branch.assistant:
        return f"\n{end}\n\n{FORCE_ANSWER_CUE.lstrip()}"
    return FORCE_ANSWER_CUE


def _reopen_thinking(solver: Solver, branch: Branch) -> None:
    """Below the minimum thinking, a reasoning model that closed its thinking goes on:
    the end marker and what followed it are dropped before "Wait" (as in s1)."""
    end = solver.caps.think_end
    if solver.caps.thinking_budget != "cue" and end and end in branch.assistant:
        branch.assistant = branch.assistant[: branch.assistant.index(end)].rstrip()

"""The solver agent: grows one conversation by generating, continuing and forcing answers.

Each call it makes is one node in the problem's tree, announced and finished through
events; the ledger grants each call its tokens before it is sent.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog

from thinktree.agents.capabilities import Capabilities, client_template
from thinktree.agents.chat_template import generation_opener, render_continuation
from thinktree.agents.endpoint import (
    Choice,
    Completion,
    CutOffs,
    DeltaHandler,
    EndpointClient,
    Message,
    counting_cut_offs,
)
from thinktree.agents.prompts import ANSWER_HEADING
from thinktree.agents.structured import AnswerFormat, Constraint, validate
from thinktree.errors import (
    BudgetExhausted,
    ContextExceeded,
    EndpointError,
    RunLimitReached,
    RunStopping,
)
from thinktree.extraction import Extraction, extract_answer
from thinktree.orchestrator.bus import EventBus
from thinktree.orchestrator.call_cache import NotRecorded, only_recorded, solver_call
from thinktree.orchestrator.events import (
    CONSTRAINT_REFUSED,
    NO_TOKENS_LEFT,
    PAST_CONTEXT,
    Event,
    NodeDelta,
    NodeFailed,
    NodeFinished,
    NodeKind,
    NodeStarted,
)
from thinktree.orchestrator.ledger import (
    Budget,
    LimitHeld,
    RecordedCalls,
    spend_in_run,
    token_cut,
)
from thinktree.pricing import Bill, MoneyLimit, prompt_bound
from thinktree.problems import Problem

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Branch:
    """A conversation being grown: the prompt turns and the assistant's text so far."""

    messages: list[Message]
    assistant: str = ""

    def fork(self) -> Branch:
        return Branch(list(self.messages), self.assistant)  # positional: one per sample


@dataclass(slots=True)
class SegmentRequest:
    """One call to make: which node it becomes, what it may spend, how to continue.

    Treat it as read-only once made. It is not frozen only because one is made per
    sample, and a frozen dataclass's ``__init__`` costs three times a plain one's.
    """

    node_id: str
    parent_id: str
    kind: NodeKind
    label: str
    budget: Budget
    max_tokens: int
    cue: str = ""  # appended to the assistant text before continuing
    revision_prompt: str | None = None  # the user turn used where continuation is impossible
    extract_from: str = "segment"  # "segment", "message" (the whole assistant text) or "cue"
    constraint: Constraint | None = None  # the answer is generated under this constraint
    # a parallel branch's first call, whose node stands for the branch: a limit that refuses
    # it before it starts still leaves its node (failed, with the reason)
    branch: bool = False


@dataclass(slots=True)
class Segment:
    """What one call produced."""

    node_id: str
    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    answer: str | None = None
    failed: bool = False
    error: str | None = None

    @property
    def capped(self) -> bool:
        return self.finish_reason == "length"


@dataclass(slots=True)
class Candidate:
    """A node that carries a final answer (or abstains with ``answer=None``)."""

    node_id: str
    answer: str | None
    reasoning_tokens: int
    text: str = ""  # the line of thought's assistant text (what a verifier reads)
    revisions: int = 0  # "Wait" extensions or revision steps after the first call
    forced: bool = False  # the answer came from a forced (or constrained) answer node


@dataclass(slots=True)
class Sampling:
    temperature: float = 0.0
    seed: int | None = None


@dataclass(slots=True)
class Solver:
    """Makes the calls for one problem on one endpoint."""

    problem: Problem
    client: EndpointClient
    caps: Capabilities
    bus: EventBus
    sampling: Sampling = field(default_factory=Sampling)
    money: MoneyLimit | None = None
    answer_format: AnswerFormat = "free"
    recorded: RecordedCalls | None = None
    """A resumed run's recorded calls, read back whatever its limits have left."""
    failures: list[str] = field(default_factory=list)
    """The errors of this problem's calls that failed and a resume sends again, one per
    request: where no candidate states an answer, they, not the model, are why."""
    past_context: list[str] = field(default_factory=list)
    """The errors of its requests refused as longer than the model's context, one per
    request: no resume sends them again, and their lines keep what they had."""

    @property
    def constrains(self) -> bool:
        """Whether every candidate's final answer is produced under a constraint."""
        return self.answer_format != "free"

    def _failed(self, exc: EndpointError) -> str:
        """A failed request's error for its nodes, noted with the problem's failures
        (sent again by a resume) or, refused as longer than the model's context, apart."""
        if isinstance(exc, ContextExceeded):
            self.past_context.append(str(exc))
            return f"{PAST_CONTEXT}: {exc}"
        self.failures.append(str(exc))
        return str(exc)

    def seed_for(self, node_id: str) -> int | None:
        """A seed per node, stable across runs and resumes (None when unseeded)."""
        if self.sampling.seed is None:
            return None
        digest = hashlib.blake2b(
            f"{self.sampling.seed}:{self.problem.id}:{node_id}".encode(), digest_size=4
        ).digest()
        return int.from_bytes(digest, "big") & 0x7FFFFFFF

    async def segment(self, branch: Branch, req: SegmentRequest) -> Segment:
        """Make one call on ``branch`` and extend it with the result.

        Raises :class:`~thinktree.errors.BudgetExhausted` (before any node exists) when
        the request's pool has nothing left.
        """
        mode, messages, prefix = self._shape(branch, req)
        read_back = (
            await self._recorded(mode, messages, prefix, req.max_tokens, [req])
            if self.recorded
            else None
        )
        recorded, cut = None, _NO_MARKS
        if read_back is not None:
            (recorded, grant), bill = read_back, None
        else:
            try:
                grant = (await _reserved([(req.budget, req.max_tokens)]))[0]
                (grant,), bill = await self._afford(
                    [(req.budget, grant)], 1, messages, prefix, req.constraint
                )
            except (BudgetExhausted, RunLimitReached) as exc:
                await self._refused([req], exc)
                raise
            cut = _marks([req]) if grant < req.max_tokens else cut
        try:
            await self._start([(req, grant)], mode)
        except BaseException:
            _unsent(bill)
            raise
        spent = _CutOffSpend([req.budget], [grant], bill)
        try:
            with solver_call(cut):
                result = recorded or await self._request(
                    mode, messages, prefix, grant, 1, req.node_id, [req], bill=bill, spent=spent
                )
        except (BudgetExhausted, RunLimitReached) as exc:  # a limit refused to send it again
            await self._cancelled([(req, grant)], str(exc), spent)
            raise
        except EndpointError as exc:
            req.budget.commit(grant, 0)
            (streamed,) = spent.spend_unsent()
            constrained = req.constraint is not None and bool(req.constraint.dialect)
            if constrained and "(400)" in str(exc) and not isinstance(exc, ContextExceeded):
                error = f"{CONSTRAINT_REFUSED}: {exc}"  # the answer is asked for freely
            else:
                error = self._failed(exc)
            await self.bus.emit(
                NodeFailed(
                    node_id=req.node_id,
                    error=error,
                    call_id=req.node_id,
                    prompt_tokens=spent.tally.failed_prompts,
                    completion_tokens=streamed,
                )
            )
            return Segment(node_id=req.node_id, failed=True, error=error)
        except anyio.get_cancelled_exc_class():
            await self._cancelled([(req, grant)], spent=spent)
            raise
        except RunStopping as exc:  # the endpoint stayed down, the files cannot be written
            await self._cancelled([(req, grant)], str(exc), spent)
            raise
        choice = result.choices[0]
        req.budget.commit(grant, spent.text(0, choice.completion_tokens, choice))
        text = _with_thinking(choice, self.caps)
        _apply(branch, mode, messages, prefix, req, text)
        event, seg = self._finished(
            branch, req, result, choice, text, result.prompt_tokens, continued=mode != "revision"
        )
        await self.bus.emit(event)
        return seg

    async def think_and_answer(
        self, branch: Branch, think: SegmentRequest, answer: SegmentRequest
    ) -> tuple[Segment, Segment]:
        """Thinking capped by the server (``thinking_token_budget``) and the answer, in one call.

        The call becomes two nodes: the thinking (its reasoning tokens, at most
        ``think.max_tokens``) and the answer after it (the rest of the completion).
        """
        mode, messages, prefix = self._shape(branch, think)
        read_back = await self._recorded(
            mode,
            messages,
            prefix,
            think.max_tokens + answer.max_tokens,
            [think],
            extra={"thinking_token_budget": think.max_tokens},
            covers=[think, answer],
        )
        recorded = None
        if read_back is not None:
            recorded, bill = read_back[0], None
            think_grant, answer_grant = think.max_tokens, answer.max_tokens
        else:
            think_grant, answer_grant = await _reserved(
                [(think.budget, think.max_tokens), (answer.budget, answer.max_tokens)]
            )
            (think_grant, answer_grant), bill = await self._afford(
                [(think.budget, think_grant), (answer.budget, answer_grant)],
                1,
                messages,
                prefix,
                think.constraint,
            )
        try:
            await self._start([(think, think_grant), (answer, answer_grant)], mode)
        except BaseException:
            _unsent(bill)
            raise
        # its text's tokens, and so its attempts cut off mid-stream, count as the answer's
        spent = _CutOffSpend([answer.budget], [think_grant + answer_grant], bill)
        try:
            # recorded as the solver's: only its whole ask is read back (see _recorded)
            with solver_call():
                result = recorded or await self._request(
                    mode,
                    messages,
                    prefix,
                    think_grant + answer_grant,
                    1,
                    think.node_id,
                    [think],
                    extra={"thinking_token_budget": think_grant},
                    bill=bill,
                    spent=spent,
                )
        except (BudgetExhausted, RunLimitReached) as exc:  # a limit refused to send it again
            await self._cancelled([(think, think_grant), (answer, answer_grant)], str(exc), spent)
            raise
        except EndpointError as exc:
            segments = []
            think.budget.commit(think_grant, 0)  # both first: announcing may fail
            answer.budget.commit(answer_grant, 0)
            (streamed,) = spent.spend_unsent()
            error = self._failed(exc)
            prompts = spent.tally.failed_prompts
            for req, tokens, prompt in ((think, 0, prompts), (answer, streamed, 0)):
                await self.bus.emit(  # the streamed tokens the answer's, as above
                    NodeFailed(
                        node_id=req.node_id,
                        error=error,
                        call_id=think.node_id,
                        prompt_tokens=prompt,
                        completion_tokens=tokens,
                    )
                )
                segments.append(Segment(node_id=req.node_id, failed=True, error=error))
            return segments[0], segments[1]
        except anyio.get_cancelled_exc_class():
            await self._cancelled([(think, think_grant), (answer, answer_grant)], spent=spent)
            raise
        except RunStopping as exc:
            await self._cancelled([(think, think_grant), (answer, answer_grant)], str(exc), spent)
            raise
        choice = result.choices[0]
        thinking, content = _split_thinking(choice, self.caps.think_end)
        total = choice.completion_tokens - choice.cut_off_tokens  # the text's
        thought = result.reasoning_tokens
        if not thought and thinking:
            # vLLM counts reasoning tokens only after a <think> in the output; where the
            # template opened the thinking in the prompt it says 0, so count the text.
            thought = await self.client.count_tokens(thinking)
        if thought is None:  # nobody can say: the thinking took what it was allowed
            log.warning("reasoning tokens unknown; counted at the budget", node=think.node_id)
            thought = total if not content else min(total, think_grant)
        thought = min(thought, total)
        think.budget.commit(think_grant, thought)
        # the answer's node counts what attempts cut off mid-stream spent (see CutOffs)
        answered = total - thought + choice.cut_off_tokens
        answer.budget.commit(answer_grant, spent.text(0, answered, choice))
        _apply(branch, mode, messages, prefix, think, _with_thinking(choice, self.caps))
        finished = []
        for req, text, tokens, prompt, source in (
            (think, thinking, thought, result.prompt_tokens, thinking),
            (answer, content, answered, 0, content),
        ):
            cut_off = req is answer and choice.finish_reason == "length"
            found = extract_answer(source, self.problem, cut_off=cut_off)
            await self.bus.emit(
                NodeFinished(
                    node_id=req.node_id,
                    text=text,
                    finish_reason=choice.finish_reason if req is answer else "thinking-budget",
                    prompt_tokens=prompt,
                    completion_tokens=tokens,
                    answer=found.answer if found else None,
                    extraction=found.method if found else None,
                    latency_s=result.latency_s,
                    call_id=result.call_id,
                    request_id=result.request_id,
                )
            )
            finished.append(
                Segment(
                    node_id=req.node_id,
                    text=text,
                    finish_reason=choice.finish_reason,
                    completion_tokens=tokens - (choice.cut_off_tokens if req is answer else 0),
                    answer=found.answer if found else None,
                )
            )
        return finished[0], finished[1]

    async def segments_n(
        self, branch: Branch, reqs: list[SegmentRequest]
    ) -> list[tuple[Segment, Branch]]:
        """The first call of several branches as one request with ``n`` choices.

        Returns each branch's segment with its own copy of the grown conversation.
        """
        # One request has one max_tokens: every branch gets the smallest grant.
        mode, messages, prefix = self._shape(branch, reqs[0])
        ask = min(r.max_tokens for r in reqs)
        read_back = (
            await self._recorded(mode, messages, prefix, ask, reqs) if self.recorded else None
        )
        recorded, cut = None, _NO_MARKS
        if read_back is not None:
            (recorded, grant), bill = read_back, None
        else:
            try:
                grants = await _reserved([(r.budget, r.max_tokens) for r in reqs])
                grant = min(grants)
                for r, g in zip(reqs, grants, strict=True):
                    # each keeps the smallest grant: what it was granted past that is given
                    # back (a commit, so that calls waiting on its pools look again, as they
                    # would after any settling, even of nothing)
                    r.budget.commit(g - grant, 0)
                asks = [(r.budget, grant) for r in reqs]
                grants, bill = await self._afford(
                    asks, len(reqs), messages, prefix, reqs[0].constraint
                )
            except (BudgetExhausted, RunLimitReached) as exc:
                await self._refused(reqs, exc)
                raise
            grant = grants[0]
            cut = _marks(reqs) if grant < ask else cut
        try:
            await self._start([(r, grant) for r in reqs], mode)
        except BaseException:
            _unsent(bill)
            raise
        spent = _CutOffSpend([r.budget for r in reqs], [grant] * len(reqs), bill)
        try:
            with solver_call(cut):
                result = recorded or await self._request(
                    mode,
                    messages,
                    prefix,
                    grant,
                    len(reqs),
                    reqs[0].node_id,
                    reqs,
                    bill=bill,
                    spent=spent,
                )
        except anyio.get_cancelled_exc_class():
            await self._cancelled([(r, grant) for r in reqs], spent=spent)
            raise
        except (BudgetExhausted, RunLimitReached, RunStopping) as exc:
            await self._cancelled([(r, grant) for r in reqs], str(exc), spent)
            raise
        except EndpointError as exc:
            out = []
            for r in reqs:  # all first: announcing one may fail
                r.budget.commit(grant, 0)
            streamed = spent.spend_unsent()
            error = self._failed(exc)
            for i, (r, tokens) in enumerate(zip(reqs, streamed, strict=True)):
                await self.bus.emit(
                    NodeFailed(
                        node_id=r.node_id,
                        error=error,
                        call_id=reqs[0].node_id,
                        prompt_tokens=spent.tally.failed_prompts if i == 0 else 0,
                        completion_tokens=tokens,
                    )
                )
                out.append((Segment(node_id=r.node_id, failed=True, error=error), branch.fork()))
            return out
        segments: list[tuple[Segment, Branch]] = []
        ends: list[Event] = []  # the nodes' ends, emitted together
        short = len(self.failures)
        choices, caps = result.choices, self.caps
        readings: dict[tuple[str, bool], Extraction | None] = {}  # choices that say the same
        for i, r in enumerate(reqs):
            if i >= len(choices):
                r.budget.commit(grant, 0)
                error = "the server returned fewer choices than asked for"
                if error not in self.failures[short:]:  # once for the request
                    self.failures.append(error)
                ends.append(NodeFailed(node_id=r.node_id, error=error, call_id=result.call_id))
                segments.append(
                    (Segment(node_id=r.node_id, failed=True, error=error), branch.fork())
                )
                continue
            choice = choices[i]
            r.budget.commit(grant, spent.text(i, choice.completion_tokens, choice))
            own = branch.fork()
            text = _with_thinking(choice, caps)
            _apply(own, mode, messages, prefix, r, text)
            prompt_tokens = result.prompt_tokens if i == 0 else 0
            event, seg = self._finished(
                own,
                r,
                result,
                choice,
                text,
                prompt_tokens,
                continued=mode != "revision",
                readings=readings,
            )
            ends.append(event)
            segments.append((seg, own))
        await self.bus.emit_all(ends)
        return segments

    async def _recorded(
        self,
        mode: str,
        messages: list[Message],
        prefix: str,
        ask: int,
        reqs: list[SegmentRequest],
        extra: dict[str, Any] | None = None,
        *,
        covers: list[SegmentRequest] | None = None,
    ) -> tuple[Completion, int] | None:
        """The call of ``reqs`` as this run recorded it before (a resumed run), and its
        grant, read back whatever its limits have left: its tokens and cost were held for
        it (:class:`~thinktree.orchestrator.ledger.RecordedCalls`) and are reserved for it
        now, for each node it ``covers`` (default ``reqs``).

        It is looked up at its whole ``ask``, and, under the limits it was made under, at
        the grant one of them cut it to (the marks that cut made are made again, so the
        problem says what stopped it). A call of two nodes (``covers``) is read back at
        its whole ask only. None when none is found: the hold goes, and the call asks as
        a new one does (one a limit cut short, under a raised limit).
        """
        if not self.recorded:
            return None
        key = ",".join(r.node_id for r in reqs)
        for grant in self.recorded.grants(key, ask)[: 1 if covers else None]:
            try:
                with only_recorded():
                    first = reqs[0].node_id
                    found = await self._send(
                        mode, messages, prefix, grant, len(reqs), first, reqs, extra
                    )
            except NotRecorded:
                continue
            # its hold becomes its reservation at once: no call may take the tokens between
            marks = self.recorded.release(key)
            for r in covers or reqs:
                r.budget.reserve_recorded(r.max_tokens if covers else grant)
                if grant < ask:
                    _mark(r.budget, marks)
            if self.money is not None:
                self.money.read_back(found.prompt_tokens, found.completion_tokens)
            return found, grant
        self.recorded.release(key)
        return None

    async def _refused(
        self, reqs: list[SegmentRequest], exc: BudgetExhausted | RunLimitReached
    ) -> None:
        """Calls a limit refused before they started: a branch's first call still gets its
        node, failed with the reason, so that the tree shows every branch, and why one has
        no answer (other calls leave none; their strategy goes on with what it has)."""
        shown = [r for r in reqs if r.branch]
        if not shown:
            return
        error, problem_id = refusal(exc), self.problem.id
        events: list[Event] = []
        for r in shown:
            events.append(
                NodeStarted(
                    node_id=r.node_id,
                    problem_id=problem_id,
                    parent_id=r.parent_id,
                    kind=r.kind,
                    label=r.label,
                    max_tokens=r.max_tokens,
                )
            )
            events.append(NodeFailed(node_id=r.node_id, error=error))
        await self.bus.emit_all(events)

    async def _start(self, calls: list[tuple[SegmentRequest, int]], mode: str) -> None:
        """Announce the calls about to be sent, each with its grant.

        They are announced together or not at all. If that is cut off (the run stops),
        none is sent, and every call gives back what it reserved (a reservation never
        settled would hold its pools for good, and a call waiting on the run's pool would
        wait forever).
        """
        problem_id = self.problem.id
        continues = mode not in ("new", "revision")  # the cue is sent: the text goes on from it
        try:
            await self.bus.emit_all(
                [
                    NodeStarted(
                        node_id=r.node_id,
                        problem_id=problem_id,
                        parent_id=r.parent_id,
                        kind=r.kind,
                        label=r.label,
                        max_tokens=grant,
                        continuation=mode,
                        cue=r.cue if continues else "",
                    )
                    for r, grant in calls
                ]
            )
        except BaseException:
            for r, grant in calls:
                r.budget.commit(grant, 0)
            raise

    async def _cancelled(
        self,
        calls: list[tuple[SegmentRequest, int]],
        reason: str = "cancelled in flight: the run stopped",
        spent: _CutOffSpend | None = None,
    ) -> None:
        """Record calls cut off in flight (the run stopped, a limit refused to send them
        again), each with its grant: released, but for what an attempt cut off mid-stream
        and never sent again streamed (``spent``), marked failed with ``reason``, so none
        is left running. All are released first: announcing one may fail (the bus
        closed), and must not keep the others' tokens."""
        for r, grant in calls:
            r.budget.commit(grant, 0)
        streamed = spent.spend_unsent() if spent is not None else []
        streamed = [0] * (len(calls) - len(streamed)) + streamed  # a thinking's: its answer's
        sent_as = calls[0][0].node_id  # the request they were sent in
        with anyio.CancelScope(shield=True):
            for (r, _), tokens in zip(calls, streamed, strict=True):
                await self.bus.emit(
                    NodeFailed(
                        node_id=r.node_id, error=reason, call_id=sent_as, completion_tokens=tokens
                    )
                )

    def _shape(self, branch: Branch, req: SegmentRequest) -> tuple[str, list[Message], str]:
        """How to send ``req``: the continuation mode, the messages and the assistant prefix.

        Where every call is rendered with a chat template on the client, a new turn's prefix
        is what the template's generation prompt opens (a reasoning model's ``<think>``).
        """
        prefix = branch.assistant + req.cue if branch.assistant else ""
        if not prefix:
            template = client_template(self.client, self.caps)
            opener = generation_opener(template, branch.messages) if template else ""
            return "new", list(branch.messages), opener
        mode = self.caps.continuation
        if mode == "revision":
            prompt = req.revision_prompt or "Continue."
            messages = [
                *branch.messages,
                {"role": "assistant", "content": branch.assistant},
                {"role": "user", "content": prompt},
            ]
            return "revision", messages, ""
        return mode, list(branch.messages), prefix

    async def _afford(
        self,
        asks: list[tuple[Budget, int]],
        choices: int,
        messages: list[Message],
        prefix: str,
        constraint: Constraint | None = None,
    ) -> tuple[list[int], Bill | None]:
        """A call's grants as the run's money limit affords them, and the money it holds.

        ``asks`` are the call's pools and grants: ``choices`` of them share one
        ``max_tokens`` (n samples), or one choice's grants add up to it. The call holds its
        worst case (its prompt's bound, with the answer schema an API may add to the prompt,
        at the prompt price, ``max_tokens`` per choice at the completion price) until it
        settles; where the limit, held by no call under way, affords less, the grants are
        cut to it (the rest given back) and the pools say the run's money limit cut them.
        Nothing is held (the grants are given back) on failure.
        """
        grants = [granted for _, granted in asks]
        if self.money is None:
            return grants, None
        texts = [str(m.get("content") or "") for m in messages] + [prefix]
        if constraint is not None:
            texts.append(json.dumps(constraint.fields))
        bound = prompt_bound(texts, len(messages) + 1)
        per_choice = grants[0] if choices > 1 else sum(grants)
        try:
            bill = await self.money.hold(
                bound, per_choice, choices=choices, least=1 if choices > 1 else len(grants)
            )
        except BaseException:  # others may have come to wait for these grants meanwhile
            for budget, granted in asks:
                budget.commit(granted, 0)
            raise
        if bill.max_tokens < per_choice:
            cut = [bill.max_tokens] * len(asks) if choices > 1 else _split(grants, bill.max_tokens)
            for (budget, granted), less in zip(asks, cut, strict=True):
                budget.commit(granted - less, 0)  # gives the rest back
                budget.note_run_cut(self.money.cut_reason)
            grants = cut
        return grants, bill

    async def _request(
        self,
        mode: str,
        messages: list[Message],
        prefix: str,
        max_tokens: int,
        n: int,
        first_node: str,
        reqs: list[SegmentRequest],
        extra: dict[str, Any] | None = None,
        *,
        bill: Bill | None = None,
        spent: _CutOffSpend | None = None,
    ) -> Completion:
        """Send the call; ``bill`` (the money it holds) settles at what it cost, or, where
        it fails or is cut off, at what its attempts cut off mid-stream cost (``spent``
        counts those under the limits)."""
        tally = spent.tally if spent is not None else CutOffs()
        try:
            with counting_cut_offs(tally):
                result = await self._ask(
                    mode, messages, prefix, max_tokens, n, first_node, reqs, extra
                )
        except BaseException:
            if bill is not None:
                bill.release(sum(tally.last or ()))
            raise
        if bill is not None:
            bill.settle(result.prompt_tokens, result.completion_tokens)
        return result

    def _ask(
        self,
        mode: str,
        messages: list[Message],
        prefix: str,
        max_tokens: int,
        n: int,
        first_node: str,
        reqs: list[SegmentRequest],
        extra: dict[str, Any] | None = None,
    ) -> Awaitable[Completion]:
        """The call, to await: where nobody watches the text grow, the client's own.

        Neither this nor :meth:`_send` is a coroutine: a frame between the caller and
        the client would be resumed on every wake-up of every call (the reply's bytes).
        """
        if not self.bus.wants_deltas:
            return self._send(mode, messages, prefix, max_tokens, n, first_node, reqs, extra)
        return self._ask_shown(mode, messages, prefix, max_tokens, n, first_node, reqs, extra)

    async def _ask_shown(
        self,
        mode: str,
        messages: list[Message],
        prefix: str,
        max_tokens: int,
        n: int,
        first_node: str,
        reqs: list[SegmentRequest],
        extra: dict[str, Any] | None = None,
    ) -> Completion:
        """The call, its text shown as it grows (streamed) or when it arrives."""
        on_delta = None
        node_ids = [r.node_id for r in reqs]
        if self.bus.wants_deltas and self.caps.stream_usage:
            streamed: set[int] = set()  # choices whose text some attempt has streamed

            async def on_delta(index: int, text: str, *, first: bool) -> None:
                # a new attempt at the call (the stream was cut off): its text replaces
                # the cut-off attempt's, which the node must not show glued before it
                restart = first and index in streamed
                streamed.add(index)
                await self.bus.emit(NodeDelta(node_id=node_ids[index], text=text, restart=restart))

        elif self.bus.wants_deltas:
            # The server sends no usage in streams: ask without streaming (exact token
            # counts), and show each choice's text when it arrives.
            result = await self._send(
                mode, messages, prefix, max_tokens, n, first_node, reqs, extra
            )
            for index, choice in enumerate(result.choices):
                if choice.text:
                    await self.bus.emit(NodeDelta(node_id=node_ids[index], text=choice.text))
            return result
        return await self._send(
            mode, messages, prefix, max_tokens, n, first_node, reqs, extra, on_delta
        )

    def _send(
        self,
        mode: str,
        messages: list[Message],
        prefix: str,
        max_tokens: int,
        n: int,
        first_node: str,
        reqs: list[SegmentRequest],
        extra: dict[str, Any] | None,
        on_delta: DeltaHandler | None = None,
    ) -> Awaitable[Completion]:
        """The client's call for it, to await (see :meth:`_ask`)."""
        seed = self.seed_for(first_node)
        temperature = self.sampling.temperature
        key = ",".join(r.node_id for r in reqs)
        if reqs[0].constraint is not None:
            extra = {**(extra or {}), **reqs[0].constraint.fields}
        template = client_template(self.client, self.caps)
        if mode == "completions" or (mode == "new" and template is not None):
            template = template or self.client.config.chat_template
            if template is None:
                raise EndpointError("continuation over /v1/completions needs a chat template")
            prompt = render_continuation(template, messages, prefix)
            return self.client.complete(
                prompt,
                max_tokens=max_tokens,
                n=n,
                temperature=temperature,
                seed=seed,
                extra=extra,
                on_delta=on_delta,
                key=key,
                token_ids=self.caps.token_ids,
            )
        convo = messages
        if mode == "chat":
            convo = [*messages, {"role": "assistant", "content": prefix}]
        return self.client.chat(
            convo,
            max_tokens=max_tokens,
            n=n,
            temperature=temperature,
            seed=seed,
            continue_final=mode == "chat",
            extra=extra,
            on_delta=on_delta,
            key=key,
            token_ids=self.caps.token_ids,
        )

    def _finished(
        self,
        branch: Branch,
        req: SegmentRequest,
        result: Completion,
        choice: Choice,
        text: str,
        prompt_tokens: int,
        *,
        continued: bool,
        readings: dict[tuple[str, bool], Extraction | None] | None = None,
    ) -> tuple[NodeFinished, Segment]:
        """The node a call's ``choice`` (its text with its thinking: ``text``) ends, and
        the segment it grew: built, not emitted, so that n choices cost no coroutine each.
        ``continued``: the call went on from the branch's own message (and its cue), not
        in a turn of its own. ``readings``: the answers read from the texts of the call's
        other choices, by text and cut-off: a text said again (a short or structured
        answer, a model sure of itself) is read once."""
        if req.extract_from == "message":
            source = branch.assistant
            written = req.cue + text
            if req.cue and not text.strip() and source.endswith(written):
                # the step wrote nothing after thinktree's cue ("Wait"): the answer that
                # stands is the one before it, which a last-line rule would miss behind it
                source = source[: len(source) - len(written)]
        elif req.extract_from == "cue":
            # the answer read after what the model answered: the cue it went on from, or
            # (asked in a turn of its own, which never showed it the cue) a heading
            lead = req.cue.strip() if continued else ANSWER_HEADING
            source = lead + " " + choice.text
        else:
            source = choice.text
        cut_off = choice.finish_reason == "length"
        if readings is None:
            found = extract_answer(source, self.problem, cut_off=cut_off)
        elif (key := (source, cut_off)) in readings:
            found = readings[key]
        else:
            found = readings[key] = extract_answer(source, self.problem, cut_off=cut_off)
        answer, method = (found.answer, found.method) if found else (None, None)
        if req.constraint is not None and req.constraint.dialect is None:
            method = f"fallback: {method or 'nothing'} ({req.constraint.unavailable})"
        elif req.constraint is not None:
            parsed = validate(choice.text, req.constraint, self.problem)
            if parsed is not None:
                answer, method = parsed.answer, f"constrained ({req.constraint.dialect})"
            else:
                method = f"fallback: {method or 'nothing'} (constrained output did not validate)"
                log.warning(
                    "constrained answer did not validate",
                    node=req.node_id,
                    dialect=req.constraint.dialect,
                    text=choice.text[:80],
                )
        event = NodeFinished(
            node_id=req.node_id,
            text=text,
            finish_reason=choice.finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=choice.completion_tokens,
            answer=answer,
            extraction=method,
            latency_s=result.latency_s,
            call_id=result.call_id,
            request_id=result.request_id,
        )
        # positional (node_id, text, finish_reason, completion_tokens, answer): one per
        # sample; its tokens are the text's, what the mode's budgets count (the node says
        # what was spent)
        return event, Segment(
            req.node_id,
            choice.text,
            choice.finish_reason,
            choice.completion_tokens - choice.cut_off_tokens,
            answer,
        )


class _CutOffSpend:
    """Counts a call's attempts cut off mid-stream (see
    :class:`~thinktree.agents.endpoint.CutOffs`) under the run's limits: each as the call
    is sent again, where they hold another attempt too (else the call is not sent again);
    the last one, which nothing followed, when the call ends (:meth:`spend_unsent`). The
    pools under the run's count the text the call answered with (:meth:`text`).

    ``pools[i]``, ``grants[i]``: the pool choice ``i``'s tokens count in, its grant.
    """

    def __init__(self, pools: list[Budget], grants: list[int], bill: Bill | None) -> None:
        self.pools = pools
        self.grants = grants
        self.bill = bill
        self.counted = [0] * len(pools)
        """Per choice, tokens of attempts sent again: spent in the run's pool already."""
        # told by a function, not by a bound method of this spend: the two would hold each
        # other, a cycle per call left for the garbage collector to find
        self.tally = CutOffs(
            on_resend=functools.partial(_count_resent, pools[0], bill, self.counted)
        )

    def text(self, index: int, tokens: int, choice: Choice) -> int:
        """Of ``tokens``, choice ``index``'s (``choice``'s) count with its attempts cut off
        mid-stream in it, those of the text it answered with; what those attempts spent is
        in the run's pool (a call read back from the run's call store: from now on)."""
        unseen = choice.cut_off_tokens - self.counted[index]
        if unseen > 0:
            spend_in_run(self.pools[0], unseen, check=False)
        return max(tokens - choice.cut_off_tokens, 0)

    def spend_unsent(self) -> list[int]:
        """Count what the last attempt, cut off mid-stream and not sent again, streamed, as
        spent in the run's pool, once the call's grants are given back (it is within them);
        per choice, the tokens the call's attempts streamed (what its failed node spent)."""
        streamed = list(self.counted)
        for i, tokens in enumerate(self.tally.last or ()):
            j = min(i, len(streamed) - 1)
            streamed[j] += min(tokens, self.grants[j])
        self.tally.last = None
        spend_in_run(self.pools[0], sum(streamed) - sum(self.counted), check=False)
        return streamed


async def _count_resent(
    pool: Budget, bill: Bill | None, counted: list[int], tokens: list[int]
) -> None:
    """Count a cut-off attempt's ``tokens`` (per choice) as spent in the run's pool above
    ``pool`` (and on ``bill``) as its call is sent again, and in ``counted``, per choice."""
    total = sum(tokens)
    spend_in_run(pool, total, count=False)  # the money's check last: it counts
    if bill is not None:
        bill.charge(total)
    spend_in_run(pool, total, check=False)
    for i, choice_tokens in enumerate(tokens):
        counted[min(i, len(counted) - 1)] += choice_tokens


async def _reserved(asks: list[tuple[Budget, int]]) -> list[int]:
    """Each pool's grant for its ask, all or none.

    While a limit that cannot grant an ask whole is held by other calls under way (not
    spent), this holds nothing, waits for one of them to settle and asks again, so waiters
    never wait on each other. Where this call's own asks alone take more than is left (n
    samples in one request), what is left is shared out between them.
    """
    while True:
        grants: list[int] = []
        try:
            for budget, wanted in asks:
                grants.append(budget.reserve(wanted))
            return grants
        except LimitHeld as held:
            _settle(asks, grants)
            waiting = held
            if held.pool.reserved == 0:  # it was this call's own asks that held it
                try:
                    return _shared(asks, held.pool)
                except LimitHeld as other:  # another pool of theirs, held by others
                    waiting = other
            await waiting.wait()
        except BaseException:
            _settle(asks, grants)
            raise


def _shared(asks: list[tuple[Budget, int]], pool: Budget) -> list[int]:
    """Grants for ``asks`` out of what is left of ``pool``, in equal shares."""
    left = pool.available() or 0
    share = left // len(asks)
    if any(wanted > share for _, wanted in asks):  # its limit cuts them, not calls under way
        pool.cut = True
        if pool.stops_run and share > 0:
            for budget, _ in asks:
                budget.note_run_cut(token_cut(pool.limit))
    if share <= 0 and pool.stops_run:
        raise RunLimitReached(
            f"run stopped: its token limit of {pool.limit} is reached "
            f"({pool.used + pool.held} spent; "
            f"the {left} left cannot be shared between {len(asks)} calls)"
        )
    if share <= 0:
        raise BudgetExhausted(f"budget '{pool.name}' is spent")
    grants: list[int] = []
    try:
        for budget, wanted in asks:
            grants.append(budget.reserve(min(wanted, share)))
    except BaseException:
        _settle(asks, grants)
        raise
    return grants


def _split(grants: list[int], total: int) -> list[int]:
    """``grants`` cut down to ``total`` (at least one each) in proportion, the rounding's
    rest to the last (an answer after its thinking)."""
    whole = sum(grants)
    cut = [max(1, granted * total // whole) for granted in grants]
    cut[-1] = total - sum(cut[:-1])
    return cut


_NO_MARKS: tuple[tuple[str, str], ...] = ()


def _marks(reqs: list[SegmentRequest]) -> tuple[tuple[str, str], ...]:
    """The marks the limits over ``reqs`` carry: ``("cut", pool)`` for each pool a limit
    cut, ``("run-cut", reason)`` where a limit of the whole run did (see :class:`Budget`).

    Taken when a call is cut, they are made again when it is read back cut: those an
    earlier call made, it makes again too, as every recorded call is reached again."""
    marks: set[tuple[str, str]] = set()
    for r in reqs:
        pool: Budget | None = r.budget
        while pool is not None:
            if pool.cut:
                marks.add(("cut", pool.name))
            if pool.run_cut is not None:
                marks.add(("run-cut", pool.run_cut))
            pool = pool.parent
    return tuple(sorted(marks))


def _mark(budget: Budget, marks: tuple[tuple[str, str], ...]) -> None:
    """Make ``marks`` (see :func:`_marks`) again on ``budget`` and the pools above it."""
    for kind, what in marks:
        if kind == "run-cut":
            budget.note_run_cut(what)
    pool: Budget | None = budget
    cut = {what for kind, what in marks if kind == "cut"}
    while pool is not None:
        if pool.name in cut:
            pool.cut = True
        pool = pool.parent


def _unsent(bill: Bill | None) -> None:
    """Give back the money of a call never sent (or cut off): it cost nothing."""
    if bill is not None:
        bill.release()


def _settle(asks: list[tuple[Budget, int]], grants: list[int]) -> None:
    """Undo ``grants`` (the first ones of ``asks``), made in one go and never used.

    Waiters are not woken: the pools are as they found them, and two waiters whose asks
    partly fit would otherwise wake each other in turn for as long as a call holds the pool.
    """
    for (budget, _), granted in zip(asks, grants, strict=False):
        budget.unreserve(granted)


def _with_thinking(choice: Choice, caps: Capabilities) -> str:
    """The assistant's text with its thinking, where the server sent that apart.

    A server with a reasoning parser returns the thinking in its own field; continuing the
    message (or reading the node) needs it back inside the model's own markers.
    """
    if not choice.reasoning:
        return choice.text
    end = caps.think_end or "</think>"
    thinking = f"<think>\n{choice.reasoning}"
    return f"{thinking}\n{end}\n\n{choice.text}" if choice.text else thinking


def _split_thinking(choice: Choice, end: str) -> tuple[str, str]:
    """(thinking, answer) of a reasoning model's reply, from the field or from the marker."""
    if choice.reasoning:
        return choice.reasoning, choice.text
    if end and end in choice.text:
        thinking, _, answer = choice.text.partition(end)
        return thinking, answer.lstrip()
    return choice.text, ""


def _apply(
    branch: Branch, mode: str, messages: list[Message], prefix: str, req: SegmentRequest, text: str
) -> None:
    """Extend ``branch`` with a call's text, as the continuation mode shaped it."""
    if mode == "revision":
        branch.messages = messages
        branch.assistant = text
    elif mode == "new":
        branch.assistant = prefix + text  # the template's opener, if it has one
    else:
        branch.assistant = prefix + text


def refusal(exc: BudgetExhausted | RunLimitReached) -> str:
    """Why a call a limit refused has no answer, as its node says."""
    return f"{NO_TOKENS_LEFT}: {exc}" if isinstance(exc, BudgetExhausted) else str(exc)

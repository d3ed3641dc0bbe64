"""The budget ledger: tokens reserved before a call and committed after it.

A request asks for ``max_tokens``; the ledger grants at most what is left of every
budget that covers the node (the node's own cap, its branch's share, the problem's
total), so no node can ever pass its cap, whatever the model does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from thinktree.errors import BudgetExhausted, RunLimitReached

if TYPE_CHECKING:
    from thinktree.orchestrator.call_cache import Recorded
    from thinktree.pricing import MoneyLimit


def token_cut(limit: int | None) -> str:
    """What a problem says when the run's token limit cut one of its calls short."""
    return f"run stopped: its token limit of {limit} cut calls short"


class LimitHeld(Exception):  # a state to wait out, not a failure
    """A limit cannot grant a call's whole ask now, but calls under way hold some of it and
    may give back what they do not use: wait (:meth:`wait`) and ask again."""

    def __init__(self, pool: Budget) -> None:
        super().__init__(f"the tokens left of '{pool.name}' are held by calls under way")
        self.pool = pool

    async def wait(self) -> None:
        """Until a call under way gives its reservation back (settles)."""
        if self.pool.released is None:
            self.pool.released = anyio.Event()
        await self.pool.released.wait()


@dataclass(slots=True)
class Budget:
    """A pool of completion tokens, optionally nested in a parent pool."""

    name: str
    limit: int | None
    parent: Budget | None = None
    stops_run: bool = False  # exhausting this pool stops the whole run
    reserved: int = 0
    used: int = 0
    held: int = 0  # a resumed run's recorded calls not read back yet (see RecordedCalls)
    released: anyio.Event | None = None  # set when a reservation settles (a waiter's)
    cut: bool = False  # its limit, spent (not held), granted a call less than asked, or none
    run_stopped: str | None = None  # why the run's limit refused a call under it (see below)
    run_cut: str | None = None  # why a run-wide limit granted a call under it less than asked

    def child(self, name: str, limit: int | None, *, cap: int | None = None) -> Budget:
        """A pool nested in this one (it holds its parent, not the other way round, so
        a finished branch's pools are freed at once)."""
        if cap is not None:
            limit = cap if limit is None else min(limit, cap)
        return Budget(name, limit, self)  # positional: two per sample

    def available(self) -> int | None:
        """Tokens still grantable here and in every enclosing pool (None: unlimited)."""
        best: int | None = None
        pool: Budget | None = self
        while pool is not None:
            if pool.limit is not None:
                left = pool.limit - pool.used - pool.reserved - pool.held
                best = left if best is None else min(best, left)
            pool = pool.parent
        return None if best is None else max(best, 0)

    def reserve(self, wanted: int) -> int:
        """Reserve ``wanted`` tokens, or less where a limit is spent down to less.

        A call gets its whole ask or waits for it: where a pool short of the ask has
        tokens held by calls under way (the run's, a problem's shared by its branches)
        and they could grant more than now, this raises :class:`LimitHeld`; the caller
        waits and asks again. Only a limit nobody holds grants less than the ask (and is
        marked ``cut``; where the run's does, the pools under it say so, see
        :meth:`note_run_cut`); once one has nothing left, the run's raises
        :class:`~thinktree.errors.RunLimitReached` and another
        :class:`~thinktree.errors.BudgetExhausted`.
        """
        if wanted <= 0:
            raise ValueError("a reservation must ask for at least one token")
        short: list[tuple[Budget, int]] | None = None  # pools that cannot grant it all now
        pool: Budget | None = self
        while pool is not None:
            if pool.limit is not None:
                left = pool.limit - pool.used - pool.reserved - pool.held
                if left < wanted:
                    if short is None:  # made only where needed: most asks fit
                        short = []
                    short.append((pool, left))
            pool = pool.parent
        if short is not None:
            free = [(p, left) for p, left in short if p.reserved == 0]  # what is left stays
            most = min((left for _, left in free), default=wanted)
            for held, left in short:
                if held.reserved > 0 and left < most:  # settling may grant more: wait
                    raise LimitHeld(held)
            for p, _ in free:
                p.cut = True
            grant = max(most, 0)
            if grant == 0:
                spent = [p for p, left in free if left <= 0]
                run = next((p for p in spent if p.stops_run), None)
                if run is not None:
                    raise RunLimitReached(
                        f"run stopped: its token limit of {run.limit} is reached "
                        f"({run.used + run.held} spent)"  # recorded calls were spent too
                    )
                raise BudgetExhausted(f"budget '{self.name}' is spent")
            run = next((p for p, left in free if p.stops_run and left <= most), None)
            if run is not None:  # the run's limit is (one of) those that cut it
                self.note_run_cut(token_cut(run.limit))
        else:
            grant = wanted
        pool = self
        while pool is not None:
            pool.reserved += grant
            pool = pool.parent
        return grant

    def reserve_recorded(self, granted: int) -> None:
        """Reserve what a call read back from the run's own call store was granted when it
        was made, whatever is left: it was paid for then, and its tokens were held for it
        (:class:`RecordedCalls`), so it is never cut or refused on a resume."""
        pool: Budget | None = self
        while pool is not None:
            pool.reserved += granted
            pool = pool.parent

    def unreserve(self, granted: int) -> None:
        """Undo a reservation this caller made and never used (no await in between): the
        pools are as they were, so no waiter is woken (it would find nothing new)."""
        pool: Budget | None = self
        while pool is not None:
            pool.reserved -= granted
            pool = pool.parent

    def commit(self, granted: int, used: int) -> None:
        """Turn a reservation of ``granted`` into ``used`` tokens (the rest is released)."""
        pool: Budget | None = self
        while pool is not None:
            pool.reserved -= granted
            pool.used += used
            if pool.released is not None:  # a call waits for what this one held
                pool.released.set()
                pool.released = None
            pool = pool.parent

    def stopped_by_run(self, reason: str) -> None:
        """Record that the run's token or money limit (``reason``) refused a call under this
        pool, here and in every pool above: the caller goes on with the answers it has, and
        its problem says the run's limit cut it short."""
        pool: Budget | None = self
        while pool is not None:
            if pool.run_stopped is None:
                pool.run_stopped = reason
            pool = pool.parent

    def note_run_cut(self, reason: str) -> None:
        """Say on this pool and those above it, up to the run's, that a limit of the whole
        run (``reason``) granted a call under them less than it asked: the problem whose
        pool it is was stopped by it, and goes on under a higher one. Unlike a refusal
        (:meth:`stopped_by_run`), it tells the strategies nothing: later calls may fit."""
        pool: Budget | None = self
        while pool is not None and not pool.stops_run:
            pool.run_cut = reason
            pool = pool.parent

    @property
    def utilisation(self) -> float | None:
        return None if not self.limit else self.used / self.limit


def spend_in_run(pool: Budget, tokens: int, *, check: bool = True, count: bool = True) -> None:
    """Count ``tokens`` generated for no answer (by attempts cut off mid-stream) as spent
    in the run's pool, the outermost one above ``pool``: the run's limit counts what was
    spent, while the pools under it (a problem's, its mode's budgets) count the text each
    call answered with. With ``check``, only where the run's limit also still holds what
    calls under way reserved, so that the call may be sent again; else
    :class:`~thinktree.errors.RunLimitReached`, and nothing is counted. ``count=False``
    checks only."""
    run = pool
    while run.parent is not None:
        run = run.parent
    if check and run.limit is not None and run.limit - run.used - run.reserved - run.held < tokens:
        raise RunLimitReached(
            f"run stopped: its token limit of {run.limit} is reached "
            f"({run.used + run.held} spent; a call cut off mid-stream cannot be sent again "
            "within it)"
        )
    if count:
        run.used += tokens


class RecordedCalls:
    """The calls a resumed run's own call store recorded (the solver's, and a judge's on the
    run's endpoint), held under its token limits until the run reaches them.

    A call's grant depends on which calls hold a shared limit when it asks, so a resumed
    run, whose calls come in another order (those read back return at once), could grant
    a recorded call less than before (a new fingerprint: paid again) or spend the limit
    on new calls before reaching it (its answer lost). Instead each recorded call's
    tokens stay held in the run's pool and its problem's until its node(s) ask again:
    then it is read back whatever is left (:meth:`Budget.reserve_recorded`), at its
    whole ask, or at the grant a limit cut it to: under the limits it was made under
    (``same_limits``), or where its reply ended by itself within that grant (a larger one
    gets the same reply; no limit cut it in effect). Not found, its hold goes and it asks
    as a new call does (one a limit cut short, asked again whole under a raised limit).
    New calls never take what recorded ones will need, so no limit is passed; recorded
    calls never reached stay counted, as they were paid for. A verifier's call counts
    under the run's limits only, so only they hold it (its problem's pool never counted
    it).
    """

    def __init__(
        self,
        recorded: dict[str, Recorded],
        run_pool: Budget,
        money: MoneyLimit | None = None,
        *,
        same_limits: bool = False,
    ) -> None:
        self._recorded = dict(recorded)  # node key -> what its call spent and was granted
        self._same_limits = same_limits
        self._by_problem: dict[str, int] = {}
        for key, call in self._recorded.items():
            if not call.verifier:  # its text's: a problem's limit never counted the rest
                problem = problem_of(key)
                done = self._by_problem.get(problem, 0) + call.completion_tokens - call.cut_off
                self._by_problem[problem] = done
            if money is not None:
                money.hold_recorded(call.prompt_tokens, call.completion_tokens)
        self._run = run_pool
        self._money = money
        run_pool.held += sum(call.completion_tokens for call in self._recorded.values())
        self._problems: dict[str, Budget] = {}

    def __bool__(self) -> bool:
        return bool(self._recorded)

    def grants(self, key: str, ask: int) -> list[int]:
        """The grants to look the call of ``key`` up at, in order (none if not recorded)."""
        call = self._recorded.get(key)
        if call is None:
            return []
        if call.grant is not None and call.grant < ask and (self._same_limits or call.ended):
            # a limit that is still there cut it; or the reply ended by itself, as it would
            # have under a larger grant: read back, not paid for again
            return [ask, call.grant]
        return [ask]

    def problem_pool(self, problem: str, pool: Budget) -> None:
        """Hold the problem's recorded calls in its pool (made when the problem starts)."""
        pool.held += self._by_problem.get(problem, 0)
        self._problems[problem] = pool

    def release(self, key: str) -> tuple[tuple[str, str], ...]:
        """Stop holding the call recorded for ``key`` (it is read back now, or asked anew);
        the marks its limits made where they cut it (see :class:`Recorded`)."""
        call = self._recorded.pop(key, None)
        if call is None:
            return ()
        problem = None if call.verifier else self._problems.get(problem_of(key))
        if problem is not None:
            problem.held = max(0, problem.held - (call.completion_tokens - call.cut_off))
        self._run.held = max(0, self._run.held - call.completion_tokens)
        if self._money is not None:
            self._money.release_recorded(call.prompt_tokens, call.completion_tokens)
        # under other limits, a reply that ended by itself was cut by none of them
        return call.cut if self._same_limits or not call.ended else ()


def problem_of(key: str) -> str:
    """The problem a call's node key belongs to (a node id starts with its problem's)."""
    return key.split("/", 1)[0].split(",", 1)[0]

"""The budget ledger: tokens reserved before a call and committed after it.

A request asks for ``max_tokens``; the ledger grants at most what is left of every
budget that covers the node (the node's own cap, its branch's share, the problem's
total), so no node can ever pass its cap, whatever the model does.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio

from thinktree.errors import BudgetExhausted, RunLimitReached


class LimitHeld(Exception):  # a state to wait out, not a failure
    """A limit has nothing left to grant now, but calls under way hold some of it and may
    give back what they do not use: wait (:meth:`wait`) and ask again."""

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
    released: anyio.Event | None = None  # set when a reservation settles (a waiter's)
    cut: bool = False  # its limit granted a call less than it asked for, or nothing

    def child(self, name: str, limit: int | None, *, cap: int | None = None) -> Budget:
        """A pool nested in this one (it holds its parent, not the other way round, so
        a finished branch's pools are freed at once)."""
        if cap is not None:
            limit = cap if limit is None else min(limit, cap)
        return Budget(name=name, limit=limit, parent=self)

    def available(self) -> int | None:
        """Tokens still grantable here and in every enclosing pool (None: unlimited)."""
        best: int | None = None
        pool: Budget | None = self
        while pool is not None:
            if pool.limit is not None:
                left = pool.limit - pool.used - pool.reserved
                best = left if best is None else min(best, left)
            pool = pool.parent
        return None if best is None else max(best, 0)

    def reserve(self, wanted: int) -> int:
        """Reserve up to ``wanted`` tokens; returns the grant, raises if none is left.

        Raises :class:`LimitHeld` when no pool is spent but calls under way hold what is
        left of one (the run's, a problem's shared by its branches): the caller waits and
        asks again. Once the run's limit is spent, :class:`~thinktree.errors.RunLimitReached`;
        once another pool is, :class:`~thinktree.errors.BudgetExhausted`.
        """
        if wanted <= 0:
            raise ValueError("a reservation must ask for at least one token")
        left = self.available()
        grant = wanted if left is None else min(wanted, left)
        if grant < wanted:  # note which pools' limits did it
            pool_: Budget | None = self
            while pool_ is not None:
                if pool_.limit is not None and pool_.limit - pool_.used - pool_.reserved < wanted:
                    pool_.cut = True
                pool_ = pool_.parent
        if grant <= 0:
            spent = held = None
            pool: Budget | None = self
            while pool is not None:
                if pool.limit is not None and pool.limit - pool.used - pool.reserved <= 0:
                    if pool.reserved > 0:  # not spent: what calls under way leave is granted
                        held = held or pool
                    elif pool.stops_run:
                        raise RunLimitReached(
                            f"run stopped: its token limit of {pool.limit} is reached "
                            f"({pool.used} spent)"
                        )
                    else:
                        spent = spent or pool
                pool = pool.parent
            if held is not None and spent is None:
                raise LimitHeld(held)
            raise BudgetExhausted(f"budget '{self.name}' is spent")
        pool = self
        while pool is not None:
            pool.reserved += grant
            pool = pool.parent
        return grant

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

    @property
    def utilisation(self) -> float | None:
        return None if not self.limit else self.used / self.limit

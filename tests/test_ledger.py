"""The budget ledger: grants never pass any enclosing pool."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thinktree.errors import BudgetExhausted
from thinktree.orchestrator.ledger import Budget, LimitHeld


def test_grant_is_capped_by_every_enclosing_pool() -> None:
    total = Budget("problem", 100)
    branch = total.child("branch", 60)
    step = branch.child("step", 50)
    assert step.reserve(80) == 50
    other = branch.child("step 2", 50)
    assert other.reserve(50) == 10  # the branch has 60 - 50 reserved left
    # nothing left, but calls under way hold it: wait for them rather than give up
    with pytest.raises(LimitHeld) as held:
        branch.child("step 3", 50).reserve(1)
    assert held.value.pool is branch
    step.commit(50, 45)  # a call settles, giving back 5
    other.commit(10, 10)
    last = branch.child("step 3", 50)
    assert last.reserve(50) == 5
    last.commit(5, 5)
    # spent, and nobody holds any: no waiting helps
    with pytest.raises(BudgetExhausted):
        branch.child("step 4", 50).reserve(1)


def test_commit_releases_the_unused_part_of_a_reservation() -> None:
    total = Budget("problem", 100)
    step = total.child("step", None)
    grant = step.reserve(70)
    step.commit(grant, 20)
    assert total.used == 20 and total.reserved == 0
    assert total.available() == 80
    assert total.utilisation == pytest.approx(0.2)


def test_unlimited_pool_grants_what_is_asked() -> None:
    assert Budget("free", None).reserve(10_000) == 10_000
    with pytest.raises(ValueError, match="at least one token"):
        Budget("free", None).reserve(0)


@given(
    limit=st.integers(1, 500),
    asks=st.lists(st.tuples(st.integers(1, 200), st.floats(0, 1)), max_size=30),
)
def test_used_never_passes_the_limit(limit: int, asks: list[tuple[int, float]]) -> None:
    root = Budget("root", limit)
    for ask, fraction in asks:
        pool = root.child("node", None)
        try:
            grant = pool.reserve(ask)
        except BudgetExhausted:
            assert root.available() == 0
            continue
        assert grant <= ask
        pool.commit(grant, int(grant * fraction))
        assert root.used <= limit
    assert root.reserved == 0

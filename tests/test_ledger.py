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
    # the branch's 10 left cannot grant 50, but the call under way holds the rest and may
    # give some back: wait for it rather than take less (or give up)
    with pytest.raises(LimitHeld) as held:
        other.reserve(50)
    assert held.value.pool is branch
    step.commit(50, 45)  # a call settles, giving back 5
    assert other.reserve(50) == 15  # nobody holds any: what is left is all there is
    other.commit(15, 15)
    # spent, and nobody holds any: no waiting helps
    with pytest.raises(BudgetExhausted):
        branch.child("step 3", 50).reserve(1)


def test_cut_marks_a_limit_that_grants_less_not_one_that_makes_a_call_wait() -> None:
    problem = Budget("problem", 30)
    first = problem.child("b1", None)
    assert first.reserve(20) == 20
    second = problem.child("b2", None)
    with pytest.raises(LimitHeld):
        second.reserve(20)
    assert not problem.cut  # it waited: nothing was cut (yet)
    first.commit(20, 5)
    assert second.reserve(20) == 20 and not problem.cut  # and then got its whole ask
    # a tighter limit nobody holds grants what it has at once: waiting would not help
    narrow = problem.child("b3", 4)
    assert narrow.reserve(20) == 4 and narrow.cut and not problem.cut
    narrow.commit(4, 4)
    second.commit(20, 20)  # 29 of 30 spent, nothing held
    last = problem.child("b4", None)
    assert last.reserve(20) == 1 and problem.cut
    last.commit(1, 1)
    problem.cut = False
    with pytest.raises(BudgetExhausted):  # a call not made is cut too
        problem.child("b5", None).reserve(1)
    assert problem.cut


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

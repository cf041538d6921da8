"""The ledger's xids are kept with the ledger: built once for a ledger, then handed on
by the planner through every change, so neither the xid allocation (cgroup mode)
nor the limiting-off plan walks the ledger each cycle.
"""

from __future__ import annotations

import dataclasses

from hypothesis import example, given, settings
from hypothesis import strategies as st

from bwenforcer.core.model import DesiredSet, LedgerEntry, State, ledger_xids
from bwenforcer.core.plan import RemoveClasses
from bwenforcer.core.planner import plan
from bwenforcer.core.xids import allocate_xids
from tests.core.test_planner import _CountingLedger
from tests.planner_data import PARAMS, PERIOD_S, T0, desired, kslice, snapshot, want


def rebuilt(state: State) -> dict[int, tuple[str, ...]]:
    index: dict[int, tuple[str, ...]] = {}
    for name, entry in state.ledger.items():
        index.setdefault(entry.slice.xid, ())
        index[entry.slice.xid] += (name,)
    return index


def waiting(n: int) -> _CountingLedger:
    """``n`` ledger entries on xids 100.., expiring a period from now."""
    p1 = plan(desired(want("pl_w", 100)), snapshot(kslice(100)), State(), PARAMS, T0)
    st_ = p1.state.slices[100]
    ledger = _CountingLedger()
    for i in range(n):
        entry = LedgerEntry(dataclasses.replace(st_, name=f"pl_w{i}", xid=100 + i), T0)
        dict.__setitem__(ledger, f"pl_w{i}", entry)
    return ledger


def test_allocation_after_a_cycle_looks_at_no_ledger_entry() -> None:
    ledger = waiting(3000)
    state = State(ledger=ledger)
    assert ledger_xids(state) == rebuilt(State(ledger=dict(ledger)))  # built once: a load's
    ledger.looked = 0
    p = plan(desired(want("pl_a", 10)), snapshot(kslice(10)), state, PARAMS, T0 + 60)
    assert p.state.ledger is ledger and ledger.looked <= 1  # the head: nothing due
    ledger.looked = 0
    got = allocate_xids(["t_new", "pl_w7"], (), p.state)
    assert ledger.looked == 0
    # a ledger name gets its own xid back; the newcomer none of the ledger's
    assert got.xids == {"pl_w7": 107, "t_new": 1}
    many = allocate_xids([f"t{i}" for i in range(200)], (), p.state)
    assert ledger.looked == 0
    assert not set(many.xids.values()) & set(range(100, 3100)) and 10 not in many.xids.values()


def test_limiting_off_names_a_ledger_slice_without_walking_the_ledger() -> None:
    ledger = waiting(2000)
    state = State(ledger=ledger)
    ledger_xids(state)
    ledger.looked = 0
    off = DesiredSet((), limiting_off=True)
    p = plan(off, snapshot(kslice(1500), kslice(77)), state, PARAMS, T0 + 60)
    assert ledger.looked == 0
    assert p.actions == (
        RemoveClasses(None, 77, "limiting off"),
        RemoveClasses("pl_w1400", 1500, "limiting off"),
    )


cycles = st.lists(
    st.tuples(
        st.sets(st.sampled_from(["a", "b", "c", "d", "e"]), max_size=5),
        st.integers(0, 3),  # which xid scheme: renames move a name to another xid
        st.sampled_from([60, 3600, PERIOD_S // 2, PERIOD_S]),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(cycles)
# a rename onto another xid re-sorts the ledger by expiry: the xids' names follow its order
@example([({"a", "b", "c"}, 0, 60), ({"a", "b", "c", "d"}, 0, 60), (set(), 0, 60),
          ({"c"}, 1, 60), (set(), 0, 60)])  # fmt: skip
def test_the_index_handed_on_is_the_ledger_s_own(steps: list[tuple[set[str], int, int]]) -> None:
    state, now = State(), T0
    for live, scheme, step in steps:
        now += step
        slices = [want(f"pl_{n}", 10 + (ord(n) * (scheme + 1)) % 7) for n in sorted(live)]
        xids = {s.xid for s in slices}
        slices = [s for i, s in enumerate(slices) if s.xid not in {x.xid for x in slices[:i]}]
        p = plan(desired(*slices), snapshot(*(kslice(x) for x in sorted(xids))), state,
                 dataclasses.replace(PARAMS, grace_s=0), now)  # fmt: skip
        state = p.state
        if state.ledger_index is not None:
            assert state.ledger_index[0] is state.ledger
        # the names on an xid as sets: the index keeps them in the order they came, the
        # ledger in expiry order (an entry of an earlier period put after a later one)
        got = {x: sorted(names) for x, names in ledger_xids(state).items()}
        assert got == {x: sorted(names) for x, names in rebuilt(state).items()}

"""Stable xids by name: properties of the allocation."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bwenforcer.core.layout import XID_MAX
from bwenforcer.core.model import ClassPolicy, ClassState, LedgerEntry, SliceState, State
from bwenforcer.core.xids import allocate_xids

POLICY = ClassPolicy(1, 1, 1, 1, 1)
NAMES = st.sampled_from([f"t{i}" for i in range(12)])
XIDS = st.integers(1, 16)


def _slice(name: str, xid: int) -> SliceState:
    cls = ClassState(POLICY)
    return SliceState(name, xid, 0, 1, cls, cls)


@st.composite
def states(draw: st.DrawFn) -> State:
    live = draw(st.dictionaries(XIDS, NAMES, max_size=6))
    live = {x: n for x, n in live.items() if list(live.values()).count(n) == 1}
    ledger = draw(st.dictionaries(NAMES, XIDS, max_size=6))
    ledger = {n: x for n, x in ledger.items() if n not in live.values()}
    return State(
        slices={x: _slice(n, x) for x, n in live.items()},
        ledger={n: LedgerEntry(_slice(n, x), 0) for n, x in ledger.items()},
    )


@given(
    st.lists(NAMES, max_size=12),
    st.sets(XIDS, max_size=4),
    states(),
    st.dictionaries(NAMES, XIDS, max_size=4),
    st.dictionaries(NAMES, XIDS, max_size=4),
)
def test_allocation_is_stable_distinct_and_never_takes_a_reserved_xid(
    names: list[str],
    taken: set[int],
    state: State,
    bound: dict[str, int],
    preferred: dict[str, int],
) -> None:
    result = allocate_xids(names, taken, state, bound, preferred)
    xids = result.xids
    assert set(xids) | set(result.unplaced) == set(names)
    assert len(set(xids.values())) == len(xids)  # distinct
    assert not set(xids.values()) & taken
    live = {st.name: x for x, st in state.slices.items()}
    for name, xid in xids.items():
        assert 1 <= xid <= XID_MAX
        if name in live and live[name] not in taken:
            assert xid == live[name]  # a live name keeps its xid
        holders = {st.name for st in state.slices.values() if st.xid == xid}
        if not holders <= {name}:
            # renamed: the live slice on its uid or on its cgroup's bound xid is no
            # longer wanted under its own name
            assert xid in (preferred.get(name), bound.get(name))
            assert not holders & set(names)
            continue
        assert holders <= {name}
        own = {live.get(name), state.ledger[name].slice.xid if name in state.ledger else None}
        if xid not in own:  # its own xid (live or in the ledger) is a name's to take back
            assert {n for n, e in state.ledger.items() if e.slice.xid == xid} <= {name}
    assert allocate_xids(list(reversed(names)), taken, state, bound, preferred) == result


def test_a_preferred_xid_is_taken_from_a_live_slice_gone_from_the_names_only() -> None:
    state = State(
        slices={1000: _slice("alice", 1000), 1001: _slice("bob", 1001)},
        ledger={"zed": LedgerEntry(_slice("zed", 1002), 0)},
    )
    preferred = {"alice2": 1000, "carol": 1001, "dave": 1002, "erin": 1003}
    result = allocate_xids(["alice2", "bob", "carol", "dave", "erin"], (), state, None, preferred)
    # alice renamed alice2: her xid; bob still wanted: carol not on it; zed's
    # ledger entry keeps 1002 reserved; 1003 free
    assert result.xids == {"alice2": 1000, "bob": 1001, "carol": 1, "dave": 2, "erin": 1003}


def test_full_space_leaves_names_unplaced() -> None:
    state = State(slices={x: _slice(f"s{x}", x) for x in range(1, XID_MAX + 1)})
    result = allocate_xids(["new"], (), state)
    assert result.xids == {} and result.unplaced == ("new",)

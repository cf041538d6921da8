"""Stable xids for tenants that bring no xid of their own (cgroup tenants), kept by name.

A cgroup's id changes whenever its unit restarts; the tenant's name does not. So
the xid (and with it the HTB classes, the usage and the ledger) follows the name,
and the state is the only memory needed: live slices are keyed by xid and carry
their name, ledger entries are keyed by name and carry their xid.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bwenforcer.core.layout import XID_MAX
from bwenforcer.core.model import State, ledger_xids


@dataclass(frozen=True)
class Allocation:
    """Each name's xid, and the names no xid was left for (sorted)."""

    xids: Mapping[str, int]
    unplaced: tuple[str, ...] = ()


def allocate_xids(
    names: Iterable[str],
    taken: Iterable[int],
    state: State,
    bound: Mapping[str, int] | None = None,
    preferred: Mapping[str, int] | None = None,
) -> Allocation:
    """An xid in 1..XID_MAX for each of ``names``, none of them in ``taken``.

    In this order: a name live in the state keeps its xid; a name in the ledger
    gets its ledger xid back if that is free; a name ``bound`` in the kernel (the
    classifier's maps, written before a save that never happened: live
    connections carry that mark) gets that xid; a name ``preferred`` an xid (a
    user tenant: its uid) gets it. Either only if it is free, or if a live slice
    whose name is no longer wanted holds it: that slice renamed (the very cgroup,
    the very uid), to which the planner gives the new name its usage and cap;
    never when a ledger entry alone holds it. Every other name, in sorted order,
    gets the lowest xid that no live slice, no ledger entry and no earlier name
    holds. Ledger xids stay reserved until their entry is purged: a dead tenant's
    connections still carry its marks, and must not be billed to a newcomer.
    When none is left a name is unplaced (its traffic stays in the default
    class) — never given a reserved xid.
    """
    wanted = sorted(set(names))
    blocked = set(taken)
    live_by_name = {st.name: xid for xid, st in state.slices.items()}
    waiting = ledger_xids(state)  # kept with the ledger: no walk of its entries

    def reserved(xid: int) -> bool:
        return xid in blocked or xid in state.slices or xid in waiting

    result: dict[str, int] = {}
    used: set[int] = set(blocked)

    def claim(name: str, xid: int | None, own: bool) -> bool:
        # ``own``: the xid is this name's own reservation (its live slice or ledger entry)
        if xid is None or not 1 <= xid <= XID_MAX or xid in used:
            return False
        if not own and reserved(xid):
            return False
        result[name] = xid
        used.add(xid)
        return True

    def _renamed(xid: int | None) -> bool:
        # the live slice on ``xid`` left the wanted names: this name is that slice renamed
        # (ledger entries on the xid are its earlier names, the planner's rename rule)
        live = state.slices.get(xid) if xid is not None else None
        return live is not None and live.name not in names_set

    names_set = set(wanted)
    rest = []
    for name in wanted:
        if claim(name, live_by_name.get(name), own=True):
            continue
        rest.append(name)
    later = []
    for name in rest:
        entry = state.ledger.get(name)
        own_xid = entry.slice.xid if entry is not None else None
        # a ledger xid that a live slice of another name holds now is not this name's
        if own_xid is not None and own_xid in state.slices:
            own_xid = None
        if claim(name, own_xid, own=True):
            continue
        if bound and claim(name, bound.get(name), own=_renamed(bound.get(name))):
            continue
        if preferred and claim(name, preferred.get(name), own=_renamed(preferred.get(name))):
            continue
        later.append(name)
    unplaced = []
    free = (x for x in range(1, XID_MAX + 1) if x not in used and not reserved(x))
    for name in later:
        xid = next(free, None)
        if xid is None:
            unplaced.append(name)
            continue
        result[name] = xid
        used.add(xid)
    return Allocation(result, tuple(unplaced))

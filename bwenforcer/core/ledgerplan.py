"""The ledger and the slices that come and go in one cycle: the ledger as the cycle
changes it, the usage of a slice leaving for it, a name inheriting a class, refused
records held as they are, and a new slice's first state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from bwenforcer.core.accounting import inbound_counter, kernel_counter
from bwenforcer.core.inbound import InboundSnapshot
from bwenforcer.core.layout import TrafficClass
from bwenforcer.core.ledger import LazyLedger, due_names, editable
from bwenforcer.core.model import (
    ClassPolicy,
    ClassState,
    DesiredSlice,
    InvalidRecord,
    KernelSlice,
    LedgerEntry,
    LedgerXids,
    SliceState,
    State,
)
from bwenforcer.core.periods import first_period
from bwenforcer.core.plan import UsageRow
from bwenforcer.core.settings import PlanParams
from bwenforcer.core.window import bucket_span, carried_ring, empty_ring, moved, steps_between


def _fresh_class(policy: ClassPolicy, counter_bytes: int) -> ClassState:
    return ClassState(policy=policy, last_counter_bytes=counter_bytes)


class CycleLedger:
    """The state's ledger as a cycle changes it: copied at its first change only (a
    cycle where no slice dies, expires or is revived hands the very mapping on; the
    copy shares the saved entries' text, :func:`~bwenforcer.core.ledger.editable`),
    and kept ordered by expiry (:class:`~bwenforcer.core.model.State`), so the entries
    due are found at its head without a look at the others. Its xids
    (:func:`~bwenforcer.core.model.ledger_xids`), if the state has them, follow each
    change (never built here: that would look at every entry).
    """

    __slots__ = ("_own", "entries", "xids")

    def __init__(self, state: State) -> None:
        self.entries: Mapping[str, LedgerEntry] = state.ledger
        kept = state.ledger_index
        self.xids: dict[int, tuple[str, ...]] | None = (
            kept[1] if kept is not None and kept[0] is state.ledger else None  # type: ignore[assignment]
        )
        self._own: LazyLedger | None = None

    def _mine(self) -> LazyLedger:
        if self._own is None:
            self.entries = self._own = editable(self.entries)
            self.xids = None if self.xids is None else dict(self.xids)
        return self._own

    def _index(self, name: str, xid: int, add: bool) -> None:
        if self.xids is None:
            return
        names = tuple(n for n in self.xids.get(xid, ()) if n != name)
        names = (*names, name) if add else names
        if names:
            self.xids[xid] = names
        else:
            self.xids.pop(xid, None)

    def put(self, name: str, entry: LedgerEntry) -> None:
        """Add (or replace) ``name``'s entry where its expiry puts it."""
        entries = self._mine()
        old = entries.pop(name)
        if old is not None:
            self._index(name, old.slice.xid, add=False)
        entries.put(name, entry)
        self._index(name, entry.slice.xid, add=True)

    def pop(self, name: str) -> LedgerEntry | None:
        if name not in self.entries:
            return None
        entry = self._mine().pop(name)
        assert entry is not None
        self._index(name, entry.slice.xid, add=False)
        return entry

    def index(self) -> tuple[Mapping[str, LedgerEntry], LedgerXids] | None:
        """The ledger and its xids, for the state that carries them on (None: not known)."""
        return None if self.xids is None else (self.entries, self.xids)

    def due(self, now_s: int) -> list[str]:
        """The names whose entries expire by ``now_s``: the head of the ledger."""
        return due_names(self.entries, now_s)


def left_usage(st: SliceState, gone: SliceState, kernel: KernelSlice | None) -> UsageRow | None:
    """The history row of a slice leaving for the ledger: the bytes counted as it left
    (sent and received) and the caps in force since the last cycle (None: nothing to
    record).
    """
    d_bytes = gone.default.used_bytes - st.default.used_bytes
    e_bytes = gone.exempt.used_bytes - st.exempt.used_bytes
    d_in = gone.default.in_used_bytes - st.default.in_used_bytes
    e_in = gone.exempt.in_used_bytes - st.exempt.in_used_bytes
    d_capped = st.default.capped and kernel is not None and kernel.default is not None
    e_capped = st.exempt.capped and kernel is not None and kernel.exempt is not None
    if not (d_bytes or e_bytes or d_capped or e_capped or d_in or e_in):
        return None
    return st.name, d_bytes, e_bytes, d_capped, e_capped, d_in, e_in


def inherited(gone: SliceState, name: str, entry: LedgerEntry | None) -> SliceState:
    """The state of ``name`` taking over the class ``gone`` left: its usage, period and
    counters; per class the larger usage if ``name`` waits in the ledger from the same
    period (a rename onto a deleted name, or a rename undone), never less.
    """
    st = dataclasses.replace(gone, name=name)
    if entry is None:
        return st
    old = entry.slice
    window_s = gone.default.policy.window_s
    if not window_s and old.period_end_s <= gone.period_start_s:
        return st
    if window_s and entry.expires_s <= gone.period_start_s:
        return st

    def larger(cs: ClassState, waiting: ClassState) -> ClassState:
        in_used = max(cs.in_used_bytes, waiting.in_used_bytes)
        if cs.buckets:  # a window: bucket by bucket (the waiting ring moved on to cs's)
            if waiting.buckets and waiting.policy.window_s == cs.policy.window_s:
                steps = steps_between(old.period_end_s, st.period_end_s, window_s, None)
                ring = moved(waiting.buckets, steps)
            else:
                ring = carried_ring(waiting.used_bytes)
            buckets = tuple(map(max, cs.buckets, ring))
            return dataclasses.replace(
                cs, used_bytes=sum(buckets), buckets=buckets, in_used_bytes=in_used
            )
        carried = min(cs.carried_bytes, waiting.carried_bytes)  # never more budget
        if (
            waiting.used_bytes <= cs.used_bytes
            and waiting.in_used_bytes <= cs.in_used_bytes
            and carried == cs.carried_bytes
        ):
            return cs
        return dataclasses.replace(
            cs,
            used_bytes=max(cs.used_bytes, waiting.used_bytes),
            in_used_bytes=max(cs.in_used_bytes, waiting.in_used_bytes),
            carried_bytes=carried,
        )

    return dataclasses.replace(
        st, default=larger(st.default, old.default), exempt=larger(st.exempt, old.exempt)
    )


def held_slices(
    refused: Iterable[InvalidRecord | DesiredSlice | SliceState],
    wanted: Mapping[int, DesiredSlice],
    state: State,
) -> tuple[DesiredSlice, ...]:
    """The slices of refused records (invalid ones, losing claims of an xid) that stay
    as they are: those live in the state (by name), under the limits saved there. A
    record whose name or xid another, valid record holds is not one of them.
    """
    live = {st.name: st for st in state.slices.values()}
    names = {want.name for want in wanted.values()}
    held: dict[int, DesiredSlice] = {}
    for record in refused:
        st = live.get(record.name)
        if st is None or record.name in names or st.xid in wanted or st.xid in held:
            continue
        held[st.xid] = DesiredSlice(st.name, st.xid, st.default.policy, st.exempt.policy)
    return tuple(held.values())


def new_slice(
    want: DesiredSlice,
    kernel: KernelSlice | None,
    params: PlanParams,
    now_s: int,
    inbound: InboundSnapshot | None = None,
) -> SliceState:
    window_s = want.default.window_s
    if window_s:
        start, end = bucket_span(now_s, window_s)
    else:
        start, end = first_period(now_s, params.period_s, params.anchor)
    ring = empty_ring() if window_s else ()

    def fresh(tc: TrafficClass) -> ClassState:
        cs = _fresh_class(want.policy(tc), kernel_counter(kernel, tc) or 0)
        if window_s:
            cs = dataclasses.replace(cs, buckets=ring)
        in_counter = inbound_counter(inbound, want.xid, tc)
        if in_counter:  # adopted: counted from the counter the backend has
            cs = dataclasses.replace(cs, in_last_counter_bytes=in_counter)
        return cs

    return SliceState(want.name, want.xid, start, end, fresh("default"), fresh("exempt"))

"""Reading the HTB tree: one class dump of the device → a :class:`KernelSnapshot`.

Most classes are idle between two dumps; their records come back unchanged, and
the snapshot passes such a class on as the same object as last time (and a slice
whose classes are all the same objects as the same :class:`KernelSlice`), so the
planner and the state encoder can tell "unchanged" by identity. The handle →
slice lookups are memoised across dumps.
"""

from __future__ import annotations

from bwenforcer.core.layout import (
    CAP_MINOR,
    LINE_MINOR,
    MAJOR,
    TrafficClass,
    handle,
    share_of_quantum,
    slice_of_minor,
)
from bwenforcer.core.model import ClassRates, KernelClass, KernelSlice, KernelSnapshot
from bwenforcer.errors import TreeNotInitialised
from bwenforcer.kernel import wire as w
from bwenforcer.kernel.channel import NetlinkChannel

_UNSEEN = object()


def _slice_of_handle(class_handle: int) -> tuple[int, TrafficClass] | None:
    """``(xid, class)`` of a slice class handle; None for tree classes and other majors."""
    if class_handle >> 16 != MAJOR:
        return None
    return slice_of_minor(class_handle & 0xFFFF)


class SnapshotReader:
    """Snapshots of the classes on the channel's device, each from one dump."""

    def __init__(self, channel: NetlinkChannel) -> None:
        self._channel = channel
        # handle → (xid, class) or None, memoised across dumps: bounded by the handles
        # this device has had, and a dump of thousands of classes calls no layout function
        self._slice_of_handle: dict[int, tuple[int, TrafficClass] | None] = {}
        # handle → record and → class of the last dump: a class whose record is
        # unchanged (an idle class, most of them) is passed on as the same object
        self._last_records: dict[int, w.ClassRecord] = {}
        self._last_classes: dict[int, KernelClass] = {}
        self._last_slices: dict[int, KernelSlice] = {}

    def read(self) -> KernelSnapshot:
        """ONE class dump of the device → node cap, line rate and every slice class."""
        ifindex = self._channel.ifindex
        records: list[w.ClassRecord] = []
        self._channel.dump(
            lambda seq: w.message(
                w.RTM_GETTCLASS,
                flags=w.NLM_F_REQUEST | w.NLM_F_DUMP,
                seq=seq,
                ifindex=ifindex,
                handle=0,
                parent=0,
                body=b"",
            ),
            lambda buffer, seq: w.parse_class_dump(buffer, seq, records),
            "class dump",
        )
        return self._snapshot(records)

    def _snapshot(self, records: list[w.ClassRecord]) -> KernelSnapshot:
        defaults: dict[int, KernelClass] = {}
        exempts: dict[int, KernelClass] = {}
        # most classes share a few rate settings: one (immutable) ClassRates each
        rates_of: dict[tuple[int, ...], ClassRates] = {}
        slice_of = self._slice_of_handle
        last_records, last_classes = self._last_records, self._last_classes
        records_now: dict[int, w.ClassRecord] = {}
        classes_now: dict[int, KernelClass] = {}
        cap_bps = bwmax_bps = 0
        for record in records:
            class_handle = record[0]
            found = slice_of.get(class_handle, _UNSEEN)
            if found is _UNSEEN:
                found = slice_of[class_handle] = _slice_of_handle(class_handle)
            if found is None:
                if class_handle == handle(CAP_MINOR):
                    cap_bps = record.ceil_bytes_s * 8
                elif class_handle == handle(LINE_MINOR):
                    bwmax_bps = record.rate_bytes_s * 8
                continue
            if last_records.get(class_handle) == record:
                kclass = last_classes[class_handle]
            else:
                key = record[2:5]  # rate, ceil, quantum
                rates = rates_of.get(key)
                if rates is None:
                    rates = rates_of[key] = ClassRates(
                        record.rate_bytes_s * 8,
                        record.ceil_bytes_s * 8,
                        share_of_quantum(record.quantum_bytes),
                    )
                kclass = KernelClass(rates, record[5])
            records_now[class_handle] = record
            classes_now[class_handle] = kclass
            xid, tc = found
            (defaults if tc == "default" else exempts)[xid] = kclass
        if not cap_bps or not bwmax_bps:
            raise TreeNotInitialised(
                f"no bwenforcer HTB tree on dev {self._channel.dev}: run `bwenforcer tc init`"
            )
        self._last_records, self._last_classes = records_now, classes_now
        before_slices = self._last_slices
        slices: dict[int, KernelSlice] = {}
        for xid in defaults.keys() | exempts.keys():
            default, exempt = defaults.get(xid), exempts.get(xid)
            ks = before_slices.get(xid)
            if ks is None or ks.default is not default or ks.exempt is not exempt:
                ks = KernelSlice(xid, default, exempt)
            slices[xid] = ks
        self._last_slices = slices
        return KernelSnapshot(cap_bps, bwmax_bps, slices)

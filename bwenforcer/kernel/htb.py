"""The HTB backend: builds, reads and changes the per-slice HTB tree of one device.

Class changes go out many messages per ``sendmsg`` with an ACK requested only
on the last of each chunk; the kernel still answers every failing message with
an error carrying its sequence number, so one bad class is reported and the
rest of the batch goes through. The transport is
:mod:`bwenforcer.kernel.channel`, the messages :mod:`bwenforcer.kernel.wire`, the
reading :mod:`bwenforcer.kernel.dump`; no ``tc`` process is ever run. The
backend takes rates; the rules that choose them are :mod:`bwenforcer.core.policy`'s.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType

from bwenforcer.core.layout import (
    BWMIN_BPS,
    CAP_MINOR,
    DEFAULT_CLASS_MINOR,
    DEFAULT_XID,
    EXEMPT_MINOR,
    LINE_MINOR,
    QUANTUM_PER_SHARE,
    ROOT_QDISC_HANDLE,
    ROOT_XID,
    SITE_MINOR,
    TRAFFIC_CLASSES,
    TrafficClass,
    check_xid,
    handle,
)
from bwenforcer.core.model import (
    ClassOp,
    ClassRates,
    KernelOp,
    KernelSlice,
    KernelSnapshot,
    OpFailure,
)
from bwenforcer.core.policy import system_class_rates
from bwenforcer.errors import ClassOpFailed, KernelError
from bwenforcer.kernel import wire as w
from bwenforcer.kernel.channel import NetlinkChannel
from bwenforcer.kernel.dump import SnapshotReader

log = logging.getLogger(__name__)

CHUNK_MESSAGES = 256  # per sendmsg; the errors of a chunk fit the receive buffer
# Our filter's priority: not 1, which bwlimit's own (fw, protocol ip) filters take
# (the kernel refuses a second kind or protocol at one priority). At 2 it runs
# after them where they work and does all the work where cls_fw is missing.
FILTER_PRIO = 2
FILTER_HANDLE = 1
OLD_FILTER_PRIO = 1  # an older bwenforcer's: replaced when found


class HtbBackend:
    """The HTB tree of one device (docs/htb-layout.md)."""

    def __init__(self, dev: str, netns: str | None = None, bare_marks: bool = True) -> None:
        self.dev = dev
        # which mark → class program ensure_filter puts in place: bare xids too
        # (classifier.mode none, nodemanager) or tagged marks only (uid, cgroup)
        self.bare_marks = bare_marks
        self._channel = NetlinkChannel(dev, netns)
        self._reader = SnapshotReader(self._channel)
        self._encoder: w.ClassOpEncoder | None = None  # made once the ifindex is known

    def close(self) -> None:
        """Close the netlink socket."""
        self._channel.close()

    def __enter__(self) -> HtbBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def ifindex(self) -> int:
        """The device's interface index (DeviceMissing if it does not exist)."""
        return self._channel.ifindex

    def device_moved(self) -> bool:
        """Look the device up by name again (DeviceMissing if it is gone); True if the
        name now belongs to another interface: this backend's cached index, and the
        objects of the last dump, are then of the wrong device.
        """
        return self._channel.lookup_again()

    @property
    def requests(self) -> int:
        """Netlink requests (sendmsg calls) so far: one per request, or per chunk of a batch."""
        return self._channel.requests

    def dump(self) -> KernelSnapshot:
        """ONE class dump of the device → node cap, line rate and every slice class."""
        return self._reader.read()

    def apply(self, ops: Sequence[KernelOp]) -> list[OpFailure]:
        """Apply class operations in batches; return the ones refused (the rest are applied).

        A delete of a class that is already gone is not a failure.
        """
        if not ops:
            return []
        channel = self._channel
        if self._encoder is None:
            self._encoder = w.ClassOpEncoder(channel.ifindex)
        first_seq = channel.take_seqs(2 * len(ops))  # a create takes two messages
        messages, owners, refused = self._encoder.encode(ops, first_seq)
        failures = {
            index: OpFailure(ops[index], errno.ERANGE, f"{self._where(ops[index])}: {exc}")
            for index, exc in refused.items()
        }
        for start in range(0, len(messages), CHUNK_MESSAGES):
            chunk = messages[start : start + CHUNK_MESSAGES]
            chunk[-1] = w.with_ack(chunk[-1])  # the kernel ACKs only the chunk's last
            chunk_first = first_seq + start
            answers = channel.exchange(b"".join(chunk), chunk_first, chunk_first + len(chunk) - 1)
            for seq, code in answers.items():
                index = owners[seq - first_seq]
                op = ops[index]
                if op.kind == "delete" and code == errno.ENOENT:
                    continue  # already gone
                failures.setdefault(
                    index, OpFailure(op, code, f"{self._where(op)}: {os.strerror(code)}")
                )
        log.debug("dev %s: %d class operations, %d refused", self.dev, len(ops), len(failures))
        return [failures[i] for i in sorted(failures)]

    def _where(self, op: KernelOp) -> str:
        return f"dev {self.dev} {op.kind} xid {op.xid} {op.traffic_class}"

    def _tc_request(
        self,
        msg_type: int,
        what: str,
        *,
        flags: int,
        tc_handle: int,
        parent: int,
        body: bytes = b"",
        info: int = 0,
        ok: Iterable[int] = (),
    ) -> None:
        """One tc message with an ACK; raise on an error other than those in ``ok``."""
        ifindex = self._channel.ifindex
        self._channel.request(
            lambda seq: w.message(
                msg_type,
                flags=w.NLM_F_REQUEST | w.NLM_F_ACK | flags,
                seq=seq,
                ifindex=ifindex,
                handle=tc_handle,
                parent=parent,
                body=body,
                info=info,
            ),
            what,
            ok,
        )

    def init(self, cap_bps: int, bwmax_bps: int, bwmin_bps: int = BWMIN_BPS) -> None:
        """Build the tree idempotently; existing slice classes keep their settings."""
        exclusive = w.NLM_F_CREATE | w.NLM_F_EXCL
        self._tc_request(
            w.RTM_NEWQDISC,
            "add root htb qdisc",
            flags=exclusive,
            tc_handle=ROOT_QDISC_HANDLE,
            parent=w.TC_H_ROOT,
            body=w.htb_qdisc_options(DEFAULT_CLASS_MINOR),
            ok=(errno.EEXIST,),
        )
        tree = (
            (LINE_MINOR, 0, bwmax_bps, bwmax_bps),
            (CAP_MINOR, LINE_MINOR, bwmin_bps, cap_bps),
            (SITE_MINOR, CAP_MINOR, bwmin_bps, cap_bps),
            (EXEMPT_MINOR, LINE_MINOR, bwmin_bps, bwmax_bps),
        )
        for minor, parent, rate, ceil in tree:
            try:
                self._tc_request(
                    w.RTM_NEWTCLASS,
                    f"class 1:{minor:x}",
                    flags=w.NLM_F_CREATE,
                    tc_handle=handle(minor),
                    parent=handle(parent),
                    body=w.htb_class_options(rate, ceil, QUANTUM_PER_SHARE),
                )
            except KernelError as exc:
                # the root qdisc add said EEXIST, yet 1: takes no htb class: it is not ours
                if minor != LINE_MINOR or exc.errno not in (errno.ENOENT, errno.EOPNOTSUPP):
                    raise
                raise KernelError(
                    f"dev {self.dev}: another root qdisc is installed, not bwenforcer's htb 1:;"
                    f" remove it first (tc qdisc del dev {self.dev} root)",
                    exc.errno,
                ) from None
        snapshot = self.dump()
        missing = []
        for xid in (ROOT_XID, DEFAULT_XID):
            present = snapshot.slices.get(xid)
            for tc in TRAFFIC_CLASSES:
                if present is None or present.cls(tc) is None:
                    rates = system_class_rates(tc, cap_bps, bwmax_bps, bwmin_bps)
                    missing.append(ClassOp("create", xid, tc, rates))
        failures = self.apply(missing)
        if failures:
            raise ClassOpFailed(f"tc init: {failures[0].message}", failures[0].errno)
        self.ensure_filter()
        log.info(
            "dev %s: HTB tree ready, cap %d bit/s, bwmax %d bit/s", self.dev, cap_bps, bwmax_bps
        )

    def filters(self, prio: int = FILTER_PRIO) -> list[w.FilterRecord]:
        """The filters of the root qdisc at priority ``prio`` (protocol all), one dump.

        The kernel skips other priorities and protocols itself, so the answer is
        small whatever the node manager's bwlimit added at its own priority.
        """
        ifindex = self._channel.ifindex
        records: list[w.FilterRecord] = []
        self._channel.dump(
            lambda seq: w.message(
                w.RTM_GETTFILTER,
                flags=w.NLM_F_REQUEST | w.NLM_F_DUMP,
                seq=seq,
                ifindex=ifindex,
                handle=0,
                parent=ROOT_QDISC_HANDLE,
                body=b"",
                info=w.filter_info(prio),
            ),
            lambda buffer, seq: w.parse_filter_dump(buffer, seq, records),
            "filter dump",
        )
        return records

    def ensure_filter(self, dry_run: bool = False) -> str | None:
        """Check, with one filter dump, that the mark → class filter is in place; put it
        back if not (unless ``dry_run``). Returns what was wrong (None: nothing).

        A tree someone else built (the node manager's bwlimit, before our first
        cycle or after a change of the node's bwlimit) has none; one of an older
        bwenforcer has the old program at the old priority, replaced here.
        """
        default = handle(DEFAULT_CLASS_MINOR)
        want = w.bpf_filter_options(default, w.mark_program(self.bare_marks))
        want_ops = w.bpf_ops(w.mark_program(self.bare_marks))
        other_ops = w.bpf_ops(w.mark_program(not self.bare_marks))
        ours = [f for f in self.filters() if f.handle == FILTER_HANDLE]
        if any(f.kind == b"bpf" and f.classid == default and f.ops == want_ops for f in ours):
            return None
        if not ours:
            problem = "missing"
        elif any(f.kind == b"bpf" and f.classid == default and f.ops == other_ops for f in ours):
            problem = "of another classifier mode (bare marks " + (
                "ignored)" if self.bare_marks else "mapped)"
            )
        else:
            problem = "not bwenforcer's program"
        if dry_run:
            return f"mark → class filter {problem}: would be put back"
        self._tc_request(
            w.RTM_NEWTFILTER,
            "add mark → class bpf filter",
            flags=w.NLM_F_CREATE | (w.NLM_F_REPLACE if ours else w.NLM_F_EXCL),
            tc_handle=FILTER_HANDLE,
            parent=ROOT_QDISC_HANDLE,
            body=want,
            info=w.filter_info(FILTER_PRIO),
        )
        # an older bwenforcer's filter at bwlimit's priority: the kernel deletes it
        # only if it is a bpf filter for all protocols with our handle
        self._tc_request(
            w.RTM_DELTFILTER,
            "delete the old mark → class filter",
            flags=0,
            tc_handle=FILTER_HANDLE,
            parent=ROOT_QDISC_HANDLE,
            body=w.attr(w.TCA_KIND, b"bpf\0"),
            info=w.filter_info(OLD_FILTER_PRIO),
            ok=(errno.ENOENT, errno.EINVAL),
        )
        return f"mark → class filter {problem}: put back"

    def set(
        self, xid: int, rates: Mapping[TrafficClass, ClassRates], current: KernelSlice | None
    ) -> list[ClassOp]:
        """Create or change the classes of slice ``xid`` given in ``rates``; return the ops sent.

        ``current`` is the slice as last dumped (None: not in the kernel); a class
        whose rates would not change is not sent.
        """
        check_xid(xid)
        ops: list[ClassOp] = []
        for tc, wanted in rates.items():
            cur = None if current is None else current.cls(tc)
            if cur is not None and cur.rates == wanted:
                continue
            ops.append(ClassOp("create" if cur is None else "change", xid, tc, wanted))
            log.info(
                "xid %d %s: ceil %s → %d bit/s, rate %d bit/s, share %d",
                xid,
                tc,
                "-" if cur is None else cur.rates.max_rate_bps,
                wanted.max_rate_bps,
                wanted.min_rate_bps,
                wanted.share,
            )
        failures = self.apply(ops)
        if failures:
            raise ClassOpFailed(failures[0].message, failures[0].errno)
        return ops

    def off(self, xid: int) -> None:
        """Remove both classes of a slice and their leaf qdiscs; missing ones are fine."""
        check_xid(xid)
        failures = self.apply([ClassOp("delete", xid, tc) for tc in TRAFFIC_CLASSES])
        if failures:
            raise ClassOpFailed(failures[0].message, failures[0].errno)

    def stop(self) -> None:
        """Remove the whole tree (the root qdisc); no tree is fine."""
        self._tc_request(
            w.RTM_DELQDISC,
            "delete root qdisc",
            flags=0,
            tc_handle=ROOT_QDISC_HANDLE,
            parent=w.TC_H_ROOT,
            ok=(errno.ENOENT, errno.EINVAL),
        )
        log.info("dev %s: HTB tree removed", self.dev)

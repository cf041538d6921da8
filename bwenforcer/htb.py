"""The HTB backend: builds, reads and changes the per-slice HTB tree over netlink.

One netlink socket per backend. Class changes go out many messages per
``sendmsg`` with an ACK requested only on the last of each chunk; the kernel
still answers every failing message with an error carrying its sequence
number, so one bad class is reported and the rest of the batch goes through.
Messages are encoded by :mod:`bwenforcer.tcwire` (no rate tables, bodies
cached per distinct rate tuple); no ``tc`` process is ever run.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType

from . import tcwire as w
from .errors import (
    ClassOpFailed,
    DeviceMissing,
    KernelError,
    NotPermitted,
    TreeNotInitialised,
    XidOutOfRange,
)
from .layout import (
    BWMIN_BPS,
    CAP_MINOR,
    DEFAULT_CLASS_MINOR,
    DEFAULT_XID,
    EXEMPT_MINOR,
    LEAF_QDISC_LIMIT_PACKETS,
    LINE_MINOR,
    MAJOR,
    QUANTUM_PER_SHARE,
    ROOT_QDISC_HANDLE,
    ROOT_XID,
    SITE_MINOR,
    TRAFFIC_CLASSES,
    TrafficClass,
    check_xid,
    class_minor,
    handle,
    leaf_qdisc_handle,
    parent_minor,
    quantum,
    share_of_quantum,
    slice_of_minor,
)
from .model import (
    ClassOp,
    ClassRates,
    KernelClass,
    KernelOp,
    KernelSlice,
    KernelSnapshot,
    OpFailure,
)
from .policy import system_class_rates

log = logging.getLogger(__name__)

NETLINK_ROUTE = 0
CHUNK_MESSAGES = 256  # per sendmsg; the errors of a chunk fit the receive buffer
RECV_BYTES = 1 << 20
SOCKET_BUFFER_BYTES = 4 << 20
SEQ_MAX = 0xFFFFFFFF
FILTER_PRIO = 1
FILTER_HANDLE = 1


def open_socket(netns: str | None) -> socket.socket:
    """A NETLINK_ROUTE socket, in ``netns`` if given (never subscribed to any group).

    A socket in another namespace comes from pyroute2's namespace socket factory.
    In the current namespace a plain socket is enough, and sparing the pyroute2
    import keeps a cron ``sync`` fast (the import alone costs ~0.2 s here).
    """
    if netns is None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    else:
        from pyroute2 import netns as pyroute2_netns

        sock = pyroute2_netns.create_socket(
            netns=netns,
            family=socket.AF_NETLINK,
            socket_type=socket.SOCK_DGRAM,
            proto=NETLINK_ROUTE,
        )
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
    sock.bind((0, 0))
    return sock


_UNSEEN = object()


def _slice_of_handle(class_handle: int) -> tuple[int, TrafficClass] | None:
    """``(xid, class)`` of a slice class handle; None for tree classes and other majors."""
    if class_handle >> 16 != MAJOR:
        return None
    return slice_of_minor(class_handle & 0xFFFF)


class HtbBackend:
    """The HTB tree of one device (DESIGN.md "HTB layout")."""

    def __init__(self, dev: str, netns: str | None = None) -> None:
        self.dev = dev
        self._sock = open_socket(netns)
        self._next_seq = 1
        self._buf = bytearray(RECV_BYTES)
        self._ifindex: int | None = None
        # handle → (xid, class) or None, memoised across dumps: bounded by the handles
        # this device has had, and a dump of thousands of classes calls no layout function
        self._slice_of_handle: dict[int, tuple[int, TrafficClass] | None] = {}
        # (xid, class) → (class handle, parent handle): at most two per possible xid
        self._handles: dict[tuple[int, TrafficClass], tuple[int, int]] = {}
        # handle → record and → class of the last dump: a class whose record is
        # unchanged (an idle class, most of them) is passed on as the same object
        self._last_records: dict[int, w.ClassRecord] = {}
        self._last_classes: dict[int, KernelClass] = {}
        self._last_slices: dict[int, KernelSlice] = {}
        self.requests = 0  # sendmsg calls so far: one per request, or per chunk of a batch

    def close(self) -> None:
        """Close the netlink socket."""
        self._sock.close()

    def __enter__(self) -> HtbBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------

    def _error(self, code: int, what: str) -> KernelError:
        if code == errno.EPERM:
            return NotPermitted(f"{what} on dev {self.dev}: needs root or CAP_NET_ADMIN", code)
        if code == errno.ENODEV:
            return DeviceMissing(f"device {self.dev!r} missing", code)
        return KernelError(f"{what} on dev {self.dev}: {os.strerror(code)}", code)

    def _send(self, data: bytes) -> None:
        self._sock.send(data)
        self.requests += 1

    def _take_seqs(self, count: int) -> int:
        """Reserve ``count`` consecutive sequence numbers; return the first."""
        if self._next_seq + count > SEQ_MAX:
            self._next_seq = 1
        first = self._next_seq
        self._next_seq += count
        return first

    def _receive(self) -> Iterable[tuple[int, int, int, memoryview]]:
        size = self._sock.recv_into(self._buf)
        return w.split(memoryview(self._buf)[:size])

    def _exchange(self, data: bytes, first_seq: int, last_seq: int) -> dict[int, int]:
        """Send messages ``first_seq..last_seq``, the last asking for an ACK.

        Returns ``{seq: errno}`` of the ones the kernel refused.
        """
        self._send(data)
        failed: dict[int, int] = {}
        while True:
            for msg_type, _flags, seq, msg in self._receive():
                if msg_type != w.NLMSG_ERROR or not first_seq <= seq <= last_seq:
                    continue  # left over from an earlier, interrupted request
                code = w.error_code(msg)
                if code:
                    failed[seq] = code
                if seq == last_seq:
                    return failed

    def _request(self, build: Callable[[int], bytes], what: str, ok: Iterable[int] = ()) -> None:
        """Send one message (built with its sequence number) with an ACK; raise on error."""
        seq = self._take_seqs(1)
        code = self._exchange(build(seq), seq, seq).get(seq, 0)
        if code and code not in ok:
            raise self._error(code, what)

    @property
    def ifindex(self) -> int:
        """The device's interface index (DeviceMissing if it does not exist)."""
        if self._ifindex is None:
            seq = self._take_seqs(1)
            self._send(w.link_request(seq, self.dev))
            while self._ifindex is None:
                for msg_type, _flags, msg_seq, msg in self._receive():
                    if msg_seq != seq:
                        continue
                    if msg_type == w.NLMSG_ERROR:
                        code = w.error_code(msg)
                        if code:
                            raise self._error(code, "link lookup")
                    else:
                        self._ifindex = w.ifindex_of(msg)
            self._drain_ack(seq)
        return self._ifindex

    def _drain_ack(self, seq: int) -> None:
        # the ACK of the link request follows its answer; read it so it cannot be taken
        # for the answer of the next request
        while True:
            for msg_type, _flags, msg_seq, _msg in self._receive():
                if msg_type == w.NLMSG_ERROR and msg_seq == seq:
                    return

    def _class_msg(self, seq: int, minor: int, parent: int, body: bytes, flags: int) -> bytes:
        return w.message(
            w.RTM_NEWTCLASS,
            flags=w.NLM_F_REQUEST | flags,
            seq=seq,
            ifindex=self.ifindex,
            handle=handle(minor),
            parent=handle(parent),
            body=body,
        )

    # --- reading ----------------------------------------------------------

    def dump(self) -> KernelSnapshot:
        """ONE class dump of the device → node cap, line rate and every slice class."""
        seq = self._take_seqs(1)
        self._send(
            w.message(
                w.RTM_GETTCLASS,
                flags=w.NLM_F_REQUEST | w.NLM_F_DUMP,
                seq=seq,
                ifindex=self.ifindex,
                handle=0,
                parent=0,
                body=b"",
            )
        )
        records: list[w.ClassRecord] = []
        view = memoryview(self._buf)
        status = None
        while status is None:
            size = self._sock.recv_into(self._buf)
            status = w.parse_class_dump(view[:size], seq, records)
        if status:
            raise self._error(status, "class dump")
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
                f"no bwenforcer HTB tree on dev {self.dev}: run `bwenforcer tc init`"
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

    # --- changing ---------------------------------------------------------

    def apply(self, ops: Sequence[KernelOp]) -> list[OpFailure]:
        """Apply class operations in batches; return the ones refused (the rest are applied).

        A delete of a class that is already gone is not a failure.
        """
        if not ops:
            return []
        messages, owners, first_seq, failures = self._encode(ops)
        for start in range(0, len(messages), CHUNK_MESSAGES):
            chunk = messages[start : start + CHUNK_MESSAGES]
            chunk[-1] = w.with_ack(chunk[-1])  # the kernel ACKs only the chunk's last
            chunk_first = first_seq + start
            refused = self._exchange(b"".join(chunk), chunk_first, chunk_first + len(chunk) - 1)
            for seq, code in refused.items():
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

    def _encode(
        self, ops: Sequence[KernelOp]
    ) -> tuple[list[bytes], list[int], int, dict[int, OpFailure]]:
        """Messages for ``ops`` with consecutive sequence numbers, each message's op index,
        the first sequence number, and the ops refused before sending (xid out of range).

        Hot path: one struct pack per message onto a body encoded once per
        distinct (rate, ceil, share) in this batch.
        """
        ifindex = self.ifindex
        first_seq = self._take_seqs(2 * len(ops))  # a create takes two messages
        # locals: the loop below runs once per class, thousands of times per cycle
        pack = w.TC_HEADER.pack
        header_len = w.TC_HEADER.size
        new_class, del_class, new_qdisc = w.RTM_NEWTCLASS, w.RTM_DELTCLASS, w.RTM_NEWQDISC
        request = w.NLM_F_REQUEST
        create = w.NLM_F_REQUEST | w.NLM_F_CREATE | w.NLM_F_EXCL
        handles = self._handles
        bodies: dict[tuple[int, int, int], bytes] = {}
        leaf_body = w.pfifo_options(LEAF_QDISC_LIMIT_PACKETS)
        leaf_len = header_len + len(leaf_body)
        messages: list[bytes] = []
        owners: list[int] = []
        refused: dict[int, OpFailure] = {}
        seq = first_seq
        for index, op in enumerate(ops):
            key = (op.xid, op.traffic_class)
            pair = handles.get(key)
            if pair is None:
                try:
                    minor = class_minor(op.xid, op.traffic_class)
                except XidOutOfRange as exc:
                    refused[index] = OpFailure(op, errno.ERANGE, f"{self._where(op)}: {exc}")
                    continue
                pair = handles[key] = (handle(minor), handle(parent_minor(op.traffic_class)))
            class_handle, parent = pair
            kind = op.kind
            if kind == "delete":
                messages.append(
                    pack(
                        header_len, del_class, request, seq, 0, 0, ifindex, class_handle, parent, 0
                    )
                )
                owners.append(index)
                seq += 1
                continue
            rates = op.rates
            assert rates is not None
            rkey = (rates.min_rate_bps, rates.max_rate_bps, rates.share)
            body = bodies.get(rkey)
            if body is None:
                body = bodies[rkey] = w.htb_class_options(rkey[0], rkey[1], quantum(rkey[2]))
            messages.append(
                pack(header_len + len(body), new_class, request if kind == "change" else create,
                     seq, 0, 0, ifindex, class_handle, parent, 0) + body
            )  # fmt: skip
            owners.append(index)
            seq += 1
            if kind == "create":
                messages.append(
                    pack(leaf_len, new_qdisc, create, seq, 0,
                         0, ifindex, leaf_qdisc_handle(class_handle & 0xFFFF), class_handle, 0)
                    + leaf_body
                )  # fmt: skip
                owners.append(index)
                seq += 1
        return messages, owners, first_seq, refused

    def init(self, cap_bps: int, bwmax_bps: int, bwmin_bps: int = BWMIN_BPS) -> None:
        """Build the tree idempotently; existing slice classes keep their settings."""
        ifindex = self.ifindex
        self._request(
            lambda seq: w.message(
                w.RTM_NEWQDISC,
                flags=w.NLM_F_REQUEST | w.NLM_F_ACK | w.NLM_F_CREATE | w.NLM_F_EXCL,
                seq=seq,
                ifindex=ifindex,
                handle=ROOT_QDISC_HANDLE,
                parent=w.TC_H_ROOT,
                body=w.htb_qdisc_options(DEFAULT_CLASS_MINOR),
            ),
            "add root htb qdisc",
            ok=(errno.EEXIST,),
        )
        cap_bps = min(cap_bps, bwmax_bps)
        tree = (
            (LINE_MINOR, 0, bwmax_bps, bwmax_bps),
            (CAP_MINOR, LINE_MINOR, bwmin_bps, cap_bps),
            (SITE_MINOR, CAP_MINOR, bwmin_bps, cap_bps),
            (EXEMPT_MINOR, LINE_MINOR, bwmin_bps, bwmax_bps),
        )
        for minor, parent, rate, ceil in tree:
            body = w.htb_class_options(rate, ceil, QUANTUM_PER_SHARE)
            try:
                self._request(
                    lambda seq, m=minor, p=parent, b=body: self._class_msg(
                        seq, m, p, b, w.NLM_F_ACK | w.NLM_F_CREATE
                    ),
                    f"class 1:{minor:x}",
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
        self._request(
            lambda seq: w.message(
                w.RTM_NEWTFILTER,
                flags=w.NLM_F_REQUEST | w.NLM_F_ACK | w.NLM_F_CREATE | w.NLM_F_EXCL,
                seq=seq,
                ifindex=ifindex,
                handle=FILTER_HANDLE,
                parent=ROOT_QDISC_HANDLE,
                body=w.bpf_filter_options(handle(DEFAULT_CLASS_MINOR)),
                info=w.filter_info(FILTER_PRIO),
            ),
            "add mark → class bpf filter",
            ok=(errno.EEXIST,),
        )
        log.info(
            "dev %s: HTB tree ready, cap %d bit/s, bwmax %d bit/s", self.dev, cap_bps, bwmax_bps
        )

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
        ifindex = self.ifindex
        self._request(
            lambda seq: w.message(
                w.RTM_DELQDISC,
                flags=w.NLM_F_REQUEST | w.NLM_F_ACK,
                seq=seq,
                ifindex=ifindex,
                handle=ROOT_QDISC_HANDLE,
                parent=w.TC_H_ROOT,
                body=b"",
            ),
            "delete root qdisc",
            ok=(errno.ENOENT, errno.EINVAL),
        )
        log.info("dev %s: HTB tree removed", self.dev)

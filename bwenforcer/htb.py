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
import itertools
import logging
import os
import socket
from collections.abc import Iterable, Sequence
from types import TracebackType

from . import tcwire as w
from .errors import (
    ClassOpFailed,
    DeviceMissing,
    KernelError,
    NotPermitted,
    TreeNotInitialised,
)
from .layout import (
    BWMIN_BPS,
    CAP_MINOR,
    DEFAULT_CLASS_MINOR,
    DEFAULT_XID,
    EXEMPT_MINOR,
    LEAF_QDISC_LIMIT_PACKETS,
    LINE_MINOR,
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
from .model import ClassOp, ClassRates, KernelClass, KernelSlice, KernelSnapshot, OpFailure
from .policy import clamp_rates

log = logging.getLogger(__name__)

NETLINK_ROUTE = 0
CHUNK_MESSAGES = 256  # per sendmsg; the errors of a chunk fit the receive buffer
RECV_BYTES = 1 << 20
SOCKET_BUFFER_BYTES = 4 << 20
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


class HtbBackend:
    """The HTB tree of one device (DESIGN.md "HTB layout")."""

    def __init__(self, dev: str, netns: str | None = None) -> None:
        self.dev = dev
        self._sock = open_socket(netns)
        self._seq = itertools.count(1)
        self._buf = bytearray(RECV_BYTES)
        self._ifindex: int | None = None
        self._bodies: dict[tuple[int, int, int, int], bytes] = {}

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
            return DeviceMissing(f"device {self.dev!r} not found", code)
        return KernelError(f"{what} on dev {self.dev}: {os.strerror(code)}", code)

    def _receive(self) -> Iterable[tuple[int, int, int, memoryview]]:
        size = self._sock.recv_into(self._buf)
        return w.split(memoryview(self._buf)[:size])

    def _exchange(self, messages: Sequence[bytes], seqs: Sequence[int]) -> dict[int, int]:
        """Send a chunk whose last message asks for an ACK; return ``{seq: errno}`` of failures."""
        self._sock.send(b"".join(messages))
        last = seqs[-1]
        failed: dict[int, int] = {}
        while True:
            for msg_type, _flags, seq, msg in self._receive():
                if msg_type != w.NLMSG_ERROR:
                    continue
                code = w.error_code(msg)
                if code:
                    failed[seq] = code
                if seq == last:
                    return failed

    def _request(self, build: object, what: str, ok: Iterable[int] = ()) -> None:
        """Send one message (built with ``seq``), wait for its ACK, raise on error."""
        seq = next(self._seq)
        msg = build(seq)  # type: ignore[operator]
        code = self._exchange([msg], [seq]).get(seq, 0)
        if code and code not in ok:
            raise self._error(code, what)

    @property
    def ifindex(self) -> int:
        """The device's interface index (DeviceMissing if it does not exist)."""
        if self._ifindex is None:
            seq = next(self._seq)
            self._sock.send(w.link_request(seq, self.dev))
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

    def _class_body(self, rates: ClassRates) -> bytes:
        key = (rates.min_rate_bps, rates.max_rate_bps, rates.share, 0)
        body = self._bodies.get(key)
        if body is None:
            body = w.htb_class_options(rates.min_rate_bps, rates.max_rate_bps, quantum(rates.share))
            self._bodies[key] = body
        return body

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
        seq = next(self._seq)
        self._sock.send(
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
        defaults: dict[int, KernelClass] = {}
        exempts: dict[int, KernelClass] = {}
        cap_bps = bwmax_bps = 0
        while True:
            for msg_type, _flags, msg_seq, msg in self._receive():
                if msg_seq != seq:
                    continue
                if msg_type == w.NLMSG_DONE:
                    return self._snapshot(cap_bps, bwmax_bps, defaults, exempts)
                if msg_type == w.NLMSG_ERROR:
                    code = w.error_code(msg)
                    if code:
                        raise self._error(code, "class dump")
                    continue
                rec = w.parse_class(msg)
                if rec is None or rec.handle >> 16 != 1:
                    continue
                minor = rec.handle & 0xFFFF
                found = slice_of_minor(minor)
                if found is None:
                    if minor == CAP_MINOR:
                        cap_bps = rec.ceil_bytes_s * 8
                    elif minor == LINE_MINOR:
                        bwmax_bps = rec.rate_bytes_s * 8
                    continue
                xid, tc = found
                kclass = KernelClass(
                    ClassRates(
                        rec.rate_bytes_s * 8,
                        rec.ceil_bytes_s * 8,
                        share_of_quantum(rec.quantum_bytes),
                    ),
                    rec.bytes,
                )
                (defaults if tc == "default" else exempts)[xid] = kclass

    def _snapshot(
        self,
        cap_bps: int,
        bwmax_bps: int,
        defaults: dict[int, KernelClass],
        exempts: dict[int, KernelClass],
    ) -> KernelSnapshot:
        if not cap_bps or not bwmax_bps:
            raise TreeNotInitialised(
                f"no bwenforcer HTB tree on dev {self.dev}: run `bwenforcer tc init`"
            )
        slices = {
            xid: KernelSlice(xid, defaults.get(xid), exempts.get(xid))
            for xid in defaults.keys() | exempts.keys()
        }
        return KernelSnapshot(cap_bps, bwmax_bps, slices)

    # --- changing ---------------------------------------------------------

    def apply(self, ops: Sequence[ClassOp]) -> list[OpFailure]:
        """Apply class operations in batches; return the ones the kernel refused."""
        messages: list[bytes] = []
        owners: list[int] = []  # index into ops, per message
        for index, op in enumerate(ops):
            for msg in self._encode(op):
                messages.append(msg)
                owners.append(index)
        failures: dict[int, OpFailure] = {}
        for start in range(0, len(messages), CHUNK_MESSAGES):
            chunk = messages[start : start + CHUNK_MESSAGES]
            seqs = [next(self._seq) for _ in chunk]
            first_seq = seqs[0]
            buf = bytearray(b"".join(chunk))
            offset = 0
            for position, seq in enumerate(seqs):
                w.patch_seq(buf, offset, seq)
                if position == len(seqs) - 1:  # ACK only the last message of the chunk
                    flags_offset = offset + 6
                    flags = int.from_bytes(buf[flags_offset : flags_offset + 2], "little")
                    buf[flags_offset : flags_offset + 2] = (flags | w.NLM_F_ACK).to_bytes(
                        2, "little"
                    )
                offset += len(chunk[position])
            for seq, code in self._exchange([bytes(buf)], seqs).items():
                index = owners[start + seq - first_seq]
                op = ops[index]
                if op.kind == "delete" and code == errno.ENOENT:
                    continue  # already gone
                failures.setdefault(
                    index, OpFailure(op, code, f"{op.kind} xid {op.xid}: {os.strerror(code)}")
                )
        if ops:
            log.debug("dev %s: %d class operations, %d refused", self.dev, len(ops), len(failures))
        return [failures[i] for i in sorted(failures)]

    def _encode(self, op: ClassOp) -> list[bytes]:
        minor = class_minor(op.xid, op.traffic_class)
        if op.kind == "delete":
            return [
                w.message(
                    w.RTM_DELTCLASS,
                    flags=w.NLM_F_REQUEST,
                    seq=0,
                    ifindex=self.ifindex,
                    handle=handle(minor),
                    parent=handle(parent_minor(op.traffic_class)),
                    body=b"",
                )
            ]
        assert op.rates is not None
        body = self._class_body(op.rates)
        parent = parent_minor(op.traffic_class)
        if op.kind == "change":
            return [self._class_msg(0, minor, parent, body, 0)]
        return [
            self._class_msg(0, minor, parent, body, w.NLM_F_CREATE | w.NLM_F_EXCL),
            w.message(
                w.RTM_NEWQDISC,
                flags=w.NLM_F_REQUEST | w.NLM_F_CREATE | w.NLM_F_EXCL,
                seq=0,
                ifindex=self.ifindex,
                handle=leaf_qdisc_handle(minor),
                parent=handle(minor),
                body=w.pfifo_options(LEAF_QDISC_LIMIT_PACKETS),
            ),
        ]

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
            self._request(
                lambda seq, m=minor, p=parent, b=body: self._class_msg(
                    seq, m, p, b, w.NLM_F_ACK | w.NLM_F_CREATE
                ),
                f"class 1:{minor:x}",
            )
        snapshot = self.dump()
        missing = []
        for xid in (ROOT_XID, DEFAULT_XID):
            present = snapshot.slices.get(xid)
            for tc in TRAFFIC_CLASSES:
                if present is None or present.cls(tc) is None:
                    top = cap_bps if tc == "default" else bwmax_bps
                    rate, ceil = clamp_rates(bwmin_bps, top, top, bwmin_bps)
                    missing.append(ClassOp("create", xid, tc, ClassRates(rate, ceil, 1)))
        failures = self.apply(missing)
        if failures:
            raise ClassOpFailed(f"tc init on dev {self.dev}: {failures[0].message}")
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
        self,
        xid: int,
        *,
        share: int | None = None,
        min_rate_bps: int | None = None,
        max_rate_bps: int | None = None,
        exempt_min_rate_bps: int | None = None,
        exempt_max_rate_bps: int | None = None,
        exempt_share: int | None = None,
        bwmin_bps: int = BWMIN_BPS,
    ) -> list[ClassOp]:
        """Create or change both classes of a slice (clamped like bwlimit); return ops sent.

        Values not given keep the kernel's current ones (or defaults for a new slice);
        a class whose rates would not change is not sent.
        """
        check_xid(xid)
        snapshot = self.dump()
        current = snapshot.slices.get(xid)
        wanted: dict[TrafficClass, tuple[int | None, int | None, int | None]] = {
            "default": (min_rate_bps, max_rate_bps, share),
            "exempt": (exempt_min_rate_bps, exempt_max_rate_bps, exempt_share),
        }
        caps = {"default": snapshot.cap_bps, "exempt": snapshot.bwmax_bps}
        ops: list[ClassOp] = []
        for tc, (lo, hi, sh) in wanted.items():
            cur = None if current is None else current.cls(tc)
            base = cur.rates if cur is not None else ClassRates(bwmin_bps, caps[tc], 1)
            rate, ceil = clamp_rates(
                base.min_rate_bps if lo is None else lo,
                base.max_rate_bps if hi is None else hi,
                caps[tc],
                bwmin_bps,
            )
            rates = ClassRates(rate, ceil, base.share if sh is None else max(1, sh))
            if cur is not None and cur.rates == rates:
                continue
            ops.append(ClassOp("create" if cur is None else "change", xid, tc, rates))
            log.info(
                "xid %d %s: ceil %s → %d bit/s, rate %d bit/s, share %d",
                xid,
                tc,
                "-" if cur is None else cur.rates.max_rate_bps,
                ceil,
                rate,
                rates.share,
            )
        failures = self.apply(ops)
        if failures:
            raise ClassOpFailed(f"dev {self.dev}: {failures[0].message}")
        return ops

    def off(self, xid: int) -> None:
        """Remove both classes of a slice and their leaf qdiscs; missing ones are fine."""
        check_xid(xid)
        failures = self.apply([ClassOp("delete", xid, tc) for tc in TRAFFIC_CLASSES])
        if failures:
            raise ClassOpFailed(f"dev {self.dev}: {failures[0].message}")

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

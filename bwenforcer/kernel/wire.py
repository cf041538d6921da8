"""The netlink messages bwenforcer exchanges with the kernel's traffic control, as bytes.

Pure ``struct`` encoding and decoding of exactly what we use, so the hot path
(thousands of class changes and one dump per cycle) builds no message objects:
every tc message is an nlmsghdr, a tcmsg and attributes, whether built one at a
time (:func:`message`) or a batch at a time (:class:`ClassOpEncoder`). No rate
tables are sent: HTB does not need ``TCA_HTB_RTAB/CTAB``.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple

from bwenforcer.core.layout import (
    CLASS_BITS,
    LEAF_QDISC_LIMIT_PACKETS,
    MAJOR,
    XID_MASK,
    XID_MAX,
    TrafficClass,
    class_minor,
    handle,
    leaf_qdisc_handle,
    parent_minor,
    quantum,
)
from bwenforcer.errors import XidOutOfRange

if TYPE_CHECKING:
    from bwenforcer.core.model import KernelOp

# netlink
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
RTM_GETLINK = 18
RTM_NEWQDISC = 36
RTM_DELQDISC = 37
RTM_NEWTCLASS = 40
RTM_DELTCLASS = 41
RTM_GETTCLASS = 42
RTM_NEWTFILTER = 44
RTM_DELTFILTER = 45
RTM_GETTFILTER = 46
IFLA_IFNAME = 3
TC_H_ROOT = 0xFFFFFFFF
ETH_P_ALL = 0x0003

# traffic control attributes
TCA_KIND = 1
TCA_OPTIONS = 2
TCA_STATS2 = 7
TCA_STATS_BASIC = 1
TCA_HTB_PARMS = 1
TCA_HTB_INIT = 2
TCA_HTB_RATE64 = 6
TCA_HTB_CEIL64 = 7
TCA_BPF_CLASSID = 3
TCA_BPF_OPS_LEN = 4
TCA_BPF_OPS = 5
TC_LINKLAYER_ETHERNET = 1
HTB_VERSION = 3
HTB_RATE2QUANTUM = 10

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_RTATTR = struct.Struct("=HH")
_HTB_OPT = struct.Struct("=BBHhHIBBHhHIIIIII")
_HTB_GLOB = struct.Struct("=IIIII")
_U16 = struct.Struct("=H")
_U32 = struct.Struct("=I")
_U64 = struct.Struct("=Q")
_ERRNO = struct.Struct("=i")
_TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
_HDR_LEN = _NLMSGHDR.size + _TCMSG.size
_U32_MAX = 0xFFFFFFFF
_NS_PER_TICK = 64  # PSCHED_TICKS2NS: a psched tick is 2**6 ns
BURST_BYTES = 1600  # tc's default burst on a high-resolution clock: one MTU

# cls_bpf classic program: skb mark → classid, for both mark conventions
# (classifier.mode none and nodemanager, whose marks someone else sets).
# - mark = xid (1..0xffe), as PlanetLab's LXC node manager sets it (ebtables
#   --set-mark xid): 1:1<xid>, the slice's default class;
# - mark = 0x1000|xid or 0x2000|xid, as the ``uid`` classifier sets it: 1:<mark>,
#   the slice's default or exempt class;
# - anything else (0, 0xfff, above 0x2fff): no match (0), i.e. the next filter,
#   then the default class 1:1fff. Never 1:0 (the qdisc's own handle, which HTB
#   sends out unshaped: the old program's mark 0x10000 did) nor another major.
# A class that does not exist (a mark of no slice) is HTB's default class too.
_SKF_AD_MARK = (0xFFFFF000 + 20) & 0xFFFFFFFF
MARK_TO_CLASS_PROGRAM = (
    (0x20, 0, 0, _SKF_AD_MARK),  # 0: ld  [mark]
    (0x15, 7, 0, 0),  # 1: jeq #0 → 9 (unmarked: no match)
    (0x25, 2, 0, XID_MAX),  # 2: jgt #0xffe → 5 (not a bare xid)
    (0x44, 0, 0, (MAJOR << 16) | CLASS_BITS["default"]),  # 3: or #0x11000
    (0x16, 0, 0, 0),  # 4: ret a → 1:1<xid>
    (0x35, 0, 3, CLASS_BITS["default"]),  # 5: jge #0x1000, else → 9
    (0x25, 2, 0, CLASS_BITS["exempt"] | XID_MASK),  # 6: jgt #0x2fff → 9
    (0x44, 0, 0, MAJOR << 16),  # 7: or #0x10000
    (0x16, 0, 0, 0),  # 8: ret a → 1:<mark>
    (0x06, 0, 0, 0),  # 9: ret #0 (no match)
)
# The program of classifier.mode uid and cgroup, where bwenforcer sets every
# slice's mark, only ever 0x1000|xid or 0x2000|xid: those, as above, and nothing
# else. A bare mark (an untracked kernel packet's stray one, such as an IPv6 MLD
# report's) is no slice's: no match, the default class 1:1fff.
TAGGED_MARK_TO_CLASS_PROGRAM = (
    (0x20, 0, 0, _SKF_AD_MARK),  # 0: ld  [mark]
    (0x35, 0, 3, CLASS_BITS["default"]),  # 1: jge #0x1000, else → 5
    (0x25, 2, 0, CLASS_BITS["exempt"] | XID_MASK),  # 2: jgt #0x2fff → 5
    (0x44, 0, 0, MAJOR << 16),  # 3: or #0x10000
    (0x16, 0, 0, 0),  # 4: ret a → 1:<mark>
    (0x06, 0, 0, 0),  # 5: ret #0 (no match)
)


def mark_program(bare_marks: bool) -> tuple[tuple[int, int, int, int], ...]:
    """The mark → class program: bare xids too (``bare_marks``), or tagged marks only."""
    return MARK_TO_CLASS_PROGRAM if bare_marks else TAGGED_MARK_TO_CLASS_PROGRAM


# The program before issue 18 (mark M → 1:M): found on a tree of an older
# bwenforcer, at the old priority, it is replaced.
OLD_MARK_TO_CLASS_PROGRAM = (
    (0x20, 0, 0, _SKF_AD_MARK),
    (0x15, 0, 1, 0),
    (0x06, 0, 0, 0),
    (0x44, 0, 0, 0x10000),
    (0x16, 0, 0, 0),
)


def bpf_ops(program: Sequence[tuple[int, int, int, int]]) -> bytes:
    """A classic BPF program as the kernel's array of sock_filter."""
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)


def _pad(length: int) -> int:
    return (length + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    """One rtattr, padded to 4 bytes."""
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, kind) + payload + b"\0" * (_pad(length) - length)


def _netlink_message(msg_type: int, flags: int, seq: int, payload: bytes) -> bytes:
    """``payload`` behind its nlmsghdr (pid 0: the kernel fills in ours)."""
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), msg_type, flags, seq, 0) + payload


def _tcmsg(ifindex: int, handle: int, parent: int, info: int = 0) -> bytes:
    """The tcmsg that opens every tc message's payload (family AF_UNSPEC)."""
    return _TCMSG.pack(0, ifindex, handle, parent, info)


def message(
    msg_type: int,
    *,
    flags: int,
    seq: int,
    ifindex: int,
    handle: int,
    parent: int,
    body: bytes,
    info: int = 0,
) -> bytes:
    """A whole tc netlink message (nlmsghdr + tcmsg + attributes)."""
    return _netlink_message(msg_type, flags, seq, _tcmsg(ifindex, handle, parent, info) + body)


def with_ack(msg: bytes) -> bytes:
    """``msg`` with NLM_F_ACK added to its flags."""
    out = bytearray(msg)
    _U16.pack_into(out, 6, _U16.unpack_from(out, 6)[0] | NLM_F_ACK)
    return bytes(out)


def link_request(seq: int, name: str) -> bytes:
    """RTM_GETLINK by name: answers with the device's ifindex, or ENODEV."""
    body = _IFINFOMSG.pack(0, 0, 0, 0, 0) + attr(IFLA_IFNAME, name.encode() + b"\0")
    return _netlink_message(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def ifindex_of(msg: memoryview) -> int:
    """ifindex from an RTM_NEWLINK answer."""
    return _IFINFOMSG.unpack_from(msg, _NLMSGHDR.size)[2]


def _ticks(size_bytes: int, rate_bytes_s: int) -> int:
    """Time to send ``size_bytes`` at ``rate_bytes_s``, in psched ticks (capped to u32)."""
    return min(_U32_MAX, size_bytes * 1_000_000_000 // (max(1, rate_bytes_s) * _NS_PER_TICK))


def htb_class_options(rate_bps: int, ceil_bps: int, quantum_bytes: int) -> bytes:
    """TCA_KIND + TCA_OPTIONS of an HTB class (rates in bit/s; the kernel keeps bytes/s)."""
    rate_b, ceil_b = rate_bps // 8, ceil_bps // 8
    parms = _HTB_OPT.pack(
        0, TC_LINKLAYER_ETHERNET, 0, 0, 0, min(rate_b, _U32_MAX),
        0, TC_LINKLAYER_ETHERNET, 0, 0, 0, min(ceil_b, _U32_MAX),
        _ticks(BURST_BYTES, rate_b), _ticks(BURST_BYTES, ceil_b), quantum_bytes, 0, 0,
    )  # fmt: skip
    options = attr(TCA_HTB_PARMS, parms)
    if rate_b > _U32_MAX:
        options += attr(TCA_HTB_RATE64, _U64.pack(rate_b))
    if ceil_b > _U32_MAX:
        options += attr(TCA_HTB_CEIL64, _U64.pack(ceil_b))
    return attr(TCA_KIND, b"htb\0") + attr(TCA_OPTIONS, options)


def htb_qdisc_options(default_minor: int) -> bytes:
    """TCA_KIND + TCA_OPTIONS of the root HTB qdisc."""
    glob = _HTB_GLOB.pack(HTB_VERSION, HTB_RATE2QUANTUM, default_minor, 0, 0)
    return attr(TCA_KIND, b"htb\0") + attr(TCA_OPTIONS, attr(TCA_HTB_INIT, glob))


def pfifo_options(limit_packets: int) -> bytes:
    """TCA_KIND + TCA_OPTIONS of a leaf pfifo (its options are a bare struct)."""
    return attr(TCA_KIND, b"pfifo\0") + attr(TCA_OPTIONS, _U32.pack(limit_packets))


def bpf_filter_options(
    classid: int, program: Sequence[tuple[int, int, int, int]] = MARK_TO_CLASS_PROGRAM
) -> bytes:
    """TCA_KIND + TCA_OPTIONS of the one mark → class cls_bpf filter."""
    options = (
        attr(TCA_BPF_CLASSID, _U32.pack(classid))
        + attr(TCA_BPF_OPS_LEN, _U16.pack(len(program)))
        + attr(TCA_BPF_OPS, bpf_ops(program))
    )
    return attr(TCA_KIND, b"bpf\0") + attr(TCA_OPTIONS, options)


class FilterRecord(NamedTuple):
    """What bwenforcer reads of one filter of a filter dump."""

    handle: int
    info: int  # tcm_info: priority << 16 | protocol (network order)
    kind: bytes
    classid: int  # TCA_BPF_CLASSID (0 for other kinds)
    ops: bytes  # TCA_BPF_OPS (b"" for other kinds)


def parse_filter_dump(buffer: memoryview, seq: int, records: list[FilterRecord]) -> int | None:
    """Append the filters answering dump ``seq`` in one received buffer to ``records``.

    Returns None while the dump goes on, 0 at its NLMSG_DONE, or the errno the
    kernel answered with.
    """
    offset, end = 0, len(buffer)
    while offset + _NLMSGHDR.size <= end:
        length, msg_type, _flags, msg_seq, _pid = _NLMSGHDR.unpack_from(buffer, offset)
        if length < _NLMSGHDR.size or length > end - offset:
            break
        if msg_seq == seq:
            if msg_type == RTM_NEWTFILTER and length >= _HDR_LEN:
                records.append(_parse_filter(buffer[offset : offset + length]))
            elif msg_type == NLMSG_DONE:
                return 0
            elif msg_type == NLMSG_ERROR:
                code = error_code(buffer[offset : offset + length])
                if code:
                    return code
        offset += _pad(length)
    return None


_TCMSG_FILTER = struct.Struct("=24xIII")  # handle, parent, info


def _parse_filter(msg: memoryview) -> FilterRecord:
    handle, _parent, info = _TCMSG_FILTER.unpack_from(msg, 0)
    kind, classid, ops = b"", 0, b""
    for attr_kind, start, stop in _attrs(msg, _HDR_LEN, len(msg)):
        if attr_kind == TCA_KIND:
            kind = bytes(msg[start:stop]).rstrip(b"\0")
        elif attr_kind == TCA_OPTIONS:
            for opt, o_start, o_stop in _attrs(msg, start, stop):
                if opt == TCA_BPF_CLASSID and o_stop - o_start >= 4:
                    classid = _U32.unpack_from(msg, o_start)[0]
                elif opt == TCA_BPF_OPS:
                    ops = bytes(msg[o_start:o_stop])
    return FilterRecord(handle, info, kind, classid, ops)


def filter_info(prio: int) -> int:
    """tcm_info of a filter: priority and protocol (all)."""
    return (prio << 16) | socket.htons(ETH_P_ALL)  # the protocol is in network order


class ClassOpEncoder:
    """The messages of batches of class operations on one device (the hot path).

    A create is two messages, the class and its leaf pfifo; a change or a delete
    one. Each class's tcmsg (and its leaf's) is packed once and kept for later
    batches; each distinct (rate, ceil, share) of a batch is encoded once.
    """

    def __init__(self, ifindex: int) -> None:
        self._ifindex = ifindex
        # (xid, class) → tcmsg of the class and of its leaf qdisc: two per possible xid at most
        self._tcmsgs: dict[tuple[int, TrafficClass], tuple[bytes, bytes]] = {}
        self._leaf_payload = pfifo_options(LEAF_QDISC_LIMIT_PACKETS)

    def encode(
        self, ops: Sequence[KernelOp], first_seq: int
    ) -> tuple[list[bytes], list[int], dict[int, XidOutOfRange]]:
        """Messages for ``ops`` numbered from ``first_seq`` (at most ``2 * len(ops)``),
        the index in ``ops`` of each message's op, and by index the ops refused
        before sending (xid out of range).
        """
        # locals: the loop below runs once per class, thousands of times per cycle
        pack = _NLMSGHDR.pack
        head_len = _HDR_LEN  # nlmsghdr + tcmsg
        new_class, del_class, new_qdisc = RTM_NEWTCLASS, RTM_DELTCLASS, RTM_NEWQDISC
        request = NLM_F_REQUEST
        create = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL
        tcmsgs = self._tcmsgs
        payloads: dict[tuple[int, int, int], bytes] = {}
        leaf_payload = self._leaf_payload
        leaf_len = head_len + len(leaf_payload)
        messages: list[bytes] = []
        owners: list[int] = []
        refused: dict[int, XidOutOfRange] = {}
        seq = first_seq
        for index, op in enumerate(ops):
            key = (op.xid, op.traffic_class)
            pair = tcmsgs.get(key)
            if pair is None:
                try:
                    pair = tcmsgs[key] = self._class_tcmsgs(*key)
                except XidOutOfRange as exc:
                    refused[index] = exc
                    continue
            class_tcmsg = pair[0]
            kind = op.kind
            if kind == "delete":
                messages.append(pack(head_len, del_class, request, seq, 0) + class_tcmsg)
                owners.append(index)
                seq += 1
                continue
            rates = op.rates
            assert rates is not None
            rkey = (rates.min_rate_bps, rates.max_rate_bps, rates.share)
            payload = payloads.get(rkey)
            if payload is None:
                payload = payloads[rkey] = htb_class_options(rkey[0], rkey[1], quantum(rkey[2]))
            messages.append(
                pack(head_len + len(payload), new_class,
                     request if kind == "change" else create, seq, 0) + class_tcmsg + payload
            )  # fmt: skip
            owners.append(index)
            seq += 1
            if kind == "create":
                messages.append(pack(leaf_len, new_qdisc, create, seq, 0) + pair[1] + leaf_payload)
                owners.append(index)
                seq += 1
        return messages, owners, refused

    def _class_tcmsgs(self, xid: int, traffic_class: TrafficClass) -> tuple[bytes, bytes]:
        """tcmsg of the class (under its parent) and of its leaf qdisc (XidOutOfRange)."""
        minor = class_minor(xid, traffic_class)
        class_handle = handle(minor)
        return (
            _tcmsg(self._ifindex, class_handle, handle(parent_minor(traffic_class))),
            _tcmsg(self._ifindex, leaf_qdisc_handle(minor), class_handle),
        )


def split(buffer: memoryview) -> Iterator[tuple[int, int, int, memoryview]]:
    """``(type, flags, seq, message)`` for each netlink message in a received buffer."""
    offset = 0
    end = len(buffer)
    while offset + _NLMSGHDR.size <= end:
        length, msg_type, flags, seq, _ = _NLMSGHDR.unpack_from(buffer, offset)
        if length < _NLMSGHDR.size or offset + length > end:
            return
        yield msg_type, flags, seq, buffer[offset : offset + length]
        offset += _pad(length)


def error_code(msg: memoryview) -> int:
    """The (positive) errno of an NLMSG_ERROR message; 0 is an ACK."""
    return -_ERRNO.unpack_from(msg, _NLMSGHDR.size)[0]


class ClassRecord(NamedTuple):
    """The fields of one dumped HTB class that bwenforcer reads."""

    handle: int
    parent: int
    rate_bytes_s: int
    ceil_bytes_s: int
    quantum_bytes: int
    sent_bytes: int  # 64-bit counter from TCA_STATS2 → TCA_STATS_BASIC


_new_record = tuple.__new__  # builds a ClassRecord without NamedTuple's Python-level __new__

# Every HTB class the kernel dumps with rates below 2**32 bytes/s has the same
# layout up to its byte counter, so one unpack reads all a class needs. The
# attribute headers it covers are compared with the expected ones; a class that
# differs (RATE64/CEIL64, another order) takes the attribute walk of parse_class.
_FAST = struct.Struct(
    "=IH2xI12xII4x"  # nlmsghdr (len, type, seq) + tcmsg (handle, parent)
    "I4sII"  # TCA_KIND header, "htb\0", TCA_OPTIONS header, TCA_HTB_PARMS header
    "8xI8xI8xI8x"  # tc_htb_opt: rate.rate, ceil.rate, quantum
    "2xH2xHQ"  # types of TCA_STATS2 and of its first TCA_STATS_BASIC, gnet_stats_basic.bytes
)
_FAST_HEADERS = (
    _U32.unpack(_RTATTR.pack(8, TCA_KIND))[0],
    b"htb\0",
    _U32.unpack(_RTATTR.pack(4 + 4 + _HTB_OPT.size, TCA_OPTIONS))[0],
    _U32.unpack(_RTATTR.pack(4 + _HTB_OPT.size, TCA_HTB_PARMS))[0],
)
_FAST_STATS_TYPES = (TCA_STATS2, TCA_STATS_BASIC)
_TYPE_BITS = 0x3FFF  # an attribute type without NLA_F_NESTED / NLA_F_NET_BYTEORDER


def parse_class_dump(buffer: memoryview, seq: int, records: list[ClassRecord]) -> int | None:
    """Append the HTB classes answering dump ``seq`` in one received buffer to ``records``.

    Returns None while the dump goes on, 0 at its NLMSG_DONE, or the errno the
    kernel answered with. Messages of other sequence numbers are skipped.
    """
    # locals: this loop runs once per class, thousands of times per dump
    unpack = _FAST.unpack_from
    append = records.append
    new, record_type = _new_record, ClassRecord
    headers, stats_types = _FAST_HEADERS, _FAST_STATS_TYPES
    fast_size = _FAST.size
    offset = 0
    end = len(buffer)
    while offset + _NLMSGHDR.size <= end:
        if offset + fast_size <= end:
            f = unpack(buffer, offset)
            if (
                f[2] == seq
                and f[1] == RTM_NEWTCLASS
                and fast_size <= f[0] <= end - offset
                and f[5:9] == headers
                and f[12:14] == stats_types
            ):
                append(new(record_type, (f[3], f[4], f[9], f[10], f[11], f[14])))
                offset += (f[0] + 3) & ~3
                continue
        length, msg_type, _flags, msg_seq, _pid = _NLMSGHDR.unpack_from(buffer, offset)
        if length < _NLMSGHDR.size or length > end - offset:
            break  # truncated: nothing after it can be trusted
        if msg_seq == seq:
            if msg_type == RTM_NEWTCLASS:
                record = parse_class(buffer[offset : offset + length])
                if record is not None:
                    append(record)
            elif msg_type == NLMSG_DONE:
                return 0
            elif msg_type == NLMSG_ERROR:
                code = error_code(buffer[offset : offset + length])
                if code:
                    return code
        offset += _pad(length)
    return None


_TCMSG_FIELDS = struct.Struct("=24xII")  # nlmsghdr, family/pad/ifindex; handle, parent


def parse_class(msg: memoryview) -> ClassRecord | None:
    """One RTM_NEWTCLASS message → its record; None for classes that are not HTB.

    Walks every attribute, reading only the ones bwenforcer uses and skipping
    the others by their length.
    """
    handle, parent = _TCMSG_FIELDS.unpack_from(msg, 0)
    rate = ceil = quantum = sent = 0
    is_htb = False
    for kind, start, stop in _attrs(msg, _HDR_LEN, len(msg)):
        if kind == TCA_KIND:
            is_htb = bytes(msg[start:stop]).rstrip(b"\0") == b"htb"
        elif kind == TCA_OPTIONS:
            rate, ceil, quantum = _parse_htb_options(msg, start, stop)
        elif kind == TCA_STATS2:
            sent = _parse_stats(msg, start, stop)
    if not is_htb:
        return None
    return ClassRecord(handle, parent, rate, ceil, quantum, sent)


def _attrs(msg: memoryview, offset: int, end: int) -> Iterator[tuple[int, int, int]]:
    """``(type, payload start, payload end)`` of each attribute in ``msg[offset:end]``."""
    while offset + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(msg, offset)
        if length < _RTATTR.size or offset + length > end:
            return
        yield kind & _TYPE_BITS, offset + _RTATTR.size, offset + length
        offset += _pad(length)


def _parse_htb_options(msg: memoryview, offset: int, end: int) -> tuple[int, int, int]:
    rate = ceil = quantum = rate64 = ceil64 = 0
    for kind, start, stop in _attrs(msg, offset, end):
        if kind == TCA_HTB_PARMS and stop - start >= _HTB_OPT.size:
            fields = _HTB_OPT.unpack_from(msg, start)
            rate, ceil, quantum = fields[5], fields[11], fields[14]
        elif kind == TCA_HTB_RATE64 and stop - start >= 8:
            rate64 = _U64.unpack_from(msg, start)[0]
        elif kind == TCA_HTB_CEIL64 and stop - start >= 8:
            ceil64 = _U64.unpack_from(msg, start)[0]
    return rate64 or rate, ceil64 or ceil, quantum


def _parse_stats(msg: memoryview, offset: int, end: int) -> int:
    for kind, start, stop in _attrs(msg, offset, end):
        if kind == TCA_STATS_BASIC and stop - start >= 8:
            return _U64.unpack_from(msg, start)[0]
    return 0

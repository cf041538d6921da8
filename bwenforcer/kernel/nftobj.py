"""nf_tables stateful objects over raw nfnetlink: counters and limits of one table.

What the inbound backend needs and the nft command would cost a process for: one
dump of every object of a table (``NFT_MSG_GETOBJ``: counters' bytes, limits'
rate and burst, each object's reference count and comment), the table's own
comment, and transactions (one nf_tables batch, all or nothing) of object and
object-map element messages. Integers inside nftables attributes are big-endian;
the key of a ``mark`` map is a host-order u32. The socket, sequence numbers and
the reply walk are :class:`bwenforcer.kernel.nftsets.NftMaps`'s.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import struct
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import NamedTuple

from bwenforcer.errors import InboundError, KernelError, NotPermitted
from bwenforcer.kernel.nftsets import (
    NFNL_MSG_BATCH_BEGIN,
    NFNL_MSG_BATCH_END,
    NFNL_SUBSYS_NFTABLES,
    NLA_F_NESTED,
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NftMaps,
    _attr,
    _attrs,
    _batch,
    _message,
)

NFT_MSG_NEWTABLE = 0
NFT_MSG_GETTABLE = 1
NFT_MSG_NEWSETELEM = 12
NFT_MSG_DELSETELEM = 14
NFT_MSG_NEWOBJ = 18
NFT_MSG_GETOBJ = 19
NFT_MSG_DELOBJ = 20
NLM_F_EXCL = 0x200
NLM_F_DUMP_INTR = 0x10
NFTA_TABLE_NAME = 1
NFTA_TABLE_USERDATA = 6
NFTA_OBJ_TABLE = 1
NFTA_OBJ_NAME = 2
NFTA_OBJ_TYPE = 3
NFTA_OBJ_DATA = 4
NFTA_OBJ_USE = 5
NFTA_OBJ_HANDLE = 6
NFTA_OBJ_USERDATA = 8
NFT_OBJECT_COUNTER = 1
NFT_OBJECT_LIMIT = 4
NFTA_COUNTER_BYTES = 1
NFTA_COUNTER_PACKETS = 2
NFTA_LIMIT_RATE = 1
NFTA_LIMIT_UNIT = 2
NFTA_LIMIT_BURST = 3
NFTA_LIMIT_TYPE = 4
NFTA_LIMIT_FLAGS = 5
NFT_LIMIT_PKT_BYTES = 1
NFT_LIMIT_F_INV = 1  # "rate over": the limit matches only what exceeds the rate
SET_ELEM_LIST_TABLE = 1
SET_ELEM_LIST_SET = 2
SET_ELEM_LIST_ELEMENTS = 3
LIST_ELEM = 1
SET_ELEM_KEY = 1
SET_ELEM_OBJREF = 9
DATA_VALUE = 1
UDATA_COMMENT = 0  # libnftnl's comment item, as nft writes and prints it
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
BATCH_BUFFER_BYTES = 32 << 20  # a transaction is one sendmsg: 16,000 messages ≈ 2.5 MB
ERROR_WAIT_S = 0.5  # after a refusal the batch is aborted; the last ACK may not come
DUMP_ATTEMPTS = 3  # a dump the table's change interrupted is read again

KIND_NAMES = {NFT_OBJECT_COUNTER: "counter", NFT_OBJECT_LIMIT: "limit"}

Msg = tuple[int, int, bytes]  # (nft message type, extra flags, attributes): no seq yet


class NftObject(NamedTuple):
    """One counter or limit object as the kernel dumps it.

    ``value``: a counter's bytes, a limit's rate (bytes per second); ``extra``: a
    counter's packets, a limit's burst (bytes). ``use``: references to it (rules,
    map elements). ``comment``: its nft comment (userdata), if any.
    """

    name: str
    kind: str  # "counter" or "limit"
    handle: int
    use: int
    value: int
    extra: int
    comment: str | None = None


def _str(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def _udata_comment(text: str) -> bytes:
    raw = text.encode()[:250] + b"\0"
    return struct.pack("BB", UDATA_COMMENT, len(raw)) + raw


def _parse_udata_comment(raw: bytes) -> str | None:
    off = 0
    while off + 2 <= len(raw):
        kind, length = raw[off], raw[off + 1]
        if kind == UDATA_COMMENT:
            return raw[off + 2 : off + 2 + length].rstrip(b"\0").decode(errors="replace")
        off += 2 + length
    return None


def new_counter(table: str, name: str, bytes_: int = 0, packets: int = 0) -> Msg:
    """Create counter ``name`` (refused with EEXIST if it exists: never a silent keep)."""
    data = _attr(NFTA_COUNTER_BYTES, struct.pack("!Q", bytes_)) + _attr(
        NFTA_COUNTER_PACKETS, struct.pack("!Q", packets)
    )
    body = (
        _str(NFTA_OBJ_TABLE, table)
        + _str(NFTA_OBJ_NAME, name)
        + _attr(NFTA_OBJ_TYPE, struct.pack("!I", NFT_OBJECT_COUNTER))
        + _attr(NFTA_OBJ_DATA | NLA_F_NESTED, data)
    )
    return NFT_MSG_NEWOBJ, NLM_F_CREATE | NLM_F_EXCL, body


def new_limit(table: str, name: str, rate_bytes_s: int, burst_bytes: int, comment: str) -> Msg:
    """Create ``limit name { rate over RATE bytes/second burst BURST bytes }``.

    NLM_F_EXCL: without it an existing object of that name is silently kept with its
    old rate (a limit object has no update on this kernel).
    """
    data = (
        _attr(NFTA_LIMIT_RATE, struct.pack("!Q", rate_bytes_s))
        + _attr(NFTA_LIMIT_UNIT, struct.pack("!Q", 1))
        + _attr(NFTA_LIMIT_BURST, struct.pack("!I", burst_bytes))
        + _attr(NFTA_LIMIT_TYPE, struct.pack("!I", NFT_LIMIT_PKT_BYTES))
        + _attr(NFTA_LIMIT_FLAGS, struct.pack("!I", NFT_LIMIT_F_INV))
    )
    body = (
        _str(NFTA_OBJ_TABLE, table)
        + _str(NFTA_OBJ_NAME, name)
        + _attr(NFTA_OBJ_TYPE, struct.pack("!I", NFT_OBJECT_LIMIT))
        + _attr(NFTA_OBJ_DATA | NLA_F_NESTED, data)
        + _attr(NFTA_OBJ_USERDATA, _udata_comment(comment))
    )
    return NFT_MSG_NEWOBJ, NLM_F_CREATE | NLM_F_EXCL, body


def del_object(table: str, name: str, kind: str) -> Msg:
    """Delete object ``name`` of ``kind`` (EBUSY while a map element refers to it)."""
    code = NFT_OBJECT_COUNTER if kind == "counter" else NFT_OBJECT_LIMIT
    body = (
        _str(NFTA_OBJ_TABLE, table)
        + _str(NFTA_OBJ_NAME, name)
        + _attr(NFTA_OBJ_TYPE, struct.pack("!I", code))
    )
    return NFT_MSG_DELOBJ, 0, body


def map_elements(table: str, map_name: str, items: Mapping[int, str | None]) -> Msg:
    """Add (``{mark: object name}``) or, all values None, delete elements of a
    ``mark : counter|limit`` map; one message for all of them.
    """
    elems = []
    adding = False
    for key, objref in items.items():
        elem = _attr(SET_ELEM_KEY | NLA_F_NESTED, _attr(DATA_VALUE, struct.pack("=I", key)))
        if objref is not None:
            elem += _str(SET_ELEM_OBJREF, objref)
            adding = True
        elems.append(_attr(LIST_ELEM | NLA_F_NESTED, elem))
    body = (
        _str(SET_ELEM_LIST_TABLE, table)
        + _str(SET_ELEM_LIST_SET, map_name)
        + _attr(SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, b"".join(elems))
    )
    if adding:
        return NFT_MSG_NEWSETELEM, NLM_F_CREATE, body
    return NFT_MSG_DELSETELEM, 0, body


def _counter_pattern(table: str) -> re.Pattern[bytes]:
    """A counter object's message as this kernel sends it, from the table attribute on
    (table, name, type, handle, use, data: bytes, packets), capturing name, handle,
    use, bytes and packets. Attribute headers are host order.
    """

    def hdr(length: int, kind: int) -> bytes:
        return re.escape(struct.pack("=HH", length, kind))

    table_attr = re.escape(_str(NFTA_OBJ_TABLE, table))
    return re.compile(
        table_attr
        + hdr(10, NFTA_OBJ_NAME)
        + rb"(c[0-9a-f]{4})\0\0\0"
        + hdr(8, NFTA_OBJ_TYPE)
        + re.escape(struct.pack("!I", NFT_OBJECT_COUNTER))
        + hdr(12, NFTA_OBJ_HANDLE)
        + rb"(.{8})"
        + hdr(8, NFTA_OBJ_USE)
        + rb"(.{4})"
        + hdr(28, NFTA_OBJ_DATA)
        + hdr(12, NFTA_COUNTER_BYTES)
        + rb"(.{8})"
        + hdr(12, NFTA_COUNTER_PACKETS)
        + rb"(.{8})",
        re.DOTALL,
    )


def _parse_object(body: bytes) -> NftObject | None:
    name = kind = None
    handle = use = value = extra = 0
    comment = None
    for akind, raw in _attrs(body):
        if akind == NFTA_OBJ_NAME:
            name = raw.rstrip(b"\0").decode(errors="replace")
        elif akind == NFTA_OBJ_TYPE:
            kind = KIND_NAMES.get(struct.unpack("!I", raw[:4])[0])
        elif akind == NFTA_OBJ_HANDLE:
            handle = struct.unpack("!Q", raw[:8])[0]
        elif akind == NFTA_OBJ_USE:
            use = struct.unpack("!I", raw[:4])[0]
        elif akind == NFTA_OBJ_USERDATA:
            comment = _parse_udata_comment(raw)
        elif akind == NFTA_OBJ_DATA:
            for dkind, draw in _attrs(raw):
                if dkind == 1 and len(draw) == 8:  # COUNTER_BYTES / LIMIT_RATE
                    value = struct.unpack("!Q", draw)[0]
                elif dkind == NFTA_COUNTER_PACKETS and len(draw) == 8:
                    extra = struct.unpack("!Q", draw)[0]
                elif dkind == NFTA_LIMIT_BURST and len(draw) == 4:
                    extra = struct.unpack("!I", draw)[0]
    if name is None or kind is None:
        return None  # an object type this module does not use
    return NftObject(name, kind, handle, use, value, extra, comment)


class NftObjects(NftMaps):
    """Objects and object maps of one ``inet`` table, over one netfilter socket."""

    error_type = InboundError

    def __init__(self, table: str, netns: str | None = None) -> None:
        super().__init__(table, netns)
        for option in (SO_SNDBUFFORCE, SO_RCVBUFFORCE):
            try:  # root lifts the sysctl cap: a transaction must fit one sendmsg
                self._sock.setsockopt(socket.SOL_SOCKET, option, BATCH_BUFFER_BYTES)
            except OSError:
                continue
        self.messages_sent = 0  # nft messages in transactions so far (benchmarks, tests)
        # each dump kind's messages (from the table attribute on) → the object read
        self._last_dump: dict[str | None, dict[bytes, NftObject]] = {}
        self._counter_pattern = _counter_pattern(table)
        self.requests = 0  # dumps, gets and transactions sent so far

    def forget_parsed(self) -> None:
        """Drop the messages last dumped: the next dump parses every object (as when
        every counter moved; benchmarks).
        """
        self._last_dump.clear()

    def error(self, code: int, what: str) -> KernelError:
        """The project's error for the kernel's answer ``code`` (an errno) to ``what``."""
        if code == errno.EPERM:
            return NotPermitted(f"{what}: needs root or CAP_NET_ADMIN", code)
        return InboundError(f"{what}: {os.strerror(code)}", code)

    def _request(self, kind: int, flags: int, body: bytes) -> int:
        seq = self._next()
        self.requests += 1
        try:
            self._sock.send(
                _message((NFNL_SUBSYS_NFTABLES << 8) | kind, NLM_F_REQUEST | flags, seq, body)
            )
        except OSError as exc:
            raise self.error(exc.errno or errno.EIO, f"nftables table {self.table}") from None
        return seq

    def objects(self, kind: str | None = None) -> dict[str, NftObject]:
        """Every counter and limit object of the table (only ``kind``'s if given: the
        kernel filters), in one GETOBJ dump. The dump of an absent table is empty.

        An object whose message is the same as in the last dump of that kind (an idle
        counter, most of them) comes back as the same object, unparsed; a counter of
        the layout this kernel sends is read by one pattern match, anything else by
        walking its attributes.
        """
        body = _str(NFTA_OBJ_TABLE, self.table)
        if kind is not None:
            code = NFT_OBJECT_COUNTER if kind == "counter" else NFT_OBJECT_LIMIT
            body += _attr(NFTA_OBJ_TYPE, struct.pack("!I", code))
        newobj = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWOBJ
        fast = self._counter_pattern.fullmatch
        for _attempt in range(DUMP_ATTEMPTS):
            seq = self._request(NFT_MSG_GETOBJ, NLM_F_DUMP, body)
            out: dict[str, NftObject] = {}
            last = self._last_dump.get(kind, {})
            now: dict[bytes, NftObject] = {}
            interrupted = False
            for mtype, mseq, msg in self._replies():
                if mseq != seq:
                    continue
                if mtype == newobj:
                    key = msg[20:]
                    obj = last.get(key)
                    if obj is None:
                        m = fast(key)
                        if m is not None:
                            name, handle, use, bytes_, packets = m.groups()
                            obj = NftObject(
                                name.decode(),
                                "counter",
                                int.from_bytes(handle, "big"),
                                int.from_bytes(use, "big"),
                                int.from_bytes(bytes_, "big"),
                                int.from_bytes(packets, "big"),
                            )
                        else:
                            obj = _parse_object(key)
                            if obj is None:
                                continue
                    now[key] = obj
                    out[obj.name] = obj
                elif mtype == NLMSG_DONE:
                    # a change of the table during the dump marks its end (and more)
                    interrupted = bool(struct.unpack_from("=H", msg, 6)[0] & NLM_F_DUMP_INTR)
                    break
                elif mtype == NLMSG_ERROR:
                    (err,) = struct.unpack_from("=i", msg, 16)
                    raise self.error(-err, f"nftables table {self.table} objects")
            if not interrupted:
                self._last_dump[kind] = now
                return out
        raise InboundError(f"nftables table {self.table}: object dump kept changing", errno.EINTR)

    def table_comment(self) -> str | None:
        """The table's comment (``None``: it has none); InboundError ENOENT if absent."""
        seq = self._request(NFT_MSG_GETTABLE, 0, _str(NFTA_TABLE_NAME, self.table))
        for mtype, mseq, msg in self._replies():
            if mseq != seq:
                continue
            if mtype == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", msg, 16)
                raise self.error(-err, f"nftables table {self.table}")
            if mtype == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE:
                raw = dict(_attrs(msg[20:])).get(NFTA_TABLE_USERDATA)
                return _parse_udata_comment(raw) if raw is not None else None
        raise AssertionError("unreachable: _replies never ends")  # pragma: no cover

    def transaction(self, groups: Sequence[tuple[Hashable, Sequence[Msg]]]) -> dict[Hashable, int]:
        """Send every group's messages in one transaction; ``{group key: errno}`` of the
        groups the kernel refused ({} : all committed).

        A refused message aborts the whole transaction, so when any group is refused
        the others are sent again, in a new transaction without the refused ones,
        until one commits or none is left: one bad group never stops the rest.
        """
        refused: dict[Hashable, int] = {}
        todo = [(key, msgs) for key, msgs in groups if msgs]
        while todo:
            failed = self._send_batch(todo)
            if not failed:
                break
            refused.update(failed)
            todo = [(key, msgs) for key, msgs in todo if key not in failed]
        return refused

    def _send_batch(self, groups: Sequence[tuple[Hashable, Sequence[Msg]]]) -> dict[Hashable, int]:
        begin = self._next()
        owner: dict[int, Hashable] = {}
        parts = [_batch(NFNL_MSG_BATCH_BEGIN, begin)]
        last = begin
        count = sum(len(msgs) for _key, msgs in groups)
        for key, msgs in groups:
            for kind, flags, body in msgs:
                last = self._next()
                owner[last] = key
                count -= 1
                ack = NLM_F_ACK if count == 0 else 0  # errors come back anyway
                parts.append(
                    _message(
                        (NFNL_SUBSYS_NFTABLES << 8) | kind, NLM_F_REQUEST | flags | ack, last, body
                    )
                )
        parts.append(_batch(NFNL_MSG_BATCH_END, self._next()))
        self.requests += 1
        self.messages_sent += len(owner)
        try:
            self._sock.sendall(b"".join(parts))
        except OSError as exc:
            raise self.error(exc.errno or errno.EIO, f"nftables table {self.table}") from None
        failed: dict[Hashable, int] = {}
        timeout = self._sock.gettimeout()
        try:
            for mtype, mseq, msg in self._iter_until_timeout():
                if mtype != NLMSG_ERROR or mseq not in owner:
                    continue
                (err,) = struct.unpack_from("=i", msg, 16)
                if err:
                    failed.setdefault(owner[mseq], -err)
                    # the batch is aborted: what else comes, comes at once
                    self._sock.settimeout(ERROR_WAIT_S)
                if mseq == last:
                    break
        finally:
            self._sock.settimeout(timeout)
        return failed

    def _iter_until_timeout(self) -> Iterator[tuple[int, int, bytes]]:
        """The replies until the walk is stopped, or, after an error shortened the
        socket's timeout, until nothing more comes.
        """
        replies = self._replies()
        while True:
            try:
                yield next(replies)
            except InboundError as exc:
                if exc.errno == errno.ETIMEDOUT and self._sock.gettimeout() == ERROR_WAIT_S:
                    return
                raise

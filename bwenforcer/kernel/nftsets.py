"""nf_tables map elements over raw nfnetlink: read and change ``{key: mark}`` maps, no nft.

The cgroup classifier's maps are keyed by cgroup id (a 64-bit number the nft
command cannot take: it only resolves paths, and listing such a map makes it
walk the whole cgroup tree, seconds per thousand elements). This module speaks
the few messages needed: a dump of one map's elements, and one batch (one
nf_tables transaction, all or nothing) that deletes and adds elements of any
number of maps. Keys and values are in host byte order, as nft stores them.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from bwenforcer.errors import ClassifierError, KernelError
from bwenforcer.kernel.channel import open_socket

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFT_MSG_NEWSETELEM = 12
NFT_MSG_GETSETELEM = 13
NFT_MSG_DELSETELEM = 14
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16
NFTA_GEN_ID = 1
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLA_F_NESTED = 0x8000
NFPROTO_INET = 1
SET_ELEM_LIST_TABLE = 1
SET_ELEM_LIST_SET = 2
SET_ELEM_LIST_ELEMENTS = 3
LIST_ELEM = 1
SET_ELEM_KEY = 1
SET_ELEM_DATA = 2
DATA_VALUE = 1
CHUNK_ELEMENTS = 256  # elements per message (a message must stay below 64 KiB)
TIMEOUT_S = 10.0
RECV_BYTES = 1 << 20


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _message(
    kind: int, flags: int, seq: int, body: bytes, *, family: int = NFPROTO_INET, res_id: int = 0
) -> bytes:
    payload = struct.pack("!BBH", family, 0, res_id) + body
    return struct.pack("=IHHII", 16 + len(payload), kind, flags, seq, 0) + payload


def _batch(kind: int, seq: int) -> bytes:
    # batch delimiters: family AF_UNSPEC, the subsystem as resource id
    return _message(kind, NLM_F_REQUEST, seq, b"", family=0, res_id=NFNL_SUBSYS_NFTABLES)


def _attrs(buf: bytes) -> Iterator[tuple[int, bytes]]:
    off = 0
    while off + 4 <= len(buf):
        length, kind = struct.unpack_from("=HH", buf, off)
        if length < 4:
            return
        yield kind & 0x3FFF, buf[off + 4 : off + length]
        off += (length + 3) & ~3


def _elements(items: Sequence[tuple[int, int | None]]) -> bytes:
    out = []
    for key, value in items:
        elem = _attr(SET_ELEM_KEY | NLA_F_NESTED, _attr(DATA_VALUE, struct.pack("=Q", key)))
        if value is not None:
            elem += _attr(SET_ELEM_DATA | NLA_F_NESTED, _attr(DATA_VALUE, struct.pack("=I", value)))
        out.append(_attr(LIST_ELEM | NLA_F_NESTED, elem))
    return b"".join(out)


def _parse_elements(body: bytes) -> Iterator[tuple[int, int | None]]:
    for kind, value in _attrs(body):
        if kind != SET_ELEM_LIST_ELEMENTS:
            continue
        for _kind, elem in _attrs(value):
            key: int | None = None
            data: int | None = None
            for ekind, evalue in _attrs(elem):
                inner = dict(_attrs(evalue))
                raw = inner.get(DATA_VALUE)
                if ekind == SET_ELEM_KEY and raw is not None and len(raw) == 8:
                    key = struct.unpack("=Q", raw)[0]
                elif ekind == SET_ELEM_DATA and raw is not None and len(raw) == 4:
                    data = struct.unpack("=I", raw)[0]
            if key is not None:
                yield key, data


@dataclass(frozen=True)
class MapChange:
    """One map's part of a transaction: ``delete`` keys (present ones), then ``add``."""

    map_name: str
    delete: tuple[int, ...] = ()
    add: Mapping[int, int | None] | None = None  # None values: a set (no data)

    def __bool__(self) -> bool:
        return bool(self.delete or self.add)


class NftMaps:
    """Element access to the maps of one ``inet`` table, over one netfilter socket."""

    # what a failure raises: the classifier's maps; kernel.nftobj's subclass has its own
    error_type: type[KernelError] = ClassifierError

    def __init__(self, table: str, netns: str | None = None) -> None:
        self.table = table
        try:
            self._sock = open_socket(netns, NETLINK_NETFILTER)
        except OSError as exc:
            raise self.error_type(
                f"netfilter netlink socket: {exc.strerror or exc}", exc.errno
            ) from None
        self._sock.settimeout(TIMEOUT_S)
        self._seq = int.from_bytes(os.urandom(3), "little")

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()

    def _next(self) -> int:
        self._seq = (self._seq + 1) & 0x7FFFFFFF
        return self._seq

    def _head(self, map_name: str) -> bytes:
        return _attr(SET_ELEM_LIST_TABLE, self.table.encode() + b"\0") + _attr(
            SET_ELEM_LIST_SET, map_name.encode() + b"\0"
        )

    def _recv(self) -> bytes:
        try:
            return self._sock.recv(RECV_BYTES)
        except TimeoutError:
            raise self.error_type(
                f"nftables table {self.table}: no answer in {self._sock.gettimeout()}s",
                errno.ETIMEDOUT,
            ) from None
        except OSError as exc:
            raise self.error_type(
                f"nftables table {self.table}: {exc.strerror or exc}", exc.errno
            ) from None

    def _replies(self) -> Iterator[tuple[int, int, bytes]]:
        """Every netlink message received from now on, as ``(type, seq, message)``,
        one recv at a time (a short or malformed header ends that recv's walk).
        """
        while True:
            data = self._recv()
            off = 0
            while off + 16 <= len(data):
                length, mtype, _flags, mseq, _pid = struct.unpack_from("=IHHII", data, off)
                if length < 16:
                    break
                yield mtype, mseq, data[off : off + length]
                off += (length + 3) & ~3

    def dump(self, map_name: str) -> dict[int, int | None]:
        """``{key: value}`` of every element; ClassifierError (ENOENT) if there is no map."""
        seq = self._next()
        kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM
        self._sock.send(_message(kind, NLM_F_REQUEST | NLM_F_DUMP, seq, self._head(map_name)))
        out: dict[int, int | None] = {}
        replies = self._replies()
        while True:
            mtype, mseq, msg = next(replies)
            if mseq != seq:
                continue
            if mtype == NLMSG_DONE:
                return out
            if mtype == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", msg, 16)
                raise MapMissing(f"nftables map {self.table}/{map_name}: {os.strerror(-err)}", -err)
            out.update(_parse_elements(msg[20:]))

    def generation(self) -> int:
        """The nf_tables generation id: one more for every committed transaction."""
        seq = self._next()
        kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN
        self._sock.send(_message(kind, NLM_F_REQUEST, seq, b"", family=0))
        replies = self._replies()
        while True:
            mtype, mseq, msg = next(replies)
            if mseq == seq and mtype == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN:
                attrs = dict(_attrs(msg[20:]))
                return int(struct.unpack("!I", attrs[NFTA_GEN_ID])[0])
            if mseq == seq and mtype == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", msg, 16)
                raise self.error_type(f"nftables generation: {os.strerror(-err)}", -err)

    def change(self, changes: Sequence[MapChange]) -> int:
        """Apply every change in one transaction (all or nothing); the messages sent.

        Delete only keys a dump showed: an absent key fails the whole batch
        (ENOENT), as does adding a present key with another value (EEXIST); a
        value is changed by deleting and adding the key in the same batch.
        """
        todo = [c for c in changes if c]
        if not todo:
            return 0
        msgs = [_batch(NFNL_MSG_BATCH_BEGIN, self._next())]
        waiting: set[int] = set()
        for change in todo:
            head = self._head(change.map_name)
            parts: tuple[tuple[int, list[tuple[int, int | None]], int], ...] = (
                (NFT_MSG_DELSETELEM, [(k, None) for k in change.delete], 0),
                (NFT_MSG_NEWSETELEM, list((change.add or {}).items()), NLM_F_CREATE),
            )
            for kind, items, flags in parts:
                for i in range(0, len(items), CHUNK_ELEMENTS):
                    seq = self._next()
                    waiting.add(seq)
                    body = head + _attr(
                        SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED,
                        _elements(items[i : i + CHUNK_ELEMENTS]),
                    )
                    msgs.append(
                        _message(
                            (NFNL_SUBSYS_NFTABLES << 8) | kind,
                            NLM_F_REQUEST | NLM_F_ACK | flags,
                            seq,
                            body,
                        )
                    )
        msgs.append(_batch(NFNL_MSG_BATCH_END, self._next()))
        try:
            self._sock.sendall(b"".join(msgs))
        except OSError as exc:
            raise ClassifierError(f"nftables table {self.table}: {exc.strerror or exc}") from None
        first_error = 0
        replies = self._replies()
        while waiting:
            mtype, mseq, msg = next(replies)
            if mtype == NLMSG_ERROR and mseq in waiting:
                (err,) = struct.unpack_from("=i", msg, 16)
                waiting.discard(mseq)
                if err and not first_error:
                    first_error = -err
        if first_error:
            raise ClassifierError(
                f"nftables table {self.table}: element batch refused: {os.strerror(first_error)}"
            )
        return len(msgs) - 2


class MapMissing(ClassifierError):
    """The map (or its table) is not there: the table needs loading."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.missing = code == errno.ENOENT

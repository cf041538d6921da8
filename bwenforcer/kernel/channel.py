"""The netlink channel to one device's traffic control: the socket and its requests.

One NETLINK_ROUTE socket, never subscribed to any multicast group (a subscribed
socket queues every class change and dies with ENOBUFS). It hands out sequence
numbers, counts the ``sendmsg`` calls, matches the kernel's ACKs and errors to
the messages that caused them, and looks up the device's interface index. What
the messages say is :mod:`bwenforcer.kernel.wire`'s business.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Iterable

from bwenforcer.errors import DeviceMissing, KernelError, NotPermitted
from bwenforcer.kernel import wire as w

NETLINK_ROUTE = 0
RECV_BYTES = 1 << 20
SOCKET_BUFFER_BYTES = 4 << 20
SEQ_MAX = 0xFFFFFFFF


def open_socket(netns: str | None, proto: int = NETLINK_ROUTE) -> socket.socket:
    """A netlink socket (``proto``, default NETLINK_ROUTE), in ``netns`` if given
    (never subscribed to any group).

    A socket in another namespace comes from pyroute2's namespace socket factory.
    In the current namespace a plain socket is enough, and sparing the pyroute2
    import keeps a cron ``sync`` fast (the import alone costs ~0.2 s here).
    """
    if netns is None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, proto)
    else:
        from pyroute2 import netns as pyroute2_netns

        sock = pyroute2_netns.create_socket(
            netns=netns,
            family=socket.AF_NETLINK,
            socket_type=socket.SOCK_DGRAM,
            proto=proto,
        )
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
    sock.bind((0, 0))
    return sock


class NetlinkChannel:
    """Requests to the kernel about device ``dev``, over one socket (in ``netns`` if given)."""

    def __init__(self, dev: str, netns: str | None = None) -> None:
        self.dev = dev
        self._sock = open_socket(netns)
        self._next_seq = 1
        self._buf = bytearray(RECV_BYTES)
        self._ifindex: int | None = None
        self.requests = 0  # sendmsg calls so far: one per request, or per chunk of a batch

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()

    def error(self, code: int, what: str) -> KernelError:
        """The specific error for the kernel's answer ``code`` (an errno) to ``what``."""
        if code == errno.EPERM:
            return NotPermitted(f"{what} on dev {self.dev}: needs root or CAP_NET_ADMIN", code)
        if code == errno.ENODEV:
            return DeviceMissing(f"device {self.dev!r} missing", code)
        return KernelError(f"{what} on dev {self.dev}: {os.strerror(code)}", code)

    def send(self, data: bytes) -> None:
        """Send ``data`` (one or many messages) in one ``sendmsg``."""
        self._sock.send(data)
        self.requests += 1

    def take_seqs(self, count: int) -> int:
        """Reserve ``count`` consecutive sequence numbers; return the first."""
        if self._next_seq + count > SEQ_MAX:
            self._next_seq = 1
        first = self._next_seq
        self._next_seq += count
        return first

    def _receive(self) -> Iterable[tuple[int, int, int, memoryview]]:
        size = self._sock.recv_into(self._buf)
        return w.split(memoryview(self._buf)[:size])

    def exchange(self, data: bytes, first_seq: int, last_seq: int) -> dict[int, int]:
        """Send messages ``first_seq..last_seq``, the last asking for an ACK.

        Returns ``{seq: errno}`` of the ones the kernel refused.
        """
        self.send(data)
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

    def request(self, build: Callable[[int], bytes], what: str, ok: Iterable[int] = ()) -> None:
        """Send one message (built with its sequence number) with an ACK; raise on an
        error other than those in ``ok``.
        """
        seq = self.take_seqs(1)
        code = self.exchange(build(seq), seq, seq).get(seq, 0)
        if code and code not in ok:
            raise self.error(code, what)

    def dump(self, build: Callable[[int], bytes], parse: Callable[[memoryview, int], int | None],
             what: str) -> None:  # fmt: skip
        """Send a dump request (built with its sequence number) and hand each buffer
        received to ``parse(buffer, seq)`` until it returns the dump's end: 0, or the
        errno raised here.
        """
        seq = self.take_seqs(1)
        self.send(build(seq))
        buf = self._buf
        view = memoryview(buf)
        recv_into = self._sock.recv_into
        status = None
        while status is None:
            status = parse(view[: recv_into(buf)], seq)
        if status:
            raise self.error(status, what)

    @property
    def ifindex(self) -> int:
        """The device's interface index (DeviceMissing if it does not exist)."""
        if not self.dev:
            raise DeviceMissing("no device set in the config")
        if self._ifindex is None:
            seq = self.take_seqs(1)
            self.send(w.link_request(seq, self.dev))
            while self._ifindex is None:
                for msg_type, _flags, msg_seq, msg in self._receive():
                    if msg_seq != seq:
                        continue
                    if msg_type == w.NLMSG_ERROR:
                        code = w.error_code(msg)
                        if code:
                            raise self.error(code, "link lookup")
                    else:
                        self._ifindex = w.ifindex_of(msg)
            self._drain_ack(seq)
        return self._ifindex

    def lookup_again(self) -> bool:
        """Look the device up by its name again (DeviceMissing if no device has it now);
        True if the name now belongs to another interface than the one looked up before
        (renamed away, or re-created).
        """
        before, self._ifindex = self._ifindex, None
        return before is not None and self.ifindex != before

    def _drain_ack(self, seq: int) -> None:
        # the ACK of the link request follows its answer; read it so it cannot be taken
        # for the answer of the next request
        while True:
            for msg_type, _flags, msg_seq, _msg in self._receive():
                if msg_type == w.NLMSG_ERROR and msg_seq == seq:
                    return

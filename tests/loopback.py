"""Loopback test peers shared by several test modules: a free port, an SMTP sink."""

from __future__ import annotations

import asyncio
import socket
import threading
from dataclasses import dataclass, field
from typing import AnyStr

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Sink:
    """aiosmtpd handler that keeps every envelope and refuses chosen recipients."""

    refuse: set[str] = field(default_factory=set)
    envelopes: list[tuple[str, list[str], bytes]] = field(default_factory=list)

    async def handle_RCPT(
        self, server: object, session: object, envelope: object, address: str, options: list
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)  # type: ignore[attr-defined]
        return "250 OK"

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.envelopes.append(
            (envelope.mail_from, list(envelope.rcpt_tos), envelope.content)  # type: ignore[attr-defined]
        )
        return "250 OK"


class Stall:
    """A TCP server on loopback that accepts connections and never says a word.

    ``accepted`` counts the connections made to it; :meth:`close` ends them all.
    With ``greeting``, it sends that first and then falls silent.
    """

    def __init__(self, port: int, greeting: bytes = b"") -> None:
        self._greeting = greeting
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self.port = port
        self._listener.listen(16)
        self._listener.settimeout(0.1)  # the accept loop looks at the stop flag this often
        self._stop = threading.Event()
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def accepted(self) -> int:
        """Connections accepted so far."""
        return len(self.connections)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _addr = self._listener.accept()
            except TimeoutError:
                continue
            self.connections.append(conn)
            if self._greeting:
                conn.sendall(self._greeting)

    def close(self) -> None:
        """Stop accepting, close the listener and every connection."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for conn in self.connections:
            conn.close()


class DripSMTP(SMTP):
    """aiosmtpd's SMTP server that sends each reply one byte a second, for at most
    ``max_drip_s`` seconds a reply (then the rest at once): a test against it is
    bounded in time whatever the client does.
    """

    max_drip_s = 40

    async def push(self, status: AnyStr) -> None:
        """Send ``status`` and CRLF, dripping."""
        data = (status.encode("ascii") if isinstance(status, str) else status) + b"\r\n"
        writer = self._writer
        for i, byte in enumerate(data):
            if i >= self.max_drip_s:
                writer.write(data[i:])
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(1)
        await writer.drain()


class DripController(Controller):
    """A loopback SMTP server (aiosmtpd) whose replies drip one byte a second."""

    def factory(self) -> SMTP:
        """The dripping server."""
        return DripSMTP(self.handler, **self.SMTP_kwargs)

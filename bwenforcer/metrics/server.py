"""The /metrics HTTP endpoint: one thread with a selector, whatever the clients do.

Debian 12's prometheus-client (0.16) ``start_http_server`` returns nothing to
shut down and spends a thread per connection, so the endpoint is our own: GET
and HEAD of /metrics, non-blocking sockets, bounded connections, requests and
idle time. The page is ``exposition.exposition`` of the metrics at each scrape.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable

from bwenforcer.errors import MetricsListenError
from bwenforcer.metrics.collector import AgentMetrics
from bwenforcer.metrics.exposition import exposition

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SERVE_TIMEOUT_S = 10.0  # a connection silent this long is closed
MAX_CONNECTIONS = 64  # open at once; a new one closes the longest idle
MAX_REQUEST_BYTES = 8192  # request line and headers; a scrape sends about 300


class _Connection:
    """One client: what it sent so far, what is left to send, when it times out."""

    __slots__ = ("deadline_s", "inbox", "outbox", "sent", "sock")

    def __init__(self, sock: socket.socket, deadline_s: float) -> None:
        self.sock = sock
        self.deadline_s = deadline_s
        self.inbox = b""
        self.outbox = memoryview(b"")
        self.sent = 0


def _response(status: str, body: bytes, head: bool, extra: str = "") -> memoryview:
    header = (
        f"HTTP/1.1 {status}\r\nContent-Type: {CONTENT_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    ).encode()
    return memoryview(header if head else header + body)


def _reply(request: bytes, page: Callable[[], bytes | None]) -> memoryview:
    """The whole response to one request (its line and headers); every connection closes.

    ``page`` makes the metrics page; None when that failed (500).
    """
    parts = request.split(b"\n", 1)[0].split()
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
        return _response("400 Bad Request", b"bad request\n", head=False)
    method, target = parts[0], parts[1]
    head = method == b"HEAD"
    if method not in (b"GET", b"HEAD"):
        return _response("405 Method Not Allowed", b"GET or HEAD\n", False, "Allow: GET, HEAD\r\n")
    if target.split(b"?", 1)[0] != b"/metrics":
        return _response("404 Not Found", b"only /metrics is served\n", head)
    body = page()
    if body is None:
        return _response("500 Internal Server Error", b"metrics page failed: see the log\n", head)
    return _response("200 OK", body, head)


class _Server:
    """/metrics over HTTP on one thread: non-blocking sockets and a selector.

    No client costs a thread: a connection silent for ``timeout_s`` is closed, at
    most ``max_connections`` are open (a new one closes the longest idle, so idle
    connections cannot lock out a scrape), a request is at most MAX_REQUEST_BYTES
    and every response ends its connection.
    """

    def __init__(
        self,
        listener: socket.socket,
        metrics: AgentMetrics,
        timeout_s: float,
        max_connections: int,
    ) -> None:
        self.listener = listener
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.connections: dict[socket.socket, _Connection] = {}
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = socket.socketpair()
        self.stopping = False
        self.page_error: str | None = None  # the last failure to make the page, logged once
        listener.setblocking(False)
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)

    def run(self) -> None:
        """Serve until :meth:`stop`; then close every socket."""
        try:
            while not self.stopping:
                self.turn()
        finally:
            for conn in list(self.connections.values()):
                self.close(conn)
            self.selector.close()
            self.wake_r.close()
            self.listener.close()

    def stop(self) -> None:
        """Make :meth:`run` return (from another thread)."""
        self.stopping = True
        with contextlib.suppress(BlockingIOError):  # its buffer is full: awake already
            self.wake_w.send(b"x")

    def turn(self) -> None:
        now_s = time.monotonic()
        timeout_s = min((c.deadline_s for c in self.connections.values()), default=None)
        wait_s = None if timeout_s is None else max(0.0, timeout_s - now_s)
        for key, events in self.selector.select(wait_s):
            if key.fileobj is self.listener:
                self.accept()
            elif key.fileobj is self.wake_r:
                self.wake_r.recv(64)
            elif key.data.sock in self.connections:  # not closed earlier in this turn
                conn = key.data
                try:
                    if events & selectors.EVENT_WRITE:
                        self.write(conn)
                    else:
                        self.read(conn)
                except OSError as exc:
                    log.debug("metrics: connection dropped: %s", exc)
                    self.close(conn)
        now_s = time.monotonic()
        for conn in [c for c in self.connections.values() if c.deadline_s <= now_s]:
            self.close(conn)

    def accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: retried on the next turn
                log.warning("metrics: cannot accept a connection: %s", exc)
                return
            if len(self.connections) >= self.max_connections:
                self.close(min(self.connections.values(), key=lambda c: c.deadline_s))
            sock.setblocking(False)
            conn = _Connection(sock, time.monotonic() + self.timeout_s)
            self.connections[sock] = conn
            self.selector.register(sock, selectors.EVENT_READ, conn)

    def read(self, conn: _Connection) -> None:
        data = conn.sock.recv(4096)
        if not data:
            self.close(conn)
            return
        conn.inbox += data
        conn.deadline_s = time.monotonic() + self.timeout_s
        end = conn.inbox.find(b"\r\n\r\n")
        if end < 0:
            end = conn.inbox.find(b"\n\n")
        if end < 0 and len(conn.inbox) <= MAX_REQUEST_BYTES:
            return
        if end < 0:
            conn.outbox = _response("431 Request Header Fields Too Large", b"too long\n", False)
        else:
            conn.outbox = _reply(conn.inbox[:end], self.page)
        conn.inbox = b""
        self.selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        self.write(conn)

    def page(self) -> bytes | None:
        """The metrics page; None if making it raised (logged once per distinct error).

        A bug in making the page must not end the endpoint's one thread: the
        scrape gets a 500 and the next one tries again.
        """
        try:
            body = exposition(self.metrics).encode()
        except Exception as exc:  # any bug: answered 500, the thread lives on
            problem = f"{type(exc).__name__}: {exc}"
            if problem != self.page_error:
                log.exception("metrics: cannot make the /metrics page (answered 500): %s", exc)
            self.page_error = problem
            return None
        self.page_error = None
        return body

    def write(self, conn: _Connection) -> None:
        sent = conn.sock.send(conn.outbox[conn.sent : conn.sent + 2**18])
        conn.sent += sent
        conn.deadline_s = time.monotonic() + self.timeout_s
        if conn.sent >= len(conn.outbox):
            conn.sock.shutdown(socket.SHUT_WR)
            self.close(conn)

    def close(self, conn: _Connection) -> None:
        self.connections.pop(conn.sock, None)
        self.selector.unregister(conn.sock)
        conn.sock.close()


def _listen(listen: str) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv6 as ``[::1]:port``)."""
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]")
    try:
        if not port_text.isdigit():
            raise ValueError(f"port {port_text!r} is not a number")
        port = int(port_text)
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise MetricsListenError(f"metrics: cannot listen on {listen}: {reason}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart over TIME_WAIT
        sock.bind(address)
        sock.listen(MAX_CONNECTIONS)
    except OSError as exc:
        sock.close()
        raise MetricsListenError(
            f"metrics: cannot listen on {listen}: {exc.strerror or exc}"
        ) from exc
    return sock


def serve(
    listen: str,
    metrics: AgentMetrics,
    timeout_s: float = SERVE_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
) -> Callable[[], None]:
    """Serve /metrics on ``host:port`` (IPv6 as ``[::1]:port``); return its stop function.

    GET and HEAD of /metrics only (other methods 405, other paths 404), on one thread
    whatever the clients do (see :class:`_Server`). Raises MetricsListenError (one
    line naming the address) when the address cannot be listened on.
    """
    server = _Server(_listen(listen), metrics, timeout_s, max_connections)
    thread = threading.Thread(target=server.run, name="bwenforcer-metrics", daemon=True)
    thread.start()

    def stop() -> None:
        server.stop()
        thread.join(timeout=5)
        server.wake_w.close()

    return stop

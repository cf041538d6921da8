"""Mail transports: SMTP, the local sendmail, a spool directory, a webhook, or none.

Every failure becomes one :class:`~bwenforcer.errors.DeliveryError` line naming
the transport, its target and the reason; the cycle counts it and retries next
cycle. The configured timeout is the time of a whole cycle's mail
(:class:`MailBudget`): every wait of every message comes out of it, and once it
is spent the messages left wait for the next cycle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import smtplib
import ssl
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any, NoReturn, Protocol

from bwenforcer.core.settings import MailConfig
from bwenforcer.errors import (
    ConfigError,
    DeliveryError,
    DeliveryUncertain,
    MailDeadline,
    UnsafePath,
)
from bwenforcer.files.atomic import fsync_dir, make_dir, write_temp
from bwenforcer.files.tools import tool_path
from bwenforcer.mail.notice import slice_tag

log = logging.getLogger(__name__)


class MailBudget:
    """The time one cycle may spend on all its mail, shared by every message it sends.

    It starts at the first :meth:`remaining_s`. A wait that timed out spent it: it
    was given all that was left, and a server that stalled one message would stall
    the next.
    """

    def __init__(self, total_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.total_s = total_s
        self._clock = clock
        self._end_s: float | None = None
        self.spent = False

    def remaining_s(self) -> float:
        """Seconds left; raise MailDeadline once none are."""
        now_s = self._clock()
        if self._end_s is None:
            self._end_s = now_s + self.total_s
        left_s = self._end_s - now_s
        if self.spent or left_s <= 0:
            self.spent = True
            raise MailDeadline(f"the cycle's mail time ({self.total_s:g}s) is spent")
        return left_s


def cycle_budget(mail: MailConfig, clock: Callable[[], float] = time.monotonic) -> MailBudget:
    """A cycle's time for mail: the configured transport timeout."""
    return MailBudget(_timeout_s(mail), clock)


# Called by a transport at its point of no return, to make the notice's mark durable
# (store/outbox.py); an exception from it stops the sending.
Commit = Callable[[], None]


class Transport(Protocol):
    """Delivers one message or raises DeliveryError."""

    def send(
        self, msg: EmailMessage, budget: MailBudget | None = None, commit: Commit | None = None
    ) -> None:
        """Deliver ``msg`` within ``budget`` (default: the timeout for this message alone);
        raise DeliveryError (transport, target, reason) if it cannot, MailDeadline
        without trying once the budget is spent.

        ``commit`` is called once, right before the step after which the message may
        be delivered (SMTP: the end of DATA; spool: the link into the directory;
        sendmail: its start) or, for the webhook, once the receiver took it. A
        DeliveryError after it means not delivered, but DeliveryUncertain: perhaps.
        """
        ...


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _decode(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _timed_out(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError | subprocess.TimeoutExpired) or (
        # smtplib reports a read timeout as a disconnect
        isinstance(exc, smtplib.SMTPServerDisconnected)
        and isinstance(exc.__context__, TimeoutError)
    )


def _reason(exc: BaseException, timeout_s: int) -> str:
    """What went wrong, in one line."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refused = ", ".join(
            f"{rcpt} ({code} {_decode(text)})" for rcpt, (code, text) in exc.recipients.items()
        )
        return _one_line(f"all recipients refused: {refused or 'none given'}")
    if isinstance(exc, smtplib.SMTPResponseException):
        return _one_line(f"{exc.smtp_code} {_decode(exc.smtp_error)}")
    if _timed_out(exc):
        return f"timed out after {timeout_s}s"
    return _one_line(str(exc)) or type(exc).__name__


def _timeout_s(mail: MailConfig) -> int:
    # 0 would make smtplib's socket non-blocking, not "no wait"
    return max(1, mail.webhook_timeout_s if mail.transport == "webhook" else mail.smtp_timeout_s)


def _failed(
    transport: str, target: str, msg: EmailMessage, reason: str, uncertain: bool = False
) -> NoReturn:
    log.warning(
        "mail failed via %s %s: %s (to %s, subject %r)%s",
        transport,
        target,
        reason,
        msg["To"],
        msg["Subject"],
        "; perhaps delivered: not sent again" if uncertain else "",
    )
    error = DeliveryUncertain if uncertain else DeliveryError
    raise error(f"{transport} {target}: {reason}")


def _delivered(transport: str, target: str, msg: EmailMessage) -> None:
    log.info("mail delivered via %s %s to %s: %s", transport, target, msg["To"], msg["Subject"])


class _BudgetedReader:
    """The replies of an SMTP session, read from its socket with every wait bounded by
    what is left of the budget (smtplib's own file would wait a whole timeout per
    byte: a server dripping one byte a second never times out).
    """

    def __init__(self, client: _BudgetedSMTP) -> None:
        self._client = client
        self._buffer = bytearray()

    def readline(self, limit: int = -1) -> bytes:
        """One line (up to ``limit`` bytes), as ``BufferedReader.readline``; b"" at EOF."""
        while True:
            end = self._buffer.find(b"\n") + 1
            if end == 0 and 0 <= limit <= len(self._buffer):
                end = limit
            if end:
                if limit >= 0:
                    end = min(end, limit)
                line = bytes(self._buffer[:end])
                del self._buffer[:end]
                return line
            sock = self._client.sock
            if sock is None:
                return b""
            self._client.bound()
            chunk = sock.recv(4096)
            if not chunk:
                line = bytes(self._buffer)
                self._buffer.clear()
                return line
            self._buffer += chunk

    def close(self) -> None:
        """Forget what was read (smtplib closes its file with the connection)."""
        self._buffer.clear()


class _BudgetedSMTP(smtplib.SMTP):
    """An SMTP client whose every wait (connect, each read of a reply, each send) gets
    what is left of the budget, so a slow server cannot stretch the conversation past it.
    """

    def __init__(
        self, host: str, port: int, budget: MailBudget, commit: Commit | None = None
    ) -> None:
        self._budget = budget
        self._commit = commit
        self.uncertain = False  # the end of DATA sent, and no reply to it
        super().__init__(host, port, timeout=budget.remaining_s())

    def data(self, msg: Any) -> tuple[int, bytes]:
        """smtplib's DATA, with the commit between the message and its final dot: a
        connection lost before the dot is a message the server drops (RFC 5321 4.1.1.4),
        so a notice whose mark is written is one the server may have, and one whose
        mark is not is one it cannot have.
        """
        self.putcmd("data")
        code, reply = self.getreply()
        if code != 354:
            raise smtplib.SMTPDataError(code, reply)
        if isinstance(msg, str):
            msg = smtplib._fix_eols(msg).encode("ascii")  # type: ignore[attr-defined]
        q = smtplib._quote_periods(msg)  # type: ignore[attr-defined]
        if q[-2:] != smtplib.bCRLF:
            q += smtplib.bCRLF
        self.send(q)
        if self._commit is not None:
            self._commit()
        self.send(b"." + smtplib.bCRLF)
        try:
            return self.getreply()
        except (smtplib.SMTPServerDisconnected, OSError):
            self.uncertain = True
            raise

    def bound(self) -> None:
        """Give the socket's next wait what is left of the budget; TimeoutError if none."""
        if self.sock is not None:
            try:
                self.sock.settimeout(self._budget.remaining_s())
            except MailDeadline:
                raise TimeoutError("mail time spent") from None

    def send(self, s: str | bytes) -> None:
        """Send, waiting no longer than the budget allows."""
        self.bound()
        super().send(s)

    def getreply(self) -> tuple[int, bytes]:
        """Read a reply, every read waiting no longer than the budget allows."""
        if self.file is None:
            self.file = _BudgetedReader(self)  # type: ignore[assignment]
        return super().getreply()


class SmtpTransport:
    """SMTP with optional STARTTLS (certificate checked) and login."""

    def __init__(self, mail: MailConfig) -> None:
        self.mail = mail
        self.target = f"{mail.smtp_host}:{mail.smtp_port}"
        self.timeout_s = _timeout_s(mail)

    def send(
        self, msg: EmailMessage, budget: MailBudget | None = None, commit: Commit | None = None
    ) -> None:
        """Deliver over SMTP within ``budget``; ``commit`` before the end of DATA."""
        mail = self.mail
        budget = budget or MailBudget(self.timeout_s)
        try:
            client = _BudgetedSMTP(mail.smtp_host, mail.smtp_port, budget, commit)
        except (smtplib.SMTPException, OSError) as exc:
            budget.spent = budget.spent or _timed_out(exc)
            _failed("smtp", self.target, msg, _reason(exc, self.timeout_s))
        try:
            if mail.smtp_starttls:
                client.starttls(context=ssl.create_default_context())
            if mail.smtp_user:
                client.login(mail.smtp_user, mail.smtp_password or "")
            refused = client.send_message(msg)
        except (smtplib.SMTPException, OSError) as exc:
            client.close()
            budget.spent = budget.spent or _timed_out(exc)
            reason = _reason(exc, self.timeout_s)
            if client.uncertain:
                _failed("smtp", self.target, msg, f"no reply to the end of DATA: {reason}", True)
            _failed("smtp", self.target, msg, reason)
        except BaseException:
            client.close()
            raise
        # The server has the message: a failing QUIT must not make it a failure
        # (that would mail the slice again next cycle).
        try:
            client.quit()
        except (smtplib.SMTPException, OSError) as exc:
            log.debug("smtp %s: QUIT failed after delivery: %s", self.target, exc)
            client.close()
        for rcpt, (code, text) in refused.items():
            log.warning("smtp %s refused %s: %s %s", self.target, rcpt, code, _decode(text))
        _delivered("smtp", self.target, msg)


class SendmailTransport:
    """The local MTA: ``sendmail -t -oi`` with the message on stdin."""

    def __init__(self, mail: MailConfig) -> None:
        self.mail = mail
        self.timeout_s = _timeout_s(mail)

    def send(
        self, msg: EmailMessage, budget: MailBudget | None = None, commit: Commit | None = None
    ) -> None:
        """Deliver through sendmail within ``budget``; ``commit`` before it starts."""
        path = self.mail.sendmail_path
        budget = budget or MailBudget(self.timeout_s)
        try:
            timeout_s = budget.remaining_s()
            program = tool_path(path)
            if commit is not None:
                commit()
            proc = subprocess.run(
                [program, "-t", "-oi"],
                input=msg.as_bytes(policy=SMTP.clone(linesep="\n")),
                capture_output=True,
                timeout=timeout_s,
                check=False,
            )
        except FileNotFoundError:
            _failed("sendmail", path, msg, "not found")
        except (OSError, subprocess.TimeoutExpired) as exc:
            budget.spent = budget.spent or _timed_out(exc)
            timed_out = isinstance(exc, subprocess.TimeoutExpired)
            _failed("sendmail", path, msg, _reason(exc, self.timeout_s), timed_out)
        if proc.returncode != 0:
            lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            said = _one_line(lines[0]) if lines else "no message"
            status = (
                f"killed by signal {-proc.returncode}"
                if proc.returncode < 0
                else f"exit {proc.returncode}"
            )
            _failed("sendmail", path, msg, f"{status}: {said}")
        _delivered("sendmail", path, msg)


class SpoolTransport:
    """Complete ``.eml`` files (CRLF line ends, as on the wire) written atomically.

    A spool directory others could write is refused (each mail fails, one line).
    """

    def __init__(self, mail: MailConfig) -> None:
        self.directory = Path(mail.spool_dir)

    def _name(self, msg: EmailMessage) -> str:
        # from the Message-ID alone: a notice's is the same in every cycle, so the spool
        # holds one file per notice, whatever tried to send it again
        ident = str(msg.get("Message-ID", "")) or msg.as_string()
        digest = hashlib.sha256(ident.encode("utf-8", "replace")).hexdigest()[:16]
        return f"{slice_tag(msg) or 'mail'}-{digest}.eml"

    def send(
        self, msg: EmailMessage, budget: MailBudget | None = None, commit: Commit | None = None
    ) -> None:
        """Write the message into the spool directory (none once ``budget`` is spent);
        ``commit`` before it is linked in. A file of its name already there is this
        notice, delivered before.
        """
        if budget is not None:
            budget.remaining_s()
        target = str(self.directory)
        try:
            make_dir(target, "spool directory")
            final = self.directory / self._name(msg)
            # A reader of the spool sees a whole file or none: write aside (a new file,
            # never through a symlink), then link it in (a regular file of the name is
            # this notice, already there; anything else there is replaced, never followed).
            tmp = write_temp(str(self.directory / ".tmp"), msg.as_bytes(policy=SMTP))
            try:
                if commit is not None:
                    commit()
                try:
                    os.link(tmp, final, follow_symlinks=False)
                except FileExistsError:
                    if not stat.S_ISREG(os.lstat(final).st_mode):
                        os.replace(tmp, final)  # a symlink planted there: replaced, not followed
                    else:
                        log.info("spool %s: already there (sent before)", final)
            finally:
                Path(tmp).unlink(missing_ok=True)
            fsync_dir(target)
        except UnsafePath as exc:
            _failed("spool", target, msg, str(exc))
        except OSError as exc:
            _failed("spool", target, msg, exc.strerror or _reason(exc, 0))
        _delivered("spool", str(final), msg)


class NoTransport:
    """Mail is off."""

    def send(
        self, msg: EmailMessage, budget: MailBudget | None = None, commit: Commit | None = None
    ) -> None:
        """Drop the message."""
        del budget, commit
        log.debug("mail off (transport none): not sending %r to %s", msg["Subject"], msg["To"])


class DryRunTransport:
    """Logs the whole message instead of sending it."""

    def __init__(self, transport: str) -> None:
        self.transport = transport

    def send(
        self, msg: EmailMessage, budget: MailBudget | None = None, commit: Commit | None = None
    ) -> None:
        """Log the message at INFO."""
        del budget, commit
        log.info(
            "dry-run: would mail via %s to %s:\n%s", self.transport, msg["To"], msg.as_string()
        )


def make_transport(mail: MailConfig, dry_run: bool = False) -> Transport:
    """The transport ``mail.transport`` names; with ``dry_run``, one that only logs."""
    transports: dict[str, type[SmtpTransport | SendmailTransport | SpoolTransport]] = {
        "smtp": SmtpTransport,
        "sendmail": SendmailTransport,
        "spool": SpoolTransport,
    }
    if mail.transport not in ("none", "webhook") and mail.transport not in transports:
        raise ConfigError(
            f"mail.transport: {mail.transport!r} is not one of smtp, sendmail, spool, webhook, none"
        )
    if dry_run:
        return DryRunTransport(mail.transport)
    if mail.transport == "none":
        return NoTransport()
    if mail.transport == "webhook":
        return WebhookTransport(mail)
    return transports[mail.transport](mail)


# --- the webhook -------------------------------------------------------------------------
#
# Each notice as an HTTP POST of a JSON document. Its time comes out of the cycle's
# mail budget like every other transport's; a failure (no answer, a status other than
# 2xx, a redirect) is one DeliveryError line and the notice is retried next cycle, like
# a mail. The document carries the message's Message-ID (also as the Idempotency-Key
# header): a notice retried after a failure that had in fact reached the receiver is
# recognisable.

MAX_REPLY_BYTES = 64 * 1024  # read of the reply, so a connection is not left half read


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is a failure: following it would turn the POST into a GET elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def notice_document(msg: EmailMessage) -> dict[str, Any]:
    """The JSON document posted for a notice message."""
    body = msg.get_body(("plain",))
    return {
        "slice": slice_tag(msg),
        "message_id": str(msg.get("Message-ID", "")),
        "date": str(msg.get("Date", "")),
        "from": str(msg.get("From", "")),
        "to": [a.strip() for a in str(msg.get("To", "")).split(",") if a.strip()],
        "subject": str(msg.get("Subject", "")),
        # which notice: threshold (capped), share (past a share of the budget), lifted
        "kind": str(msg.get("X-Bwenforcer-Notice", "threshold")),
        "share": str(msg.get("X-Bwenforcer-Share", "")) or None,
        "body": "" if body is None else body.get_content(),  # type: ignore[attr-defined]
    }


class WebhookTransport:
    """POSTs each notice to ``mail.webhook.url``."""

    def __init__(self, mail: MailConfig) -> None:
        if not mail.webhook_url:
            raise ValueError("mail.webhook.url is not set")  # the config refuses it first
        self.url = mail.webhook_url
        self.timeout_s = _timeout_s(mail)
        self._opener = urllib.request.build_opener(_NoRedirect)

    def send(
        self, msg: EmailMessage, budget: MailBudget | None = None, commit: Commit | None = None
    ) -> None:
        """POST the notice within ``budget``; DeliveryError unless the reply is 2xx, then
        ``commit``: a notice posted again (a cycle killed before its mark was written)
        carries the same Idempotency-Key, for the receiver to drop.
        """
        budget = budget or MailBudget(self.timeout_s)
        doc = notice_document(msg)
        request = urllib.request.Request(
            self.url,
            data=json.dumps(doc).encode(),
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": doc["message_id"],
                "User-Agent": "bwenforcer",
            },
            method="POST",
        )
        try:
            with self._opener.open(request, timeout=budget.remaining_s()) as reply:
                reply.read(MAX_REPLY_BYTES)
                status = reply.status
        except urllib.error.HTTPError as exc:
            exc.close()
            _failed("webhook", self.url, msg, _one_line(f"HTTP {exc.code} {exc.reason}"))
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, TimeoutError):
                budget.spent = True
                _failed("webhook", self.url, msg, f"timed out after {self.timeout_s}s")
            _failed("webhook", self.url, msg, _one_line(str(reason)) or type(exc).__name__)
        if not 200 <= status < 300:
            _failed("webhook", self.url, msg, f"HTTP {status}")
        if commit is not None:
            commit()
        _delivered("webhook", self.url, msg)

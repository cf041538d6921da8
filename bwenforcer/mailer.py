"""Mail transports: SMTP, the local sendmail, a spool directory, or none.

Every failure becomes one :class:`~bwenforcer.errors.DeliveryError` line; the
cycle logs it, counts it and retries next cycle. Nothing waits longer than the
configured timeout.
"""

from __future__ import annotations

import logging
import os
import smtplib
import ssl
import subprocess
import tempfile
import time
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Protocol

from .config import MailConfig
from .errors import DeliveryError

log = logging.getLogger(__name__)


class Transport(Protocol):
    """Delivers one message or raises DeliveryError."""

    def send(self, msg: EmailMessage) -> None:
        """Deliver ``msg``."""
        ...


class SmtpTransport:
    """SMTP with optional STARTTLS and login."""

    def __init__(self, mail: MailConfig) -> None:
        self.mail = mail

    def send(self, msg: EmailMessage) -> None:
        """Deliver over SMTP."""
        target = f"smtp {self.mail.smtp_host}:{self.mail.smtp_port}"
        try:
            with smtplib.SMTP(
                self.mail.smtp_host, self.mail.smtp_port, timeout=self.mail.smtp_timeout_s
            ) as smtp:
                if self.mail.smtp_starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.mail.smtp_user:
                    smtp.login(self.mail.smtp_user, self.mail.smtp_password or "")
                smtp.send_message(msg)
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"{target}: {exc or type(exc).__name__}") from None
        log.info("mail to %s via %s: %s", msg["To"], target, msg["Subject"])


class SendmailTransport:
    """The local MTA: ``sendmail -t -oi`` with the message on stdin."""

    def __init__(self, mail: MailConfig) -> None:
        self.mail = mail

    def send(self, msg: EmailMessage) -> None:
        """Deliver through sendmail."""
        path = self.mail.sendmail_path
        try:
            proc = subprocess.run(
                [path, "-t", "-oi"],
                input=msg.as_bytes(policy=SMTP),
                capture_output=True,
                timeout=self.mail.smtp_timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DeliveryError(f"sendmail {path}: {exc}") from None
        if proc.returncode != 0:
            first = (proc.stderr.decode(errors="replace").strip().splitlines() or [""])[0]
            raise DeliveryError(f"sendmail {path}: exit {proc.returncode}: {first}")
        log.info("mail to %s via sendmail: %s", msg["To"], msg["Subject"])


class SpoolTransport:
    """Complete ``.eml`` files in a directory, written atomically."""

    def __init__(self, mail: MailConfig) -> None:
        self.directory = Path(mail.spool_dir)

    def send(self, msg: EmailMessage) -> None:
        """Write the message into the spool directory."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            ident = (msg["Message-ID"] or "").strip("<>").split("@")[0].replace("/", "_")
            final = self.directory / f"{stamp}-{ident}.eml"
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".eml")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(msg.as_bytes(policy=SMTP))
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, final)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise DeliveryError(f"spool {self.directory}: {exc.strerror or exc}") from None
        log.info("mail to %s spooled as %s", msg["To"], final.name)


class NoTransport:
    """Mail is off."""

    def send(self, msg: EmailMessage) -> None:
        """Drop the message."""
        log.debug("mail off: not sending %s", msg["Subject"])


class DryRunTransport:
    """Logs the message instead of sending it."""

    def send(self, msg: EmailMessage) -> None:
        """Log the whole message."""
        log.info("dry-run: would mail:\n%s", msg.as_string())


def make_transport(mail: MailConfig, dry_run: bool = False) -> Transport:
    """The transport the config selects."""
    if dry_run:
        return DryRunTransport()
    transports: dict[str, type] = {
        "smtp": SmtpTransport,
        "sendmail": SendmailTransport,
        "spool": SpoolTransport,
    }
    if mail.transport in transports:
        return transports[mail.transport](mail)
    return NoTransport()

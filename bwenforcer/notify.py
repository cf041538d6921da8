"""Cap notices as e-mail messages (DESIGN.md "Notification").

Built with :class:`email.message.EmailMessage`, so no slice name or value can
add a header: names with control characters are refused, and every header
value goes through the email package's folding and encoding.
"""

from __future__ import annotations

import datetime as dt
import re
import string
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from importlib import resources
from pathlib import Path

from .config import MailConfig
from .errors import ConfigError, SliceError
from .layout import DEFAULT_XID, ROOT_XID
from .units import human_rate, human_size

CLASS_MARKER = "%%class%%"
MESSAGE_FIELDS = frozenset(
    {"slice", "xid", "hostname", "period_start", "period_end", "period_end_human", "classes"}
)
CLASS_FIELDS = frozenset(
    {"traffic_class", "used", "limit", "threshold", "ceil", "max_rate", "until", "until_human"}
)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
_SLICE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # what may stand in a mail address


@dataclass(frozen=True)
class CappedClass:
    """One capped traffic class, as the notice reports it."""

    traffic_class: str
    used_bytes: int
    limit_bytes: int
    threshold_bytes: int
    ceil_bps: int
    max_rate_bps: int


@dataclass(frozen=True)
class Notice:
    """What one mail tells a slice."""

    slice_name: str
    xid: int
    period_start_s: int
    period_end_s: int
    classes: tuple[CappedClass, ...]


def _check_text(what: str, value: str) -> str:
    if _UNSAFE.search(value):
        raise SliceError(f"{what} {value!r} contains control characters; not mailed")
    return value


def _placeholders(template: str) -> set[str]:
    found = set()
    for match in string.Template.pattern.finditer(template):
        name = match.group("named") or match.group("braced")
        if name:
            found.add(name)
    return found


def _strip_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("#")) + "\n"


def load_template(mail: MailConfig) -> str:
    """The body template: ``mail.template`` or the packaged default, checked."""
    if mail.template:
        try:
            raw = Path(mail.template).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"{mail.template}: cannot read mail template: {exc.strerror}"
            ) from None
        where = mail.template
    else:
        raw = resources.files("bwenforcer").joinpath("templates/notice.txt").read_text("utf-8")
        where = "packaged notice template"
    text = _strip_comments(raw)
    body, _, block = text.partition(CLASS_MARKER + "\n")
    unknown = (_placeholders(body) - MESSAGE_FIELDS) | (_placeholders(block) - CLASS_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown placeholder ${sorted(unknown)[0]}")
    return text


def recipients(notice: Notice, mail: MailConfig) -> list[str]:
    """The operators, plus the slice's alias (none for the root and default slices)."""
    found = list(mail.operators)
    if mail.slice_address and notice.xid not in (ROOT_XID, DEFAULT_XID):
        found.append(mail.slice_address.format(slice=notice.slice_name))
    return found


def _utc(ts: int) -> tuple[str, str]:
    when = dt.datetime.fromtimestamp(ts, dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ"), when.strftime("%a %d %b %Y %H:%M UTC")


def render_body(notice: Notice, hostname: str, template: str) -> str:
    """The plain-text body for a notice."""
    body, _, block = template.partition(CLASS_MARKER + "\n")
    until, until_human = _utc(notice.period_end_s)
    blocks = [
        string.Template(block).substitute(
            traffic_class=c.traffic_class.capitalize(),
            used=human_size(c.used_bytes),
            limit=human_size(c.limit_bytes),
            threshold=human_size(c.threshold_bytes),
            ceil=human_rate(c.ceil_bps),
            max_rate=human_rate(c.max_rate_bps),
            until=until,
            until_human=until_human,
        )
        for c in notice.classes
    ]
    return string.Template(body).substitute(
        slice=notice.slice_name,
        xid=notice.xid,
        hostname=hostname,
        period_start=_utc(notice.period_start_s)[0],
        period_end=until,
        period_end_human=until_human,
        classes="\n".join(blocks),
    )


def build_message(
    notice: Notice, mail: MailConfig, hostname: str, now_s: int, template: str | None = None
) -> EmailMessage:
    """The complete message for a notice."""
    _check_text("slice name", notice.slice_name)
    if not _SLICE_NAME.match(notice.slice_name):
        raise SliceError(f"slice name {notice.slice_name!r} cannot stand in a mail address")
    _check_text("hostname", hostname)
    msg = EmailMessage()
    local, _, domain = mail.from_addr.partition("@")
    msg["From"] = Address(mail.from_name, local, domain)
    msg["To"] = ", ".join(recipients(notice, mail))
    msg["Reply-To"] = mail.reply_to or mail.from_addr
    msg["Date"] = format_datetime(dt.datetime.fromtimestamp(now_s, dt.UTC))
    msg["Message-ID"] = make_msgid("bwenforcer", domain=hostname)
    classes = " and ".join(c.traffic_class for c in notice.classes)
    msg["Subject"] = f"bwenforcer: slice {notice.slice_name} capped on {hostname} ({classes})"
    msg.set_content(render_body(notice, hostname, template or load_template(mail)))
    return msg

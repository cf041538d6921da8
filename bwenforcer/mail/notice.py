"""Cap notices as e-mail messages (docs/architecture.md "Slice lifecycle").

Built with :class:`email.message.EmailMessage`, so no slice name or value can
add a header: text with control (or other non-printable) characters is refused,
every address is parsed and checked before it reaches a header, and every header
value goes through the email package's folding and encoding.

The body comes from a :class:`string.Template` file: the part above its
``%%class%%`` line is the message, the part below is repeated once per capped
class and stands in for ``$classes``.
"""

from __future__ import annotations

import datetime as dt
import re
import string
from dataclasses import dataclass
from email.errors import MessageError
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from bwenforcer.core.layout import DEFAULT_XID, ROOT_XID
from bwenforcer.core.notices import format_share_bp
from bwenforcer.core.settings import MailConfig
from bwenforcer.core.units import human_rate, human_size
from bwenforcer.errors import ConfigError, Error, SliceError
from bwenforcer.inputs.template import (
    check_template,
    load_template,
    split_template,
    template_for,
)

# RFC 1123 labels (underscores tolerated: some container hosts use them).
_HOSTNAME = re.compile(
    r"^(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$"
)
# A slice name that can also tag the Message-ID (and so the spool file name).
_MSGID_TAG = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MAX_LINE = 998  # RFC 5322 2.1.1, without the CRLF
_NAMED_ADDRESS = re.compile(r"^\s*(.*?)\s*<([^<>]*)>\s*$")


@dataclass(frozen=True)
class CappedClass:
    """One capped traffic class, as the notice reports it."""

    traffic_class: str  # "default" | "exempt"
    used_bytes: int  # since the period start
    limit_bytes: int
    threshold_bytes: int
    ceil_bps: int  # the new ceil
    max_rate_bps: int  # the normal ceil


@dataclass(frozen=True)
class Notice:
    """What one mail tells a slice: the classes capped this period (one or two)."""

    slice_name: str
    xid: int
    period_start_s: int
    period_end_s: int
    classes: tuple[CappedClass, ...]
    unit: str | None = None  # a cgroup tenant's unit (user-1000.slice, nginx.service)
    kind: str = "threshold"  # core.notices.NoticeKind: threshold, share, lifted
    share_bp: int = 0  # kind share: the share of the limit passed
    # core.notices.notice_id: the same in every cycle (Message-ID, spool file name,
    # webhook Idempotency-Key); None: a fresh Message-ID
    notice_id: str | None = None


def _printable(what: str, value: str, error: type[Error] = SliceError) -> str:
    # isprintable() is False for C0/C1 controls and for U+2028/U+2029, which some
    # mail readers also take for line breaks.
    if not value.isprintable():
        raise error(
            f"{what} {value!r} contains control characters (or other non-printable ones);"
            " not mailed"
        )
    return value


def _check_hostname(hostname: str) -> str:
    _printable("hostname", hostname)
    if not _HOSTNAME.match(hostname):
        raise ConfigError(f"mail.hostname: {hostname!r} is not a DNS host name (set mail.hostname)")
    return hostname.rstrip(".")


def _address(text: str, where: str, display_name: str = "") -> Address:
    """``text`` (``user@host`` or ``Name <user@host>``) as a checked Address."""
    named = _NAMED_ADDRESS.match(text)
    if named:
        display_name, text = named.group(1).strip('"'), named.group(2)
    _printable(where, display_name, ConfigError)
    try:
        return Address(display_name=display_name, addr_spec=text.strip())
    except (ValueError, MessageError) as exc:
        problem = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"{where}: {text!r} is not a mail address: {problem}") from None


def _slice_alias(notice: Notice, mail: MailConfig) -> Address | None:
    if mail.slice_address is None or notice.xid in (ROOT_XID, DEFAULT_XID):
        return None
    try:
        alias = mail.slice_address.format(slice=notice.slice_name)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"mail.slice_address: {mail.slice_address!r} cannot be filled in:"
            f" {type(exc).__name__} {exc}"
        ) from None
    try:
        return _address(alias, "mail.slice_address")
    except ConfigError as exc:
        raise SliceError(f"slice {notice.slice_name!r}: no alias: {exc}") from None


def _recipient_addresses(notice: Notice, mail: MailConfig) -> list[Address]:
    _printable("slice name", notice.slice_name)
    found = [_address(text, "mail.operators") for text in mail.operators]
    alias = _slice_alias(notice, mail)
    if alias is not None:
        found.append(alias)
    return found


def recipients(notice: Notice, mail: MailConfig) -> list[str]:
    """The operators, plus the slice's alias (none for the root and default slices).

    Raises ConfigError for an operator that is not a mail address, SliceError for a
    slice name that gives no valid alias.
    """
    return [str(address) for address in _recipient_addresses(notice, mail)]


def _utc(ts: int) -> tuple[str, str]:
    """ISO 8601 and a human form of an instant, both in UTC."""
    when = dt.datetime.fromtimestamp(ts, dt.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ"), when.strftime("%a %d %b %Y %H:%M UTC")


def used_up_s(c: CappedClass, now_s: int, end_s: int) -> int:
    """When the class's budget left is used up sending at its ceil from ``now_s``, or
    ``end_s`` if it lasts the period (the ceil paces it: what the policy aims for).

    The ceil is the budget left spread over the time left, but never below the
    class's floor (its min rate): at the floor, the budget runs out early.
    """
    left_bits = max(0, c.limit_bytes - c.used_bytes) * 8
    if c.ceil_bps <= 0:
        return end_s
    # 8 bit/s of slack: the rates are whole bytes per second
    if max(0, c.ceil_bps - 8) * max(0, end_s - now_s) <= left_bits:
        return end_s
    return min(end_s, now_s + left_bits // c.ceil_bps)


def _advice(c: CappedClass, now_s: int, end_s: int) -> str:
    """What the class can actually do until the period ends, in one sentence."""
    ceil, until_human = human_rate(c.ceil_bps), _utc(end_s)[1]
    if c.used_bytes >= c.limit_bytes:
        return f"The budget is used up: the class stays limited to {ceil} until {until_human}."
    out_s = used_up_s(c, now_s, end_s)
    if out_s >= end_s:
        return f"To stay within the budget, keep to {ceil} on average."
    return (
        f"{ceil} is the lowest limit this class gets: sending at it, the budget left is"
        f" used up by {_utc(out_s)[1]}, and the limit stays {ceil} until {until_human}."
    )


def render_body(notice: Notice, hostname: str, template: str, now_s: int) -> str:
    """The plain-text body of a notice from a checked template, as of ``now_s``: the
    template's section for the notice's kind (``%%notice share%%``), else its first.
    """
    body, block = split_template(template_for(template, notice.kind))
    until, until_human = _utc(notice.period_end_s)
    blocks = []
    for c in notice.classes:
        used_up, used_up_human = _utc(used_up_s(c, now_s, notice.period_end_s))
        blocks.append(
            string.Template(block or "").substitute(
                traffic_class=c.traffic_class.capitalize(),
                used=human_size(c.used_bytes),
                limit=human_size(c.limit_bytes),
                threshold=human_size(c.threshold_bytes),
                remaining=human_size(max(0, c.limit_bytes - c.used_bytes)),
                ceil=human_rate(c.ceil_bps),
                max_rate=human_rate(c.max_rate_bps),
                until=until,
                until_human=until_human,
                used_up=used_up,
                used_up_human=used_up_human,
                advice=_advice(c, now_s, notice.period_end_s),
                used_share=_percent(c.used_bytes, c.limit_bytes),
            )
        )
    return string.Template(body).substitute(
        slice=notice.slice_name,
        unit=notice.unit or notice.slice_name,
        xid=notice.xid,
        hostname=hostname,
        period_start=_utc(notice.period_start_s)[0],
        period_end=until,
        period_end_human=until_human,
        classes="\n".join(blocks),
        kind=notice.kind,
        share=format_share_bp(notice.share_bp) if notice.share_bp else "",
    )


def _percent(used_bytes: int, limit_bytes: int) -> str:
    """The share of the limit used, e.g. ``81%`` (whole percent, rounded down)."""
    if limit_bytes <= 0:
        return "100%"
    return f"{used_bytes * 100 // limit_bytes}%"


def build_message(
    notice: Notice, mail: MailConfig, hostname: str, now_s: int, template: str | None = None
) -> EmailMessage:
    """The complete notice mail, dated ``now_s``.

    ``template`` is a text from :func:`load_template` (default: loaded here).
    Raises SliceError for a slice name or hostname with control characters or a
    slice name that gives no valid alias, ConfigError for a bad address, hostname or
    template, or when there is nobody to mail.
    """
    name = _printable("slice name", notice.slice_name)
    host = _check_hostname(hostname)
    sender = _address(
        mail.from_addr, "mail.from", _printable("mail.from_name", mail.from_name, ConfigError)
    )
    reply_to = (
        _address(mail.reply_to, "mail.reply_to")
        if mail.reply_to
        else Address(addr_spec=sender.addr_spec)
    )
    to = _recipient_addresses(notice, mail)
    if not to:
        raise ConfigError(
            f"mail: nobody to tell that slice {name} is capped"
            " (no mail.operators and no slice alias)"
        )
    text = template if template is not None else load_template(mail)
    check_template(text, mail.template or "mail template")

    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Reply-To"] = reply_to
    msg["Date"] = format_datetime(dt.datetime.fromtimestamp(now_s, dt.UTC))
    tag = name if _MSGID_TAG.match(name) else None
    if notice.notice_id is not None:
        # the same in every cycle: a receiver tells a notice sent again by it
        msg["Message-ID"] = f"<{notice.notice_id}{f'.{tag}' if tag else ''}@{host}>"
    else:
        msg["Message-ID"] = make_msgid(idstring=tag, domain=host)
    classes = " and ".join(c.traffic_class for c in notice.classes)
    unit = f" ({_printable('unit', notice.unit)})" if notice.unit else ""
    msg["Subject"] = f"bwenforcer: slice {name}{unit} {_what(notice)} on {host}" + (
        f" ({classes})" if classes else ""
    )
    msg["X-Bwenforcer-Notice"] = notice.kind
    if notice.kind == "share":
        msg["X-Bwenforcer-Share"] = format_share_bp(notice.share_bp)
    body = render_body(notice, host, text, now_s)
    # Plain 7bit reads best in a spool file or a terminal; anything else is quoted-
    # printable, so no 8-bit data or over-long line meets a relay that cannot take it.
    plain = body.isascii() and all(len(line) <= _MAX_LINE for line in body.splitlines())
    msg.set_content(body, cte="7bit" if plain else "quoted-printable")
    return msg


def _what(notice: Notice) -> str:
    """What happened, as the subject says it."""
    if notice.kind == "share":
        return f"passed {format_share_bp(notice.share_bp)} of its budget"
    if notice.kind == "lifted":
        return "no longer limited"
    return "capped"


# make_msgid's <time.pid.random.TAG@host>, or a notice's <bwn.START.XID.WHAT.CLASSES.TAG@host>
_TAGGED_ID = re.compile(
    r"^<(?:\d+\.\d+\.\d+|bwn\.\d+\.\d+\.[a-z0-9]+\.[a-z-]+)\.([A-Za-z0-9_-]{1,64})@"
)


def slice_tag(msg: EmailMessage) -> str | None:
    """The slice name a notice's Message-ID carries, if any (for spool file names)."""
    match = _TAGGED_ID.match(str(msg.get("Message-ID", "")).strip())
    return match.group(1) if match else None

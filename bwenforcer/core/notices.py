"""Early notices: which notices a class gets, and the marks that say one was sent.

A class's policy names its notices (``ClassPolicy.notices``, canonical text such as
``"50%,80%,lifted"``; "" = the threshold notice alone, as ever):

- ``threshold``: the class is capped (its rule reached); always on, once a period;
- ``share``: the class's usage passed a share of its limit (grants counted as for
  the rules); the highest share passed is told, and the shares below it with it;
- ``lifted``: a cap in force was lifted (the period ended, a grant, a reset, a new
  policy); at most once a period.

Each is sent at most once per period and class: the state keeps, per class, the
threshold flag (``notified``), the highest share told (``notice_bp``) and the lift
(``lift``: "" none, "due" to tell, "sent"). A notice's :class:`Mark` names it for
the outbox journal (store/outbox.py): written before the transport's point of no
return, honoured by the next cycle's plan (docs/architecture.md "Notices").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from bwenforcer.core.layout import TrafficClass

NoticeKind = Literal["threshold", "share", "lifted"]
NOTICE_KINDS: tuple[NoticeKind, ...] = ("threshold", "share", "lifted")
MAX_NOTICE_SHARES = 8
MAX_NOTICE_SHARE_BP = 100_000  # 1000 % of the limit, as tiers
LIFT_STATES = ("", "due", "sent")
_SHARE = re.compile(r"^\s*(\d{1,4})(?:\.(\d{1,2}))?\s*%\s*$")


def parse_notices(text: str) -> tuple[tuple[int, ...], bool]:
    """``(shares in basis points, rising; lifted)`` from ``"50%, 80%, 100%, lifted"``
    ("" = none). ValueError, one line, if bad.
    """
    if len(text) > 256:
        raise ValueError("notices: longer than 256 characters")
    shares: list[int] = []
    lifted = False
    for n, item in enumerate(text.split(",") if text.strip() else ()):
        word = item.strip()
        if word == "lifted":
            if lifted:
                raise ValueError("notices: 'lifted' given twice")
            lifted = True
            continue
        match = _SHARE.match(word)
        if not match:
            raise ValueError(f"notice {n + 1}: {word!r} is not a share such as 80% or 'lifted'")
        share_bp = int(match.group(1)) * 100 + int((match.group(2) or "0").ljust(2, "0"))
        if not 0 < share_bp <= MAX_NOTICE_SHARE_BP:
            raise ValueError(f"notice {n + 1}: {word!r} is not above 0% and at most 1000%")
        if shares and share_bp <= shares[-1]:
            raise ValueError(f"notice {n + 1}: shares must rise ({word})")
        shares.append(share_bp)
        if len(shares) > MAX_NOTICE_SHARES:
            raise ValueError(f"notices: more than {MAX_NOTICE_SHARES} shares")
    return tuple(shares), lifted


def format_share_bp(share_bp: int) -> str:
    """A share in basis points as written in the config: ``80%``, ``87.5%``."""
    whole, part = divmod(share_bp, 100)
    return f"{whole}%" if not part else f"{whole}.{part:02d}".rstrip("0") + "%"


def notices_text(shares: tuple[int, ...], lifted: bool) -> str:
    """The canonical text of a class's notices (what the state file keeps)."""
    return ",".join([*(format_share_bp(s) for s in shares), *(["lifted"] if lifted else [])])


@dataclass(frozen=True, slots=True)
class NoticeRule:
    """A policy's notices worked out for its limit: each share's bytes, rising."""

    shares: tuple[tuple[int, int], ...]  # (bytes where it is passed, share in bp)
    lifted: bool

    def passed_bp(self, counted_bytes: int) -> int:
        """The highest share passed at ``counted_bytes`` (0: none)."""
        found = 0
        for start_bytes, share_bp in self.shares:
            if counted_bytes < start_bytes:
                break
            found = share_bp
        return found

    def next_bytes(self, told_bp: int) -> int | None:
        """The usage at which the next share above ``told_bp`` is passed (None: none)."""
        for start_bytes, share_bp in self.shares:
            if share_bp > told_bp:
                return start_bytes
        return None


NO_NOTICES = NoticeRule((), False)


def notice_rule(notices: str, limit_bytes: int) -> NoticeRule:
    """The notices of a policy (its canonical text, checked where it came from)."""
    if not notices:
        return NO_NOTICES
    shares, lifted = parse_notices(notices)
    return NoticeRule(tuple((limit_bytes * s // 10_000, s) for s in shares), lifted)


@dataclass(frozen=True, slots=True)
class Mark:
    """One notice of one class as sent: the outbox journal's record, the id's parts."""

    period_start_s: int
    xid: int
    traffic_class: TrafficClass
    kind: NoticeKind
    share_bp: int = 0  # kind share: the share told

    def line(self) -> str:
        """The journal's text of the mark (no newline)."""
        return f"{self.period_start_s} {self.xid} {self.traffic_class} {self.kind} {self.share_bp}"

    @classmethod
    def parse(cls, text: str) -> Mark | None:
        """A mark from its :meth:`line`, or None if the text is not one."""
        parts = text.split(" ")
        if len(parts) != 5 or parts[2] not in ("default", "exempt") or parts[3] not in NOTICE_KINDS:
            return None
        start, xid, share = parts[0], parts[1], parts[4]
        if not (start.isdigit() and xid.isdigit() and share.isdigit()):
            return None
        if len(start) > 12 or len(xid) > 6 or len(share) > 6:
            return None
        return cls(int(start), int(xid), parts[2], parts[3], int(share))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Sent:
    """What the outbox says was sent for one class in one period."""

    threshold: bool = False
    share_bp: int = 0
    lifted: bool = False


# (xid, traffic class, period start) -> what was sent
SentMarks = Mapping[tuple[int, TrafficClass, int], Sent]


def sent_marks(marks: Iterable[Mark]) -> dict[tuple[int, TrafficClass, int], Sent]:
    """The marks of the outbox folded per class and period."""
    out: dict[tuple[int, TrafficClass, int], Sent] = {}
    for m in marks:
        key = (m.xid, m.traffic_class, m.period_start_s)
        was = out.get(key, Sent())
        if m.kind == "threshold":
            out[key] = Sent(True, was.share_bp, was.lifted)
        elif m.kind == "share":
            out[key] = Sent(was.threshold, max(was.share_bp, m.share_bp), was.lifted)
        else:
            out[key] = Sent(was.threshold, was.share_bp, True)
    return out


def notice_id(marks: tuple[Mark, ...]) -> str:
    """The id of a notice (the part before ``@`` of its Message-ID): the same for the same
    notice in every cycle, so a receiver can tell a repeat (spool file name, webhook
    Idempotency-Key). Only ``[A-Za-z0-9.-]``.
    """
    first = marks[0]
    classes = "-".join(m.traffic_class for m in marks)
    what = f"{first.kind}{first.share_bp}" if first.kind == "share" else first.kind
    return f"bwn.{first.period_start_s}.{first.xid}.{what}.{classes}"

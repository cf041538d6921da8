"""The notice mail's body template: read, comments stripped, placeholders checked.

The body comes from a :class:`string.Template` file: the part above its
``%%class%%`` line is the message, the part below is repeated once per capped
class and stands in for ``$classes``. It is checked when the config is loaded
(an unknown placeholder would fail every mail), so it is an input, read here,
and rendered by :mod:`bwenforcer.mail.notice`.
"""

from __future__ import annotations

import re
import string
from importlib import resources
from pathlib import Path

from bwenforcer.core.settings import MailConfig
from bwenforcer.errors import ConfigError

CLASS_MARKER = "%%class%%"
MESSAGE_FIELDS = frozenset(
    {
        "slice",
        "unit",
        "xid",
        "hostname",
        "period_start",
        "period_end",
        "period_end_human",
        "classes",
        "kind",
        "share",
    }
)
CLASS_FIELDS = frozenset(
    {
        "traffic_class",
        "used",
        "limit",
        "threshold",
        "remaining",
        "ceil",
        "max_rate",
        "until",
        "until_human",
        "used_up",
        "used_up_human",
        "advice",
        "used_share",
    }
)
# A line "%%notice share%%" or "%%notice lifted%%" starts the template of that kind of
# notice; the part before the first such line is the threshold notice's, and every
# kind without a section of its own's.
KIND_MARKER = re.compile(r"^%%notice (threshold|share|lifted)%%\n", re.M)
PACKAGED_TEMPLATE = "templates/notice.txt"


def _placeholders(text: str, where: str) -> set[str]:
    found = set()
    for match in string.Template.pattern.finditer(text):
        if match.group("invalid") is not None:
            start = match.start()
            snippet = text[start : start + 12].split("\n", 1)[0]
            raise ConfigError(
                f"{where}: invalid placeholder at {snippet!r} (write $$ for a dollar sign)"
            )
        name = match.group("named") or match.group("braced")
        if name:
            found.add(name)
    return found


def split_template(template: str) -> tuple[str, str | None]:
    """The message part and the per-class block (None without a ``%%class%%`` marker)."""
    body, marker, block = template.partition(CLASS_MARKER)
    if not marker:
        return template, None
    return body, block.removeprefix("\n")


def _sections(template: str) -> dict[str, str]:
    """The template of each kind that has a section (``""``: the first part)."""
    parts = KIND_MARKER.split(template)
    sections = {"": parts[0]}
    for kind, text in zip(parts[1::2], parts[2::2], strict=True):
        sections[kind] = text
    return sections


def template_for(template: str, kind: str) -> str:
    """The part of ``template`` for a notice of ``kind`` (core.notices.NoticeKind)."""
    sections = _sections(template)
    return sections.get(kind, sections[""])


def check_template(template: str, where: str) -> None:
    """Raise ConfigError naming ``where`` if the template would not render."""
    sections = _sections(template)
    for kind, section in sections.items():
        _check_section(section, f"{where} (%%notice {kind}%%)" if kind else where)


def _check_section(template: str, where: str) -> None:
    body, block = split_template(template)
    in_body = _placeholders(body, where)
    in_block = _placeholders(block or "", where)
    unknown_body = sorted(in_body - MESSAGE_FIELDS)
    if unknown_body:
        name = unknown_body[0]
        hint = f" (per-class placeholders go below the {CLASS_MARKER} line)"
        raise ConfigError(
            f"{where}: unknown placeholder ${name}{hint if name in CLASS_FIELDS else ''}"
        )
    unknown_block = sorted(in_block - CLASS_FIELDS)
    if unknown_block:
        raise ConfigError(f"{where}: unknown placeholder ${unknown_block[0]} in the class block")
    if "classes" in in_body and block is None:
        raise ConfigError(f"{where}: uses $classes but has no {CLASS_MARKER} line")


def _strip_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("#")) + "\n"


def load_template(mail: MailConfig) -> str:
    """The body template, comments stripped: ``mail.template`` or the packaged default.

    Raises ConfigError naming the file if it is unreadable or would not render.
    """
    if mail.template:
        where = mail.template
        try:
            raw = Path(mail.template).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read mail template: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{where}: mail template is not UTF-8 text") from None
    else:
        where = f"bwenforcer/{PACKAGED_TEMPLATE}"
        raw = resources.files("bwenforcer").joinpath(PACKAGED_TEMPLATE).read_text("utf-8")
    text = _strip_comments(raw)
    check_template(text, where)
    return text

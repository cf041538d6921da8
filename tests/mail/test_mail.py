"""Notices as mail: message, injection safety, and every transport against real receivers."""

from __future__ import annotations

import email
import email.policy
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from hypothesis import given
from hypothesis import strategies as st

from bwenforcer.core.settings import MailConfig
from bwenforcer.errors import ConfigError, DeliveryError, SliceError
from bwenforcer.inputs.template import load_template
from bwenforcer.mail.notice import CappedClass, Notice, build_message, recipients
from bwenforcer.mail.transport import make_transport
from tests.loopback import Sink, free_port

NOTICE = Notice(
    "pl_heavy",
    1234,
    1_763_769_600,
    1_763_856_000,
    (
        CappedClass("default", 4_500_000_000, 5_000_000_000, 4_000_000_000, 2_000_000, 100_000_000),
        CappedClass(
            "exempt", 9_000_000_000, 10_000_000_000, 8_000_000_000, 5_000_000, 1_000_000_000
        ),
    ),
)
MAIL = MailConfig(
    transport="smtp",
    from_addr="support@example.org",
    from_name="Node support",
    operators=("ops@example.org",),
    slice_address="{slice}@slices.example.org",
    smtp_host="127.0.0.1",
    smtp_timeout_s=3,
)


def parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def test_message_headers_and_body() -> None:
    msg = parse(build_message(NOTICE, MAIL, "node1.example.org", 1_763_800_000).as_bytes())
    assert msg["From"] == "Node support <support@example.org>"
    assert msg["To"] == "ops@example.org, pl_heavy@slices.example.org"
    assert msg["Reply-To"] == "support@example.org"
    assert "pl_heavy" in msg["Subject"] and "node1.example.org" in msg["Subject"]
    assert msg["Message-ID"].endswith("@node1.example.org>")
    assert msg["Date"]
    body = msg.get_content()
    assert "Default traffic" in body and "Exempt traffic" in body
    assert "4.19GiB" in body and "2Mbit/s" in body and "5Mbit/s" in body
    assert "2025-11-23T00:00:00Z" in body or "T" in body
    assert "Sun 23 Nov 2025 00:00 UTC" in body


def test_no_slice_alias_for_root_and_default_slices() -> None:
    for xid in (0, 0xFFF):
        assert recipients(Notice("root", xid, 0, 1, ()), MAIL) == ["ops@example.org"]


@pytest.mark.parametrize(
    "evil", ["pl_x\r\nBcc: evil@example.com", "pl_x\nX-Injected: 1", "pl\x00x"]
)
def test_header_injection_through_the_slice_name_is_refused(evil: str) -> None:
    with pytest.raises(SliceError, match="control characters"):
        build_message(Notice(evil, 5, 0, 1, NOTICE.classes), MAIL, "node1", 0)


def test_header_injection_through_the_hostname_is_refused() -> None:
    with pytest.raises(SliceError):
        build_message(NOTICE, MAIL, "node1\r\nBcc: evil@example.com", 0)


@given(st.text(min_size=1, max_size=40))
def test_any_printable_name_stays_inside_its_headers(name: str) -> None:
    notice = Notice(name, 5, 0, 1, NOTICE.classes)
    try:
        raw = build_message(notice, MAIL, "node1.example.org", 0).as_bytes()
    except SliceError:
        return
    msg = parse(raw)
    assert set(msg.keys()) == {
        "From",
        "To",
        "Reply-To",
        "Date",
        "Message-ID",
        "Subject",
        "Content-Type",
        "Content-Transfer-Encoding",
        "MIME-Version",
    }
    assert msg.get_all("Bcc") is None


def test_custom_template_and_unknown_placeholder(tmp_path: Path) -> None:
    tpl = tmp_path / "n.txt"
    tpl.write_text(
        "# comment\nHello $slice on $hostname\n$classes%%class%%\n* $traffic_class at $ceil\n"
    )
    mail = MailConfig(template=str(tpl), operators=("o@x.org",))
    body = build_message(NOTICE, mail, "h.example", 0).get_content()
    assert body.startswith("Hello pl_heavy on h.example") and "* Default at 2Mbit/s" in body
    tpl.write_text("Hello $slyce\n")
    with pytest.raises(ConfigError, match=r"n.txt: unknown placeholder \$slyce"):
        load_template(mail)


@pytest.fixture
def smtp() -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


def test_smtp_delivers_once(smtp: tuple[Sink, int]) -> None:
    sink, port = smtp
    mail = MailConfig(**{**MAIL.__dict__, "smtp_port": port})
    make_transport(mail).send(build_message(NOTICE, mail, "node1.example.org", 0))
    assert len(sink.envelopes) == 1
    _, rcpts, raw = sink.envelopes[0]
    assert rcpts == ["ops@example.org", "pl_heavy@slices.example.org"]
    assert str(parse(raw)["Subject"]).strip().startswith("bwenforcer: slice pl_heavy capped")


def test_smtp_down_fails_fast_with_one_line() -> None:
    mail = MailConfig(**{**MAIL.__dict__, "smtp_port": free_port(), "smtp_timeout_s": 2})
    with pytest.raises(DeliveryError, match=r"smtp 127.0.0.1:\d+") as info:
        make_transport(mail).send(build_message(NOTICE, mail, "n", 0))
    assert "\n" not in str(info.value)


def test_starttls_against_a_server_without_it_is_a_delivery_error(smtp: tuple[Sink, int]) -> None:
    _, port = smtp
    mail = MailConfig(**{**MAIL.__dict__, "smtp_port": port, "smtp_starttls": True})
    with pytest.raises(DeliveryError, match="STARTTLS"):
        make_transport(mail).send(build_message(NOTICE, mail, "n", 0))


def test_sendmail_gets_t_oi_and_the_message(tmp_path: Path) -> None:
    fake = tmp_path / "sendmail"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/argv\ncat > {tmp_path}/stdin\n')
    fake.chmod(0o755)
    mail = MailConfig(**{**MAIL.__dict__, "transport": "sendmail", "sendmail_path": str(fake)})
    make_transport(mail).send(build_message(NOTICE, mail, "n.example", 0))
    assert (tmp_path / "argv").read_text().strip() == "-t -oi"
    assert (
        parse((tmp_path / "stdin").read_bytes())["To"]
        == "ops@example.org, pl_heavy@slices.example.org"
    )
    fake.write_text("#!/bin/sh\necho 'queue full' >&2\nexit 1\n")
    with pytest.raises(DeliveryError, match="exit 1: queue full"):
        make_transport(mail).send(build_message(NOTICE, mail, "n.example", 0))


def test_spool_writes_complete_files_atomically(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    mail = MailConfig(**{**MAIL.__dict__, "transport": "spool", "spool_dir": str(spool)})
    make_transport(mail).send(build_message(NOTICE, mail, "n.example", 0))
    files = list(spool.iterdir())
    assert len(files) == 1 and files[0].suffix == ".eml"
    assert parse(files[0].read_bytes()).get_content().count("traffic:") == 2
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700


def test_dry_run_logs_instead_of_sending(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    with caplog.at_level(logging.INFO):
        make_transport(MAIL, dry_run=True).send(build_message(NOTICE, MAIL, "n.example", 0))
    assert "dry-run: would mail" in caplog.text and "pl_heavy" in caplog.text

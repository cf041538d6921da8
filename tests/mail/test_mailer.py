"""Mail transports against real receivers: SMTP on loopback, a sendmail script, a spool."""

from __future__ import annotations

import email
import email.policy
import logging
import shutil
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from bwenforcer.core.settings import MailConfig
from bwenforcer.errors import ConfigError, DeliveryError, MailDeadline
from bwenforcer.mail.notice import CappedClass, Notice, build_message
from bwenforcer.mail.transport import MailBudget, make_transport
from tests.loopback import DripController, Sink, Stall, free_port

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
    reply_to="noc@example.org",
    operators=("ops@example.org",),
    slice_address="{slice}@slices.example.org",
    smtp_host="127.0.0.1",
    smtp_timeout_s=2,
)
RCPTS = ["ops@example.org", "pl_heavy@slices.example.org"]
COMPARED = ("From", "To", "Reply-To", "Subject", "Date", "Message-ID")


def message() -> EmailMessage:
    return build_message(NOTICE, MAIL, "node1.example.org", 1_763_800_000)


def parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)  # type: ignore[return-value]


def assert_same_message(raw: bytes, sent: EmailMessage) -> None:
    back = parse(raw)
    for name in COMPARED:
        assert str(back[name]).strip() == str(sent[name]).strip(), name
    assert back.get_all("Bcc") is None
    body = back.get_content()
    assert "Default traffic:" in body and "Exempt traffic:" in body
    assert "4.19GiB" in body and "2Mbit/s" in body  # default class
    assert "8.38GiB" in body and "5Mbit/s" in body  # exempt class


@pytest.fixture
def server() -> Iterator[tuple[Sink, MailConfig]]:
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, replace(MAIL, smtp_port=port)
    finally:
        controller.stop()


def test_smtp_delivers_the_message_once(
    server: tuple[Sink, MailConfig], caplog: pytest.LogCaptureFixture
) -> None:
    sink, mail = server
    sent = message()
    with caplog.at_level(logging.INFO, logger="bwenforcer.mail.transport"):
        make_transport(mail).send(sent)
    assert len(sink.envelopes) == 1
    mail_from, rcpts, raw = sink.envelopes[0]
    assert mail_from == "support@example.org"
    assert rcpts == RCPTS
    assert_same_message(raw, sent)
    delivered = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(delivered) == 1
    line = delivered[0].getMessage()
    assert f"via smtp 127.0.0.1:{mail.smtp_port}" in line
    assert "pl_heavy@slices.example.org" in line and "slice pl_heavy" in line


def test_smtp_partly_refused_is_delivered_with_a_warning(
    server: tuple[Sink, MailConfig], caplog: pytest.LogCaptureFixture
) -> None:
    sink, mail = server
    sink.refuse = {"pl_heavy@slices.example.org"}
    with caplog.at_level(logging.INFO, logger="bwenforcer.mail.transport"):
        make_transport(mail).send(message())
    assert [rcpts for _, rcpts, _ in sink.envelopes] == [["ops@example.org"]]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "refused pl_heavy@slices.example.org: 550" in warnings[0]


def test_smtp_all_refused_is_a_delivery_error(server: tuple[Sink, MailConfig]) -> None:
    sink, mail = server
    sink.refuse = set(RCPTS)
    with pytest.raises(DeliveryError, match=r"all recipients refused: ops@example\.org \(550"):
        make_transport(mail).send(message())
    assert sink.envelopes == []


def test_smtp_server_stopped_is_a_one_line_delivery_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    controller = Controller(Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    controller.stop()
    mail = replace(MAIL, smtp_port=port)
    with (
        caplog.at_level(logging.WARNING, logger="bwenforcer.mail.transport"),
        pytest.raises(DeliveryError, match=rf"^smtp 127\.0\.0\.1:{port}: .*refused") as info,
    ):
        make_transport(mail).send(message())
    assert "\n" not in str(info.value)
    assert len(caplog.records) == 1 and "slice pl_heavy" in caplog.records[0].getMessage()


def test_smtp_server_that_never_answers_times_out() -> None:
    # The kernel completes the TCP handshake on a listening socket that nobody
    # accepts, so the client waits for a greeting that never comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        mail = replace(MAIL, smtp_port=silent.getsockname()[1], smtp_timeout_s=1)
        with pytest.raises(DeliveryError, match=r"^smtp 127\.0\.0\.1:\d+: timed out after 1s$"):
            make_transport(mail).send(message())


def test_a_server_falling_silent_mid_session_spends_the_budget_for_the_messages_after() -> None:
    stall = Stall(free_port(), greeting=b"220 slow.example ESMTP\r\n")
    try:
        mail = replace(MAIL, smtp_port=stall.port, smtp_timeout_s=1)
        transport, budget = make_transport(mail), MailBudget(1)
        with pytest.raises(DeliveryError, match="timed out"):
            transport.send(message(), budget)  # greeted, then no answer to EHLO
        with pytest.raises(MailDeadline, match=r"mail time \(1s\) is spent"):
            transport.send(message(), budget)
    finally:
        stall.close()
    assert stall.accepted == 1  # the second message never connected


def test_a_server_dripping_its_replies_is_cut_off_at_the_budget() -> None:
    # one byte a second: every single read is well within the timeout, the whole
    # conversation (a 40-byte greeting alone takes 40 s) far beyond it
    controller = DripController(Sink(), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        mail = replace(MAIL, smtp_port=controller.port, smtp_timeout_s=3)
        started = time.monotonic()
        with pytest.raises(DeliveryError, match=r"timed out after 3s$"):
            make_transport(mail).send(message())
        elapsed_s = time.monotonic() - started
    finally:
        controller.stop()
    assert elapsed_s < 3 + 5, elapsed_s  # the deadline, not 40 s and more


def test_mail_budget_starts_at_its_first_use_and_ends_once() -> None:
    now = [100.0]
    budget = MailBudget(3, clock=lambda: now[0])
    now[0] = 200.0
    assert budget.remaining_s() == 3  # started now, not when made
    now[0] = 202.5
    assert budget.remaining_s() == 0.5
    now[0] = 203.0
    with pytest.raises(MailDeadline):
        budget.remaining_s()
    now[0] = 150.0  # a clock going back does not give the time back
    with pytest.raises(MailDeadline):
        budget.remaining_s()


def test_starttls_against_a_server_without_it_is_a_delivery_error(
    server: tuple[Sink, MailConfig],
) -> None:
    sink, mail = server
    with pytest.raises(DeliveryError, match=r"^smtp 127\.0\.0\.1:\d+: STARTTLS extension not"):
        make_transport(replace(mail, smtp_starttls=True)).send(message())
    assert sink.envelopes == []


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make a test certificate")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[tuple[Sink, MailConfig, list[str]]]:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    logins: list[str] = []

    def authenticate(
        server: object, session: object, envelope: object, mechanism: str, data: object
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        login, password = (
            v.decode() if isinstance(v, bytes) else v for v in (data.login, data.password)
        )
        logins.append(login)
        # handled=False: aiosmtpd answers 535 itself
        return AuthResult(success=(login, password) == ("node1", "s3cret"), handled=False)

    sink = Sink()
    port = free_port()
    controller = Controller(
        sink,
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        authenticator=authenticate,
        auth_require_tls=True,
    )
    controller.start()
    try:
        yield sink, replace(MAIL, smtp_port=port, smtp_starttls=True), logins
    finally:
        controller.stop()


def test_starttls_and_login_against_a_trusted_certificate(
    tls_server: tuple[Sink, MailConfig, list[str]],
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink, mail, logins = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # trust our test CA only
    sent = message()
    make_transport(replace(mail, smtp_user="node1", smtp_password="s3cret")).send(sent)
    assert logins == ["node1"]
    assert [rcpts for _, rcpts, _ in sink.envelopes] == [RCPTS]
    assert_same_message(sink.envelopes[0][2], sent)


def test_a_wrong_password_is_a_delivery_error(
    tls_server: tuple[Sink, MailConfig, list[str]],
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink, mail, _ = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    with pytest.raises(DeliveryError, match=r"^smtp 127\.0\.0\.1:\d+: 535 "):
        make_transport(replace(mail, smtp_user="node1", smtp_password="wrong")).send(message())
    assert sink.envelopes == []


def test_an_untrusted_certificate_is_a_delivery_error(
    tls_server: tuple[Sink, MailConfig, list[str]],
) -> None:
    sink, mail, logins = tls_server
    with pytest.raises(DeliveryError, match="certificate verify failed"):
        make_transport(replace(mail, smtp_user="node1", smtp_password="s3cret")).send(message())
    assert logins == [] and sink.envelopes == []  # the password never left


def fake_sendmail(tmp_path: Path, script: str) -> MailConfig:
    fake = tmp_path / "sendmail"
    fake.write_text(f"#!/bin/sh\n{script}\n")
    fake.chmod(0o755)
    return replace(MAIL, transport="sendmail", sendmail_path=str(fake), smtp_timeout_s=1)


def test_sendmail_gets_exactly_t_oi_and_the_message_on_stdin(tmp_path: Path) -> None:
    mail = fake_sendmail(
        tmp_path, f'for a in "$@"; do echo "$a"; done > {tmp_path}/argv\ncat > {tmp_path}/stdin'
    )
    sent = message()
    make_transport(mail).send(sent)
    assert (tmp_path / "argv").read_text().splitlines() == ["-t", "-oi"]
    raw = (tmp_path / "stdin").read_bytes()
    assert b"\r\n" not in raw  # the local MTA reads Unix lines
    assert_same_message(raw, sent)


def test_sendmail_failing_is_a_delivery_error_with_its_first_stderr_line(tmp_path: Path) -> None:
    mail = fake_sendmail(tmp_path, "cat >/dev/null\necho 'queue full' >&2\necho more >&2\nexit 1")
    with pytest.raises(DeliveryError) as info:
        make_transport(mail).send(message())
    assert str(info.value) == f"sendmail {mail.sendmail_path}: exit 1: queue full"


def test_sendmail_missing_is_a_delivery_error(tmp_path: Path) -> None:
    mail = replace(MAIL, transport="sendmail", sendmail_path=str(tmp_path / "nope"))
    with pytest.raises(DeliveryError, match=r"^sendmail .*/nope: not found$"):
        make_transport(mail).send(message())


def test_sendmail_that_hangs_is_killed_at_the_timeout(tmp_path: Path) -> None:
    mail = fake_sendmail(tmp_path, "exec sleep 20")
    with pytest.raises(DeliveryError, match=r": timed out after 1s$"):
        make_transport(mail).send(message())


def test_spool_writes_complete_messages_atomically(tmp_path: Path) -> None:
    spool = tmp_path / "var" / "spool"
    mail = replace(MAIL, transport="spool", spool_dir=str(spool))
    first, second = message(), message()
    make_transport(mail).send(first)
    make_transport(mail).send(second)
    files = sorted(spool.iterdir())
    assert len(files) == 2
    assert all(f.suffix == ".eml" and f.name.startswith("pl_heavy-") for f in files)
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    by_id = {str(parse(f.read_bytes())["Message-ID"]).strip(): f.read_bytes() for f in files}
    for sent in (first, second):
        raw = by_id[str(sent["Message-ID"]).strip()]
        assert raw.count(b"\n") == raw.count(b"\r\n")  # CRLF throughout, as on the wire
        assert_same_message(raw, sent)


def test_spool_that_cannot_be_created_is_a_delivery_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    mail = replace(MAIL, transport="spool", spool_dir=str(tmp_path / "file" / "spool"))
    with pytest.raises(DeliveryError, match=r"^spool .*/file/spool: Not a directory$"):
        make_transport(mail).send(message())


def test_spool_leaves_no_temporary_file_when_the_rename_fails(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    mail = replace(MAIL, transport="spool", spool_dir=str(spool))
    transport = make_transport(mail)
    spool.mkdir(mode=0o700)
    # a directory where the final file should go makes the rename fail for real
    taken = spool / transport._name(message())  # type: ignore[attr-defined]
    taken.mkdir()
    sent = message()
    transport._name = lambda msg: taken.name  # type: ignore[attr-defined]
    with pytest.raises(DeliveryError, match=r"^spool "):
        transport.send(sent)
    assert [p.name for p in spool.iterdir()] == [taken.name]


def test_transport_none_sends_nothing(
    server: tuple[Sink, MailConfig], caplog: pytest.LogCaptureFixture
) -> None:
    sink, mail = server
    with caplog.at_level(logging.DEBUG, logger="bwenforcer.mail.transport"):
        make_transport(replace(mail, transport="none")).send(message())
    assert sink.envelopes == []
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert "not sending" in caplog.text


@pytest.mark.parametrize("transport", ["smtp", "sendmail", "spool", "none"])
def test_dry_run_logs_the_whole_message_and_sends_nothing(
    transport: str,
    server: tuple[Sink, MailConfig],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink, mail = server
    spool = tmp_path / "spool"
    mail = replace(
        mail, transport=transport, spool_dir=str(spool), sendmail_path=str(tmp_path / "absent")
    )
    with caplog.at_level(logging.INFO, logger="bwenforcer.mail.transport"):
        make_transport(mail, dry_run=True).send(message())
    assert sink.envelopes == [] and not spool.exists()
    assert len(caplog.records) == 1
    text = caplog.records[0].getMessage()
    assert text.startswith(f"dry-run: would mail via {transport} to ")
    assert "Subject:" in text and "Default traffic:" in text and "Exempt traffic:" in text


def test_an_unknown_transport_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"mail\.transport: 'pigeon'"):
        make_transport(replace(MAIL, transport="pigeon"))  # type: ignore[arg-type]


def test_spool_holds_one_file_per_notice_and_commits_before_linking_it(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    transport = make_transport(replace(MAIL, transport="spool", spool_dir=str(spool)))
    sent = message()  # one notice: one Message-ID, sent again by a cycle after a kill
    seen: list[list[str]] = []
    for _ in range(2):
        transport.send(sent, commit=lambda: seen.append(sorted(p.name for p in spool.iterdir())))
    files = [p for p in spool.iterdir() if p.suffix == ".eml"]
    assert len(files) == 1
    assert_same_message(files[0].read_bytes(), sent)
    assert not any(name.endswith(".eml") for name in seen[0])  # committed before the link


def test_smtp_commits_before_the_end_of_data_and_a_refusal_after_it_is_an_error(
    server: tuple[Sink, MailConfig],
) -> None:
    sink, mail = server
    counts: list[int] = []
    make_transport(mail).send(message(), commit=lambda: counts.append(len(sink.envelopes)))
    assert counts == [0] and len(sink.envelopes) == 1  # the server had nothing yet
    with pytest.raises(RuntimeError, match="outbox full"):

        def full() -> None:
            raise RuntimeError("outbox full")

        make_transport(mail).send(message(), commit=full)
    assert len(sink.envelopes) == 1  # no end of DATA: the server dropped the message

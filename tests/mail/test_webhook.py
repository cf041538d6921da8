"""The webhook transport against a real HTTP server on loopback, alone and in cycles."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bwenforcer.core.settings import MailConfig
from bwenforcer.cycle.agent import Agent, load_desired
from bwenforcer.errors import ConfigError, DeliveryError, ExitCode, MailDeadline
from bwenforcer.inputs.config import load_config, parse_config
from bwenforcer.kernel.htb import HtbBackend
from bwenforcer.mail.notice import build_message
from bwenforcer.mail.transport import MailBudget, make_transport
from bwenforcer.store.state import StateStore
from tests.mail.test_mailer import MAIL, message
from tests.mail.test_notify import NOTICE
from tests.netns import Netns


class Receiver:
    """An HTTP server on loopback answering each POST with ``status`` after ``delay_s``."""

    def __init__(self, status: int = 204, delay_s: float = 0.0) -> None:
        self.status, self.delay_s = status, delay_s
        self.posts: list[tuple[dict[str, str], dict[str, object]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.posts.append((dict(self.headers), json.loads(body)))
                time.sleep(receiver.delay_s)
                self.send_response(receiver.status)
                if 300 <= receiver.status < 400:
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _hook(url: str, timeout_s: int = 2) -> MailConfig:
    return replace(MAIL, transport="webhook", webhook_url=url, webhook_timeout_s=timeout_s)


def test_a_notice_is_posted_once_as_json(receiver: Receiver) -> None:
    msg = message()
    make_transport(_hook(receiver.url)).send(msg)
    ((headers, doc),) = receiver.posts
    assert headers["Content-Type"] == "application/json"
    assert headers["Idempotency-Key"] == doc["message_id"] == msg["Message-ID"]
    assert doc["slice"] == "pl_heavy" and doc["subject"] == msg["Subject"]
    assert doc["to"] == ["ops@example.org", "pl_heavy@slices.example.org"]
    assert "Default traffic" in str(doc["body"])


def test_the_document_names_the_notice_and_the_mark_follows_the_2xx(receiver: Receiver) -> None:
    notice = replace(NOTICE, kind="share", share_bp=8000, notice_id="bwn.1.1234.share8000.default")
    msg = build_message(notice, MAIL, "node1.example.org", 1_763_800_000)
    committed: list[int] = []
    make_transport(_hook(receiver.url)).send(
        msg, commit=lambda: committed.append(len(receiver.posts))
    )
    ((headers, doc),) = receiver.posts
    assert (doc["kind"], doc["share"]) == ("share", "80%")
    assert headers["Idempotency-Key"] == "<bwn.1.1234.share8000.default.pl_heavy@node1.example.org>"
    assert committed == [1]  # after the receiver took it: a repeat carries the same key
    refusing = Receiver(500)
    try:
        with pytest.raises(DeliveryError):
            make_transport(_hook(refusing.url)).send(msg, commit=lambda: committed.append(0))
    finally:
        refusing.close()
    assert committed == [1]  # no mark for a notice refused: retried
    make_transport(_hook(receiver.url)).send(message())  # a threshold notice
    assert (receiver.posts[-1][1]["kind"], receiver.posts[-1][1]["share"]) == ("threshold", None)


@pytest.mark.parametrize(("status", "reason"), [(500, "HTTP 500"), (302, "HTTP 302")])
def test_a_refusal_or_a_redirect_is_a_one_line_delivery_error(status: int, reason: str) -> None:
    receiver = Receiver(status)
    try:
        with pytest.raises(DeliveryError) as info:
            make_transport(_hook(receiver.url)).send(message())
    finally:
        receiver.close()
    assert str(info.value).startswith(f"webhook {receiver.url}: {reason}")
    assert len(receiver.posts) == 1  # the redirect was not followed


def test_a_receiver_that_never_answers_spends_the_cycles_mail_time() -> None:
    receiver = Receiver(delay_s=3)
    budget = MailBudget(1)
    try:
        started = time.monotonic()
        with pytest.raises(DeliveryError, match="timed out after 1s"):
            make_transport(_hook(receiver.url, timeout_s=1)).send(message(), budget)
        assert time.monotonic() - started < 2.5
        with pytest.raises(MailDeadline):
            make_transport(_hook(receiver.url, timeout_s=1)).send(message(), budget)
    finally:
        receiver.close()


def test_nothing_listening_is_a_delivery_error() -> None:
    receiver = Receiver()
    url = receiver.url
    receiver.close()
    with pytest.raises(DeliveryError, match=f"webhook {url}: "):
        make_transport(_hook(url)).send(message())


@pytest.mark.parametrize(
    ("mail", "problem"),
    [
        ({"transport": "webhook"}, "mail.transport: transport webhook needs webhook.url"),
        ({"webhook": {"url": "ftp://x"}}, "mail.webhook.url: 'ftp://x' is not an http"),
        ({"webhook": {"url": "http://x", "timeout": "2h"}}, "mail.webhook.timeout: '2h' is above"),
    ],
)
def test_the_webhook_config_is_checked_at_load(mail: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_config({"mail": mail}, "t.yaml")


# --- in cycles on a node ---------------------------------------------------------------


def _config(tmp: Path, url: str) -> str:
    (tmp / "slices.yaml").write_text(
        "slices:\n  - {name: pl_capped, xid: 21, rspec: {net_thresh_kbyte: 0}}\n"
    )
    cfg = tmp / "c.yaml"
    cfg.write_text(
        f"device: v0\nnode_cap: 10mbit\nstate_file: {tmp}/state.json\nslices_file: {tmp}/slices.yaml\n"
        "metrics: {listen: null}\n"
        "mail: {transport: webhook, operators: [ops@example.org], hostname: node1.example.org,\n"
        f"       webhook: {{url: '{url}', timeout: 2s}}}}\n"
    )
    return str(cfg)


@pytest.mark.kernel
def test_a_refused_notice_is_retried_next_cycle_and_then_sent_once(
    ns: Netns, tmp_path: Path
) -> None:
    receiver = Receiver(status=503)
    try:
        config = load_config(_config(tmp_path, receiver.url))
        with HtbBackend("v0", netns=ns.name) as kernel:
            kernel.init(config.node_cap_bps, config.bwmax_bps)
        agent = Agent(config, netns=ns.name)
        desired = load_desired(config)
        refused = agent.cycle(desired)
        assert refused.exit_code == ExitCode.PARTIAL and refused.outcome.mails_failed == 1
        state = StateStore(config.state_file).load().state
        assert not state.slices[21].default.notified  # flagged only once delivered
        receiver.status = 200
        delivered = agent.cycle(desired)
        again = agent.cycle(desired)
    finally:
        receiver.close()
    assert delivered.outcome.mails_sent == 1 and again.outcome.mails_sent == 0
    assert len(receiver.posts) == 2  # the refused one, then the delivered one
    assert receiver.posts[0][1]["message_id"] != ""
    assert StateStore(config.state_file).load().state.slices[21].default.notified

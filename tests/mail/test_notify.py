"""Cap notices as messages: headers, body, template, and no header injection."""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bwenforcer.core.settings import MailConfig
from bwenforcer.errors import ConfigError, SliceError
from bwenforcer.inputs.template import CLASS_FIELDS, MESSAGE_FIELDS, load_template
from bwenforcer.mail.notice import (
    CappedClass,
    Notice,
    build_message,
    recipients,
    render_body,
    slice_tag,
)

REPO = Path(__file__).resolve().parents[2]
HOST = "node1.example.org"
NOW_S = 1_763_800_000  # Sat 22 Nov 2025 08:26:40 UTC
DEFAULT = CappedClass(
    "default", 4_500_000_000, 5_000_000_000, 4_000_000_000, 2_000_000, 100_000_000
)
EXEMPT = CappedClass(
    "exempt", 9_000_000_000, 10_000_000_000, 8_000_000_000, 5_000_000, 1_000_000_000
)
NOTICE = Notice("pl_heavy", 1234, 1_763_769_600, 1_763_856_000, (DEFAULT, EXEMPT))
MAIL = MailConfig(
    transport="smtp",
    from_addr="support@example.org",
    from_name="Node support",
    operators=("ops@example.org", "Night Shift <night@example.org>"),
    slice_address="{slice}@slices.example.org",
)
HEADERS = {
    "From",
    "To",
    "Reply-To",
    "Date",
    "Message-ID",
    "Subject",
    "Content-Type",
    "Content-Transfer-Encoding",
    "MIME-Version",
    "X-Bwenforcer-Notice",
}
CONTROL = st.sampled_from(["\r", "\n", "\r\n", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\t"])
HEADERISH = st.sampled_from(["Bcc: evil@x.org", "X-Injected: 1", "To: evil@x.org", ""])


def parse(msg: EmailMessage) -> EmailMessage:
    return email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)  # type: ignore[return-value]


def test_headers_are_exactly_the_expected_set_with_the_expected_values() -> None:
    msg = parse(build_message(NOTICE, MAIL, HOST, NOW_S))
    assert set(msg.keys()) == HEADERS
    assert all(len(msg.get_all(k)) == 1 for k in HEADERS)
    assert msg["From"] == "Node support <support@example.org>"
    assert [a.addr_spec for a in msg["To"].addresses] == [
        "ops@example.org",
        "night@example.org",
        "pl_heavy@slices.example.org",
    ]
    assert msg["To"].addresses[1].display_name == "Night Shift"
    assert msg["Reply-To"] == "support@example.org"
    # strip(): the stdlib keeps the blank of a header folded right after its colon
    assert (
        msg["Subject"].strip()
        == f"bwenforcer: slice pl_heavy capped on {HOST} (default and exempt)"
    )
    assert msg["Date"].datetime.timestamp() == NOW_S
    assert re.fullmatch(r"<\d+\.\d+\.\d+\.pl_heavy@node1\.example\.org>", msg["Message-ID"].strip())
    assert slice_tag(msg) == "pl_heavy"
    assert msg.get_content_type() == "text/plain"
    assert msg["Content-Transfer-Encoding"] == "7bit"  # readable as is in a spool file


def test_each_message_gets_its_own_message_id() -> None:
    ids = {build_message(NOTICE, MAIL, HOST, NOW_S)["Message-ID"] for _ in range(20)}
    assert len(ids) == 20


def test_reply_to_when_configured() -> None:
    mail = replace(MAIL, reply_to="noc@example.org")
    assert parse(build_message(NOTICE, mail, HOST, NOW_S))["Reply-To"] == "noc@example.org"


def test_body_of_the_packaged_template_has_both_classes_numbers() -> None:
    body = parse(build_message(NOTICE, MAIL, HOST, NOW_S)).get_content()
    assert "slice pl_heavy on node node1.example.org" in body
    assert body.count("traffic:") == 2
    default, exempt = body.split("Default traffic:")[1].split("Exempt traffic:")
    # used, limit, threshold, left, ceil, normal rate of each class, in human units
    for text in ("4.19GiB", "4.66GiB", "3.73GiB", "477MiB", "2Mbit/s", "100Mbit/s"):
        assert text in default
    for text in ("8.38GiB", "9.31GiB", "7.45GiB", "954MiB", "5Mbit/s", "1Gbit/s"):
        assert text in exempt
    # the fixtures' ceils are above the pace of their budget left: it runs out early
    assert "sending at it, the budget left is used up by Sat 22 Nov 2025 09:00 UTC" in default
    assert "used up by Sat 22 Nov 2025 08:53 UTC" in exempt
    assert "2025-11-23T00:00:00Z" in body
    assert "Sun 23 Nov 2025 00:00 UTC" in body
    assert "2025-11-22T00:00:00Z" in body  # the period start
    assert "$" not in body and "%%class%%" not in body and "#" not in body


def test_one_class_gives_one_block_and_names_it_in_the_subject() -> None:
    notice = replace(NOTICE, classes=(EXEMPT,))
    msg = parse(build_message(notice, MAIL, HOST, NOW_S))
    assert msg["Subject"].endswith("(exempt)")
    body = msg.get_content()
    assert "Exempt traffic:" in body and "Default traffic:" not in body


def test_budget_left_never_goes_below_zero() -> None:
    over = replace(DEFAULT, used_bytes=DEFAULT.limit_bytes + 10**9)
    body = render_body(replace(NOTICE, classes=(over,)), HOST, load_template(MAIL), NOW_S)
    assert re.search(r"budget left: +0B$", body, re.MULTILINE)


def test_no_slice_alias_for_root_default_or_when_unset() -> None:
    ops = ["ops@example.org", "Night Shift <night@example.org>"]
    assert recipients(replace(NOTICE, slice_name="root", xid=0), MAIL) == ops
    assert recipients(replace(NOTICE, slice_name="default", xid=0xFFF), MAIL) == ops
    assert recipients(NOTICE, replace(MAIL, slice_address=None)) == ops
    assert recipients(NOTICE, MAIL) == [*ops, "pl_heavy@slices.example.org"]


def test_nobody_to_mail_is_a_config_error() -> None:
    mail = replace(MAIL, operators=(), slice_address=None)
    with pytest.raises(ConfigError, match="nobody to tell that slice pl_heavy is capped"):
        build_message(NOTICE, mail, HOST, NOW_S)


def test_a_name_that_gives_no_valid_alias_is_a_slice_error_but_operators_still_work() -> None:
    dot = replace(NOTICE, slice_name=".")
    with pytest.raises(SliceError, match=r"slice '\.': no alias"):
        build_message(dot, MAIL, HOST, NOW_S)
    msg = parse(build_message(dot, replace(MAIL, slice_address=None), HOST, NOW_S))
    assert msg["Subject"].strip().startswith("bwenforcer: slice . capped")
    assert msg["Message-ID"].endswith(f"@{HOST}>") and slice_tag(msg) is None


def test_a_bad_slice_address_template_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"mail\.slice_address: .*KeyError"):
        recipients(NOTICE, replace(MAIL, slice_address="{slice}@{site}.example.org"))


@pytest.mark.parametrize(
    "evil",
    [
        "pl_x\r\nBcc: evil@example.com",
        "pl_x\nX-Injected: 1",
        "pl_x\rTo: evil@example.com",
        "pl\x00x",
        "pl_x\u2028Bcc: evil@example.com",
        "pl_x\x85X-Injected: 1",
    ],
)
def test_header_injection_through_the_slice_name_is_refused(evil: str) -> None:
    with pytest.raises(SliceError, match="control characters"):
        build_message(replace(NOTICE, slice_name=evil), MAIL, HOST, NOW_S)
    with pytest.raises(SliceError, match="control characters"):
        recipients(replace(NOTICE, slice_name=evil), MAIL)


@pytest.mark.parametrize("evil", ["node1\r\nBcc: evil@example.com", "node1\nX-Injected: 1"])
def test_header_injection_through_the_hostname_is_refused(evil: str) -> None:
    with pytest.raises(SliceError, match="control characters"):
        build_message(NOTICE, MAIL, evil, NOW_S)


@pytest.mark.parametrize("odd", ["node1 Bcc: evil@example.com", "node1>,<x@y", "no@de", ""])
def test_a_hostname_that_is_no_dns_name_is_a_config_error(odd: str) -> None:
    with pytest.raises(ConfigError, match=r"mail\.hostname: .* is not a DNS host name"):
        build_message(NOTICE, MAIL, odd, NOW_S)


@pytest.mark.parametrize(
    ("field", "value", "where"),
    [
        ("from_name", "Support\r\nBcc: evil@example.com", "mail.from_name"),
        ("from_addr", "support@example.org\r\nBcc: evil@example.com", "mail.from"),
        ("from_addr", "support", "mail.from"),
        ("reply_to", "a@b@c", "mail.reply_to"),
        ("operators", ("ops@example.org\nBcc: evil@example.com",), "mail.operators"),
        ("operators", ("two words@example.org",), "mail.operators"),
        ("operators", ("Night\x1bShift <night@example.org>",), "mail.operators"),
    ],
)
def test_bad_configured_addresses_are_config_errors(field: str, value: object, where: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(where)) as info:
        build_message(NOTICE, replace(MAIL, **{field: value}), HOST, NOW_S)
    assert "\n" not in str(info.value)


def _assert_contained(msg: EmailMessage, name: str, host: str) -> None:
    back = parse(msg)
    assert set(back.keys()) == HEADERS
    assert back.get_all("Bcc") is None and back.get_all("X-Injected") is None
    assert len(back.get_all("To")) == 1
    assert (
        back["Subject"].strip()
        == f"bwenforcer: slice {name} capped on {host.rstrip('.')} (default and exempt)"
    )


@given(
    st.one_of(
        st.text(min_size=1, max_size=40),
        st.builds(lambda a, c, h: f"pl_{a}{c}{h}", st.text(max_size=8), CONTROL, HEADERISH),
    )
)
def test_any_slice_name_is_refused_or_stays_inside_its_header(name: str) -> None:
    try:
        msg = build_message(replace(NOTICE, slice_name=name), MAIL, HOST, NOW_S)
    except SliceError as exc:
        # refused for its characters, or because it makes no valid alias
        assert (not name.isprintable()) == ("control characters" in str(exc))
        assert "\n" not in str(exc)
        return
    assert name.isprintable()
    _assert_contained(msg, name, HOST)
    assert parse(msg)["To"].addresses[-1].addr_spec.endswith("@slices.example.org")


@given(
    st.one_of(
        st.text(min_size=1, max_size=40),
        st.builds(lambda c, h: f"node1{c}{h}", CONTROL, HEADERISH),
        st.from_regex(r"\A[a-z0-9]{1,10}(\.[a-z0-9-]{1,10}){0,3}\.?\Z"),
    )
)
def test_any_hostname_is_refused_or_stays_inside_its_headers(host: str) -> None:
    try:
        msg = build_message(NOTICE, MAIL, host, NOW_S)
    except (SliceError, ConfigError):
        return
    _assert_contained(msg, "pl_heavy", host)
    assert parse(msg)["Message-ID"].endswith(f"@{host.rstrip('.')}>")


def test_the_packaged_template_documents_and_uses_its_placeholders() -> None:
    raw = (REPO / "bwenforcer/templates/notice.txt").read_text()
    comments = "\n".join(line for line in raw.splitlines() if line.startswith("#"))
    for name in MESSAGE_FIELDS | CLASS_FIELDS:
        assert f"${name}" in comments, name
    assert "#" not in load_template(MailConfig())


def test_etc_notice_is_an_editable_copy_of_the_default_that_documents_the_placeholders() -> None:
    etc = REPO / "etc/notice.txt"
    assert load_template(MailConfig(template=str(etc))) == load_template(MailConfig())
    comments = "\n".join(line for line in etc.read_text().splitlines() if line.startswith("#"))
    for name in MESSAGE_FIELDS | CLASS_FIELDS:
        assert f"${name}" in comments, name
    assert "mail.template" in comments


def test_a_custom_template_file_is_used(tmp_path: Path) -> None:
    tpl = tmp_path / "mine.txt"
    tpl.write_text(
        "# my comment\nHello $slice on ${hostname}, costs $$0.\n${classes}"
        "Bye until $period_end_human\n%%class%%\n* $traffic_class: $used of $limit, $ceil\n",
        encoding="utf-8",
    )
    mail = replace(MAIL, template=str(tpl))
    body = parse(build_message(NOTICE, mail, HOST, NOW_S)).get_content()
    assert body == (
        f"Hello pl_heavy on {HOST}, costs $0.\n"
        "* Default: 4.19GiB of 4.66GiB, 2Mbit/s\n\n"
        "* Exempt: 8.38GiB of 9.31GiB, 5Mbit/s\n"
        "Bye until Sun 23 Nov 2025 00:00 UTC\n"
    )


def test_a_template_passed_in_is_used_without_reading_the_file(tmp_path: Path) -> None:
    mail = replace(MAIL, template=str(tmp_path / "absent.txt"))
    body = build_message(NOTICE, mail, HOST, NOW_S, template="Only $slice\n").get_content()
    assert body == "Only pl_heavy\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Hello $slyce\n", r"unknown placeholder \$slyce$"),
        ("Rate $ceil\n", r"unknown placeholder \$ceil \(per-class placeholders go below"),
        ("$classes\n%%class%%\n$speed\n", r"unknown placeholder \$speed in the class block"),
        ("Costs $5\n", r"invalid placeholder at '\$5'.*\$\$"),
        ("$classes\n", r"uses \$classes but has no %%class%% line"),
    ],
)
def test_a_bad_template_is_a_config_error_naming_the_file(
    tmp_path: Path, text: str, problem: str
) -> None:
    tpl = tmp_path / "bad.txt"
    tpl.write_text(text)
    with pytest.raises(ConfigError, match=f"^{re.escape(str(tpl))}: {problem}"):
        load_template(replace(MAIL, template=str(tpl)))


def test_an_unreadable_template_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(ConfigError, match=f"^{re.escape(str(missing))}: cannot read"):
        load_template(replace(MAIL, template=str(missing)))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Grüße $slice\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=f"^{re.escape(str(latin1))}: .*not UTF-8"):
        load_template(replace(MAIL, template=str(latin1)))


def test_a_non_ascii_template_is_sent_as_utf8(tmp_path: Path) -> None:
    tpl = tmp_path / "de.txt"
    tpl.write_text("Grüße an $slice\n", encoding="utf-8")
    msg = parse(build_message(NOTICE, replace(MAIL, template=str(tpl)), HOST, NOW_S))
    assert msg.get_content_charset() == "utf-8"
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert msg.get_content() == "Grüße an pl_heavy\n"


def test_the_advice_says_what_a_class_at_its_floor_can_do() -> None:
    day = 86_400
    notice = replace(NOTICE, period_start_s=NOW_S - 60, period_end_s=NOW_S + day)
    # 9 MiB left and a day to go: the pace would be 873 bit/s, the floor is 8 kbit/s
    floor = CappedClass("default", 91 * 2**20, 100 * 2**20, 50 * 2**20, 8_000, 100_000_000)
    body = render_body(replace(notice, classes=(floor,)), HOST, load_template(MAIL), NOW_S)
    assert "keep to" not in body
    out = NOW_S + 9 * 2**20 * 8 // 8_000  # 2 h 37 min at 8 kbit/s
    assert (
        "8kbit/s is the lowest limit this class gets: sending at it, the budget left is used"
        " up by Sat 22 Nov 2025 11:03 UTC, and the limit stays 8kbit/s until"
        " Sun 23 Nov 2025 08:26 UTC." in " ".join(body.split())
    )
    template = "$classes\n%%class%%\n$used_up $used_up_human | $advice\n"
    assert render_body(replace(notice, classes=(floor,)), HOST, template, NOW_S).startswith(
        "2025-11-22T11:03:57Z Sat 22 Nov 2025 11:03 UTC | "
    )
    assert out == 1_763_809_437
    # paced: the ceil is the budget left over the time left, which it lasts
    paced = replace(floor, ceil_bps=9 * 2**20 * 8 // day)
    body = render_body(replace(notice, classes=(paced,)), HOST, load_template(MAIL), NOW_S)
    assert "keep to 873bit/s on average" in body
    used = replace(floor, used_bytes=floor.limit_bytes)
    body = render_body(replace(notice, classes=(used,)), HOST, load_template(MAIL), NOW_S)
    assert "The budget is used up: the class stays limited to 8kbit/s until" in body


def test_a_cgroup_tenant_is_named_by_its_unit_in_the_subject_and_as_unit() -> None:
    notice = replace(NOTICE, slice_name="svc_nginx", unit="nginx.service")
    msg = build_message(notice, MAIL, HOST, NOW_S, "$slice is $unit\n%%class%%\n$traffic_class\n")
    assert (
        msg["Subject"]
        == f"bwenforcer: slice svc_nginx (nginx.service) capped on {HOST} (default and exempt)"
    )
    assert msg.get_content().startswith("svc_nginx is nginx.service\n")
    plain = build_message(NOTICE, MAIL, HOST, NOW_S, "$slice is $unit\n%%class%%\n$traffic_class\n")
    assert plain.get_content().startswith("pl_heavy is pl_heavy\n")  # no unit: the slice name
    with pytest.raises(SliceError, match="unit"):
        build_message(replace(NOTICE, unit="a\nBcc: evil@x.org"), MAIL, HOST, NOW_S)


def test_each_kind_of_notice_has_its_own_words_subject_and_headers() -> None:
    share = replace(NOTICE, classes=(DEFAULT,), kind="share", share_bp=8000)
    msg = parse(build_message(share, MAIL, HOST, NOW_S))
    assert msg["Subject"].strip() == (
        f"bwenforcer: slice pl_heavy passed 80% of its budget on {HOST} (default)"
    )
    assert (msg["X-Bwenforcer-Notice"], msg["X-Bwenforcer-Share"]) == ("share", "80%")
    body = msg.get_content()
    assert "has used 80% of its budget" in body and "changes no limit" in body
    assert "sent since the period began:  4.19GiB, 90% of the budget" in body
    lifted = replace(NOTICE, kind="lifted")
    msg = parse(build_message(lifted, MAIL, HOST, NOW_S))
    assert "no longer limited" in msg["Subject"] and msg["X-Bwenforcer-Notice"] == "lifted"
    assert "has been lifted" in msg.get_content() and "X-Bwenforcer-Share" not in msg
    threshold = parse(build_message(NOTICE, MAIL, HOST, NOW_S))
    assert threshold["X-Bwenforcer-Notice"] == "threshold"
    assert "passed its budget threshold" in threshold.get_content()


def test_a_custom_template_without_a_section_for_a_kind_words_it_from_kind_and_share(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.txt"
    path.write_text("$kind $share for $slice\n%%notice lifted%%\nlifted: $slice\n")
    template = load_template(replace(MAIL, template=str(path)))
    share = replace(NOTICE, kind="share", share_bp=5050)
    assert render_body(share, HOST, template, NOW_S) == "share 50.5% for pl_heavy\n"
    assert render_body(NOTICE, HOST, template, NOW_S) == "threshold  for pl_heavy\n"
    lifted = replace(NOTICE, kind="lifted")
    assert render_body(lifted, HOST, template, NOW_S) == "lifted: pl_heavy\n"
    path.write_text("ok\n%%notice share%%\n$nope\n")
    with pytest.raises(
        ConfigError, match=r"t\.txt \(%%notice share%%\): unknown placeholder \$nope"
    ):
        load_template(replace(MAIL, template=str(path)))


def test_a_notice_id_gives_the_same_message_id_in_every_cycle() -> None:
    notice = replace(NOTICE, notice_id="bwn.1763769600.1234.share8000.default-exempt")
    ids = {build_message(notice, MAIL, HOST, NOW_S + i)["Message-ID"] for i in range(3)}
    assert ids == {f"<bwn.1763769600.1234.share8000.default-exempt.pl_heavy@{HOST}>"}
    assert slice_tag(build_message(notice, MAIL, HOST, NOW_S)) == "pl_heavy"

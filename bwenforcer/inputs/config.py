"""The config file: loaded from YAML, validated, turned into :mod:`bwenforcer.core.settings`.

Every value is in base units (bit/s, bytes, seconds). Loading errors name the
key path and the problem, e.g. ``defaults.exempt.limit: "12 parsecs" is not a size``
(the strict YAML reading and the key-path reader are in :mod:`bwenforcer.inputs.yamltext`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import string
from collections.abc import Callable, Mapping
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bwenforcer.core.grants import rollover_text
from bwenforcer.core.layout import MAX_SHARE, TRAFFIC_CLASSES, TrafficClass
from bwenforcer.core.notices import notices_text, parse_notices
from bwenforcer.core.policy import (
    class_cap_bps,
    lowers_ceil,
    parse_taper,
    parse_tiers,
    taper_text,
    tiers_text,
)
from bwenforcer.core.settings import (
    CgroupConfig,
    CgroupPattern,
    ClassDefaults,
    ClassifierConfig,
    Config,
    HistoryConfig,
    MailConfig,
    MetricsConfig,
    PeriodAnchor,
)
from bwenforcer.core.units import format_rate, parse_duration_s, parse_rate_bps, parse_size_bytes
from bwenforcer.core.window import check_window_s
from bwenforcer.errors import ConfigError, UnitError
from bwenforcer.inputs.yamltext import KeyReader, read_yaml

DEFAULT_CONFIG_PATH = "/etc/bwenforcer/bwenforcer.yaml"
CONFIG_ENV = "BWENFORCER_CONFIG"
# Upper bounds of the durations an operator sets (rates, sizes and other durations
# are bounded by the parsers in units): a period longer than a year, or a daemon
# or a lock waiting more than a day, is a typo, and would overflow timers.
MAX_PERIOD_S = 366 * 86400
MAX_INTERVAL_S = 86400
MAX_LOCK_TIMEOUT_S = 86400
MAX_SMTP_TIMEOUT_S = 3600


_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _time_of_day(reader: KeyReader, name: str) -> int:
    value = reader.text(name, "00:00", allow_null=False) or "00:00"
    parts = value.split(":")
    try:
        hours, minutes = int(parts[0]), int(parts[1])
        ok = len(parts) == 2 and 0 <= hours < 24 and 0 <= minutes < 60
    except (ValueError, IndexError):
        ok = False
    if not ok:
        raise reader.error(f"{value!r} is not a time of day HH:MM", at=reader.key(name))
    return hours * 3600 + minutes * 60


def _anchor(reader: KeyReader) -> PeriodAnchor:
    every = reader.choice("every", ("day", "week", "month"), "day")
    at_s = _time_of_day(reader, "at")
    tz = reader.text("tz", "UTC", allow_null=False) or "UTC"
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise reader.error(f"{tz!r} is not a known time zone", at=reader.key("tz")) from None
    weekday, day = 0, 1
    if every == "week":
        name = reader.text("on", "monday", allow_null=False)
        if name not in _WEEKDAYS:
            raise reader.error(f"{name!r} is not a weekday", at=reader.key("on"))
        weekday = _WEEKDAYS.index(name)
    elif every == "month":
        day = reader.integer("on", 1, 1, 28)
    reader.done()
    return PeriodAnchor(every, at_s, tz, weekday, day)  # type: ignore[arg-type]


# per class: (class cap, bwmin), what a class's ceils are clamped to
_Caps = Mapping[TrafficClass, tuple[int, int]]


def _class_defaults(
    reader: KeyReader, base: ClassDefaults, cap_bps: int, bwmin_bps: int
) -> ClassDefaults:
    limit = reader.parsed("limit", parse_size_bytes, base.limit_bytes)
    threshold = reader.optional("threshold", parse_size_bytes)
    if threshold is not None and threshold > limit:
        raise reader.error(f"threshold {threshold} B is above the limit {limit} B")
    result = ClassDefaults(
        limit_bytes=limit,
        threshold_bytes=threshold,
        min_rate_bps=reader.parsed("min_rate", parse_rate_bps, base.min_rate_bps),
        max_rate_bps=reader.optional("max_rate", parse_rate_bps),
        share=reader.integer("share", base.share, 1, MAX_SHARE),
        tiers=_rule_text(reader, "tiers", base.tiers, lambda t: tiers_text(parse_tiers(t))),
        taper=_rule_text(reader, "taper", base.taper, lambda t: taper_text(parse_taper(t))),
        pacing=reader.flag("pacing", base.pacing),
        notices=_rule_text(
            reader, "notices", base.notices, lambda t: notices_text(*parse_notices(t))
        ),
        rollover=_rollover(reader, base.rollover),
    )
    if not result.pacing and not result.tiers and not result.taper:
        raise reader.error(
            "false needs tiers or a taper (else nothing caps)", at=reader.key("pacing")
        )
    max_rate = min(result.max_rate_bps or cap_bps, cap_bps)
    if not result.pacing and not lowers_ceil(
        result.tiers, result.taper, max_rate, cap_bps, bwmin_bps
    ):
        raise reader.error(
            f"false needs a tier or taper below the max rate {format_rate(max_rate)}"
            " (else nothing caps)",
            at=reader.key("pacing"),
        )
    reader.done()
    return result


def _rollover(reader: KeyReader, default: str) -> str:
    """A class's ``rollover``: a size or a share of the limit (``10%``); null, 0 or
    ``none``: off.
    """
    if not reader.has("rollover"):
        return default
    try:
        return rollover_text(reader.raw("rollover"))
    except ValueError as exc:
        raise reader.error(str(exc), at=reader.key("rollover")) from None


def _window(reader: KeyReader, anchored: bool) -> int:
    """``defaults.window``: a rolling window's length (null, absent, 0 or ``none``: the
    period). Calendar periods (``period_anchor``) and a default window exclude each
    other: the one would silently override the other for most slices.
    """
    value = reader.raw("window")
    if value is None or (type(value) is int and value == 0) or value == "none":
        return 0
    try:
        window_s = parse_duration_s(value)
        check_window_s(window_s)
    except (UnitError, ValueError) as exc:
        raise reader.error(str(exc), at=reader.key("window")) from None
    if window_s and anchored:
        raise reader.error(
            "a rolling window has no calendar period: set period_anchor or defaults.window,"
            " not both",
            at=reader.key("window"),
        )
    return window_s


def _rule_text(reader: KeyReader, name: str, default: str, canonical: Callable[[str], str]) -> str:
    """The canonical text of a class's ``tiers`` or ``taper`` (null: none)."""
    text = reader.text(name, default)
    if text is None:
        return ""
    try:
        return canonical(text)
    except ValueError as exc:
        raise reader.error(str(exc), at=reader.key(name)) from None


def normalise_prefix(text: str, where: str) -> str:
    """A CIDR as ipaddress writes it; ConfigError naming ``where`` and the value if invalid."""
    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise ConfigError(f"{where}: {text!r} is not an IPv4 or IPv6 prefix") from None


def _prefixes_file(path: str, where: str) -> list[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    found = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if text:
            found.append(normalise_prefix(text, f"{path}:{number}"))
    return found


def _classifier(reader: KeyReader) -> ClassifierConfig:
    mode = reader.choice("mode", ("none", "uid", "nodemanager", "cgroup"), "none")
    prefixes = [
        normalise_prefix(p, f"{reader.source}: {reader.key('exempt_prefixes')}")
        for p in reader.strings("exempt_prefixes")
    ]
    path = reader.text("exempt_prefixes_file", None)
    if path is not None:
        prefixes += _prefixes_file(path, f"{reader.source}: {reader.key('exempt_prefixes_file')}")
    reader.done()
    return ClassifierConfig(mode, tuple(dict.fromkeys(prefixes)))  # type: ignore[arg-type]


MAX_CGROUP_PATTERNS = 64
MAX_PATTERN_DEPTH = 16
_PREFIX = re.compile(r"[a-z0-9]{1,16}")


def _pattern(
    reader: KeyReader, base: Mapping[TrafficClass, ClassDefaults], caps: _Caps
) -> CgroupPattern:
    text = reader.text("match", None, allow_null=False)
    if text is None:
        raise reader.error("missing 'match' (e.g. user.slice/user-*.slice)")
    parts = tuple(text.strip("/").split("/"))
    if (
        not text.strip("/")
        or text.startswith("/")
        or len(parts) > MAX_PATTERN_DEPTH
        or any(p in ("", ".", "..") or "**" in p or "\0" in p for p in parts)
    ):
        raise reader.error(
            f"{text!r} is not a relative cgroup path pattern of at most"
            f" {MAX_PATTERN_DEPTH} components (globs within a component, no ** or ..)",
            at=reader.key("match"),
        )
    prefix = reader.text("prefix", "", allow_null=False) or ""
    if prefix and not _PREFIX.fullmatch(prefix):
        raise reader.error(f"{prefix!r} is not [a-z0-9]{{1,16}}", at=reader.key("prefix"))
    defaults_reader = reader.sub("defaults")
    defaults = {
        tc: _class_defaults(defaults_reader.sub(tc), base[tc], *caps[tc]) for tc in TRAFFIC_CLASSES
    }
    defaults_reader.done()
    reader.done()
    return CgroupPattern(parts, prefix, defaults)


def _cgroups(
    reader: KeyReader, base: Mapping[TrafficClass, ClassDefaults], caps: _Caps
) -> CgroupConfig:
    mount = reader.text("mount", None)
    if mount is not None and not mount.startswith("/"):
        raise reader.error(f"{mount!r} is not an absolute path", at=reader.key("mount"))
    raw = reader.raw("tenants") if reader.has("tenants") else None
    reader.used.add("tenants")
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise reader.error("expected a list of {match, prefix, defaults}", at=reader.key("tenants"))
    if len(raw) > MAX_CGROUP_PATTERNS:
        raise reader.error(
            f"{len(raw)} patterns, at most {MAX_CGROUP_PATTERNS}", at=reader.key("tenants")
        )
    patterns = tuple(
        _pattern(KeyReader(item, f"{reader.key('tenants')}[{i}]", reader.source), base, caps)
        for i, item in enumerate(raw)
    )
    gate = reader.flag("gate", False)
    reader.done()
    return CgroupConfig(mount, patterns, gate)


def _check_slice_address(reader: KeyReader, template: str) -> None:
    """``{slice}`` and nothing else: any other placeholder would fail every mail."""
    where = reader.key("slice_address")
    try:
        fields = [
            (name, spec, conversion)
            for _text, name, spec, conversion in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError as exc:
        raise reader.error(f"{template!r} is not a template: {exc}", at=where) from None
    for name, spec, conversion in fields:
        if name != "slice" or spec or conversion:
            shown = (
                "{"
                + name
                + (f"!{conversion}" if conversion else "")
                + (f":{spec}" if spec else "")
                + "}"
            )
            raise reader.error(
                f"{template!r}: unknown placeholder {shown} (only {{slice}})", at=where
            )
    if not fields:
        raise reader.error(f"{template!r} has no {{slice}} placeholder", at=where)


def _mail(reader: KeyReader) -> MailConfig:
    base = MailConfig()
    transport = reader.choice(
        "transport", ("smtp", "sendmail", "spool", "webhook", "none"), base.transport
    )
    template = reader.text("slice_address", base.slice_address)
    if template is not None:
        _check_slice_address(reader, template)
    smtp = reader.sub("smtp")
    sendmail = reader.sub("sendmail")
    spool = reader.sub("spool")
    webhook = reader.sub("webhook")
    url = webhook.text("url", base.webhook_url)
    if url is not None and (
        not url.startswith(("http://", "https://")) or not url.isprintable() or " " in url
    ):
        raise reader.error(f"{url!r} is not an http:// or https:// URL", at=webhook.key("url"))
    if transport == "webhook" and url is None:
        raise reader.error("transport webhook needs webhook.url", at=reader.key("transport"))
    mail = MailConfig(
        transport=transport,  # type: ignore[arg-type]
        from_addr=reader.text("from", base.from_addr, allow_null=False) or base.from_addr,
        from_name=reader.text("from_name", base.from_name, allow_null=False) or base.from_name,
        reply_to=reader.text("reply_to", base.reply_to),
        operators=reader.strings("operators"),
        slice_address=template,
        hostname=reader.text("hostname", base.hostname),
        template=reader.text("template", base.template),
        smtp_host=smtp.text("host", base.smtp_host, allow_null=False) or base.smtp_host,
        smtp_port=smtp.integer("port", base.smtp_port, 1, 65535),
        smtp_starttls=smtp.flag("starttls", base.smtp_starttls),
        smtp_user=smtp.text("user", base.smtp_user),
        smtp_password=smtp.text("password", base.smtp_password),
        smtp_timeout_s=smtp.parsed(
            "timeout", parse_duration_s, base.smtp_timeout_s, MAX_SMTP_TIMEOUT_S
        ),
        sendmail_path=sendmail.text("path", base.sendmail_path, allow_null=False)
        or base.sendmail_path,
        spool_dir=spool.text("dir", base.spool_dir, allow_null=False) or base.spool_dir,
        webhook_url=url,
        webhook_timeout_s=webhook.parsed(
            "timeout", parse_duration_s, base.webhook_timeout_s, MAX_SMTP_TIMEOUT_S
        ),
    )
    for part in (smtp, sendmail, spool, webhook, reader):
        part.done()
    if mail.template is not None:
        # checked here, not at the first mail: an unknown placeholder would fail every one
        from bwenforcer.inputs.template import load_template  # notify imports this module

        try:
            load_template(mail)
        except ConfigError as exc:
            raise reader.error(str(exc), at=reader.key("template")) from None
    return mail


def _metrics(reader: KeyReader) -> MetricsConfig:
    base = MetricsConfig()
    listen = reader.text("listen", base.listen)
    if listen is not None:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise reader.error(f"{listen!r} is not host:port", at=reader.key("listen"))
    metrics = MetricsConfig(listen, reader.text("textfile", base.textfile))
    reader.done()
    return metrics


def _history(reader: KeyReader) -> HistoryConfig:
    base = HistoryConfig()
    history = HistoryConfig(
        hourly_keep_s=reader.parsed("hourly_keep", parse_duration_s, base.hourly_keep_s),
        daily_keep_s=reader.parsed("daily_keep", parse_duration_s, base.daily_keep_s),
        monthly_keep_s=reader.parsed("monthly_keep", parse_duration_s, base.monthly_keep_s),
        file=reader.text("file", base.file),
    )
    reader.done()
    return history


def parse_config(data: object, source: str) -> Config:
    """A Config from an already-parsed YAML document; ConfigError names key path and problem."""
    top = KeyReader(data, "", source)
    base = Config()
    node_cap = top.parsed("node_cap", parse_rate_bps, base.node_cap_bps)
    bwmax = top.parsed("bwmax", parse_rate_bps, base.bwmax_bps)
    if node_cap > bwmax:
        raise top.error(f"node_cap {node_cap} bit/s is above bwmax {bwmax} bit/s", at="node_cap")
    bwmin = top.parsed("bwmin", parse_rate_bps, base.bwmin_bps)
    for key, value in (("node_cap", node_cap), ("bwmax", bwmax), ("bwmin", bwmin)):
        if value <= 0:
            raise top.error("must be above 0", at=key)
    for key, value in (("node_cap", node_cap), ("bwmax", bwmax)):
        if value < bwmin:
            raise top.error(f"{key} {value} bit/s is below bwmin {bwmin} bit/s", at=key)
    period = top.parsed("period", parse_duration_s, base.period_s, MAX_PERIOD_S)
    interval = top.parsed("interval", parse_duration_s, base.interval_s, MAX_INTERVAL_S)
    for key, value in (("period", period), ("interval", interval)):
        if value <= 0:
            raise top.error("must be above 0", at=key)
    anchor = None
    if top.has("period_anchor") and top.data["period_anchor"] is not None:
        anchor = _anchor(top.sub("period_anchor"))
    else:
        top.used.add("period_anchor")
    defaults_reader = top.sub("defaults")
    caps: _Caps = {tc: (class_cap_bps(tc, node_cap, bwmax), bwmin) for tc in TRAFFIC_CLASSES}
    defaults = {
        tc: _class_defaults(defaults_reader.sub(tc), base.defaults[tc], *caps[tc])
        for tc in TRAFFIC_CLASSES
    }
    window = _window(defaults_reader, anchor is not None)
    for tc in TRAFFIC_CLASSES:
        if window and defaults[tc].rollover:
            raise defaults_reader.error(
                "a rolling window has no period end to roll over from: set defaults.window"
                f" or defaults.{tc}.rollover, not both",
                at=f"{defaults_reader.key(tc)}.rollover",
            )
    defaults_reader.done()
    config = Config(
        device=top.text("device", base.device or None) or "",
        node_cap_bps=node_cap,
        bwmax_bps=bwmax,
        bwmin_bps=bwmin,
        period_s=period,
        period_anchor=anchor,
        window_s=window,
        interval_s=interval,
        vanish_grace_s=(
            top.parsed("vanish_grace", parse_duration_s, 0, MAX_PERIOD_S)
            if top.has("vanish_grace") and top.data["vanish_grace"] is not None
            else _used(top, "vanish_grace")
        ),
        state_file=top.text("state_file", base.state_file, allow_null=False) or base.state_file,
        slices_file=top.text("slices_file", base.slices_file),
        lock_timeout_s=top.parsed(
            "lock_timeout", parse_duration_s, base.lock_timeout_s, MAX_LOCK_TIMEOUT_S
        ),
        defaults=defaults,
        mail=_mail(top.sub("mail")),
        metrics=_metrics(top.sub("metrics")),
        classifier=_classifier(top.sub("classifier")),
        history=_history(top.sub("history")),
        cgroups=_cgroups(top.sub("cgroups"), defaults, caps),
        dry_run=top.flag("dry_run", base.dry_run),
        source=source,
    )
    top.done()
    if (config.classifier.mode == "cgroup") != bool(config.cgroups.tenants):
        problem = (
            "classifier.mode cgroup needs cgroups.tenants (the patterns of the tenants it marks)"
            if config.classifier.mode == "cgroup"
            else "cgroups.tenants need classifier.mode: cgroup (only it marks cgroup tenants)"
        )
        raise top.error(problem, at="cgroups" if config.cgroups.tenants else "classifier.mode")
    return config


def _used(reader: KeyReader, key: str) -> None:
    """A key given as null (or not at all): its default, computed from others."""
    reader.used.add(key)


def load_config(path: str | None) -> Config:
    """Load the config named on the command line, by $BWENFORCER_CONFIG, or the default path.

    A file named explicitly (argument or environment) must exist; the default path
    may be missing, and then the built-in defaults apply.
    """
    explicit = path or os.environ.get(CONFIG_ENV)
    if not explicit:
        if not os.path.exists(DEFAULT_CONFIG_PATH):
            return Config()
        explicit = DEFAULT_CONFIG_PATH
    if not os.path.exists(explicit):
        raise ConfigError(f"{explicit}: config file not found")
    return parse_config(read_yaml(explicit), explicit)

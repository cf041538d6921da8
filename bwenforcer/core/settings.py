"""The configuration as the core sees it: frozen dataclasses in base units.

Every value is in base units (bit/s, bytes, seconds). Loading and validating the
YAML file is :mod:`bwenforcer.inputs.config`'s job; nothing here reads a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from bwenforcer.core.layout import BWMAX_BPS, BWMIN_BPS, TrafficClass


@dataclass(frozen=True)
class ClassDefaults:
    """Per-class defaults for slices whose rspec does not say otherwise."""

    limit_bytes: int
    threshold_bytes: int | None = None  # None: 80 % of the limit
    min_rate_bps: int = 0  # raised to bwmin; at most 25 % of the node cap
    max_rate_bps: int | None = None  # None: node cap (default class) or bwmax (exempt)
    share: int = 1
    tiers: str = ""  # canonical text (core.policy.tiers_text); "": none
    taper: str = ""  # canonical text (core.policy.taper_text); "": none
    pacing: bool = True  # False: tiers and taper alone (needs one of them)
    notices: str = ""  # canonical text (core.notices.notices_text); "": threshold notice alone
    rollover: str = ""  # canonical text (core.grants.rollover_text): "P%" or bytes; "": off
    direction: str = "out"  # what the budget counts: out, in or both (core.direction)


def _default_class_defaults() -> Mapping[TrafficClass, ClassDefaults]:
    # PlanetLab's historic budgets: 5.4 GiB per day (default), 16.4 GiB (exempt).
    return {
        "default": ClassDefaults(limit_bytes=5662310 * 1024),
        "exempt": ClassDefaults(limit_bytes=17196646 * 1024),
    }


@dataclass(frozen=True)
class PeriodAnchor:
    """Calendar alignment of recording periods."""

    every: Literal["day", "week", "month"]
    at_s: int = 0  # seconds after local midnight
    tz: str = "UTC"
    weekday: int = 0  # every: week — 0 = Monday
    day: int = 1  # every: month — day of the month (1..28)


@dataclass(frozen=True)
class MailConfig:
    """Notification settings (the ``mail`` key of docs/interfaces.md "Config file")."""

    transport: Literal["smtp", "sendmail", "spool", "webhook", "none"] = "none"
    from_addr: str = "support@localhost"
    from_name: str = "bwenforcer"
    reply_to: str | None = None
    operators: tuple[str, ...] = ()
    slice_address: str | None = None  # template such as "{slice}@slices.example.org"
    hostname: str | None = None  # None: the node's FQDN
    template: str | None = None  # path of a replacement body template
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_timeout_s: int = 10
    sendmail_path: str = "/usr/sbin/sendmail"
    spool_dir: str = "/var/spool/bwenforcer"
    webhook_url: str | None = None  # http:// or https://; required by transport webhook
    webhook_timeout_s: int = 10


@dataclass(frozen=True)
class MetricsConfig:
    """Where metrics are exposed."""

    listen: str | None = "127.0.0.1:9587"  # daemon and node-manager thread
    textfile: str | None = None  # written by `sync` for node_exporter


@dataclass(frozen=True)
class ClassifierConfig:
    """Who marks packets (docs/htb-layout.md "Marks")."""

    mode: Literal["none", "uid", "nodemanager", "cgroup"] = "none"
    exempt_prefixes: tuple[str, ...] = ()  # CIDRs, v4 and v6, validated


@dataclass(frozen=True)
class CgroupPattern:
    """One ``cgroups.tenants`` entry: which cgroups are tenants, how they are named,
    and the budget defaults of the tenants it finds (docs/interfaces.md "cgroups").
    """

    match: tuple[str, ...]  # path components below the cgroup2 mount, each an fnmatch glob
    prefix: str = ""  # "vm": a tenant from unit vm7.scope is named vm_vm7
    defaults: Mapping[TrafficClass, ClassDefaults] = field(default_factory=_default_class_defaults)

    @property
    def level(self) -> int:
        """The ``socket cgroupv2 level`` of the cgroups this pattern matches."""
        return len(self.match)


@dataclass(frozen=True)
class CgroupConfig:
    """Tenants found in the cgroup v2 tree (``cgroups`` key)."""

    mount: str | None = None  # the cgroup2 mount; None: /sys/fs/cgroup or its unified/
    tenants: tuple[CgroupPattern, ...] = ()
    # the restart gate: a new cgroup beside a bound tenant's, not in the maps yet,
    # sends nothing (fail-closed; off by default, see README)
    gate: bool = False


@dataclass(frozen=True)
class InboundConfig:
    """Inbound (download) accounting and limits (``inbound`` key). Off: nothing of the
    inbound path runs and every budget counts what slices send.
    """

    enabled: bool = False


@dataclass(frozen=True)
class HistoryConfig:
    """Retention of the usage history."""

    hourly_keep_s: int = 15 * 86400
    daily_keep_s: int = 730 * 86400
    monthly_keep_s: int = 3650 * 86400
    file: str | None = None  # None: beside the state file, "<state_file>.history"


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    device: str = ""  # not set: sync, the daemon and the node manager enforce nothing
    node_cap_bps: int = BWMAX_BPS
    bwmax_bps: int = BWMAX_BPS
    bwmin_bps: int = BWMIN_BPS
    period_s: int = 86400
    period_anchor: PeriodAnchor | None = None
    # defaults.window: slices whose own attributes say nothing have a rolling window
    # of this many seconds instead of the period (0: the period; core.window)
    window_s: int = 0
    interval_s: int = 300
    # how long a slice gone from its source keeps its classes and cap before it goes
    # to the ledger; None: the longer of two intervals and 10 minutes (grace_s)
    vanish_grace_s: int | None = None
    state_file: str = "/var/lib/bwenforcer/state.json"
    slices_file: str | None = "/etc/bwenforcer/slices.yaml"
    lock_timeout_s: int = 30
    defaults: Mapping[TrafficClass, ClassDefaults] = field(default_factory=_default_class_defaults)
    mail: MailConfig = field(default_factory=MailConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    cgroups: CgroupConfig = field(default_factory=CgroupConfig)
    inbound: InboundConfig = field(default_factory=InboundConfig)
    dry_run: bool = False
    source: str | None = None  # path the config was loaded from, for messages

    @property
    def grace_s(self) -> int:
        """How long a slice gone from its source is kept as it was (``vanish_grace``)."""
        if self.vanish_grace_s is not None:
            return self.vanish_grace_s
        return max(2 * self.interval_s, 600)

    @property
    def history_file(self) -> str:
        """Path of the usage history store."""
        return self.history.file or f"{self.state_file}.history"


@dataclass(frozen=True, slots=True)
class PlanParams:
    """The parts of the config the planner needs."""

    period_s: int
    anchor: PeriodAnchor | None
    bwmin_bps: int
    # False with mail.transport none: nothing would deliver a Notify, and thousands of
    # capped slices would each get one every cycle. A transport set later mails the
    # classes capped and not yet notified, as ever.
    notify: bool = True
    # how long a slice gone from its source keeps its classes and cap (0: none)
    grace_s: int = 0
    # inbound accounting on (config ``inbound.enabled``): budgets count the direction
    # their policy says (core.direction); off: every budget counts what is sent
    inbound: bool = False

    @classmethod
    def from_config(cls, config: Config) -> PlanParams:
        """Planner parameters of a config."""
        return cls(
            config.period_s,
            config.period_anchor,
            config.bwmin_bps,
            notify=config.mail.transport != "none",
            grace_s=config.grace_s,
            inbound=config.inbound.enabled,
        )

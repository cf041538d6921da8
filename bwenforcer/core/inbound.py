"""The seam between the cycle and an inbound (download) backend, as plain data.

An inbound backend counts the bytes each slice's classes receive and enforces a
rate limit on them (nftables counters and limit objects on this kernel; a
shaping backend with IFB and HTB could be another). The cycle reads one
:class:`InboundSnapshot` per cycle and hands the backend the limits the planner
chose; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from bwenforcer.core.layout import TrafficClass

ClassKey = tuple[int, TrafficClass]  # (xid, traffic class)

# the classifier modes that set the conntrack mark an inbound packet is known by (the
# node manager's marks and mode none mark packets only: their replies carry no mark)
INBOUND_MODES = ("uid", "cgroup")


@dataclass(frozen=True)
class InboundSnapshot:
    """One read of the inbound backend.

    ``bytes_by_class``: each known slice class's counter, bytes received since its
    counter was created (a counter that restarts from 0 is taken as a reset, as the
    HTB side does). ``limits_bps``: the limit each class has now, as it was asked for
    (a class with no entry is not limited). ``unclassified_bytes``: bytes of packets
    that belong to no slice, by class (for metrics only).
    """

    bytes_by_class: Mapping[ClassKey, int] = field(default_factory=dict)
    limits_bps: Mapping[ClassKey, int] = field(default_factory=dict)
    unclassified_bytes: Mapping[TrafficClass, int] = field(default_factory=dict)


@dataclass(frozen=True)
class InboundLimit:
    """Set (``rate_bps``) or lift (``None``) the inbound limit of one slice class."""

    xid: int
    traffic_class: TrafficClass
    rate_bps: int | None

    def describe(self) -> str:
        """``xid 1001 default inbound limit 2000000 bit/s`` (or ``… lifted``), for logs."""
        what = "lifted" if self.rate_bps is None else f"{self.rate_bps} bit/s"
        return f"xid {self.xid} {self.traffic_class} inbound limit {what}"


@dataclass(frozen=True)
class InboundFailure:
    """An inbound limit change the kernel refused; the backend's other changes went through."""

    change: InboundLimit
    errno: int
    message: str

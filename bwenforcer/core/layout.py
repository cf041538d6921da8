"""The HTB layout of docs/htb-layout.md: class ids, marks, handles and fixed rates.

Everything that knows how an xid maps onto the kernel's numbers lives here, so a
wider layout can replace it in one place.
"""

from __future__ import annotations

from typing import Literal

from bwenforcer.errors import XidOutOfRange

TrafficClass = Literal["default", "exempt"]
TRAFFIC_CLASSES: tuple[TrafficClass, TrafficClass] = ("default", "exempt")

ROOT_XID = 0
DEFAULT_XID = 0xFFF
XID_MAX = 0xFFE  # largest xid a real slice may have; 0xfff is the default slice

MAJOR = 1
ROOT_QDISC_HANDLE = MAJOR << 16  # 1:
LINE_MINOR = 0x1  # 1:1, rate = bwmax
CAP_MINOR = 0x10  # 1:10, ceil = node cap (default traffic)
SITE_MINOR = 0x100  # 1:100, room for a site limiter
EXEMPT_MINOR = 0x20  # 1:20, exempt traffic
DEFAULT_CLASS_MINOR = 0x1000 | DEFAULT_XID  # 1:1fff, unclassified packets
CLASS_BITS = {"default": 0x1000, "exempt": 0x2000}  # a slice class's minor: bits | xid
XID_MASK = 0xFFF  # the xid's bits of a class minor (or of a 0x1000|xid mark)
# classifier.mode values whose marks someone else sets (the node manager: mark =
# xid); in the others bwenforcer marks, only ever 0x1000|xid or 0x2000|xid, and a
# bare mark (a kernel packet's stray one) is no slice's.
BARE_MARK_MODES = ("none", "nodemanager")

BWMIN_BPS = 8_000  # floor of every rate: tc cannot do 0; 1 kB/s keeps a slice alive
BWMAX_BPS = 1_000_000_000  # default line rate (1 Gbit/s), as bwlimit
QUANTUM_PER_SHARE = 1600
MAX_SHARE = 1_000_000  # quantum ≤ 1.6 GB, well inside the kernel's 32 bits
LEAF_QDISC_LIMIT_PACKETS = 1000


def handle(minor: int) -> int:
    """The 32-bit tc handle ``1:<minor>``."""
    return (MAJOR << 16) | minor


def check_xid(xid: int) -> int:
    """Return ``xid`` if a slice may have it (0..0xffe or the default slice 0xfff)."""
    if not 0 <= xid <= DEFAULT_XID:
        raise XidOutOfRange(
            f"xid {xid} out of range: slice ids must be 0..{XID_MAX} (0xfff is the default slice)"
        )
    return xid


def class_minor(xid: int, traffic_class: TrafficClass) -> int:
    """Minor of a slice's class: 0x1000|xid (default) or 0x2000|xid (exempt)."""
    return CLASS_BITS[traffic_class] | check_xid(xid)


def mark(xid: int, traffic_class: TrafficClass) -> int:
    """Firewall (conntrack) mark that steers a packet into the slice's class."""
    return class_minor(xid, traffic_class)


def parent_minor(traffic_class: TrafficClass) -> int:
    """Parent of a slice class: 1:100 for default traffic, 1:20 for exempt."""
    return SITE_MINOR if traffic_class == "default" else EXEMPT_MINOR


def leaf_qdisc_handle(minor: int) -> int:
    """Handle of a slice class's leaf pfifo: ``<minor>:`` (as bwlimit)."""
    return minor << 16


def slice_of_minor(minor: int) -> tuple[int, TrafficClass] | None:
    """``(xid, class)`` for a slice class minor, None for the tree's own classes."""
    kind = minor & 0xF000
    xid = minor & 0x0FFF
    if kind == 0x1000:
        return xid, "default"
    if kind == 0x2000:
        return xid, "exempt"
    return None


def quantum(share: int) -> int:
    """HTB quantum in bytes for a share."""
    return share * QUANTUM_PER_SHARE


def share_of_quantum(quantum_bytes: int) -> int:
    """Inverse of :func:`quantum`, at least 1."""
    return max(1, quantum_bytes // QUANTUM_PER_SHARE)


def kernel_rate_bps(bps: int) -> int:
    """The rate the kernel will hold for ``bps``: it stores bytes per second."""
    return (bps // 8) * 8

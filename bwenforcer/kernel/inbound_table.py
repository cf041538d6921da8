"""The inbound table's shape: object names, the ``nft -f`` ruleset, limit sizing,
and the snapshot read from the objects (docs/inbound.md).

Per slice class (xid, class) with mark ``m`` = ``layout.mark(xid, class)``: counter
``c<m>`` (map ``in_counter``), when limited limit ``l<m>_a`` or ``l<m>_b`` (map
``in_limit``); the no-slice counters are those of xid 0xfff (``c1fff``, ``c2fff``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence

from bwenforcer.core.inbound import InboundSnapshot
from bwenforcer.core.layout import DEFAULT_XID, TRAFFIC_CLASSES, TrafficClass, mark
from bwenforcer.kernel.classifier import _collapsed
from bwenforcer.kernel.nftobj import NftObject

TABLE = "bwenforcer_in"
MAP_COUNTER = "in_counter"
MAP_LIMIT = "in_limit"
STRUCTURE_VERSION = 1  # part of the table's digest: a new ruleset shape reloads it
# the limit object's rate is this share of the limit asked for: a new object's full
# bucket (1 s of rate) then keeps a 20 s average within ~2 % of the limit
RATE_PERCENT = 97
MIN_BURST_BYTES = 16_384
BURST_S_DIVISOR = 100  # burst = 10 ms of rate (at least MIN_BURST_BYTES)
# what the messages can carry; the kernel itself refuses rates over ~147 Gbit/s
# (EOVERFLOW: it keeps the bucket in nanoseconds of a u64)
MAX_LIMIT_BPS = 10**15

_DIGIT_CLASS: dict[str, TrafficClass] = {"1": "default", "2": "exempt"}
COUNTER_NAME = re.compile(r"c([12])([0-9a-f]{3})")
LIMIT_NAME = re.compile(r"l([12])([0-9a-f]{3})_([ab])")
_ASKED = re.compile(r"bwenforcer (\d+) bit/s")


def limit_rate_bytes_s(limit_bps: int) -> int:
    """The limit object's rate for a slice limit: 97 % of it, in bytes per second."""
    return max(1, limit_bps * RATE_PERCENT // 800)


def limit_burst_bytes(rate_bytes_s: int) -> int:
    """The limit object's burst: 10 ms of its rate, at least 16 KiB.

    The kernel's bucket is one second of rate plus the burst, so the burst hardly
    changes what TCP gets (measured: 2 KiB and 40 KB gave the same 20 s averages).
    """
    return min(0xFFFFFFFF, max(MIN_BURST_BYTES, rate_bytes_s // BURST_S_DIVISOR))  # a u32


def asked_bps(obj: NftObject) -> int:
    """The limit as it was asked for: from the object's comment; an object without it
    (not made by bwenforcer) from its rate, rounded up to whole bytes per second.
    """
    found = _ASKED.fullmatch(obj.comment or "")
    if found:
        return int(found.group(1))
    return -(-obj.value * 800 // RATE_PERCENT)


def counter_name(m: int) -> str:
    """The counter object of mark ``m``: ``c13e9``."""
    return f"c{m:x}"


def class_of(name: str, pattern: re.Pattern[str]) -> tuple[int, TrafficClass] | None:
    """``(xid, class)`` of an object named as ``pattern`` (COUNTER_NAME, LIMIT_NAME)
    says; None for any other name.
    """
    found = pattern.fullmatch(name)
    if found is None:
        return None
    return int(found.group(2), 16), _DIGIT_CLASS[found.group(1)]


def structure_digest(dev: str, exempt_prefixes: Sequence[str]) -> str:
    """A short digest of the table's shape (device, exempt prefixes), in its comment."""
    text = repr((STRUCTURE_VERSION, dev, _collapsed(tuple(exempt_prefixes))))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _elements(items: Iterable[str]) -> str:
    text = ", ".join(items)
    return f" elements = {{ {text} }};" if text else ""


def render_ruleset(
    table: str,
    dev: str,
    exempt_prefixes: Sequence[str],
    counters: Mapping[str, tuple[int, int]],
    limits: Mapping[str, NftObject],
) -> str:
    """The ``nft -f`` script: the table replaced in one transaction, with ``counters``
    (``{name: (bytes, packets)}``, their values carried over) and ``limits`` (objects
    kept as they were, each referenced by the map).
    """
    v4, v6 = _collapsed(tuple(exempt_prefixes))
    lines = [
        f"table inet {table}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        f'  comment "bwenforcer inbound {structure_digest(dev, exempt_prefixes)}"',
    ]
    for name, (bytes_, packets) in sorted(counters.items()):
        lines.append(f"  counter {name} {{ packets {packets} bytes {bytes_} }}")
    for obj in sorted(limits.values(), key=lambda o: o.name):
        comment = f' comment "{obj.comment}";' if obj.comment else ""
        lines.append(
            f"  limit {obj.name} {{{comment} rate over {obj.value} bytes/second"
            f" burst {obj.extra} bytes }}"
        )
    slice_counters = [n for n in sorted(counters) if class_of(n, COUNTER_NAME) and n[2:] != "fff"]
    limit_names = sorted(limits)
    no_slice_default = counter_name(mark(DEFAULT_XID, "default"))
    no_slice_exempt = counter_name(mark(DEFAULT_XID, "exempt"))
    counter_elements = _elements(f'0x{n[1:]} : "{n}"' for n in slice_counters)
    limit_elements = _elements(f'0x{n[1:5]} : "{n}"' for n in limit_names)
    lines += [
        f"  map {MAP_COUNTER} {{ type mark : counter;{counter_elements} }}",
        f"  map {MAP_LIMIT} {{ type mark : limit;{limit_elements} }}",
        f"  set exempt4 {{ type ipv4_addr; flags interval;{_elements(v4)} }}",
        f"  set exempt6 {{ type ipv6_addr; flags interval;{_elements(v6)} }}",
        "  chain count {",
        f"    limit name ct mark map @{MAP_LIMIT} drop",
        f"    counter name ct mark map @{MAP_COUNTER} accept",
        f'    ip saddr @exempt4 counter name "{no_slice_exempt}" accept',
        f'    ip6 saddr @exempt6 counter name "{no_slice_exempt}" accept',
        f'    counter name "{no_slice_default}"',
        "  }",
    ]
    for hook in ("input", "forward"):
        lines += [
            f"  chain {hook} {{",
            f"    type filter hook {hook} priority filter; policy accept;",
            f'    iifname "{dev}" jump count',
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def snapshot(
    counters: Mapping[str, NftObject],
    limits: Mapping[str, NftObject],
    keys: dict[str, tuple[int, TrafficClass] | None] | None = None,
) -> InboundSnapshot:
    """The snapshot of a table's counters and limit objects: bytes by class, the limits
    in force (an object a map element refers to) as asked for, the no-slice counters
    apart. ``keys`` memoises object name → class across calls.
    """
    keys = {} if keys is None else keys
    for name in counters.keys() - keys.keys():
        keys[name] = class_of(name, COUNTER_NAME)
    counted = {keys[n]: o.value for n, o in counters.items()}
    counted.pop(None, None)  # type: ignore[call-overload]
    unclassified = {
        cls: counted.pop((DEFAULT_XID, cls))
        for cls in TRAFFIC_CLASSES
        if (DEFAULT_XID, cls) in counted
    }
    in_force: dict[tuple[int, TrafficClass], int] = {}
    for obj in limits.values():
        key = class_of(obj.name, LIMIT_NAME)
        if obj.use and key is not None and key[0] != DEFAULT_XID:
            in_force[key] = asked_bps(obj)
    return InboundSnapshot(counted, in_force, unclassified)

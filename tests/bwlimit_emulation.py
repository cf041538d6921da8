"""PlanetLab's bwlimit (plnode-utils, ``plnode/bwlimit_lxc.py``) as a foreign component.

Restated from reading it, not copied: the ``tc`` commands its ``init(dev, bwcap)``
and ``on(xid, …)`` run, in order, with every error swallowed as its ``tc()``
helper swallows them (here, the ``fw`` filters it adds fail: this kernel has no
``cls_fw``). Its tree: 1: htb default 1fff; 1:1 (rate bwmax, ceil = rate); 1:10
(the node cap: rate 1000bit, ceil bwcap); 1:100 under it; 1:20 (exempt); a
slice's classes 1:1<xid> (parent 1:100) and 1:2<xid> (parent 1:20) with pfifo
leaves; no root-slice classes 1:1000/1:2000. ``init`` deletes an existing htb
root first, so every filter and every counter goes with it.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

BWMIN_BPS = 1000  # bwlimit's bwmin
BWMAX_BPS = 1_000_000_000  # bwlimit's bwmax
QUANTUM = 1600
DEFAULT_XID = 0xFFF


@dataclass(frozen=True)
class SliceLimits:
    """What bwlimit's ``on()`` is given for a slice (bit/s; share as a multiple of 1600)."""

    share: int = 1
    minrate_bps: int = BWMIN_BPS
    maxrate_bps: int | None = None  # None: the node cap
    minexemptrate_bps: int = BWMIN_BPS
    maxexemptrate_bps: int = BWMAX_BPS


def on_commands(dev: str, xid: int, bwcap_bps: int, limits: SliceLimits) -> list[list[str]]:
    """The commands of ``on(xid, dev, …)``: both classes, their pfifos, an fw filter."""
    maxrate = min(limits.maxrate_bps or bwcap_bps, bwcap_bps)
    default_minor, exempt_minor = 0x1000 | xid, 0x2000 | xid
    out = []
    for minor, parent, rate, ceil in (
        (default_minor, "1:100", limits.minrate_bps, maxrate),
        (exempt_minor, "1:20", limits.minexemptrate_bps, limits.maxexemptrate_bps),
    ):
        out.append(
            ["class", "replace", "dev", dev, "parent", parent, "classid", f"1:{minor:x}",
             "htb", "rate", f"{rate}bit", "ceil", f"{ceil}bit",
             "quantum", str(limits.share * QUANTUM)]
        )  # fmt: skip
    for minor in (default_minor, exempt_minor):
        out.append(
            ["qdisc", "replace", "dev", dev, "parent", f"1:{minor:x}", "handle", f"{minor:x}",
             "pfifo"]
        )  # fmt: skip
    out.append(
        ["filter", "replace", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1",
         "handle", str(xid), "fw", "flowid", f"1:{default_minor:x}"]
    )  # fmt: skip
    return out


def init_commands(
    dev: str, bwcap_bps: int, slices: dict[int, SliceLimits], had_htb: bool
) -> list[list[str]]:
    """The commands of ``init(dev, bwcap)``: a new tree, then ``on()`` for the
    default slice and for every slice class it found before (``slices``)."""
    out = []
    if had_htb:
        out.append(["qdisc", "del", "dev", dev, "root", "handle", "1:"])
    out += [
        ["qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1fff"],
        ["class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb",
         "rate", f"{BWMAX_BPS}bit"],
        ["class", "add", "dev", dev, "parent", "1:1", "classid", "1:10", "htb",
         "rate", f"{BWMIN_BPS}bit", "ceil", f"{bwcap_bps}bit"],
        ["class", "add", "dev", dev, "parent", "1:10", "classid", "1:100", "htb",
         "rate", f"{BWMIN_BPS}bit", "ceil", f"{bwcap_bps}bit"],
        ["class", "add", "dev", dev, "parent", "1:1", "classid", "1:20", "htb",
         "rate", f"{BWMIN_BPS}bit", "ceil", f"{BWMAX_BPS}bit"],
    ]  # fmt: skip
    out += on_commands(dev, DEFAULT_XID, bwcap_bps, SliceLimits())
    for xid, limits in sorted(slices.items()):
        if xid != DEFAULT_XID:
            out += on_commands(dev, xid, bwcap_bps, limits)
    return out


def run_tc(prefix: Sequence[str], commands: list[list[str]]) -> list[str]:
    """Run each command as ``prefix + command`` (e.g. ``["tc", "-n", NS]``), errors
    swallowed as bwlimit swallows them; the errors, for a test that wants to see them."""
    errors = []
    for command in commands:
        proc = subprocess.run(
            [*prefix, *command], capture_output=True, text=True, check=False, timeout=30
        )
        if proc.returncode:
            errors.append(f"{' '.join(command)}: {proc.stderr.strip()}")
    return errors


_CAP = re.compile(r"class htb 1:10 parent 1:1 .*?ceil (\d+)([KMG]?)bit")
_UNITS = {"": 1, "K": 1000, "M": 1_000_000, "G": 1_000_000_000}


def get_bwcap(prefix: Sequence[str], dev: str) -> int:
    """bwlimit's ``get_bwcap``: 1:10's ceil in bit/s, -1 without a tree."""
    out = subprocess.run(
        [*prefix, "-d", "class", "show", "dev", dev],
        capture_output=True, text=True, check=False, timeout=30,
    ).stdout  # fmt: skip
    match = _CAP.search(out)
    return -1 if match is None else int(match.group(1)) * _UNITS[match.group(2)]


_SLICE = re.compile(
    r"class htb 1:([12])([0-9a-f]{3}) parent 1:(?:100|20) .*?quantum (\d+) "
    r"rate (\d+)([KMG]?)bit ceil (\d+)([KMG]?)bit"
)


def slices_in_tree(prefix: Sequence[str], dev: str) -> dict[int, SliceLimits]:
    """bwlimit's ``get()``: the slices' classes, what ``init`` puts back."""
    out = subprocess.run(
        [*prefix, "-d", "class", "show", "dev", dev],
        capture_output=True, text=True, check=False, timeout=30,
    ).stdout  # fmt: skip
    found: dict[int, dict[str, int]] = {}
    for m in _SLICE.finditer(out):
        rate, ceil = int(m.group(4)) * _UNITS[m.group(5)], int(m.group(6)) * _UNITS[m.group(7)]
        got = found.setdefault(int(m.group(2), 16), {})
        if m.group(1) == "1":
            got.update(share=max(1, int(m.group(3)) // QUANTUM), minrate_bps=rate,
                       maxrate_bps=ceil)  # fmt: skip
        else:
            got.update(minexemptrate_bps=rate, maxexemptrate_bps=ceil)
    return {xid: SliceLimits(**got) for xid, got in found.items()}


def init(prefix: Sequence[str], dev: str, bwcap_bps: int) -> list[str]:
    """bwlimit's ``init(dev, bwcap)`` on the device; the swallowed errors."""
    had_htb = "qdisc htb 1:" in subprocess.run(
        [*prefix, "qdisc", "show", "dev", dev],
        capture_output=True, text=True, check=False, timeout=30,
    ).stdout  # fmt: skip
    slices = slices_in_tree(prefix, dev)
    return run_tc(prefix, init_commands(dev, bwcap_bps, slices, had_htb))


def stop(prefix: Sequence[str], dev: str) -> None:
    """bwlimit's ``stop(dev)``: the root qdisc deleted (twice, errors swallowed)."""
    run_tc(prefix, [["qdisc", "del", "dev", dev, "root"]] * 2)

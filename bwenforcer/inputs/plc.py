"""PLC's ``GetSlivers()`` reply → desired slices, read as PlanetLab's slivermanager reads it.

Used by the node-manager thread when no node-manager database holds the slices:
each sliver's net_* tags are laid over slivermanager's defaults into an rspec,
and the result is read as a node-manager database (see :mod:`.slices`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from bwenforcer.core.model import DesiredSet
from bwenforcer.core.settings import Config
from bwenforcer.errors import SliceError
from bwenforcer.inputs.slices import account_uid, from_nodemanager_db

# The net_* part of the node manager's slivermanager.DEFAULT_ALLOCATION (PlanetLab
# NodeManager, slivermanager.py: rates in kbit/s as bwlimit's bwmin/1000 = 0 and
# bwmax/1000, byte budgets in KiB). Every sliver's rspec holds all of them; a
# tag replaces one when its value is a number (slivermanager falls back to the
# default otherwise), and net_max_rate follows the primary interface's bwlimit
# (bit/s) when PLC sets one.
SLIVERMANAGER_NET_DEFAULTS: Mapping[str, int] = {
    "net_min_rate": 0,
    "net_max_rate": 1_000_000,
    "net_share": 1,
    "net_i2_min_rate": 0,
    "net_i2_max_rate": 1_000_000,
    "net_i2_share": 1,
    "net_max_kbyte": 10_546_875,
    "net_thresh_kbyte": 9_492_187,
    "net_i2_max_kbyte": 31_640_625,
    "net_i2_thresh_kbyte": 28_476_562,
}
MAX_SLIVERS = 100_000  # bound on one PLC reply (a node carries hundreds)


def _tag_number(value: object, default: int) -> object:
    """A tag's value as slivermanager takes it: a number, else the default."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return default
    try:
        number = float(value)
    except ValueError:
        return default
    if not math.isfinite(number):
        return default
    return int(number) if number == int(number) else number


def from_plc_slivers(
    data: Mapping[str, Any],
    config: Config,
    default_record: str = "pl_default",
    uid_of: Callable[[str], int | None] = account_uid,
    log_errors: bool = True,
) -> DesiredSet:
    """The slices of PLC's ``GetSlivers()`` reply, when no node-manager database holds them.

    ``data["slivers"]`` is a list of ``{"name", "attributes": [{"tagname", "value"}]}``;
    each sliver's rspec is built as slivermanager builds it (see
    :data:`SLIVERMANAGER_NET_DEFAULTS`), then read as a database record (no loans).
    """
    slivers = data.get("slivers")
    if not isinstance(slivers, list):
        raise SliceError("PLC data: 'slivers' is not a list")
    if len(slivers) > MAX_SLIVERS:
        raise SliceError(f"PLC data: {len(slivers)} slivers, more than {MAX_SLIVERS}")
    defaults = dict(SLIVERMANAGER_NET_DEFAULTS)
    interfaces = data.get("interfaces", data.get("networks")) or ()
    for interface in interfaces if isinstance(interfaces, list) else ():
        if isinstance(interface, Mapping) and interface.get("is_primary"):
            bwlimit_bps = _tag_number(interface.get("bwlimit"), -1)
            if isinstance(bwlimit_bps, int | float) and bwlimit_bps >= 0:
                defaults["net_max_rate"] = int(bwlimit_bps) // 1000
    db: dict[str, object] = {}
    for index, sliver in enumerate(slivers):
        name = sliver.get("name") if isinstance(sliver, Mapping) else None
        key = name if isinstance(name, str) else f"slivers[{index}]"
        if not isinstance(sliver, Mapping):
            db[key] = sliver
            continue
        tags: dict[object, object] = {}
        attributes = sliver.get("attributes")
        for attribute in attributes if isinstance(attributes, list) else ():
            if isinstance(attribute, Mapping):
                tags[attribute.get("tagname")] = attribute.get("value")
        rspec = {k: _tag_number(tags.get(k), d) for k, d in defaults.items()}
        db[key] = {"name": name, "rspec": rspec, "_rspec": rspec}
    return from_nodemanager_db(db, config, default_record, uid_of, log_errors)

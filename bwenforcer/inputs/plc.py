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

# The net_* part of the node manager's slivermanager.DEFAULT_ALLOCATION (python3
# LXC NodeManager, slivermanager.py): rates in kbit/s as bwlimit's bwmin/1000 = 1
# and bwmax/1000, byte budgets in KiB. Every sliver's rspec holds all of them. A
# tag replaces a default when it converts to the default's type, as slivermanager
# converts it (``type(default)(tag)``): the rates are floats ("1.5e3", " 2000 "),
# the other keys integers ("1.5" is no integer: the default). net_max_rate's
# default follows the primary network's bwlimit (bit/s) in ``data["networks"]``
# (slivermanager reads no other key for it; ``interfaces`` is net.py's).
SLIVERMANAGER_NET_DEFAULTS: Mapping[str, int | float] = {
    "net_min_rate": 1.0,
    "net_max_rate": 1_000_000.0,
    "net_share": 1,
    "net_i2_min_rate": 1.0,
    "net_i2_max_rate": 1_000_000.0,
    "net_i2_share": 1,
    "net_max_kbyte": 10_546_875,
    "net_thresh_kbyte": 9_492_187,
    "net_i2_max_kbyte": 31_640_625,
    "net_i2_thresh_kbyte": 28_476_562,
}
MAX_SLIVERS = 100_000  # bound on one PLC reply (a node carries hundreds)


class _NotANumber:
    """A tag value slivermanager cannot convert at all (it would fail the whole poll):
    the record is refused by name (its slice keeps its classes), never defaulted.
    """

    def __init__(self, value: object) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def _tag_value(value: object, default: int | float) -> object:
    """A tag's value converted as slivermanager converts it: to the default's type;
    the default when that conversion is refused (ValueError).

    Deviations, on the side of the cap: a value no conversion applies to (None, a
    list) refuses the record instead of failing every sliver; "nan", "inf" and
    negative rates are kept, and refused by the record's checks (slivermanager
    would hand them to bwlimit).
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return _NotANumber(value)
    try:
        return int(value) if isinstance(default, int) else float(value)
    except ValueError:
        return default
    except OverflowError:  # int(float("inf")): no integer at all
        return _NotANumber(value)


def _network_max_rate_kbit(data: Mapping[str, Any]) -> float | None:
    """net_max_rate's default from the primary network's bwlimit (bit/s → kbit/s), if any.

    A negative bwlimit (net.py's "no node limit") leaves the default as it is.
    """
    networks = data.get("networks")
    rate = None
    for network in networks if isinstance(networks, list) else ():
        if not isinstance(network, Mapping) or not network.get("is_primary"):
            continue
        bwlimit = network.get("bwlimit")
        usable = isinstance(bwlimit, int | float) and not isinstance(bwlimit, bool)
        if usable and math.isfinite(bwlimit) and bwlimit >= 0:
            rate = bwlimit / 1000
    return rate


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
    Unlike slivermanager, whose net_max_rate default stays at the last bwlimit PLC
    sent, each reply is read on its own: a bwlimit PLC no longer sends lifts only
    that default (the node cap, 1:10's ceil, still holds).
    """
    slivers = data.get("slivers")
    if not isinstance(slivers, list):
        raise SliceError("PLC data: 'slivers' is not a list")
    if len(slivers) > MAX_SLIVERS:
        raise SliceError(f"PLC data: {len(slivers)} slivers, more than {MAX_SLIVERS}")
    defaults = dict(SLIVERMANAGER_NET_DEFAULTS)
    network_rate_kbit = _network_max_rate_kbit(data)
    if network_rate_kbit is not None:
        defaults["net_max_rate"] = network_rate_kbit
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
        rspec = {k: d if k not in tags else _tag_value(tags[k], d) for k, d in defaults.items()}
        db[key] = {"name": name, "rspec": rspec, "_rspec": rspec}
    return from_nodemanager_db(db, config, default_record, uid_of, log_errors)

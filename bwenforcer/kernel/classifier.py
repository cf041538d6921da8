"""The agent's own nftables table: ``classifier.mode`` ``uid`` and ``nodemanager``.

``uid`` marks traffic by socket owner:

In the output path, a new connection whose socket belongs to a slice's uid gets
the conntrack mark 0x1000|xid, or 0x2000|xid when its destination is in the
exempt prefix sets; every packet of a marked connection then gets its mark
from the conntrack mark, which also catches the packets sent without a socket
owner (packets of other connections keep whatever mark they had). Two uid →
mark maps keep it one lookup per packet for any number of slices. The table
(``inet``, so IPv4 and IPv6) is replaced in one ``nft -f`` transaction and
nothing else on the host is touched.

``nodemanager``: PlanetLab's LXC node manager marks a sliver's packets with
mark = xid itself (ebtables), and has no exempt marking a stock kernel can run
(its CLASSIFY ``--add-mark`` is a PlanetLab kernel's). In the postrouting hook,
which the slivers' forwarded and NATed packets pass (they never pass the host's
output hook), a packet with such a mark (1..0xffe) to an exempt prefix gets
0x2000 added: the mark → class filter then takes it to the slice's exempt class.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from bwenforcer.core.layout import CLASS_BITS, XID_MAX, mark
from bwenforcer.errors import ClassifierError, ConfigError
from bwenforcer.files.tools import tool_path
from bwenforcer.kernel.nftsets import MapChange, MapMissing, NftMaps

log = logging.getLogger(__name__)

TABLE = "bwenforcer"
NFT_TIMEOUT_S = 30
MODES = ("uid", "nodemanager")


@dataclass(frozen=True)
class ClassifierSpec:
    """What the table must say: which uids are slices, which prefixes are exempt."""

    xids: tuple[int, ...]
    exempt_prefixes: tuple[str, ...]


def _elements(items: list[str]) -> str:
    return f" elements = {{ {', '.join(items)} }};" if items else ""


def _collapsed(prefixes: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The exempt prefixes as (IPv4, IPv6) lists, normalised and collapsed.

    Collapsing matters: nft refuses overlapping elements in an interval set.
    """
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    for text in prefixes:
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise ConfigError(f"classifier exempt prefix {text!r} is not a CIDR prefix") from None
        if isinstance(net, ipaddress.IPv4Network):
            v4.append(net)
        else:
            v6.append(net)
    return (
        [str(n) for n in ipaddress.collapse_addresses(v4)],
        [str(n) for n in ipaddress.collapse_addresses(v6)],
    )


def spec_digest(spec: ClassifierSpec, mode: str = "uid") -> str:
    """A short digest of a spec, kept in the table's comment to skip needless reloads."""
    xids = sorted(set(spec.xids)) if mode == "uid" else []  # nodemanager: any xid's mark
    text = repr((xids, _collapsed(spec.exempt_prefixes)))
    if mode != "uid":
        text = f"{mode} {text}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def render_ruleset(spec: ClassifierSpec, table: str = TABLE, mode: str = "uid") -> str:
    """The whole ``nft -f`` script: create, delete and redefine the table in one transaction."""
    if mode == "nodemanager":
        return _render_nodemanager(spec, table)
    xids = sorted(set(spec.xids))
    v4, v6 = _collapsed(spec.exempt_prefixes)
    default_map = [f"{x} : {mark(x, 'default'):#x}" for x in xids]
    exempt_map = [f"{x} : {mark(x, 'exempt'):#x}" for x in xids]
    return f"""table inet {table}
delete table inet {table}
table inet {table} {{
  comment "bwenforcer spec {spec_digest(spec)}"
  map slice_default {{ type uid : mark;{_elements(default_map)} }}
  map slice_exempt {{ type uid : mark;{_elements(exempt_map)} }}
  set exempt4 {{ type ipv4_addr; flags interval;{_elements(v4)} }}
  set exempt6 {{ type ipv6_addr; flags interval;{_elements(v6)} }}
  chain output {{
    type route hook output priority mangle; policy accept;
    ct mark 0 ip daddr @exempt4 ct mark set meta skuid map @slice_exempt
    ct mark 0 ip6 daddr @exempt6 ct mark set meta skuid map @slice_exempt
    ct mark 0 ct mark set meta skuid map @slice_default
    ct mark != 0 meta mark set ct mark
  }}
}}
"""


def _render_nodemanager(spec: ClassifierSpec, table: str) -> str:
    """``mode: nodemanager``: mark = xid to an exempt prefix → mark | 0x2000."""
    v4, v6 = _collapsed(spec.exempt_prefixes)
    xid_marks = f"1-{XID_MAX:#x}"
    exempt = f"meta mark set meta mark or {CLASS_BITS['exempt']:#x}"
    return f"""table inet {table}
delete table inet {table}
table inet {table} {{
  comment "bwenforcer spec {spec_digest(spec, "nodemanager")}"
  set exempt4 {{ type ipv4_addr; flags interval;{_elements(v4)} }}
  set exempt6 {{ type ipv6_addr; flags interval;{_elements(v6)} }}
  chain postrouting {{
    type filter hook postrouting priority mangle; policy accept;
    meta mark {xid_marks} ip daddr @exempt4 {exempt}
    meta mark {xid_marks} ip6 daddr @exempt6 {exempt}
  }}
}}
"""


class Classifier:
    """The agent's nftables table, in the current namespace or (tests) in ``netns``."""

    def __init__(
        self, netns: str | None = None, nft: str = "nft", table: str = TABLE, mode: str = "uid"
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"classifier mode {mode!r} has no table (modes: {', '.join(MODES)})")
        self.prefix = [tool_path("ip"), "netns", "exec", netns] if netns else []
        self.nft = tool_path(nft)  # by absolute path: cron's PATH has no /usr/sbin
        self.table = table
        self.mode = mode

    def _run(self, *args: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [*self.prefix, self.nft, *args],
                input=script,
                capture_output=True,
                text=True,
                timeout=NFT_TIMEOUT_S,
                check=False,
            )
        except FileNotFoundError:
            raise ClassifierError(f"{self.nft} not found: install nftables") from None
        except subprocess.TimeoutExpired:
            raise ClassifierError(f"{self.nft} did not answer in {NFT_TIMEOUT_S}s") from None

    def _installed_digest(self) -> str | None:
        # terse: the comment without thousands of map elements
        proc = self._run("-t", "list", "table", "inet", self.table)
        if proc.returncode != 0:
            return None
        for line in proc.stdout.splitlines():
            if 'comment "bwenforcer spec ' in line:
                return line.split("bwenforcer spec ", 1)[1].strip('" ')
        return None

    def installed(self) -> bool:
        """True when the table exists."""
        return self._run("-t", "list", "table", "inet", self.table).returncode == 0

    def apply(self, spec: ClassifierSpec) -> bool:
        """Install the table for ``spec`` atomically; False if it was already in place."""
        if self._installed_digest() == spec_digest(spec, self.mode):
            return False
        proc = self._run("-f", "-", script=render_ruleset(spec, self.table, self.mode))
        if proc.returncode != 0:
            first = (proc.stderr.strip().splitlines() or ["nft failed"])[0]
            raise ClassifierError(f"nft table inet {self.table}: {first}")
        if self.mode == "uid":
            log.info(
                "classifier: table inet %s marks %d slices, %d exempt prefixes",
                self.table,
                len(set(spec.xids)),
                len(spec.exempt_prefixes),
            )
        else:
            log.info(
                "classifier: table inet %s marks the node manager's xid marks exempt"
                " towards %d prefixes",
                self.table,
                len(spec.exempt_prefixes),
            )
        return True

    def remove(self) -> None:
        """Delete the table; absent is fine."""
        if self.installed():
            proc = self._run("delete", "table", "inet", self.table)
            if proc.returncode != 0:
                first = (proc.stderr.strip().splitlines() or ["nft failed"])[0]
                raise ClassifierError(f"nft delete table inet {self.table}: {first}")
            log.info("classifier: table inet %s removed", self.table)


# ``classifier.mode: cgroup``: the same marks, by the socket's cgroup. The table's
# structure (maps, sets, rules) changes only with the config and is loaded by
# ``nft -f``; the map elements, keyed by cgroup id (which the nft command cannot
# take), change every time a unit starts or restarts and go over raw netlink
# (nftsets), one transaction per cycle, only when something changed.
MAP_DEFAULT = "tenant_default"
MAP_EXEMPT = "tenant_exempt"
# the restart gate (cgroups.gate): the ids of the directories bound tenants are in,
# and of every cgroup beside them that may send unclassified (not a known tenant's)
SET_PARENTS = "tenant_parents"
SET_PASS = "tenant_pass"


@dataclass(frozen=True)
class CgroupSpec:
    """What the cgroup table must hold: tenants' cgroup ids, their levels, exempt prefixes."""

    bindings: Mapping[int, int]  # cgroup id -> xid
    levels: tuple[int, ...]  # `socket cgroupv2 level` of every tenant pattern
    exempt_prefixes: tuple[str, ...]
    # the restart gate: the absolute paths of the directories bound tenants are in
    # (each at a level of ``levels`` minus one), and of the bound tenants' cgroups.
    # Every other cgroup in those directories passes (set SET_PASS); a new one that
    # is not in the maps (a tenant's unit restarted) is dropped until it is.
    gate: bool = False
    gate_parents: tuple[str, ...] = ()
    gate_tenants: frozenset[str] = frozenset()


def gate_levels(levels: tuple[int, ...]) -> list[int]:
    """The tenant levels the gate covers, deepest first: those with a parent below the root."""
    return sorted({level for level in levels if level >= 2}, reverse=True)


def cgroup_digest(levels: tuple[int, ...], prefixes: tuple[str, ...], gate: bool = False) -> str:
    """A short digest of the table's structure, kept in its comment."""
    text = repr(("cgroup", sorted(set(levels)), _collapsed(prefixes)))
    if gate:
        text += " gate"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def render_cgroup_ruleset(
    levels: tuple[int, ...], prefixes: tuple[str, ...], table: str = TABLE, gate: bool = False
) -> str:
    """The ``nft -f`` script of the cgroup table, with empty maps (one transaction).

    One rule trio per distinct level, deepest first, so that a nested tenant wins
    over its ancestor; one map pair serves every level (the key is the cgroup id,
    the level belongs to the rule). Only a connection's first packet (ct mark 0)
    looks the map up; the others take the mark from conntrack. The input chain
    marks inbound connections from their first packet (the listener's socket), so
    a server's replies, SYN-ACK included, land in its tenant's class.

    With the gate, after the marks, one rule per tenant level L: a first packet
    still unmarked whose socket's cgroup at level L is in a directory of
    SET_PARENTS (its level L-1 ancestor) and is not in SET_PASS is dropped (TCP
    sends its SYN again after 1 s, by then the watcher or the cycle bound it).
    The sets start empty, so the gate holds nothing until the elements
    transaction fills the maps and the sets together.
    """
    order = sorted(set(levels), reverse=True)
    v4, v6 = _collapsed(prefixes)
    first = order[0] if order else 1
    sets = (
        f"  set {SET_PARENTS} {{ typeof socket cgroupv2 level {first}; }}\n"
        f"  set {SET_PASS} {{ typeof socket cgroupv2 level {first}; }}\n"
        if gate
        else ""
    )

    def trio(addr: str) -> str:
        lines = []
        for level in order:
            lookup = f"socket cgroupv2 level {level}"
            lines += [
                f"    ct mark 0 ip {addr} @exempt4 ct mark set {lookup} map @{MAP_EXEMPT}",
                f"    ct mark 0 ip6 {addr} @exempt6 ct mark set {lookup} map @{MAP_EXEMPT}",
                f"    ct mark 0 ct mark set {lookup} map @{MAP_DEFAULT}",
            ]
        if gate:
            for level in gate_levels(levels):
                lines.append(
                    f"    ct mark 0 socket cgroupv2 level {level - 1} @{SET_PARENTS}"
                    f" socket cgroupv2 level {level} != @{SET_PASS} drop"
                )
        return "\n".join(lines)

    return f"""table inet {table}
delete table inet {table}
table inet {table} {{
  comment "bwenforcer spec {cgroup_digest(levels, prefixes, gate)}"
  map {MAP_DEFAULT} {{ typeof socket cgroupv2 level {first} : meta mark; }}
  map {MAP_EXEMPT} {{ typeof socket cgroupv2 level {first} : meta mark; }}
{sets}  set exempt4 {{ type ipv4_addr; flags interval;{_elements(v4)} }}
  set exempt6 {{ type ipv6_addr; flags interval;{_elements(v6)} }}
  chain output {{
    type route hook output priority mangle; policy accept;
{trio("daddr")}
    ct mark != 0 meta mark set ct mark
  }}
  chain input {{
    type filter hook input priority mangle; policy accept;
{trio("saddr")}
  }}
}}
"""


@dataclass(frozen=True)
class CgroupApplied:
    """What one :meth:`CgroupClassifier.apply` did."""

    loaded: bool  # the table's structure was (re)loaded with nft
    added: int  # elements added (both maps)
    deleted: int  # elements deleted (both maps)
    messages: int  # netlink messages in the one element transaction (0: none sent)


def _diff(
    have: Mapping[int, int | None], want: Mapping[int, int]
) -> tuple[tuple[int, ...], dict[int, int]]:
    delete = tuple(k for k, v in have.items() if want.get(k) != v)
    add = {k: v for k, v in want.items() if have.get(k) != v}
    return delete, add


def _ids(paths: Iterable[str]) -> set[int]:
    ids = set()
    for path in paths:
        try:
            ids.add(os.stat(path, follow_symlinks=False).st_ino)
        except OSError:
            continue  # gone meanwhile: the next cycle says so
    return ids


def _gate_changes(maps: NftMaps, spec: CgroupSpec) -> tuple[MapChange, ...]:
    """The gate sets' part of the cycle's transaction.

    SET_PASS is dumped first, then the directories listed: an element not listed
    is a cgroup gone (or a tenant's, which the maps hold anyway), and one the
    watcher added after the dump is not deleted. Tenants' cgroups are not added:
    a new one (the unit restarted) must wait for its map element.
    """
    have_parents = maps.dump(SET_PARENTS)
    have_pass = maps.dump(SET_PASS)
    want_parents = _ids(spec.gate_parents)
    want_pass: set[int] = set()
    for parent in spec.gate_parents:
        try:
            with os.scandir(parent) as entries:
                for entry in entries:
                    path = os.path.join(parent, entry.name)
                    if entry.is_dir(follow_symlinks=False) and path not in spec.gate_tenants:
                        want_pass.add(entry.inode())
        except OSError:
            continue
    return (
        MapChange(
            SET_PARENTS,
            tuple(k for k in have_parents if k not in want_parents),
            dict.fromkeys(want_parents - have_parents.keys()),
        ),
        MapChange(
            SET_PASS,
            tuple(k for k in have_pass if k not in want_pass),
            dict.fromkeys(want_pass - have_pass.keys()),
        ),
    )


class CgroupClassifier(Classifier):
    """The cgroup table; long-lived (its netlink socket and the structure it loaded)."""

    def __init__(self, netns: str | None = None, nft: str = "nft", table: str = TABLE) -> None:
        super().__init__(netns, nft, table)
        # nsenter, not `ip netns exec`: that mounts a /sys without the cgroup tree
        self.prefix = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
        self.netns = netns
        self._maps: NftMaps | None = None
        self._digest: str | None = None  # the structure this object loaded or found
        # (generation, default map, exempt map) as this object last saw or left them
        self._seen: tuple[int, Mapping[int, int | None], Mapping[int, int | None]] | None = None

    def close(self) -> None:
        """Close the netlink socket."""
        if self._maps is not None:
            self._maps.close()
            self._maps = None

    def _load(self, levels: tuple[int, ...], prefixes: tuple[str, ...], gate: bool) -> None:
        script = render_cgroup_ruleset(levels, prefixes, self.table, gate)
        proc = self._run("-f", "-", script=script)
        if proc.returncode != 0:
            first = (proc.stderr.strip().splitlines() or ["nft failed"])[0]
            raise ClassifierError(f"nft table inet {self.table}: {first}")
        log.info(
            "classifier: table inet %s (cgroup, levels %s, %d exempt prefixes%s) loaded",
            self.table,
            ",".join(map(str, sorted(set(levels), reverse=True))),
            len(prefixes),
            ", restart gate" if gate else "",
        )

    def apply(self, spec: CgroupSpec) -> CgroupApplied:  # type: ignore[override]
        """Bring the table and its maps to ``spec``: nft only when the structure is
        missing or another; the elements in one netlink transaction, if any changed.
        """
        digest = cgroup_digest(spec.levels, spec.exempt_prefixes, spec.gate)
        loaded = False
        if self._digest != digest:
            if self._installed_digest() != digest:
                self._load(spec.levels, spec.exempt_prefixes, spec.gate)
                loaded = True
            self._digest = digest
        maps = self._open()
        try:
            generation, have_default, have_exempt = self._current()
        except MapMissing as exc:
            if not exc.missing:
                raise
            # the table was deleted under us (tc stop, an operator): load it again
            self._load(spec.levels, spec.exempt_prefixes, spec.gate)
            loaded = True
            generation, have_default, have_exempt = maps.generation(), {}, {}
        want_default = {cg: mark(x, "default") for cg, x in spec.bindings.items()}
        want_exempt = {cg: mark(x, "exempt") for cg, x in spec.bindings.items()}
        del_d, add_d = _diff(have_default, want_default)
        del_e, add_e = _diff(have_exempt, want_exempt)
        self._seen = None  # unknown until the change is known to be the only one
        gate = _gate_changes(maps, spec) if spec.gate else ()
        messages = maps.change(
            (MapChange(MAP_DEFAULT, del_d, add_d), MapChange(MAP_EXEMPT, del_e, add_e), *gate)
        )
        if messages:
            log.info(
                "classifier: %d cgroup elements added, %d deleted (one transaction)",
                len(add_d),
                len(del_d),
            )
            generation += 1
            if maps.generation() != generation:
                return CgroupApplied(
                    loaded, len(add_d) + len(add_e), len(del_d) + len(del_e), messages
                )
        self._seen = (generation, want_default, want_exempt)
        return CgroupApplied(loaded, len(add_d) + len(add_e), len(del_d) + len(del_e), messages)

    def disarm_gate(self) -> int:
        """Empty the gate's SET_PARENTS (the agent stopping): new cgroups beside the
        tenants send unclassified again, as without the gate; the marks stay. The
        next :meth:`apply` arms it again. The elements deleted (0: no gate).
        """
        maps = self._open()
        try:
            parents = maps.dump(SET_PARENTS)
        except MapMissing:
            return 0
        maps.change((MapChange(SET_PARENTS, tuple(parents)),))
        if parents:
            log.info("classifier: restart gate disarmed (the agent stops)")
        return len(parents)

    def _open(self) -> NftMaps:
        if self._maps is None:
            self._maps = NftMaps(self.table, self.netns)
        return self._maps

    def _current(self) -> tuple[int, Mapping[int, int | None], Mapping[int, int | None]]:
        """The generation and both maps' elements: as this object left them while the
        generation is the one it saw then (no transaction since, of anyone's), else
        dumped; MapMissing if the table is gone.

        The generation is read before the dumps: a change after it shows as a new
        generation next cycle.
        """
        maps = self._open()
        generation = maps.generation()
        if self._seen is not None and self._seen[0] == generation:
            return self._seen
        return generation, maps.dump(MAP_DEFAULT), maps.dump(MAP_EXEMPT)

    def bindings(self) -> dict[int, int]:
        """``{cgroup id: xid}`` as the default map holds them (never `nft list`: it
        walks the whole cgroup tree to print each id as a path).
        """
        _generation, default, _exempt = self._current()
        return {cg: m & 0xFFF for cg, m in default.items() if m is not None}

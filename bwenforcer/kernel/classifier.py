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
import subprocess
from dataclasses import dataclass

from bwenforcer.core.layout import CLASS_BITS, XID_MAX, mark
from bwenforcer.errors import ClassifierError, ConfigError
from bwenforcer.files.tools import tool_path

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

"""Inbound (download) accounting and policing with nftables objects: ``InboundBackend``.

The table ``inet bwenforcer_in`` (docs/inbound.md) sits beside the classifier's
table, not in it: the uid classifier replaces its table with ``nft -f`` whenever
the slices change, which would reset every counter and drop every limit; the
conntrack mark the classifier sets is the connection's, seen by every table.
Per slice class (xid, class) with mark ``m`` = ``layout.mark(xid, class)``:

- counter ``c<m>`` in the map ``in_counter`` (ct mark → counter);
- when limited, limit ``l<m>_a`` or ``l<m>_b`` in the map ``in_limit`` (ct mark → limit);
- packets of no slice (ct mark 0 or a mark not in the maps) count in ``c1fff``
  (default) or ``c2fff`` (exempt: the source is in an exempt prefix).

A chain ``count`` polices then counts; the ``input`` hook (the node's own sockets)
and the ``forward`` hook (container and VM slices behind the node) jump to it for
packets arriving on the uplink device (what egress HTB counts on the way out, the
same device counts on the way in). Both base chains run at priority ``filter``
(0): after conntrack (-200) and the cgroup classifier's input marking (-150), so
the ct mark is known.

Bytes are counted at the IP layer: ``skb->len`` at the input/forward hook, from
the IP header on, no link-layer header (HTB's egress counter includes the
Ethernet header). With GRO on the receiving NIC the hook sees merged packets with
one header for several segments: the count is then short by the merged segments'
headers (up to ~3.5 % for 1500-byte TCP segments).

A limit object cannot be changed on this kernel (a NEWOBJ on an existing limit is
a silent no-op), so a change is a swap in one transaction: new object ``_b``,
map element deleted and added pointing at it, old object ``_a`` deleted. A new
limit object starts with a full bucket of one second of rate plus its burst:
every change hands the slice up to ~1 s of its rate, so the caller changes a
limit only when it moves by a real margin.

Only ``classifier.mode`` ``uid`` and ``cgroup`` set the conntrack mark this needs
(``nodemanager``'s marks are the node manager's packet marks, ``none`` marks
nothing): other modes are refused.
"""

from __future__ import annotations

import errno
import logging
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bwenforcer.core.inbound import (
    INBOUND_MODES,
    InboundFailure,
    InboundLimit,
    InboundSnapshot,
)
from bwenforcer.core.layout import (
    DEFAULT_XID,
    TRAFFIC_CLASSES,
    XID_MAX,
    TrafficClass,
    mark,
)
from bwenforcer.errors import ConfigError, InboundError, XidOutOfRange
from bwenforcer.files.tools import tool_path
from bwenforcer.kernel.classifier import _collapsed
from bwenforcer.kernel.inbound_table import (
    COUNTER_NAME,
    LIMIT_NAME,
    MAP_COUNTER,
    MAP_LIMIT,
    MAX_LIMIT_BPS,
    TABLE,
    asked_bps,
    class_of,
    counter_name,
    limit_burst_bytes,
    limit_rate_bytes_s,
    render_ruleset,
    snapshot,
    structure_digest,
)
from bwenforcer.kernel.nftobj import (
    Msg,
    NftObject,
    NftObjects,
    del_object,
    map_elements,
    new_counter,
    new_limit,
)

log = logging.getLogger(__name__)

MODES = INBOUND_MODES
NFT_TIMEOUT_S = 30
_DEV = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")


@dataclass(frozen=True)
class InboundEnsured:
    """What one :meth:`InboundBackend.ensure` did (or, dry run, would do)."""

    loaded: bool  # the table was (re)loaded with nft (absent, or of another shape)
    added: tuple[int, ...]  # xids whose counters were created
    removed: tuple[int, ...]  # xids whose counters and limit were deleted
    messages: int  # netlink messages in the transaction (0: none sent)
    refused: Mapping[int, str]  # xid -> the kernel's refusal (its objects wait a cycle)


class InboundBackend:
    """nftables inbound counters and limits, in the current namespace or ``netns``.

    Long-lived (one netfilter socket, the objects last dumped). Per cycle call
    :meth:`ensure` (the first one loads the table), :meth:`dump`, then
    :meth:`apply_limits` with the planner's changes. A steady cycle costs two
    generation requests and one counter dump, no nft process and no write:
    ``ensure`` finds the xids it found complete at the same generation (its own
    limit changes do not count), ``apply_limits`` has nothing to do.
    """

    def __init__(
        self,
        dev: str,
        mode: str,
        exempt_prefixes: Sequence[str] = (),
        *,
        netns: str | None = None,
        table: str = TABLE,
        nft: str = "nft",
    ) -> None:
        if mode not in MODES:
            raise ConfigError(
                f"classifier mode {mode!r} cannot count inbound traffic: it sets no"
                f" conntrack mark (inbound needs mode {' or '.join(MODES)})"
            )
        if not _DEV.fullmatch(dev):
            raise ConfigError(f"inbound: device name {dev!r} is not a network device name")
        _collapsed(tuple(exempt_prefixes))  # a bad prefix is a ConfigError now, not later
        self.dev = dev
        self.mode = mode
        self.exempt_prefixes = tuple(exempt_prefixes)
        self.netns = netns
        self.table = table
        self._nft = nft
        self._digest = structure_digest(dev, self.exempt_prefixes)
        self._sock: NftObjects | None = None
        # the counters and the limit objects as of the generation (nf_tables' count of
        # committed transactions) each was dumped at, and the generation at which the
        # table's comment was last found to be this structure's
        self._counters: tuple[int, dict[str, NftObject]] | None = None
        self._limits: tuple[int, dict[str, NftObject]] | None = None
        self._verified_gen: int | None = None
        # the xids the last ensure found complete, and the generation it found them at
        self._ensured: tuple[list[int], int] | None = None
        self._keys: dict[str, tuple[int, TrafficClass] | None] = {}  # object name → class
        # the limits in force as read from the limit objects last dumped (that very dict)
        self._in_force: (
            tuple[dict[str, NftObject], Mapping[tuple[int, TrafficClass], int]] | None
        ) = None

    def __enter__(self) -> InboundBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the netlink socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @property
    def nl(self) -> NftObjects:
        """The netfilter socket (opened on first use)."""
        if self._sock is None:
            self._sock = NftObjects(self.table, self.netns)
        return self._sock

    # -- reading ---------------------------------------------------------------

    def _objects(self, fresh_counters: bool, generation: int | None = None) -> dict[str, NftObject]:
        """Counters and limit objects: each dumped unless known as of the current
        generation (the counters always, with ``fresh_counters``: their bytes move).
        ``generation``: the current one, if just read.
        """
        if generation is None:  # before the dumps: a later change shows next time
            generation = self.nl.generation()
        if fresh_counters or self._counters is None or self._counters[0] != generation:
            counters = self.nl.objects("counter")
            if counter_name(mark(DEFAULT_XID, "default")) not in counters:
                # the dump of an absent table is empty, not an error: every counter
                # would seem reset. The no-slice counter is there as long as the table.
                raise InboundError(
                    f"nftables table inet {self.table} missing (or not bwenforcer's)",
                    errno.ENOENT,
                )
            self._counters = (generation, counters)
        if self._limits is None or self._limits[0] != generation:
            self._limits = (generation, self.nl.objects("limit"))
        return {**self._counters[1], **self._limits[1]}

    def _forget(self) -> None:
        self._counters = self._limits = self._ensured = None

    def dump(self) -> InboundSnapshot:
        """Every slice class's inbound bytes (IP layer) and limit: one counter dump, and
        one limit dump only when a transaction came since the limits were last read.

        InboundError (errno ENOENT) if the table is not there (``ensure`` loads it).
        """
        self._objects(fresh_counters=True)
        assert self._counters is not None and self._limits is not None
        limits = self._limits[1]
        if self._in_force is None or self._in_force[0] is not limits:
            self._in_force = (limits, snapshot({}, limits).limits_bps)
        counted = snapshot(self._counters[1], {}, self._keys)
        return InboundSnapshot(
            counted.bytes_by_class, self._in_force[1], counted.unclassified_bytes
        )

    # -- the table and its counters --------------------------------------------

    def _structure_ok(self) -> tuple[bool, int]:
        """Whether the table is there with this structure (device, prefixes), and the
        generation now.
        """
        generation = self.nl.generation()
        if self._verified_gen == generation:
            return True, generation
        try:
            comment = self.nl.table_comment()
        except InboundError as exc:
            if exc.errno == errno.ENOENT:
                return False, generation
            raise
        if comment != f"bwenforcer inbound {self._digest}":
            return False, generation
        self._verified_gen = generation
        return True, generation

    def ensure(self, xids: Iterable[int], dry_run: bool = False) -> InboundEnsured:
        """Counters for every class of ``xids`` (and the no-slice ones), nothing of other
        xids (their counters and limits deleted: a slice given again later starts from a
        new counter at 0, a reset the cycle counts from 0).

        One transaction, only when something changed; the table itself is (re)loaded
        with one ``nft -f`` only when it is absent or of another shape, carrying over
        the counters' values and the limits of the xids kept.
        """
        want = sorted(set(xids))
        for xid in want:
            if not 0 <= xid <= XID_MAX:
                raise XidOutOfRange(f"inbound: xid {xid} out of range 0..{XID_MAX}")
        ours, generation = self._structure_ok()
        if not ours:
            return self._load(want, dry_run)
        if self._ensured == (want, generation):
            # the same xids, and no transaction since they were found all there
            return InboundEnsured(False, (), (), 0, {})
        try:
            objects = self._objects(fresh_counters=False, generation=generation)
        except InboundError as exc:
            if exc.errno != errno.ENOENT:
                raise
            return self._load(want, dry_run)  # our table's name, not our objects
        groups: list[tuple[int, list[Msg]]] = []
        added, removed = [], []
        wanted = set(want)
        for xid in want:
            msgs: list[Msg] = []
            for cls in TRAFFIC_CLASSES:
                m = mark(xid, cls)
                obj = objects.get(counter_name(m))
                if obj is None:
                    msgs.append(new_counter(self.table, counter_name(m)))
                if obj is None or obj.use == 0:
                    msgs.append(map_elements(self.table, MAP_COUNTER, {m: counter_name(m)}))
            if msgs:
                added.append(xid)
                groups.append((xid, msgs))
        gone: dict[int, list[Msg]] = {}
        for obj in objects.values():
            pattern = COUNTER_NAME if obj.kind == "counter" else LIMIT_NAME
            key = class_of(obj.name, pattern)
            if key is None or key[0] == DEFAULT_XID:
                continue
            xid, cls = key
            if xid in wanted and (obj.kind == "counter" or obj.use):
                continue
            msgs = gone.setdefault(xid, [])  # element(s) first, then the object
            if obj.use:
                map_name = MAP_COUNTER if obj.kind == "counter" else MAP_LIMIT
                msgs.insert(0, map_elements(self.table, map_name, {mark(xid, cls): None}))
            msgs.append(del_object(self.table, obj.name, obj.kind))
        for xid, msgs in sorted(gone.items()):
            if xid not in wanted:
                removed.append(xid)
            groups.append((xid, msgs))
        messages = sum(len(msgs) for _xid, msgs in groups)
        if not groups:
            self._ensured = (want, generation)
        if dry_run or not groups:
            return InboundEnsured(False, tuple(added), tuple(removed), 0, {})
        refused = self._commit(groups)
        reasons = {int(xid): f"{errno.errorcode.get(code, code)}" for xid, code in refused.items()}
        for xid, why in reasons.items():
            log.error("inbound: xid %d: counters refused by the kernel (%s)", xid, why)
        added = [x for x in added if x not in reasons]
        removed = [x for x in removed if x not in reasons]
        if added or removed:
            log.info(
                "inbound: table inet %s: counters of %d slices added, %d removed",
                self.table,
                len(added),
                len(removed),
            )
        return InboundEnsured(False, tuple(added), tuple(removed), messages, reasons)

    def _commit(
        self, groups: Sequence[tuple[object, Sequence[Msg]]], limits_only: bool = False
    ) -> dict[object, int]:
        """One transaction (groups refused left out, see NftObjects.transaction).

        What this object knew stays known when this was the only transaction since
        (the generation moved by one): the structure; with ``limits_only`` (limit
        objects of ensured xids and their elements changed, nothing else) also the
        counters and the ensured xids. The limit objects are read again.
        """
        before = self.nl.generation()
        refused = self.nl.transaction(groups)
        after = self.nl.generation()
        counters, ensured = self._counters, self._ensured
        self._forget()
        if after == before + 1:
            if self._verified_gen == before:
                self._verified_gen = after
            if limits_only and counters is not None and counters[0] == before:
                self._counters = (after, counters[1])
            if limits_only and ensured is not None and ensured[1] == before:
                self._ensured = (ensured[0], after)
        elif after == before:
            self._counters, self._ensured = counters, ensured  # nothing committed
        return refused

    def _load(self, want: Sequence[int], dry_run: bool) -> InboundEnsured:
        """Load the table with nft (one transaction), carrying over the counters' values
        and the limits in force of ``want``'s classes from the table there, if any.
        """
        try:
            old = self.nl.objects()
        except InboundError as exc:
            if exc.errno != errno.ENOENT:
                raise
            old = {}
        counters = {counter_name(mark(DEFAULT_XID, cls)): (0, 0) for cls in TRAFFIC_CLASSES}
        for xid in want:
            for cls in TRAFFIC_CLASSES:
                counters[counter_name(mark(xid, cls))] = (0, 0)
        limits: dict[str, NftObject] = {}
        wanted = set(want)
        for obj in old.values():
            if obj.kind == "counter" and obj.name in counters:
                counters[obj.name] = (obj.value, obj.extra)
            key = class_of(obj.name, LIMIT_NAME) if obj.kind == "limit" else None
            if key is not None and obj.use and key[0] in wanted:
                limits[obj.name] = obj
        if dry_run:
            return InboundEnsured(True, tuple(want), (), 0, {})
        script = render_ruleset(self.table, self.dev, self.exempt_prefixes, counters, limits)
        prefix = [tool_path("ip"), "netns", "exec", self.netns] if self.netns else []
        try:
            proc = subprocess.run(
                [*prefix, tool_path(self._nft), "-f", "-"],
                input=script,
                capture_output=True,
                text=True,
                timeout=NFT_TIMEOUT_S,
                check=False,
            )
        except FileNotFoundError:
            raise InboundError(f"{self._nft} not found: install nftables") from None
        except subprocess.TimeoutExpired:
            raise InboundError(f"{self._nft} did not answer in {NFT_TIMEOUT_S}s") from None
        if proc.returncode != 0:
            first = (proc.stderr.strip().splitlines() or ["nft failed"])[0]
            raise InboundError(f"nft table inet {self.table}: {first}")
        self._forget()
        self._verified_gen = None
        log.info(
            "inbound: table inet %s loaded (dev %s, %d slices, %d limits kept, %d exempt prefixes)",
            self.table,
            self.dev,
            len(want),
            len(limits),
            len(self.exempt_prefixes),
        )
        return InboundEnsured(True, tuple(want), (), 0, {})

    # -- limits ----------------------------------------------------------------

    def apply_limits(self, changes: Sequence[InboundLimit]) -> list[InboundFailure]:
        """Set or lift the given classes' inbound limits; the refused ones, each once.

        A set is a swap in one transaction (new limit object, the map element deleted
        and added pointing at it, the old object deleted): no packet sees the class
        without a limit, and counters and other classes' limit objects are untouched.
        The new object starts with a full bucket (1 s of rate plus the burst), so
        change a limit only when it moves by a real margin. A lift deletes the element,
        then the object. A change to the limit in force is skipped. The changes go in
        one transaction; one the kernel refuses is left out and the others sent again.
        """
        latest = {(c.xid, c.traffic_class): c for c in changes}  # the last one per class
        if not latest:
            return []
        objects = self._objects(fresh_counters=False)
        by_mark: dict[int, list[NftObject]] = {}
        for obj in objects.values():
            key = class_of(obj.name, LIMIT_NAME) if obj.kind == "limit" else None
            if key is not None:
                by_mark.setdefault(mark(*key), []).append(obj)
        groups: list[tuple[InboundLimit, list[Msg]]] = []
        failures = []
        for change in latest.values():
            if change.rate_bps is not None and not 0 < change.rate_bps <= MAX_LIMIT_BPS:
                text = f"{change.describe()}: out of range (1..{MAX_LIMIT_BPS} bit/s)"
                log.error("inbound: %s", text)
                failures.append(InboundFailure(change, errno.EINVAL, text))
                continue
            msgs = self._limit_msgs(change, by_mark.get(mark(change.xid, change.traffic_class), []))
            if msgs:
                groups.append((change, msgs))
        if not groups:
            return failures
        ensured = set(self._ensured[0]) if self._ensured is not None else set()
        refused = self._commit(groups, limits_only=all(c.xid in ensured for c, _m in groups))
        for change, _msgs in groups:
            code = refused.get(change)
            if code is None:
                log.info("inbound: %s", change.describe())
                continue
            text = f"{change.describe()}: refused by the kernel ({errno.errorcode.get(code, code)})"
            log.error("inbound: %s", text)
            failures.append(InboundFailure(change, code, text))
        return failures

    def _limit_msgs(self, change: InboundLimit, have: Sequence[NftObject]) -> list[Msg]:
        m = mark(change.xid, change.traffic_class)
        current = next((o for o in have if o.use), None)
        # unreferenced leftovers of this class (none, unless another tool made them)
        msgs = [del_object(self.table, o.name, "limit") for o in have if not o.use]
        if change.rate_bps is None:
            if current is None:
                return msgs
            return [
                *msgs,
                map_elements(self.table, MAP_LIMIT, {m: None}),
                del_object(self.table, current.name, "limit"),
            ]
        if current is not None and asked_bps(current) == change.rate_bps:
            return msgs
        name = f"l{m:x}_{'b' if current is not None and current.name.endswith('_a') else 'a'}"
        rate = limit_rate_bytes_s(change.rate_bps)
        msgs.append(
            new_limit(
                self.table,
                name,
                rate,
                limit_burst_bytes(rate),
                f"bwenforcer {change.rate_bps} bit/s",
            )
        )
        if current is not None:
            msgs.append(map_elements(self.table, MAP_LIMIT, {m: None}))
        msgs.append(map_elements(self.table, MAP_LIMIT, {m: name}))
        if current is not None:
            msgs.append(del_object(self.table, current.name, "limit"))
        return msgs

    def remove(self) -> None:
        """Delete the table (every counter and limit); absent is fine."""
        prefix = [tool_path("ip"), "netns", "exec", self.netns] if self.netns else []
        proc = subprocess.run(
            [*prefix, tool_path(self._nft), "delete", "table", "inet", self.table],
            capture_output=True,
            text=True,
            timeout=NFT_TIMEOUT_S,
            check=False,
        )
        self._forget()
        self._verified_gen = None
        if proc.returncode == 0:
            log.info("inbound: table inet %s removed", self.table)

"""Wires the real parts (HTB backend, state store, mail, classifier, history) to a cycle.

``sync``, ``daemon`` and the node-manager thread all run cycles through
:class:`Agent`, so they behave the same.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bwenforcer.core.direction import counted_bytes as direction_bytes
from bwenforcer.core.layout import BARE_MARK_MODES, TrafficClass
from bwenforcer.core.model import (
    BootClock,
    ClassState,
    DesiredSet,
    KernelOp,
    KernelSnapshot,
    OpFailure,
    SliceState,
    State,
)
from bwenforcer.core.plan import Notify, Plan
from bwenforcer.core.policy import tree_rates_bps
from bwenforcer.core.settings import Config
from bwenforcer.cycle.executor import Notifier
from bwenforcer.cycle.run import CycleResult, Hooks, InboundPort, run_cycle
from bwenforcer.errors import DiskFull, Error, KernelError, TreeNotInitialised, UnsafePath

if TYPE_CHECKING:
    from bwenforcer.files.atomic import FileIdentity
    from bwenforcer.history.recorder import HistoryRecorder
    from bwenforcer.inputs.cgroups import CgroupUnit, Discovery
    from bwenforcer.kernel.cgroupwatch import CgroupWatcher
    from bwenforcer.kernel.classifier import CgroupClassifier
    from bwenforcer.kernel.htb import HtbBackend
    from bwenforcer.kernel.inbound import InboundBackend
    from bwenforcer.store.state import StateStore

log = logging.getLogger(__name__)

PASSWD = "/etc/passwd"  # user-<uid>.slice tenants are named after its accounts


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause automatic garbage collection for a cycle (or a short-lived command).

    A cycle at thousands of slices allocates tens of thousands of objects, all
    freed by reference counting; left on, the collector walks every live object several
    times a cycle (measured: a third of a 4,000-slice cycle, and most of its
    jitter). Collection resumes afterwards, between cycles.

    Only for processes of our own (``sync``, the daemon): the collector is the
    whole process's, so :meth:`Agent.cycle` does not pause it and the
    node-manager thread never does (it would stop the host program's collection).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def hostname(config: Config) -> str:
    """The node's name as it appears in mail."""
    return config.mail.hostname or socket.getfqdn()


def make_notifier(
    config: Config,
    clock: Callable[[], float],
    dry_run: bool,
    mail_clock: Callable[[], float] = time.monotonic,
    unit_of: Callable[[str], str | None] = lambda name: None,
) -> Notifier | None:
    """A notifier that mails through the configured transport, or None for ``none``.

    One notifier per cycle: its mails share one budget, the transport timeout
    (timed by ``mail_clock``), so a stalled server holds the cycle (and its lock)
    for one timeout, not one per capped slice.
    """
    if config.mail.transport == "none" and not dry_run:
        return None
    from bwenforcer.inputs.template import load_template
    from bwenforcer.mail.notice import CappedClass, Notice, build_message
    from bwenforcer.mail.transport import cycle_budget, make_transport

    transport = make_transport(config.mail, dry_run=dry_run)
    template = load_template(config.mail)
    host = hostname(config)
    budget = cycle_budget(config.mail, mail_clock)

    inbound = config.inbound.enabled

    def capped(cs: ClassState, tc: TrafficClass) -> CappedClass:
        direction = cs.policy.direction if inbound else "out"
        return CappedClass(
            traffic_class=tc,
            used_bytes=direction_bytes(cs, cs.policy, inbound),
            limit_bytes=cs.policy.limit_bytes,
            threshold_bytes=cs.policy.threshold_bytes,
            # a budget of received bytes alone caps the inbound limit, not the ceil
            ceil_bps=cs.in_limit_bps if direction == "in" and cs.in_limit_bps else cs.ceil_bps,
            max_rate_bps=cs.policy.max_rate_bps,
            direction=direction,
            sent_bytes=cs.used_bytes,
            received_bytes=cs.in_used_bytes,
        )

    def notify(action: Notify, st: SliceState, notice_id: str, commit: Callable[[], None]) -> None:
        classes = tuple(capped(st.cls(tc), tc) for tc in action.classes)
        notice = Notice(
            st.name,
            st.xid,
            st.period_start_s,
            st.period_end_s,
            classes,
            unit_of(st.name),
            kind=action.kind,
            share_bp=action.share_bp,
            notice_id=notice_id,
        )
        msg = build_message(notice, config.mail, host, int(clock()), template)
        transport.send(msg, budget, commit)

    return notify


BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def read_boot(path: str = BOOT_ID_PATH) -> BootClock | None:
    """The node's boot id and ``CLOCK_BOOTTIME`` now; None if they cannot be read."""
    try:
        with open(path, encoding="ascii") as f:
            boot_id = f.read(64).strip()
        boottime_s = int(time.clock_gettime(time.CLOCK_BOOTTIME))
    except (OSError, ValueError, AttributeError) as exc:
        log.debug("no boot clock: %s", exc)
        return None
    return BootClock(boot_id, boottime_s, clock_synced()) if boot_id else None


_TIME_ERROR = 5  # adjtimex's answer for a clock not synchronised (STA_UNSYNC)
_TIMEX_BYTES = 512  # struct timex is 208 bytes on 64-bit Linux; room to spare


def clock_synced() -> bool:
    """Whether the kernel says the wall clock is synchronised (``adjtimex`` read only,
    ``modes`` 0: not ``TIME_ERROR``); True when it cannot be asked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        timex = ctypes.create_string_buffer(_TIMEX_BYTES)  # modes 0: read only
        answer = libc.adjtimex(timex)
    except (OSError, AttributeError) as exc:
        log.debug("adjtimex: %s", exc)
        return True
    return bool(answer != _TIME_ERROR)


@dataclass
class Agent:
    """Long-lived parts of the agent for one config; one cycle per :meth:`cycle` call."""

    config: Config
    clock: Callable[[], float] = time.time
    netns: str | None = None  # tests: run the backend and classifier in this namespace
    # The boot id and boot clock, read with the wall clock (periods.clock_check). By
    # default the node's, with the real wall clock; a clock passed in without a boot
    # clock goes without one (a test's clock moved by hand is no stepped clock).
    boot: Callable[[], BootClock | None] | None = None
    # classifier.mode cgroup: bind a known tenant's re-made cgroup between cycles
    # (kernel/cgroupwatch); for long-lived agents (daemon, node-manager thread)
    watch: bool = False
    # the inbound (download) backend, used with ``inbound.enabled``; None: the
    # nftables backend (kernel/inbound), opened on first use
    inbound: InboundPort | None = None
    _inbound_backend: InboundBackend | None = field(default=None, init=False, repr=False)
    # Kept across cycles so that a daemon or node-manager thread re-reads neither
    # the state nor the history journal while they are still what this agent wrote.
    _store: StateStore | None = field(default=None, init=False, repr=False)
    _history: HistoryRecorder | None = field(default=None, init=False, repr=False)
    # One netlink socket for the agent's life: it also remembers the last dump, so
    # an idle class costs the next dump no new object. Dropped after a kernel error.
    _kernel: HtbBackend | None = field(default=None, init=False, repr=False)

    # The slices file as last read, by its identity: a daemon's cycle re-reads it
    # only once it changed (YAML takes ~0.1 s at 4,000 slices).
    _desired: tuple[FileIdentity, DesiredSet] | None = field(default=None, init=False, repr=False)

    # classifier.mode cgroup: the table's netlink socket and structure, kept across
    # cycles; and the last scan of the cgroup tree (its tenants' current cgroup ids).
    _cgroup_classifier: CgroupClassifier | None = field(default=None, init=False, repr=False)
    discovery: Discovery | None = field(default=None, init=False, repr=False)
    _watcher: CgroupWatcher | None = field(default=None, init=False, repr=False)
    # the tenants found, valid while the account database is unchanged (their names);
    # and their slices: an unchanged tenant is the same object every cycle
    _tenant_names: dict[object, CgroupUnit | str] = field(default_factory=dict, repr=False)
    _accounts: object = field(default=None, init=False, repr=False)
    _tenant_slices: dict[object, object] = field(default_factory=dict, repr=False)

    # The last failure callers logged (see new_problem), so that a failure repeated
    # every interval (a device gone for hours) is logged once, not every cycle.
    _problem: str | None = field(default=None, init=False, repr=False)
    # the mark → class filter the kernel last refused (logged once per change)
    filter_problem: str | None = field(default=None, init=False, repr=False)

    def desired(self) -> DesiredSet:
        """The desired slices from the slices file (see :func:`load_desired`), re-read
        only when the file changed.
        """
        from bwenforcer.files.atomic import file_identity

        path = self.config.slices_file
        identity = file_identity(path) if path else None
        if identity is not None and self._desired is not None and self._desired[0] == identity:
            return self._desired[1]
        desired = load_desired(self.config)
        self._desired = None if identity is None else (identity, desired)
        return desired

    def close(self) -> None:
        """Close the netlink socket (a later cycle opens a new one)."""
        if self._kernel is not None:
            self._kernel.close()
            self._kernel = None
        if self._inbound_backend is not None:
            self._inbound_backend.close()
            self._inbound_backend = None
        if self._cgroup_classifier is not None:
            self._cgroup_classifier.close()
            self._cgroup_classifier = None
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None

    def disarm_gate(self) -> None:
        """The agent stops for good (not :meth:`close`, which a cycle may follow):
        with ``cgroups.gate``, let new cgroups beside the tenants send again, since
        no watcher or cycle is left to bind them (a crash leaves the gate armed).
        """
        if not self.config.cgroups.gate or self.config.classifier.mode != "cgroup":
            return
        try:
            self._cgroups_table().disarm_gate()
        except Error as exc:
            log.error("restart gate not disarmed: %s", exc)

    def new_problem(self, exc: BaseException) -> bool:
        """Whether a failed cycle's ``exc`` differs from the last one (log it if so).

        The next successful cycle logs that the problem is over.
        """
        problem = str(exc)
        new, self._problem = problem != self._problem, problem
        return new

    def backend(self) -> HtbBackend:
        """The agent's HTB backend (opened on first use, after a kernel error anew)."""
        from bwenforcer.kernel.htb import HtbBackend

        if self._kernel is None:
            self._kernel = HtbBackend(self.config.device, netns=self.netns)
        # a reloaded config may change the mode: the next ensure_filter swaps the program
        self._kernel.bare_marks = self.config.classifier.mode in BARE_MARK_MODES
        return self._kernel

    def inbound_port(self) -> InboundPort | None:
        """The inbound backend with ``inbound.enabled`` (None without): the one passed
        in, else the nftables counters and limits on the device, opened on first use.
        """
        if not self.config.inbound.enabled:
            return None
        if self.inbound is not None:
            return self.inbound
        backend = self._inbound_backend
        classifier = self.config.classifier
        if backend is not None and (
            backend.dev != self.config.device
            or backend.mode != classifier.mode
            or backend.exempt_prefixes != tuple(classifier.exempt_prefixes)
        ):
            backend.close()  # a reloaded config: its table is rebuilt for the new one
            backend = None
        if backend is None:
            from bwenforcer.kernel.inbound import InboundBackend

            backend = InboundBackend(
                self.config.device, classifier.mode, classifier.exempt_prefixes, netns=self.netns
            )
            self._inbound_backend = backend
        return backend

    def rebuilt_tree(self, dry_run: bool) -> KernelSnapshot:
        """The dump after building the tree again on a device that lost it.

        The device is looked up afresh (re-created, it has a new index; gone, this
        raises DeviceMissing) and the tree is built as ``tc init`` builds it from
        the config; the cycle then re-creates the slice classes from the state. A
        dry run builds nothing and plans against an empty tree.
        """
        self.close()
        kernel = self.backend()
        dev = self.config.device
        cap_bps, bwmax_bps = tree_rates_bps(self.config.node_cap_bps, self.config.bwmax_bps)
        kernel.ifindex  # noqa: B018 - raises DeviceMissing if the device is gone
        if dry_run:
            log.warning("no HTB tree on dev %s: sync would build it (planned on an empty one)", dev)
            return KernelSnapshot(cap_bps, bwmax_bps, {})
        log.warning("no HTB tree on dev %s (qdisc deleted or device re-created): building it", dev)
        kernel.init(cap_bps, bwmax_bps, self.config.bwmin_bps)
        return kernel.dump()

    def cycle(
        self, desired: DesiredSet, dry_run: bool = False, build_tree: bool = True
    ) -> CycleResult:
        """Run one cycle against the kernel, the state file, mail and the classifier.

        The garbage collector is left as it is: a process of our own pauses it
        around the cycle (:func:`gc_paused`). A tree that vanished (qdisc deleted,
        device re-created) is built again (:meth:`rebuilt_tree`), unless
        ``build_tree`` is False (someone else owns the tree: TreeNotInitialised).
        """
        from bwenforcer.store.outbox import Outbox
        from bwenforcer.store.state import StateStore

        if self._store is None:
            self._store = StateStore(self.config.state_file)
        dry_run = dry_run or self.config.dry_run

        hooks = Hooks(
            classifier=self._classifier_hook(),
            before_save=self._record_history,
            complete=self.with_cgroups if self.config.cgroups.tenants else None,
            after_save=self._fold_history,
        )
        try:
            result = run_cycle(
                self.config,
                desired,
                kernel=_TreeKeeper(self, dry_run, build=build_tree and not desired.limiting_off),
                store=self._store,
                notifier=make_notifier(self.config, self.clock, dry_run, unit_of=self.unit_of)
                if not dry_run
                else None,
                clock=self.clock,
                boot=self._boot(),
                dry_run=dry_run,
                hooks=hooks,
                inbound=self.inbound_port(),
                outbox=Outbox(f"{self.config.state_file}.outbox"),
            )
        except KernelError:
            self.close()  # the device may have gone and come back under a new index
            raise
        if self._problem is not None:
            log.info("cycle ok again (was: %s)", self._problem)
            self._problem = None
        if self.discovery is not None:
            units = {u.name: u.unit for u in self.discovery.units}
            result = dataclasses.replace(result, units=units)
        return result

    def _boot(self) -> Callable[[], BootClock | None] | None:
        if self.boot is not None:
            return self.boot
        return read_boot if self.clock is time.time else None

    def _record_history(self, plan: Plan) -> None:
        """Add the cycle's per-slice deltas to the usage history.

        A failure is logged, not fatal; but a full disk or an unsafe directory is
        raised (exit 5): those need the operator.
        """
        from bwenforcer.history.recorder import HistoryRecorder
        from bwenforcer.history.usage import CycleUsage, capped_span_s

        if self._history is None:
            self._history = HistoryRecorder(self.config.history_file, self.config.history)
        usage = [CycleUsage(*used) for used in plan.usage()]
        previous_s = plan.state.saved_s  # the last cycle's (the state it saved)
        stepped = plan.clock_step is not None
        capped_s = capped_span_s(plan.now_s, previous_s, self.config.interval_s, stepped)
        try:
            self._history.record(
                plan.now_s, capped_s, usage, cycle=plan.state.cycles, roll_up=not stepped
            )
        except (DiskFull, UnsafePath):
            raise  # the operator must act: exit 5, not a line in a log
        except (Error, OSError) as exc:
            log.error("usage history %s not updated: %s", self.config.history_file, exc)

    def unit_of(self, name: str) -> str | None:
        """The unit of cgroup tenant ``name`` as the last scan found it; None if none."""
        if self.discovery is None:
            return None
        unit = self.discovery.by_name().get(name)
        return None if unit is None else unit.unit

    def with_cgroups(self, desired: DesiredSet, state: State) -> DesiredSet:
        """``desired`` plus the tenants of a fresh scan of the cgroup tree (their xids
        from ``state`` by name); the scan is kept for the classifier.
        """
        from bwenforcer.files.atomic import file_identity
        from bwenforcer.inputs.cgroups import discover, merge, settle

        accounts = file_identity(PASSWD)
        if accounts != self._accounts:  # an account renamed: user tenants' names anew
            self._tenant_names.clear()
            self._accounts = accounts
        self.discovery = discover(self.config.cgroups, cache=self._tenant_names)
        bound = None
        live = {st.name for st in state.slices.values()}
        listed = {s.name for s in desired.slices}
        newcomers = any(u.name not in live and u.name not in listed for u in self.discovery.units)
        if (newcomers or self.discovery.contested) and self.config.classifier.mode == "cgroup":
            # only a tenant without an xid yet may have one in the maps (a crash before
            # the save that would have recorded it), and of cgroups sharing a name the
            # one the maps bind keeps it: then read them
            try:
                bound = self._cgroups_table().bindings()
            except Error as exc:  # no table yet: nothing bound
                log.debug("classifier maps not read: %s", exc)
        self.discovery = settle(self.discovery, desired, state, bound)  # the classifier's too
        return merge(
            desired, self.discovery, self.config, state, bound=bound, cache=self._tenant_slices
        )

    def _cgroups_table(self) -> CgroupClassifier:
        from bwenforcer.kernel.classifier import CgroupClassifier

        if self._cgroup_classifier is None:
            self._cgroup_classifier = CgroupClassifier(netns=self.netns)
        return self._cgroup_classifier

    def _fold_history(self, state: State) -> None:
        """Fold the history's journal in if the cycle found it due: a step of its own,
        after the cycle applied its limits and saved its state (so the fold's
        duration delays neither), under the cycle's lock (the history has one
        writer); a failure is logged, as a recording's is. Slices neither in
        ``state`` nor in its ledger keep only their monthly totals.
        """
        if self._history is None or not self._history.fold_due:
            return
        live = {s.name for s in state.slices.values()}
        live.update(state.ledger)
        try:
            self._history.fold_if_due(live)
        except (DiskFull, UnsafePath):
            raise
        except (Error, OSError) as exc:
            log.error("usage history %s not folded: %s", self.config.history_file, exc)

    def _classifier_hook(self) -> Callable[[DesiredSet], None] | None:
        mode = self.config.classifier.mode
        if mode == "cgroup":
            return self._apply_cgroups
        if mode == "none":
            return None
        from bwenforcer.kernel.classifier import Classifier, ClassifierSpec

        classifier = Classifier(netns=self.netns, mode=mode)
        prefixes = self.config.classifier.exempt_prefixes

        def apply(desired: DesiredSet) -> None:
            classifier.apply(ClassifierSpec(tuple(s.xid for s in desired.slices), prefixes))

        return apply

    def _apply_cgroups(self, desired: DesiredSet) -> None:
        from bwenforcer.kernel.classifier import CgroupSpec

        table = self._cgroups_table()
        units = self.discovery.by_name() if self.discovery is not None else {}
        bindings = {units[s.name].cgroup_id: s.xid for s in desired.slices if s.name in units}
        levels = tuple(p.level for p in self.config.cgroups.tenants)
        gate = self.config.cgroups.gate
        tenants = {units[s.name].path for s in desired.slices if s.name in units}
        mount = self.discovery.mount if self.discovery is not None else ""
        spec = CgroupSpec(
            bindings,
            levels,
            self.config.classifier.exempt_prefixes,
            gate,
            # the directories bound tenants are in, as the watcher watches them
            tuple(sorted({os.path.join(mount, os.path.dirname(p)) for p in tenants if "/" in p}))
            if gate
            else (),
            frozenset(os.path.join(mount, p) for p in tenants) if gate else frozenset(),
        )
        try:
            table.apply(spec)
        except Error:
            table.close()  # a fresh socket next cycle
            self._cgroup_classifier = None
            raise
        if self.watch and self.discovery is not None:
            self._watch_restarts(
                {
                    units[s.name].path: (s.xid, units[s.name].cgroup_id)
                    for s in desired.slices
                    if s.name in units
                }
            )

    def _watch_restarts(self, tenants: dict[str, tuple[int, int]]) -> None:
        """Hand the cycle's tenants to the watcher (started on first use); a watcher
        that cannot run is logged once and the cycle alone keeps the maps.
        """
        from bwenforcer.kernel.cgroupwatch import CgroupWatcher
        from bwenforcer.kernel.classifier import MAP_DEFAULT, MAP_EXEMPT, SET_PASS, TABLE

        if self._watcher is None:
            assert self.discovery is not None
            try:
                self._watcher = CgroupWatcher(
                    self.discovery.mount,
                    TABLE,
                    MAP_DEFAULT,
                    MAP_EXEMPT,
                    self.netns,
                    pass_set=SET_PASS if self.config.cgroups.gate else None,
                )
            except Error as exc:
                log.error("cgroup watcher not started (restarts wait for a cycle): %s", exc)
                self.watch = False
                return
        self._watcher.update(tenants)


@dataclass(frozen=True)
class _TreeKeeper:
    """The agent's backend as one cycle sees it: a dump that finds no tree builds it,
    unless limiting is off on the node (then a missing tree is left missing).
    """

    agent: Agent
    dry_run: bool
    build: bool

    def dump(self) -> KernelSnapshot:
        """The device's classes (after building the tree again if it vanished).

        The device is looked up by its configured name every cycle (one link request),
        so a long-lived agent follows the name: a device renamed away is "missing", a
        new one under the name is the one enforced on.
        """
        try:
            if self.agent.backend().device_moved():
                log.warning(
                    "dev %s: the name is another interface now (renamed or re-created):"
                    " following the name",
                    self.agent.config.device,
                )
                self.agent.close()
            return self.agent.backend().dump()
        except TreeNotInitialised:
            if not self.build:
                raise
            return self.agent.rebuilt_tree(self.dry_run)

    def ensure_filter(self, dry_run: bool = False) -> str | None:
        """The mark → class filter, checked and put back (see :meth:`HtbBackend.ensure_filter`).

        A dry run that planned on an empty tree (none on the device) checks nothing.
        """
        try:
            wrong = self.agent.backend().ensure_filter(dry_run)
        except KernelError as exc:
            if dry_run:
                return None
            # refused every cycle while the cause lasts: logged once per change
            problem = str(exc)
            if problem != self.agent.filter_problem:
                log.error(
                    "dev %s: mark → class filter not put in place: %s; slices' traffic"
                    " may not reach their classes (counted and capped as far as it does)",
                    self.agent.config.device,
                    problem,
                )
            self.agent.filter_problem = problem
            raise
        if self.agent.filter_problem is not None and not dry_run:
            log.info("dev %s: mark → class filter in place again", self.agent.config.device)
            self.agent.filter_problem = None
        return wrong

    def apply(self, ops: Sequence[KernelOp]) -> list[OpFailure]:
        """Apply class operations (see :meth:`HtbBackend.apply`)."""
        return self.agent.backend().apply(ops)


def agent_for(
    config: Config, agent: Agent | None, factory: Callable[[Config], Agent] = Agent
) -> Agent:
    """``agent`` while it runs ``config``; else a new one from ``factory`` (the old closed).

    Long-running callers keep one agent across cycles (its socket, the state and
    history it wrote) and get a fresh one when their config is reloaded.
    """
    if agent is not None and agent.config is config:
        return agent
    if agent is not None:
        agent.close()
    return factory(config)


def load_desired(config: Config, dry_run: bool = False, report: bool = True) -> DesiredSet:
    """The desired slices of a ``sync`` run: the slices file, or none.

    A dry run (``dry_run`` or the config's ``dry_run``) writes no slices cache;
    ``report`` False logs no error of an unusable slices file (lookups).
    """
    if config.slices_file is None:
        return DesiredSet(())
    from bwenforcer.inputs.slices import load_slices_file

    write_cache = not (dry_run or config.dry_run)
    return load_slices_file(config.slices_file, config, write_cache, report)

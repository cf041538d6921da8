"""Wires the real parts (HTB backend, state store, mail, classifier, history) to a cycle.

``sync``, ``daemon`` and the node-manager thread all run cycles through
:class:`Agent`, so they behave the same.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bwenforcer.core.model import (
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
from bwenforcer.cycle.run import CycleResult, Hooks, run_cycle
from bwenforcer.errors import DiskFull, Error, KernelError, TreeNotInitialised, UnsafePath

if TYPE_CHECKING:
    from bwenforcer.files.atomic import FileIdentity
    from bwenforcer.history.recorder import HistoryRecorder
    from bwenforcer.kernel.htb import HtbBackend
    from bwenforcer.store.state import StateStore

log = logging.getLogger(__name__)


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

    def notify(action: Notify, st: SliceState) -> None:
        classes = tuple(
            CappedClass(
                traffic_class=tc,
                used_bytes=st.cls(tc).used_bytes,
                limit_bytes=st.cls(tc).policy.limit_bytes,
                threshold_bytes=st.cls(tc).policy.threshold_bytes,
                ceil_bps=st.cls(tc).ceil_bps,
                max_rate_bps=st.cls(tc).policy.max_rate_bps,
            )
            for tc in action.classes
        )
        notice = Notice(st.name, st.xid, st.period_start_s, st.period_end_s, classes)
        transport.send(build_message(notice, config.mail, host, int(clock()), template), budget)

    return notify


@dataclass
class Agent:
    """Long-lived parts of the agent for one config; one cycle per :meth:`cycle` call."""

    config: Config
    clock: Callable[[], float] = time.time
    netns: str | None = None  # tests: run the backend and classifier in this namespace
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

    # The last failure callers logged (see new_problem), so that a failure repeated
    # every interval (a device gone for hours) is logged once, not every cycle.
    _problem: str | None = field(default=None, init=False, repr=False)

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
        return self._kernel

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

    def cycle(self, desired: DesiredSet, dry_run: bool = False) -> CycleResult:
        """Run one cycle against the kernel, the state file, mail and the classifier.

        The garbage collector is left as it is: a process of our own pauses it
        around the cycle (:func:`gc_paused`). A tree that vanished (qdisc deleted,
        device re-created) is built again (:meth:`rebuilt_tree`).
        """
        from bwenforcer.store.state import StateStore

        if self._store is None:
            self._store = StateStore(self.config.state_file)
        dry_run = dry_run or self.config.dry_run

        hooks = Hooks(
            classifier=self._classifier_hook(),
            before_save=self._record_history,
            after_save=self._fold_history,
        )
        try:
            result = run_cycle(
                self.config,
                desired,
                kernel=_TreeKeeper(self, dry_run, build=not desired.limiting_off),
                store=self._store,
                notifier=make_notifier(self.config, self.clock, dry_run) if not dry_run else None,
                clock=self.clock,
                dry_run=dry_run,
                hooks=hooks,
            )
        except KernelError:
            self.close()  # the device may have gone and come back under a new index
            raise
        if self._problem is not None:
            log.info("cycle ok again (was: %s)", self._problem)
            self._problem = None
        return result

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
                plan.now_s, capped_s, usage, base_s=previous_s or 0, roll_up=not stepped
            )
        except (DiskFull, UnsafePath):
            raise  # the operator must act: exit 5, not a line in a log
        except (Error, OSError) as exc:
            log.error("usage history %s not updated: %s", self.config.history_file, exc)

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
        if self.config.classifier.mode != "uid":
            return None
        from bwenforcer.kernel.classifier import Classifier, ClassifierSpec

        classifier = Classifier(netns=self.netns)
        prefixes = self.config.classifier.exempt_prefixes

        def apply(desired: DesiredSet) -> None:
            classifier.apply(ClassifierSpec(tuple(s.xid for s in desired.slices), prefixes))

        return apply


@dataclass(frozen=True)
class _TreeKeeper:
    """The agent's backend as one cycle sees it: a dump that finds no tree builds it,
    unless limiting is off on the node (then a missing tree is left missing).
    """

    agent: Agent
    dry_run: bool
    build: bool

    def dump(self) -> KernelSnapshot:
        """The device's classes (after building the tree again if it vanished)."""
        try:
            return self.agent.backend().dump()
        except TreeNotInitialised:
            if not self.build:
                raise
            return self.agent.rebuilt_tree(self.dry_run)

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


def load_desired(config: Config, dry_run: bool = False) -> DesiredSet:
    """The desired slices of a ``sync`` run: the slices file, or none.

    A dry run (``dry_run`` or the config's ``dry_run``) writes no slices cache.
    """
    if config.slices_file is None:
        return DesiredSet(())
    from bwenforcer.inputs.slices import load_slices_file

    write_cache = not (dry_run or config.dry_run)
    return load_slices_file(config.slices_file, config, write_cache)

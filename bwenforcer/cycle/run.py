"""One enforcement cycle: the imperative shell around the pure planner.

lock → load state → dump kernel → plan → apply (kernel, classifier, mail) →
history → save state. Every outside part is passed in, so the daemon, the
node-manager thread and ``sync`` share this code and tests use real parts.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, closing, nullcontext
from dataclasses import dataclass, field
from typing import Protocol

from bwenforcer.core.inbound import InboundSnapshot
from bwenforcer.core.model import BootClock, DesiredSet, KernelSnapshot, State
from bwenforcer.core.notices import sent_marks
from bwenforcer.core.periods import CLOCK_SLACK_S, clock_offset_s
from bwenforcer.core.plan import Plan
from bwenforcer.core.planner import PlanParams, plan
from bwenforcer.core.settings import Config
from bwenforcer.cycle.executor import (
    InboundLimitsPort,
    KernelPort,
    Notifier,
    Outcome,
    execute,
)
from bwenforcer.errors import Error, ExitCode, KernelError
from bwenforcer.store.outbox import Outbox

log = logging.getLogger(__name__)


class Kernel(KernelPort, Protocol):
    """What a cycle needs of the HTB backend."""

    def dump(self) -> KernelSnapshot:
        """One class dump of the device."""
        ...

    def ensure_filter(self, dry_run: bool = False) -> str | None:
        """Check the mark → class filter (one request) and put it back if it is not
        there (not on a dry run); what was wrong, or None. KernelError if the kernel
        refused it.
        """
        ...


class InboundPort(InboundLimitsPort, Protocol):
    """What a cycle needs of an inbound (download) backend, with ``inbound.enabled``
    (``kernel.inbound.InboundBackend``), called in this order each cycle: its counters
    kept for the slices (``ensure``), one read of them and of the limits (``dump``),
    the planner's limit changes (``apply_limits``).
    """

    def ensure(self, xids: Iterable[int], dry_run: bool = False) -> object:
        """Counters for every class of ``xids``, none of other xids (not on a dry run);
        what it did, for logs. KernelError if the backend refused.
        """
        ...

    def dump(self) -> InboundSnapshot:
        """Every slice class's inbound byte counter and limit (KernelError if unread)."""
        ...


class Loaded(Protocol):
    """The state a cycle starts from, and the backup it was recovered from, if any."""

    state: State
    recovered_from: str | None


class Store(Protocol):
    """What a cycle needs of the state store."""

    def lock(self, timeout_s: float) -> AbstractContextManager[object]:
        """Exclusive lock against other cycles."""
        ...

    def load(self) -> Loaded:
        """Load the state, recovering from the backup if needed."""
        ...

    def read_unlocked(self) -> Loaded:
        """Load the state without the lock, moving nothing aside (dry runs)."""
        ...

    def save(self, state: State, now_s: int) -> None:
        """Write the state atomically."""
        ...


@dataclass(frozen=True)
class CycleResult:
    """What one cycle did, for exit codes, output and metrics."""

    started_s: float
    duration_s: float
    plan: Plan
    outcome: Outcome | None  # None on a dry run
    recovered_from: str | None = None
    source_errors: tuple[str, ...] = ()
    extra_failures: tuple[str, ...] = field(default=())
    filter_restored: bool = False  # the mark → class filter was missing and put back
    units: Mapping[str, str] = field(default_factory=dict)  # cgroup tenants: name -> unit
    # inbound accounting: bytes received by no slice, by class (the backend's counters)
    unclassified_in_bytes: Mapping[str, int] = field(default_factory=dict)

    @property
    def dry_run(self) -> bool:
        """True when nothing was applied."""
        return self.outcome is None

    @property
    def failures(self) -> tuple[str, ...]:
        """Every failed operation of the cycle, one line each."""
        own = () if self.outcome is None else self.outcome.failures
        return own + self.extra_failures

    @property
    def result(self) -> str:
        """``ok``, ``partial`` (something failed) or ``dry-run``."""
        if self.outcome is None:
            return "dry-run"
        outcome = self.outcome
        if self.failures or outcome.mails_failed or outcome.mails_deferred or self.source_errors:
            return "partial"
        return "ok"

    @property
    def exit_code(self) -> ExitCode:
        """Process exit code of ``sync`` for this result; a dry run exits as its sync
        would for what it can know (bad slices), not for what only applying shows.
        """
        partial = self.result == "partial" or (self.dry_run and self.source_errors)
        return ExitCode.PARTIAL if partial else ExitCode.OK


@dataclass
class Hooks:
    """Optional steps after the kernel changes; each failure is logged and counted."""

    classifier: Callable[[DesiredSet], None] | None = None
    # Completes the sources' slices once the state is loaded (under the lock): the
    # cgroup tenants, whose xids the state keeps by name.
    complete: Callable[[DesiredSet, State], DesiredSet] | None = None
    # Records the cycle in the usage history before the state is saved: a cycle
    # killed in between leaves a history record the next cycle drops, rather than
    # a saved cycle the history never hears of (the history has one writer: the
    # lock holder).
    before_save: Callable[[Plan], None] | None = None
    # Work left for after the cycle, given the state saved: taken once it is
    # saved and the cycle's duration measured, still under the lock (the
    # history's fold).
    after_save: Callable[[State], None] | None = None


def run_cycle(
    config: Config,
    desired: DesiredSet,
    *,
    kernel: Kernel,
    store: Store,
    notifier: Notifier | None,
    clock: Callable[[], float] = time.time,
    boot: Callable[[], BootClock | None] | None = None,
    dry_run: bool = False,
    hooks: Hooks | None = None,
    inbound: InboundPort | None = None,
    outbox: Outbox | None = None,
) -> CycleResult:
    """Run one cycle; with ``dry_run`` plan only (no lock, nothing written).

    ``boot`` reads the node's boot id and boot clock, read with ``clock``: they tell
    a stepped wall clock from time that passed (None: the wall clock alone).
    ``inbound``: the inbound backend, with ``inbound.enabled`` (None: off, and
    nothing of the inbound path runs). Its counters are kept for the slices of the
    source and of the state (those leaving this cycle are read a last time) before
    its one read; a read it fails holds every slice's inbound usage and limits for
    the cycle; a refused limit or ``ensure`` is one of the cycle's failures; neither
    stops the cycle.
    ``outbox``: the notice outbox journal (store.outbox): its marks are planned as
    sent, the cycle's notices recorded in it, and it is cleared once the state is saved.
    """
    hooks = hooks or Hooks()
    started = clock()
    lock = nullcontext() if dry_run else store.lock(config.lock_timeout_s)
    with lock, closing(outbox) if outbox is not None else nullcontext():
        loaded = store.read_unlocked() if dry_run else store.load()
        sent = sent_marks(outbox.read()) if outbox is not None else None
        if hooks.complete is not None:
            desired = hooks.complete(desired, loaded.state)
        snapshot = kernel.dump()
        wrong = None
        extra: list[str] = []
        if not desired.limiting_off:
            # a tree rebuilt by someone else (the node manager's bwlimit) has no
            # filter of ours: without it no packet reaches a slice's class
            try:
                wrong = kernel.ensure_filter(dry_run)
            except KernelError as exc:
                # refused (a foreign filter of another kind at our priority): one of
                # the cycle's failures; counting, capping and the rest still go on
                log.debug("dev %s: mark → class filter: %s", config.device, exc)
                extra.append(f"mark → class filter: {exc}")
            if wrong is not None:
                log.warning("dev %s: %s", config.device, wrong)
        params = PlanParams.from_config(config)
        if inbound is not None and not params.inbound:
            inbound = None  # inbound accounting off: the port is not touched
        inbound_snapshot = None
        if inbound is not None:
            xids = {s.xid for s in desired.slices}.union(loaded.state.slices)
            try:
                inbound.ensure(sorted(xids), dry_run)
            except Error as exc:
                log.error("inbound counters not kept: %s", exc)
                extra.append(f"inbound counters: {exc}")
            try:
                inbound_snapshot = inbound.dump()
            except Error as exc:
                log.error("inbound counters not read (usage and limits held): %s", exc)
                extra.append(f"inbound dump: {exc}")
        now_s = int(clock())
        reading = None if boot is None else boot()
        the_plan = plan(
            desired,
            snapshot,
            loaded.state,
            params,
            now_s,
            boot=reading,
            sent=sent,
            inbound=inbound_snapshot,
        )
        if the_plan.clock_step is not None:
            log.warning(
                "%s: no period ends, no ledger entry expires and the history is not rolled"
                " up this cycle",
                the_plan.clock_step,
            )
        else:
            off_s = clock_offset_s(loaded.state, now_s, reading)
            if off_s is not None and abs(off_s) > CLOCK_SLACK_S:
                log.warning(
                    "clock %+d s off the reference taken %d s ago (same boot) for a whole"
                    " period or a day: the reference was wrong, the wall clock is trusted again",
                    off_s,
                    reading.boottime_s - loaded.state.boottime_s if reading else 0,
                )
        if dry_run:
            return CycleResult(
                started,
                clock() - started,
                the_plan,
                None,
                loaded.recovered_from,
                desired.errors,
                tuple(extra),
            )
        outcome = execute(the_plan, kernel, notifier, outbox, inbound)
        if hooks.classifier is not None and not the_plan.limiting_off:
            try:
                hooks.classifier(
                    dataclasses.replace(desired, slices=desired.slices + the_plan.held)
                    if the_plan.held
                    else desired
                )
            except Error as exc:
                log.error("classifier failed: %s", exc)
                extra.append(f"classifier: {exc}")
        if hooks.before_save is not None:
            hooks.before_save(the_plan)
        store.save(outcome.state, now_s)
        if outbox is not None:
            outbox.clear()  # the state saved carries its marks
        result = CycleResult(
            started,
            clock() - started,
            the_plan,
            outcome,
            loaded.recovered_from,
            desired.errors,
            tuple(extra),
            filter_restored=wrong is not None,
            unclassified_in_bytes=(
                {} if inbound_snapshot is None else dict(inbound_snapshot.unclassified_bytes)
            ),
        )
        if hooks.after_save is not None:
            hooks.after_save(outcome.state)
    log.info(
        "cycle %s in %.3fs: %d slices, %d kernel changes, %d failures",
        result.result,
        result.duration_s,
        len(the_plan.live),
        len(the_plan.kernel_ops()),
        len(result.failures),
    )
    return result

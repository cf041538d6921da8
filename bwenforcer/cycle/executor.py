"""Applies a plan: kernel changes in one batch, then notifications.

One slice's failure is logged with its name and counted; it never stops the
others. The state returned carries a class's notified flag only once its mail
was delivered, so a failed delivery is retried next cycle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bwenforcer.core.model import KernelOp, OpFailure, SliceState, State
from bwenforcer.core.notices import Mark, notice_id
from bwenforcer.core.plan import (
    Adopt,
    CreateClass,
    Inherit,
    MoveToLedger,
    NewPeriod,
    Notify,
    Plan,
    PurgeLedger,
    RemoveClasses,
    Revive,
    Rollover,
    SetRates,
)
from bwenforcer.core.planner import mark_sent
from bwenforcer.core.units import human_rate, human_size
from bwenforcer.errors import DeliveryUncertain, Error, MailDeadline

log = logging.getLogger(__name__)


class KernelPort(Protocol):
    """What the executor needs of the HTB backend."""

    def apply(self, ops: Sequence[KernelOp]) -> list[OpFailure]:
        """Apply ops in batches; return the ones the kernel refused."""
        ...


class Notifier(Protocol):
    """Sends one notice: ``notify(action, state, notice_id, commit)``.

    ``notice_id`` (core.notices.notice_id) is the same for the same notice in every
    cycle; ``commit`` is handed to the transport, which calls it at its point of no
    return (mail.transport.Transport.send). Raises DeliveryError (DeliveryUncertain:
    perhaps delivered), MailDeadline once the cycle's time for mail is spent.
    """

    def __call__(
        self, action: Notify, st: SliceState, notice_id: str, commit: Callable[[], None]
    ) -> None:
        """Send the notice of ``action`` for the slice in state ``st``."""
        ...


class OutboxPort(Protocol):
    """What the executor needs of the notice outbox (store.outbox.Outbox)."""

    def record(self, marks: Iterable[Mark], handed: bool = True) -> None:
        """Append marks as handed over or taken back, durably; StateError if not."""
        ...


@dataclass(frozen=True)
class Outcome:
    """What applying a plan did."""

    state: State
    failures: tuple[str, ...] = ()  # one line per failed slice operation
    failed_slices: frozenset[int] = frozenset()
    delivered: tuple[Notify, ...] = ()  # handed to the transport (marked in the state)
    mails_sent: int = 0
    mails_failed: int = 0
    mails_deferred: int = 0  # not tried: the cycle's time for mail was spent
    counts: Mapping[str, int] = field(default_factory=dict)


def _who(name: str | None, xid: int) -> str:
    """How a line names a slice: by name and xid; an xid no slice is known by, as such."""
    return f"slice {name} xid {xid}" if name is not None else f"xid {xid} (no slice known)"


def _planned_name(plan: Plan, xid: int) -> str | None:
    """The name a plan's actions give ``xid`` (a slice being removed is in no state)."""
    for action in plan.actions:
        if getattr(action, "xid", None) == xid and getattr(action, "name", None) is not None:
            return action.name  # type: ignore[no-any-return]
    return None


def _describe(action: object) -> str | None:
    """One greppable log line per planned action."""
    if isinstance(action, CreateClass):
        return (
            f"slice {action.name} xid {action.xid} {action.traffic_class}: create ({action.reason})"
            f" ceil {human_rate(action.rates.max_rate_bps)}"
        )
    if isinstance(action, SetRates):
        return (
            f"slice {action.name} xid {action.xid} {action.traffic_class}: ceil"
            f" {human_rate(action.old.max_rate_bps)} → {human_rate(action.new.max_rate_bps)}"
            f", rate {human_rate(action.old.min_rate_bps)} → {human_rate(action.new.min_rate_bps)}"
            f", share {action.old.share} → {action.new.share}"
        )
    if isinstance(action, RemoveClasses):
        return f"{_who(action.name, action.xid)}: remove classes ({action.reason})"
    if isinstance(action, Adopt):
        return f"slice {action.name} xid {action.xid}: adopted existing classes without state"
    if isinstance(action, MoveToLedger):
        return f"slice {action.name} xid {action.xid}: gone, usage kept in the ledger"
    if isinstance(action, Revive):
        return (
            f"slice {action.name} xid {action.xid}: revived from the ledger (was xid"
            f" {action.old_xid})"
        )
    if isinstance(action, Inherit):
        return (
            f"slice {action.name} xid {action.xid}: goes on with the usage and period of"
            f" slice {action.old_name}, which left that xid (renamed, or its uid recycled)"
        )
    if isinstance(action, PurgeLedger):
        return f"slice {action.name}: ledger entry expired"
    if isinstance(action, NewPeriod):
        return f"slice {action.name} xid {action.xid}: new period, usage reset, caps lifted"
    if isinstance(action, Rollover):
        return (
            f"slice {action.name} xid {action.xid} {action.traffic_class}: rolled over"
            f" {action.carried_bytes} bytes ({human_size(action.carried_bytes)}) unused into"
            " the new period"
        )
    return None


def _count(plan: Plan) -> dict[str, int]:
    counts = {"created": 0, "changed": 0, "removed": 0, "orphans_removed": 0, "adopted": 0}
    for action in plan.actions:
        if isinstance(action, CreateClass):
            counts["created"] += 1
        elif isinstance(action, SetRates):
            counts["changed"] += 1
        elif isinstance(action, RemoveClasses):
            counts["removed"] += 2
            counts["orphans_removed"] += action.reason == "orphan"
        elif isinstance(action, Adopt):
            counts["adopted"] += 1
    return counts


def execute(
    plan: Plan, kernel: KernelPort, notifier: Notifier | None, outbox: OutboxPort | None = None
) -> Outcome:
    """Apply the plan's kernel changes, then send its notices.

    Each notice's marks go to ``outbox`` when its transport commits (right before its
    point of no return), and are taken back if the transport then says it was not
    delivered: a cycle killed after the commit never sends it again
    (docs/architecture.md "Notices").
    """
    if log.isEnabledFor(logging.INFO):  # thousands of lines in a capped cycle: build on demand
        for action in plan.actions:
            line = _describe(action)
            if line is not None:
                log.info("%s", line)
    failures: list[str] = []
    failed: set[int] = set()
    for failure in kernel.apply(plan.kernel_ops()):
        op = failure.op
        st = plan.state.slices.get(op.xid)
        name = st.name if st is not None else _planned_name(plan, op.xid)
        failed.add(op.xid)
        failures.append(
            f"{_who(name, op.xid)} {op.traffic_class}: {op.kind} failed: {failure.message}"
        )
        log.error("%s", failures[-1])

    delivered: list[Notify] = []
    sent = mail_failed = deferred = 0
    notices = (
        [a for a in plan.actions if isinstance(a, Notify) and a.xid not in failed]
        if notifier is not None
        else []
    )
    for index, action in enumerate(notices):
        assert notifier is not None
        st = plan.state.slices[action.xid]
        marks = tuple(
            Mark(st.period_start_s, action.xid, tc, action.kind, action.share_bp)  # type: ignore[arg-type]
            for tc in action.classes
        )
        committed: list[bool] = []

        def commit(marks: tuple[Mark, ...] = marks, committed: list[bool] = committed) -> None:
            if outbox is not None:
                outbox.record(marks)
            committed.append(True)

        try:
            notifier(action, st, notice_id(marks), commit)
        except MailDeadline as exc:  # the rest keep their marks unset: next cycle
            deferred = len(notices) - index
            log.warning("mail: %s; %d notifications deferred to the next cycle", exc, deferred)
            if committed:
                _take_back(outbox, action, marks)
            break
        except DeliveryUncertain as exc:  # handed over: never again
            mail_failed += 1
            delivered.append(action)
            log.warning(
                "slice %s xid %s: %s notice perhaps not delivered, not sent again: %s",
                action.name,
                action.xid,
                action.kind,
                exc,
            )
            continue
        except Error as exc:  # delivery, or a message that cannot be built
            mail_failed += 1
            log.warning(
                "slice %s xid %s: notification failed (%s notice): %s",
                action.name,
                action.xid,
                action.kind,
                exc,
            )
            if committed:
                _take_back(outbox, action, marks)
            continue
        sent += 1
        delivered.append(action)
    return Outcome(
        state=mark_sent(plan.state, delivered),
        failures=tuple(failures),
        failed_slices=frozenset(failed),
        delivered=tuple(delivered),
        mails_sent=sent,
        mails_failed=mail_failed,
        mails_deferred=deferred,
        counts=_count(plan),
    )


def _take_back(outbox: OutboxPort | None, action: Notify, marks: tuple[Mark, ...]) -> None:
    """The transport said a committed notice was not delivered: unmark it, to retry it."""
    if outbox is None:
        return
    try:
        outbox.record(marks, handed=False)
    except Error as exc:  # it stays marked: not sent again (at most once)
        log.error(
            "slice %s xid %s: %s notice not delivered and not retried: %s",
            action.name,
            action.xid,
            action.kind,
            exc,
        )

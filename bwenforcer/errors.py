"""The project's exception types and the process exit codes they map to.

Every error's ``str()`` is one line an operator can act on: it names the place
(file, key, slice, device) and the problem.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Exit codes of the command line, documented in ``--help`` and the README."""

    OK = 0
    PARTIAL = 1  # the cycle ran, but some slices (or mails) failed
    USAGE = 2  # bad command line or bad config
    LOCK_BUSY = 3  # another cycle holds the state lock
    KERNEL = 4  # kernel unavailable: device missing, not permitted, tree missing
    STATE = 5  # state file unusable (no backup), a disk that cannot write, an unsafe dir
    FAILED = 6  # anything else that stopped the command


class Error(Exception):
    """Base of every error bwenforcer raises on purpose."""

    exit_code: ExitCode = ExitCode.FAILED


class UnitError(Error, ValueError):
    """A rate, size or duration string that cannot be parsed."""

    exit_code = ExitCode.USAGE


class ConfigError(Error):
    """The config file is missing, unreadable or invalid."""

    exit_code = ExitCode.USAGE


class DeviceNotSet(ConfigError):
    """The config names no device: nothing is enforced (the shipped config, as installed)."""

    def __init__(self) -> None:
        super().__init__(
            "no device set in the config: nothing is enforced until `device:` names the uplink"
        )


class UsageError(Error):
    """A command-line argument is invalid (beyond what argparse checks)."""

    exit_code = ExitCode.USAGE


class SliceError(Error):
    """One slice's definition is invalid; only that slice is skipped."""

    exit_code = ExitCode.USAGE


class XidOutOfRange(SliceError):
    """A slice id that does not fit the 12-bit HTB layout."""


class KernelError(Error):
    """The kernel refused or could not do what was asked."""

    exit_code = ExitCode.KERNEL

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


class DeviceMissing(KernelError):
    """The configured network device does not exist."""


class NotPermitted(KernelError):
    """No root / CAP_NET_ADMIN."""


class TreeNotInitialised(KernelError):
    """The HTB tree of docs/htb-layout.md is not on the device (run ``tc init``)."""


class ClassOpFailed(KernelError):
    """One class operation failed; the others in the batch went through."""

    exit_code = ExitCode.PARTIAL


class ClassifierError(KernelError):
    """The nftables classifier could not be installed or removed."""


class InboundError(KernelError):
    """The inbound (nftables) counters or limits could not be read or changed."""


class StateError(Error):
    """The state file cannot be used."""

    exit_code = ExitCode.STATE


class StateCorrupt(StateError):
    """The state file is not valid JSON or does not match the schema."""


class UnsafePath(StateError):
    """A file or directory the agent writes could be another user's: a symlink, a
    directory owned by another uid or writable by others (refused, exit 5).
    """


class DiskFull(StateError):
    """The disk cannot take a write (full, quota, read-only, I/O error); old files kept."""


class StateTooNew(StateError):
    """The state file was written by a newer schema version."""


class LockBusy(StateError):
    """Another process holds the state lock beyond the wait limit."""

    exit_code = ExitCode.LOCK_BUSY


class LegacyImportError(StateError):
    """A legacy bwmon pickle cannot be imported (unreadable or unsafe)."""


class DeliveryError(Error):
    """A notification could not be delivered (retried next cycle)."""

    exit_code = ExitCode.PARTIAL


class DeliveryUncertain(DeliveryError):
    """A notice handed over with no answer saying whether it was taken (no reply to the
    end of an SMTP DATA, a sendmail killed at the timeout): a failure, never sent again.
    """


class MailDeadline(DeliveryError):
    """The cycle's time for mail is spent; the notifications left wait for the next cycle."""


class HistoryError(Error):
    """The usage history file cannot be read or written."""

    exit_code = ExitCode.STATE


class HistoryCorrupt(HistoryError):
    """The usage history file is damaged or of an unknown format version."""


class MetricsError(Error):
    """The metrics endpoint cannot listen or the textfile cannot be written."""


class MetricsListenError(MetricsError):
    """The /metrics endpoint cannot listen on its address (in use, not permitted, bad)."""

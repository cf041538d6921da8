"""The notice outbox: which notices a cycle handed to its transport, durable at once.

A notice's mark (:class:`~bwenforcer.core.notices.Mark`) is written here, and
fsynced, right before the transport's point of no return (the end of an SMTP
DATA, the link into the spool, sendmail's start; after a webhook's 2xx reply);
the state saved at the end of the cycle carries the same marks, and then the
journal is removed. A cycle killed in between leaves the journal, and the next
cycle's plan takes its marks as sent (``plan(sent=...)``): a notice is never
handed over twice. A transport that refused a notice after its mark was written
(an SMTP error reply to the DATA, a spool write that failed) has the mark taken
back with a ``-`` line, so the notice is retried. docs/architecture.md "Notices"
states the guarantee this gives.

The file: ``<state_file>.outbox``, lines ``+ MARK`` or ``- MARK`` (``Mark.line``),
created with O_EXCL|O_NOFOLLOW, appended to with O_APPEND, never through a
symlink, read up to ``MAX_BYTES``. A line cut short by a kill (no newline) is
ignored: its notice was not yet handed over.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable

from bwenforcer.core.notices import Mark
from bwenforcer.errors import StateError
from bwenforcer.files.atomic import create_new, open_own, read_own

log = logging.getLogger(__name__)

# a cycle writes at most 3 notices per class (threshold, share, lift), each line < 64
# bytes: 8,000 classes take 1.5 MB
MAX_BYTES = 4 * 1024 * 1024


class Outbox:
    """The outbox journal beside the state file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def read(self) -> list[Mark]:
        """The marks of the notices handed over and not taken back (none without a file).

        Raises StateError (UnsafePath) for a file that is not ours.
        """
        try:
            data = read_own(self.path, "notice outbox", MAX_BYTES + 1)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StateError(f"notice outbox {self.path}: {exc.strerror}") from None
        if len(data) > MAX_BYTES:
            log.warning("notice outbox %s: over %d bytes, the rest ignored", self.path, MAX_BYTES)
            data = data[:MAX_BYTES]
        sent: dict[Mark, bool] = {}
        bad = 0
        lines = data.split(b"\n")
        for raw in lines[:-1]:  # the last: "" after a newline, or a line cut short
            text = raw.decode("ascii", "replace")
            mark = Mark.parse(text[2:]) if text[:2] in ("+ ", "- ") else None
            if mark is None:
                bad += 1
                continue
            sent[mark] = text[0] == "+"
        if bad:
            log.warning("notice outbox %s: %d lines not understood, ignored", self.path, bad)
        return [mark for mark, handed in sent.items() if handed]

    def record(self, marks: Iterable[Mark], handed: bool = True) -> None:
        """Append ``marks`` as handed over (``+``) or taken back (``-``), durably.

        Raises StateError if that cannot be done: the notice must then not be sent.
        """
        sign = "+" if handed else "-"
        payload = "".join(f"{sign} {m.line()}\n" for m in marks).encode("ascii")
        try:
            fd = self._open()
            os.write(fd, payload)
            os.fsync(fd)
        except OSError as exc:
            raise StateError(f"notice outbox {self.path}: {exc.strerror or exc}") from None

    def _open(self) -> int:
        if self._fd is None:
            try:
                self._fd = create_new(self.path)
            except FileExistsError:
                self._fd = open_own(self.path, os.O_WRONLY | os.O_APPEND, "notice outbox")
            else:
                os.close(self._fd)  # reopened for appending: create_new opens for writing
                self._fd = open_own(self.path, os.O_WRONLY | os.O_APPEND, "notice outbox")
        return self._fd

    def clear(self) -> None:
        """Forget the journal once the state saved carries its marks."""
        self.close()
        try:
            os.unlink(self.path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log.warning("notice outbox %s: not removed: %s", self.path, exc.strerror)

    def close(self) -> None:
        """Close the journal's file, if open."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

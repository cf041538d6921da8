"""Usage history, the writer: each cycle's journal append, and when the journal is folded in.

A cycle appends its usage to the journal (:mod:`.journal`). Once a day (the
first cycle of a UTC day, when buckets become due to roll up) or when the
journal outgrows a quarter of the file, the journal is folded in: the file
(:mod:`.format`) is rewritten slice by slice with its generation incremented and
a new, empty journal is started for that generation. A cycle appends its record
before it saves its state; the next cycle cuts the record off if that save
never happened (see :meth:`HistoryRecorder.record`), so the history and the
state count the same bytes whatever instant the agent is killed at. The fold is
a step of its own (:meth:`HistoryRecorder.fold_if_due`), taken once the cycle
has applied its limits and saved its state, so its duration delays neither.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection

from bwenforcer.core.settings import HistoryConfig
from bwenforcer.errors import HistoryError
from bwenforcer.files.atomic import FileIdentity, disk_full, file_identity, open_own, replace_file
from bwenforcer.history.decode import file_generation
from bwenforcer.history.fold import DEPARTED_MAX_SLICES, fold_history, make_history_dir
from bwenforcer.history.journal import (
    JOURNAL_HEADER_BYTES,
    JOURNAL_VERSION,
    JournalEnd,
    encode_cycle,
    journal_end,
    journal_header,
    journal_path,
    record_cycle,
)
from bwenforcer.history.usage import DAY_S, CycleUsage, roll_up_cutoffs

log = logging.getLogger(__name__)

# Fold the journal in before its day is out once it is past both of these.
JOURNAL_FOLD_MIN_BYTES = 1 << 20
JOURNAL_FOLD_SHARE = 4  # a quarter of the history file
_GENERATION_MASK = 0xFFFF  # the file and journal headers hold it in a u16


class HistoryRecorder:
    """Adds each cycle's usage to the history: a journal append, the fold when due.

    Kept by an agent across cycles, it remembers the journal it last wrote, so a
    daemon's cycle reads nothing back; a new process walks the journal's record
    headers once.
    """

    def __init__(
        self,
        path: str,
        cfg: HistoryConfig,
        clock: Callable[[], float] = time.time,
        fold_min_bytes: int = JOURNAL_FOLD_MIN_BYTES,
        departed_max: int = DEPARTED_MAX_SLICES,
    ) -> None:
        self.path = path
        self.journal = journal_path(path)
        self.cfg = cfg
        self._clock = clock  # names of moved-aside files only
        self._fold_min_bytes = fold_min_bytes
        self._departed_max = departed_max
        # each slice name as the journal writes it; forgotten at each fold, so names
        # of slices long gone do not pile up in a daemon
        self._names: dict[str, bytes | None] = {}
        self._known: tuple[FileIdentity | None, JournalEnd] | None = None
        self._fold_at: int | None = None  # the cycle time of a fold found due
        # slices whose blocks the folds found damaged and skipped (each logged by name)
        self.damaged_slices = 0

    def record(
        self,
        now_s: int,
        capped_s: int,
        usage: list[CycleUsage],
        *,
        cycle: int | None = None,
        roll_up: bool = True,
    ) -> None:
        """Record one cycle; HistoryError (the history as it was) if it cannot be written.

        A cycle records before it saves its state; ``cycle`` is its number, the count
        of cycles its save brings the state to (the state it started from holds one
        less; None: not known, nothing is checked). A last record of that same number
        is of a cycle whose state was never saved (killed, or its save failed: had it
        been saved, this cycle's number would be the next): this cycle counts its
        bytes again, so that record is cut off first. ``capped_s``
        is what each capped class adds to its capped time. Without ``roll_up`` (the
        clock stepped), the journal is not folded: nothing ages out on the clock's word.
        Whether the journal is due to be folded in is noted for :meth:`fold_if_due`.
        """
        self._known, known = None, self._known
        self._fold_at = None
        number = record_cycle(cycle)
        try:
            end = self._end(known)
            if cycle is not None:
                end = self._drop_unsaved(end, number)
            if end.version != JOURNAL_VERSION:
                end = self._fold(now_s, roll_up)  # before version 2 records are appended
            if usage:
                record = encode_cycle(now_s, capped_s, usage, self._names, cycle)
                self._append(end, record)
                after = end.end + len(record)
                first_s = now_s if end.first_s is None else end.first_s
                end = JournalEnd(end.generation, after, after, first_s, end.version,
                                  (end.end, number, now_s))  # fmt: skip
        except OSError as exc:
            what = f"{self.journal}: cannot record"
            raise disk_full(exc, what) or HistoryError(f"{what}: {exc.strerror or exc}") from exc
        self._known = (file_identity(self.journal), end)
        if roll_up and self._fold_due(end, now_s):
            self._fold_at = now_s

    @property
    def fold_due(self) -> bool:
        """Whether the last :meth:`record` found the journal due to be folded in."""
        return self._fold_at is not None

    def fold_if_due(self, live: Collection[str] | None = None) -> bool:
        """Fold the journal in if the last :meth:`record` found it due; True if it did.

        Called once that cycle's state is saved (its record is then a saved cycle's),
        after the cycle's limits are applied: the fold's duration delays neither.
        ``live``: the names of the saved state's slices and ledger entries (see
        :func:`~.fold.fold_history`: the others keep their monthly totals only).
        HistoryError (the history as it was) if it cannot be written.
        """
        now_s, self._fold_at = self._fold_at, None
        if now_s is None:
            return False
        self.fold(now_s, live)
        return True

    def fold(self, now_s: int, live: Collection[str] | None = None) -> None:
        """Fold the journal in now, rolled up at ``now_s`` (see :meth:`fold_if_due`)."""
        self._known = None
        try:
            end = self._fold(now_s, True, live)
        except OSError as exc:
            what = f"{self.path}: cannot fold the journal in"
            raise disk_full(exc, what) or HistoryError(f"{what}: {exc.strerror or exc}") from exc
        self._known = (file_identity(self.journal), end)

    def _drop_unsaved(self, end: JournalEnd, number: int) -> JournalEnd:
        """``end`` without its last record if that record's cycle never saved its state
        (its number is this cycle's, ``number``).

        Only the last record can be such: every cycle checks before it appends.
        """
        last = end.last
        if last is None or last[1] != number:
            return end
        offset, _, cycle_s = last
        log.warning(
            "history journal %s: the cycle of %d never saved its state: its record dropped"
            " (the next cycle counts those bytes)",
            self.journal,
            cycle_s,
        )
        fd = open_own(self.journal, os.O_WRONLY, "history journal")
        try:
            os.ftruncate(fd, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        first_s = None if offset == JOURNAL_HEADER_BYTES else end.first_s
        return JournalEnd(end.generation, offset, offset, first_s, end.version)

    def _end(self, known: tuple[FileIdentity | None, JournalEnd] | None) -> JournalEnd:
        """The journal's end, starting a journal for the file's generation if needed."""
        if known is not None and known[0] is not None and file_identity(self.journal) == known[0]:
            return known[1]
        generation = file_generation(self.path)
        try:
            fd = open_own(self.journal, os.O_RDONLY, "history journal")
        except FileNotFoundError:
            return self._start_journal(generation or 0)
        try:
            end = journal_end(fd, self.journal)
        finally:
            os.close(fd)
        if end is None or (generation is not None and end.generation != generation):
            # not a journal, or one already folded in (the last fold stopped halfway)
            return self._start_journal(generation or 0)
        return end

    def _start_journal(self, generation: int) -> JournalEnd:
        make_history_dir(self.journal)
        replace_file(self.journal, journal_header(generation))
        header = JOURNAL_HEADER_BYTES
        return JournalEnd(generation, header, header, None)

    def _fold_due(self, end: JournalEnd, now_s: int) -> bool:
        if end.first_s is None:
            return False
        if end.first_s // DAY_S != now_s // DAY_S:
            return True  # a new UTC day: buckets are due to roll up
        try:
            file_bytes = os.stat(self.path).st_size
        except FileNotFoundError:
            file_bytes = 0
        return end.end > max(self._fold_min_bytes, file_bytes // JOURNAL_FOLD_SHARE)

    def _append(self, end: JournalEnd, record: bytes) -> None:
        make_history_dir(self.journal)
        fd = open_own(self.journal, os.O_WRONLY, "history journal")
        try:
            if end.size != end.end:
                log.warning("history journal %s: cut back to byte %d", self.journal, end.end)
                os.ftruncate(fd, end.end)
            view = memoryview(record)
            offset = end.end
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
            os.fsync(fd)
        finally:
            os.close(fd)

    def _fold(self, now_s: int, roll_up: bool, live: Collection[str] | None = None) -> JournalEnd:
        """Fold the journal into the file (slice by slice: :func:`fold_history`), rolled
        up at ``now_s`` if ``roll_up``; start the next journal and return its end.
        """
        self._names.clear()
        cutoffs = roll_up_cutoffs(now_s, self.cfg) if roll_up else None
        generation, damaged = fold_history(
            self.path,
            _GENERATION_MASK,
            cutoffs,
            self._clock,
            live=live,
            departed_max=self._departed_max,
        )
        self.damaged_slices += len(damaged)
        end = self._start_journal(generation)
        log.info("history %s: journal folded in (generation %d)", self.path, generation)
        return end

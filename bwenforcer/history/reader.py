"""Usage history, read: the file (:mod:`.decode`) and its journal (:mod:`.journal`)
replayed onto it, slice by slice (:class:`HistoryReader`) or whole
(:func:`read_history`, :func:`load_history`), changing nothing but moving a
damaged file aside.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator

from bwenforcer.errors import HistoryCorrupt, HistoryError
from bwenforcer.files.atomic import move_aside, open_own
from bwenforcer.history.decode import _fresh, _open_file
from bwenforcer.history.format import _CHUNK_BYTES
from bwenforcer.history.journal import journal_hours, journal_path
from bwenforcer.history.usage import (
    Bucketing,
    History,
    SliceHistory,
    add_hours,
    bucket_rows,
    slice_buckets,
)

log = logging.getLogger(__name__)


def _journal(
    path: str, generation: int, no_file: bool, only: str | None = None
) -> dict[str, dict[int, list[int]]]:
    """The journal's hour rows (see :func:`~.journal.journal_hours`), read a record at a
    time; none if there is no journal.
    """
    journal = journal_path(path)
    try:
        fd = open_own(journal, os.O_RDONLY, "history journal")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise HistoryError(f"{journal}: cannot read history: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "rb", buffering=_CHUNK_BYTES) as f:
            return journal_hours(f, journal, generation, no_file, only)
    except OSError as exc:
        raise HistoryError(f"{journal}: cannot read history: {exc.strerror or exc}") from exc


def _merged(
    slices: Iterable[tuple[str, SliceHistory]], journal: dict[str, dict[int, list[int]]]
) -> Iterator[tuple[str, SliceHistory]]:
    """The file's ``slices`` (in name order) with the journal's hours added, and the
    journal's new slices, in name order.
    """
    pending = sorted(journal, key=str.encode, reverse=True)
    for name, sh in slices:
        raw = name.encode()
        while pending and pending[-1].encode() < raw:
            new = pending.pop()
            fresh = SliceHistory()
            add_hours(fresh, journal[new])
            yield new, fresh
        if pending and pending[-1] == name:
            add_hours(sh, journal[pending.pop()])
        yield name, sh
    while pending:
        new = pending.pop()
        fresh = SliceHistory()
        add_hours(fresh, journal[new])
        yield new, fresh


class HistoryReader:
    """The history (the file and its journal) read slice by slice, changing nothing.

    Missing → empty. Raises :class:`HistoryCorrupt` for a damaged file (when
    opened, or when the damaged slice is reached) and :class:`HistoryError` when
    it cannot be read; a damaged journal record ends what is read of the journal
    (logged). With ``only``, just that slice's journal entries are kept.
    """

    def __init__(self, path: str, only: str | None = None) -> None:
        self.path = path
        self._file = _open_file(path)
        try:
            generation = 0 if self._file is None else self._file.generation
            self._journal = _journal(path, generation, self._file is None, only)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> HistoryReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def check(self) -> None:
        """Check the whole file's blocks (see :meth:`~.decode.HistoryFile.check`), so
        that what is then read of it is not cut short by a damaged one.
        """
        if self._file is not None:
            self._file.check()

    def slices(self) -> Iterator[tuple[str, SliceHistory]]:
        """Each slice's buckets (journal included), in name order, one at a time."""
        return _merged(() if self._file is None else self._file.slices(), self._journal)

    def buckets(
        self, by: Bucketing, only: str | None = None
    ) -> Iterator[tuple[str, dict[int, list[int]]]]:
        """Each slice's buckets by ``by`` (see :func:`~.usage.slice_buckets`), in name
        order, or only ``only``'s. By month, a current version file's slices are read from
        their months and month sums alone.
        """
        f = self._file
        if by == "month" and f is not None and f.packed:
            if only is None:
                items: Iterable[tuple[str, dict[int, list[int]] | SliceHistory | None]]
                items = f.month_slices(self._journal)
            else:
                found = f.months(only, self._journal.get(only, {}))
                if found is None and only in self._journal:
                    found = _fresh(self._journal[only])  # type: ignore[assignment]
                items = [(only, found)]
            for name, got in items:
                if got is not None:
                    yield name, slice_buckets(got, by) if isinstance(got, SliceHistory) else got
            return
        if only is None:
            for name, sh in self.slices():
                yield name, slice_buckets(sh, by)
            return
        sh = self.slice(only)
        if sh is not None:
            yield only, slice_buckets(sh, by)

    def day_rows(self, *, received: bool = True) -> Iterator[tuple[str, list[tuple[int, ...]]]]:
        """Each slice's buckets by day as plain rows (day key, then the seven figures of a
        :class:`~.usage.ReportRow`; in key order), in name order: a file in the current
        layout has its days taken as stored, not built into buckets. Without
        ``received`` a row may stop before the bytes received (see
        :meth:`~.decode.HistoryFile.day_slices`).
        """
        f = self._file
        if f is not None and f.packed:
            yield from f.day_slices(self._journal, received=received)
            return
        for name, buckets in self.buckets("day"):
            yield name, bucket_rows(buckets, "day")

    def slice(self, name: str) -> SliceHistory | None:
        """The slice ``name``'s buckets (journal included); None if it has no history."""
        sh = None if self._file is None else self._file.find(name)
        hours = self._journal.get(name)
        if hours is not None:
            sh = sh or SliceHistory()
            add_hours(sh, hours)
        return sh


def read_history(path: str) -> History:
    """The whole history (the file and its journal) in memory, changing nothing: for
    small histories and tests; the CLI reads with :class:`HistoryReader`.
    """
    with HistoryReader(path) as reader:
        generation = 0 if reader._file is None else reader._file.generation
        return History.from_slices(dict(reader.slices()), generation)


def load_history(path: str, clock: Callable[[], float] = time.time) -> History:
    """:func:`read_history`, but a damaged file is moved aside (see :func:`~.fold.fold_history`)
    and the history is its journal alone.
    """
    try:
        return read_history(path)
    except HistoryCorrupt as exc:
        _move_aside(path, exc, clock)
    history = History.from_slices(
        {name: _fresh(hours) for name, hours in _journal(path, 0, True).items()}, 0
    )
    return history


def _move_aside(path: str, exc: HistoryCorrupt, clock: Callable[[], float]) -> None:
    """Move the damaged file to ``<path>.corrupt-<UTC time>``, so the next save cannot
    overwrite what an operator may want to inspect.
    """
    try:
        target = move_aside(path, "corrupt", clock())
    except OSError as move:
        raise HistoryError(f"{path}: cannot move aside: {move.strerror or move}") from exc
    log.error("history unusable (%s): moved to %s, starting an empty history", exc, target)

"""Usage history, written: a whole history saved (:func:`save_history`), slices
written as they come (:func:`write_history`), and the journal folded into the
file slice by slice (:func:`fold_history`), each slice's block worked on as bytes
where it can be, departed slices bounded in number.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import NamedTuple

from bwenforcer.errors import HistoryCorrupt, HistoryError
from bwenforcer.files.atomic import (
    disk_full,
    fsync_dir,
    keep_aside,
    make_dir,
    new_temp,
    remove_stale_temps,
    replace_file,
)
from bwenforcer.history.decode import HistoryFile, _fresh, _open_file
from bwenforcer.history.format import (
    _CHUNK_BYTES,
    _COUNTS,
    _CRC,
    _FLAGS,
    FORMAT_VERSION,
    _first_at,
    _hour_rows,
    _pack_tier,
    _range,
    _tiers,
    _Writer,
    encode_history,
    encode_slice,
    is_wide,
    last_hour,
    shapes,
)
from bwenforcer.history.reader import _journal, _merged, _move_aside
from bwenforcer.history.usage import (
    DAY_S,
    History,
    SliceHistory,
    add_hour_row,
    add_hours,
    add_hours_to_sums,
    days_to_months,
    hours_to_days,
    merge_row,
    month_of_day,
    month_start_s,
    month_sums,
    roll_up_slice,
)

log = logging.getLogger(__name__)


def save_history(history: History, path: str) -> None:
    """Write the history atomically, mode 0600; on failure the previous file stays intact."""
    payload = encode_history(history)
    try:
        make_history_dir(path)
        replace_file(path, payload)
    except OSError as exc:
        what = f"{path}: cannot save history"
        raise disk_full(exc, what) or HistoryError(f"{what}: {exc.strerror or exc}") from exc
    log.debug("saved history %s: %d bytes", path, len(payload))


# Departed slices (neither live nor in the ledger) keep only their monthly totals;
# beyond this many, the ones that sent last the longest ago are dropped first.
DEPARTED_MAX_SLICES = 10_000
_BEYOND = 2**62  # a cutoff past every hour and day: all of them roll up


class Folded(NamedTuple):
    """What a fold did: the new file's generation, and the slices whose blocks in
    the old file were damaged (skipped: each has the journal's hours alone).
    """

    generation: int
    damaged: tuple[str, ...] = ()


def fold_history(
    path: str,
    generation_mask: int,
    cutoffs: tuple[int, int, int] | None,
    clock: Callable[[], float] = time.time,
    *,
    live: Collection[str] | None = None,
    departed_max: int = DEPARTED_MAX_SLICES,
) -> Folded:
    """Fold the journal into the file, slice by slice, rolled up at ``cutoffs``
    (:func:`~.usage.roll_up_cutoffs`; None: no roll-up); return the new file's
    generation (the old one's plus one, within ``generation_mask``) and the
    slices whose blocks were damaged.

    With ``live`` (the names of the live slices and of the ledger's entries),
    every other slice has departed for good: its hours and days are rolled up
    into its months, and of the departed slices at most ``departed_max`` are kept,
    those that sent something last (the index says when, so nothing else is read
    to choose). So the file is bounded in total, not only per slice.

    The new file is written beside the old one, fsynced and renamed over it, so a
    kill at any instant leaves the old file (its journal still extending it) or
    the new one (the journal then of an older generation: ignored, and replaced by
    the caller). Memory: one slice's buckets, the index and the journal's hours.
    A slice whose block is damaged (its checksum fails; version 2 and later) is
    skipped alone, logged with its name: it keeps only the journal's hours, and
    the old file stays beside the new one as ``<path>.corrupt-<UTC time>`` for
    an operator to inspect. A file damaged otherwise (its header, its index;
    version 1: anywhere) is moved aside and the journal alone is folded. OSError
    is the caller's to report.
    """
    make_history_dir(path)
    args = (path, generation_mask, cutoffs, clock)
    try:
        return _fold(*args, live=live, departed_max=departed_max, use_file=True)
    except HistoryCorrupt as exc:
        _move_aside(path, exc, clock)
    return _fold(*args, live=live, departed_max=departed_max, use_file=False)


def _dropped(
    old: HistoryFile | None,
    journal: dict[str, dict[int, list[int]]],
    live: Collection[str],
    departed_max: int,
) -> set[str]:
    """The departed slices beyond the ``departed_max`` that sent something last."""
    last: dict[str, int] = {}
    if old is not None and old.index is not None:
        for (name, _, _), hour in zip(old.index, old.last_hours, strict=True):
            if name not in live:
                last[name] = hour
    for name, hours in journal.items():
        if name not in live:
            last[name] = max(last.get(name, 0), *hours)
    if len(last) <= departed_max:
        return set()
    by_age = sorted(last, key=lambda name: (last[name], name.encode()))
    return set(by_age[: len(last) - departed_max])


def _fold(
    path: str,
    generation_mask: int,
    cutoffs: tuple[int, int, int] | None,
    clock: Callable[[], float],
    *,
    live: Collection[str] | None,
    departed_max: int,
    use_file: bool,
) -> Folded:
    old = _open_file(path) if use_file else None
    damaged: list[str] = []
    try:
        generation = 0 if old is None else old.generation
        journal = _journal(path, generation, old is None)
        generation = (generation + 1) & generation_mask
        departed = cutoffs is not None and live is not None
        dropped = _dropped(old, journal, live, departed_max) if departed else set()  # type: ignore[arg-type]

        def treated(name: str, sh: SliceHistory, last: int) -> Iterator[tuple[str, bytes, int]]:
            if name in dropped:
                log.info("history: slice %s dropped: departed, sent the longest ago", name)
                return
            if cutoffs is not None:
                if departed and name not in live:  # type: ignore[operator]
                    roll_up_slice(sh, (_BEYOND, _BEYOND, cutoffs[2]))  # months only
                if roll_up_slice(sh, cutoffs):
                    log.info("history: slice %s aged out", name)
                    return
            if not sh.empty():
                yield name, encode_slice(name, sh), last

        def parsed() -> Iterator[tuple[str, bytes, int]]:
            for name, sh in _merged(() if old is None else old.slices(), journal):
                yield from treated(name, sh, last_hour(sh))

        def raw() -> Iterator[tuple[str, bytes, int]]:
            """An indexed file: each slice's block worked on as bytes (see
            :func:`_fold_block`), or, in an older layout or narrow with the journal's
            first received bytes, parsed and written anew; a damaged block is skipped
            alone.
            """
            assert old is not None and old.index is not None
            pending = sorted(journal, key=str.encode, reverse=True)
            for (name, offset, length), known in zip(old.index, old.last_hours, strict=True):
                encoded = name.encode()
                while pending and pending[-1].encode() < encoded:
                    new = pending.pop()
                    fresh = SliceHistory()
                    add_hours(fresh, journal[new])
                    yield from treated(new, fresh, last_hour(fresh))
                hours = journal[pending.pop()] if pending and pending[-1] == name else {}
                if name in dropped:
                    log.info("history: slice %s dropped: departed, sent the longest ago", name)
                    continue
                try:
                    sh: SliceHistory | None = None
                    if old.version == FORMAT_VERSION:
                        block = old.raw_block(name, offset, length)
                        if hours and not is_wide(block) and _receives(hours):
                            # its first bytes received: parsed, to be written anew, wide
                            sh = old.block(name, offset, length)
                    else:  # an older layout (version 5: every block wide, most with
                        # nothing received): parsed once, written narrow or wide as it is
                        sh = old.block(name, offset, length)
                except HistoryCorrupt as exc:
                    log.error("history: slice %s: damaged, its file's buckets skipped (%s)",
                              name, exc)  # fmt: skip
                    damaged.append(name)
                    if hours:
                        fresh = _fresh(hours)
                        yield from treated(name, fresh, last_hour(fresh))
                    continue
                if sh is not None:
                    add_hours(sh, hours)
                    yield from treated(name, sh, last_hour(sh))
                    continue
                at = cutoffs or (0, 0, 0)
                if departed and name not in live:  # type: ignore[operator]
                    at = (_BEYOND, _BEYOND, at[2])  # months only
                body = _fold_block(block, hours, at)
                if body is None:
                    log.info("history: slice %s aged out", name)
                    continue
                yield name, _CRC.pack(zlib.crc32(body)) + body, max([known, *hours])
            for new in reversed(pending):
                fresh = SliceHistory()
                add_hours(fresh, journal[new])
                yield from treated(new, fresh, last_hour(fresh))

        def keep_old() -> None:
            if not damaged:
                return
            try:  # the old file's second name, made before the new one replaces it
                kept = keep_aside(path, "corrupt", clock())
            except OSError as exc:  # no hard link here: the fold goes on all the same
                kept = f"nowhere (cannot link it: {exc.strerror or exc})"
            log.error("history %s: %d damaged slice(s) skipped (%s): the old file kept as %s",
                      path, len(damaged), ", ".join(damaged), kept)  # fmt: skip

        indexed = old is not None and old.index is not None
        _write_blocks(path, generation, raw() if indexed else parsed(), keep_old)
    finally:
        if old is not None:
            old.close()
    return Folded(generation, tuple(damaged))


def write_history(
    path: str, generation: int, slices: Iterable[tuple[str, SliceHistory, int | None]]
) -> None:
    """Write a history file of ``generation`` holding ``slices`` (in name order, each
    with the last hour it sent in, None: its last bucket's), as they come: to a temp
    file beside ``path``, fsynced, then renamed over it. OSError is the caller's to
    report (the temp file is gone, the old file intact).
    """
    _write_blocks(
        path,
        generation,
        (
            (name, encode_slice(name, sh), last_hour(sh) if last is None else last)
            for name, sh, last in slices
        ),
    )


def _write_blocks(
    path: str,
    generation: int,
    blocks: Iterable[tuple[str, bytes, int]],
    before_replace: Callable[[], None] | None = None,
) -> None:
    """:func:`write_history` of slices' blocks as they are; ``before_replace`` is
    called once the new file is written, before it replaces the old one.
    """
    directory = os.path.dirname(os.path.abspath(path))
    remove_stale_temps(directory, (f"{os.path.basename(path)}.tmp-",))
    fd, tmp = new_temp(path)
    try:
        with os.fdopen(fd, "wb", buffering=_CHUNK_BYTES) as out:
            writer = _Writer(out, generation)
            for name, block, last in blocks:
                writer.add_block(name, block, last)
            header = writer.finish()
            out.flush()
            os.pwrite(out.fileno(), header, 0)
            os.fsync(out.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
        fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _receives(hours: dict[int, list[int]]) -> bool:
    """Whether any of the journal's hour rows has received bytes."""
    return any(row[4] or row[5] for row in hours.values())


def _fold_tier(
    view: memoryview,
    shape: struct.Struct,
    cutoff: int,
    incoming: dict[int, list[int]],
    merge: Callable[[dict[int, list[int]], int, list[int]], None],
    *,
    zeros: list[int],
) -> tuple[bytes, list[tuple[int, list[int]]], int]:
    """One tier's records (packed, in key order) with ``incoming`` rows merged in and
    those below ``cutoff`` taken out: ``(the kept records packed, the taken ones,
    how many are kept)``. Only the records below the cutoff and from the first
    incoming key on are decoded (narrow ones widened by ``zeros``, as wide as the
    incoming rows); those between are copied as they are.
    """
    size = shape.size
    due_end = _first_at(view, size, cutoff)
    hot_start = (
        max(due_end, _first_at(view, size, min(incoming))) if incoming else len(view) // size
    )
    hot: dict[int, list[int]] = {}
    for key, *row in shape.iter_unpack(view[: due_end * size]):
        hot[key] = row + zeros
    for key, *row in shape.iter_unpack(view[hot_start * size :]):
        hot[key] = row + zeros
    for key in sorted(incoming):
        merge(hot, key, incoming[key])
    keys = sorted(hot)
    due = [(key, hot[key]) for key in keys if key < cutoff]
    kept = {key: hot[key] for key in keys if key >= cutoff}
    packed = bytes(view[due_end * size : hot_start * size]) + _pack_tier(shape, kept)
    return packed, due, hot_start - due_end + len(kept)


def _month_sum(hours: memoryview, days: memoryview, month: int, wide: bool) -> list[int] | None:
    """One month's sum (see :func:`~.usage.month_sums`) from the packed tiers, of
    ``wide`` records or narrow (widened).
    """
    hour, day = shapes(wide)
    zeros = [] if wide else [0, 0]
    first, last = month_start_s(month) // DAY_S, month_start_s(month + 1) // DAY_S
    day_rows = {k: row + zeros for k, *row in day.iter_unpack(_range(days, day, first, last))}
    hour_rows = {
        k: row + zeros for k, *row in hour.iter_unpack(_range(hours, hour, first * 24, last * 24))
    }
    return month_sums(day_rows, hour_rows).get(month)


def _fold_block(
    body: bytes, hours: dict[int, list[int]], cutoffs: tuple[int, int, int]
) -> bytes | None:
    """A slice's block (after its checksum) with the journal's ``hours`` added and
    rolled up at ``cutoffs``, as :func:`~.usage.roll_up_slice` would; None if nothing
    is left. Worked on its bytes: a fold rolls up only the ends of each tier, so
    the years of records between are copied, not decoded and encoded again. The
    month sums follow: the journal's hours are added to them, hours rolled up into
    days leave them as they are, and a month whose days move to the months tier is
    summed again from what is left of it.

    The block keeps its shape: a narrow one's records are widened where decoded, and
    packed narrow again (the journal's ``hours`` received nothing: the caller writes
    a narrow block that receives anew, wide).
    """
    at, wide, (old_h, old_d, old_m, old_s) = _tiers(body)
    hour_shape, day_shape = shapes(wide)
    zeros = [] if wide else [0, 0]
    cut_hour, cut_day, cut_month = cutoffs
    sums = {key: row + zeros for key, *row in day_shape.iter_unpack(old_s)}
    add_hours_to_sums(sums, _hour_rows(old_h, sorted(hours), hour_shape), hours)
    packed_h, due_h, kept_h = _fold_tier(
        old_h, hour_shape, cut_hour, hours, add_hour_row, zeros=zeros
    )
    packed_d, due_d, kept_d = _fold_tier(
        old_d, day_shape, cut_day, hours_to_days(due_h), merge_row, zeros=zeros
    )
    packed_m, _, kept_m = _fold_tier(
        old_m, day_shape, cut_month, days_to_months(due_d), merge_row, zeros=zeros
    )
    for month in {month_of_day(day) for day, _ in due_d}:
        row = _month_sum(memoryview(packed_h), memoryview(packed_d), month, wide)
        if row is None:
            sums.pop(month, None)
        else:
            sums[month] = row
    if not (kept_h or kept_d or kept_m):
        return None
    sums = dict(sorted(sums.items()))
    counts = _COUNTS.pack(kept_h, kept_d, kept_m, len(sums))
    flags = body[at + _COUNTS.size : at + _COUNTS.size + _FLAGS.size]
    return b"".join(
        (body[:at], counts, flags, packed_h, packed_d, packed_m, _pack_tier(day_shape, sums))
    )


def make_history_dir(path: str) -> None:
    """Create the directory of the history file ``path`` (0700) if needed; refuse one
    others could write (UnsafePath).
    """
    make_dir(os.path.dirname(os.path.abspath(path)), "history directory")

"""Rolling windows: a budget over the last N hours or days, kept in a ring of buckets (pure).

A class under a window of ``W`` seconds keeps its usage in :data:`RING` buckets of
``w = ⌈W / BUCKETS⌉`` seconds each, aligned to the Unix epoch: the current bucket
(the one ``now`` falls in, the last of the ring) and the :data:`BUCKETS` before it.
Its usage in the window is the sum of the ring, so the oldest bucket, which the
window ``[now − W, now]`` overlaps only in part, is counted whole: bytes leave the
window between ``W`` and ``W + w`` after they were sent, never before (when in
doubt, keep the cap). The slice's "period" is its current bucket: when it ends,
the ring moves on by the buckets that passed and the oldest leave.

Pacing with no period end: the rest of the budget over the time until the oldest
bucket leaves the window (the end of the current bucket), the same
:func:`~bwenforcer.core.policy.rule_ceil` as a period's, with that end passed in.

A ring moves on by at most :func:`max_steps`: within one boot, no further than the
boot clock says time passed, so a wall clock stepped forward never empties a
window (docs/state-format.md "Clock").
"""

from __future__ import annotations

BUCKETS = 24  # buckets a window is cut into (its bucket width: window / 24)
RING = BUCKETS + 1  # the ring: those and the oldest, counted whole while it overlaps
MIN_WINDOW_S = 3600  # a window shorter than an hour is a typo for a period
MAX_WINDOW_S = 366 * 86400  # as the longest period


def bucket_s(window_s: int) -> int:
    """The width of a window's buckets (rounded up: the window kept is never shorter)."""
    return -(-window_s // BUCKETS)


def bucket_span(now_s: int, window_s: int) -> tuple[int, int]:
    """``(start_s, end_s)`` of the bucket ``now_s`` falls in (the slice's period)."""
    width = bucket_s(window_s)
    start = now_s // width * width
    return start, start + width


def expiry_s(period_end_s: int, window_s: int) -> int:
    """When the last bytes of a ring whose current bucket ends at ``period_end_s`` have
    left the window: a deleted slice's ledger entry is kept until then.
    """
    return period_end_s + BUCKETS * bucket_s(window_s)


def horizon_s(period_end_s: int, window_s: int) -> int:
    """How far a projection of the budget looks: the end of the period; under a window
    (0: none), a whole window on (its usage leaving meanwhile is not counted on).
    """
    return expiry_s(period_end_s, window_s) if window_s else period_end_s


def empty_ring() -> tuple[int, ...]:
    """The buckets of a class that sent nothing in its window."""
    return _EMPTY


_EMPTY = (0,) * RING


def moved(buckets: tuple[int, ...], steps: int) -> tuple[int, ...]:
    """The ring ``steps`` buckets later: the ``steps`` oldest left, new empty ones at the end."""
    if steps <= 0:
        return buckets
    if steps >= RING:
        return _EMPTY
    return buckets[steps:] + (0,) * steps


def added(buckets: tuple[int, ...], delta_bytes: int) -> tuple[int, ...]:
    """The ring with ``delta_bytes`` more in its current bucket (the last)."""
    if not delta_bytes:
        return buckets
    return (*buckets[:-1], buckets[-1] + delta_bytes)


def steps_between(old_end_s: int, new_end_s: int, window_s: int, limit: int | None) -> int:
    """The buckets a ring moves on from a current bucket ending at ``old_end_s`` to one
    ending at ``new_end_s``, at most ``limit`` (None: no limit).
    """
    steps = max(0, (new_end_s - old_end_s) // bucket_s(window_s))
    return steps if limit is None else min(steps, limit)


def max_steps(elapsed_s: int | None, window_s: int) -> int | None:
    """The most buckets a ring may move on in a cycle when the boot clock says
    ``elapsed_s`` passed since the clock reference (None: no boot clock to tell, the
    wall clock, checked by ``periods.clock_check``, decides). A span of ``elapsed_s``
    crosses at most ``elapsed_s // w + 1`` bucket boundaries; the slack of
    ``periods.CLOCK_SLACK_S`` is the caller's.
    """
    if elapsed_s is None:
        return None
    return max(0, elapsed_s) // bucket_s(window_s) + 1


def carried_ring(used_bytes: int) -> tuple[int, ...]:
    """The ring of a class that comes under a window (or a new one) with ``used_bytes``
    counted: all of it in the current bucket, so it leaves only a whole window later.
    """
    return (*_EMPTY[:-1], used_bytes)


def check_window_s(window_s: int) -> None:
    """ValueError, one line, if ``window_s`` (0: none) is not a window's length."""
    if window_s and not MIN_WINDOW_S <= window_s <= MAX_WINDOW_S:
        raise ValueError(
            f"a window must be from {MIN_WINDOW_S // 3600} hour to {MAX_WINDOW_S // 86400}"
            f" days (0 or none: the period)"
        )

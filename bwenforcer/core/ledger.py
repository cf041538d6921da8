"""The ledger as it was saved: waiting entries kept as their saved text (issue 23).

A node with churn has tens of thousands of dead slices waiting in the ledger; each
is looked at only when it expires, is revived or inherited. :class:`SavedLedger`
keeps a loaded ledger as the lines of its state file (one per entry, in expiry
order) with a compact index (per line: offset, expiry, xid, name hash); no entry is
decoded until asked for. :class:`LazyLedger` is the ledger mapping over it: the
saved lines, less the ones a cycle took out, plus the entries it put in (decoded
objects, in expiry order). Expiry looks only at the heads of the two; a save of a
ledger with no change writes the very saved text again.

Generic over the entry's format: the store gives the lines, their index values and
the two functions that read a line (its name; its entry). Pure: no I/O here.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from bwenforcer.core.model import LedgerEntry


@dataclass(frozen=True, slots=True, eq=False)
class SavedLedger:
    """A ledger's saved lines and their index; built by the store at load.

    ``text`` holds ``len(expires)`` lines, in expiry order (ties in saved order);
    line ``i`` is ``text[starts[i]:starts[i + 1]]``. ``slots``: an open-addressing
    table of line numbers (-1: empty) by the ``hash`` of each line's name (``hashes``),
    for look-ups by name (arrays: a few dozen bytes a line, no object per line).
    ``name_of`` reads a line's name, ``decode`` its entry (the store's checks ran on
    every line at load: a decode does not fail). ``extra``: the store's own (the
    policies the lines name), handed back to its encoder.
    """

    text: bytes
    starts: array[int]  # "q", one more than lines: the text's length last
    expires: array[int]  # "q"
    xids: array[int]  # "i"
    hashes: array[int]  # "q"
    slots: array[int]  # "i", a power of two, at least twice the lines
    name_of: Callable[[bytes], str]
    decode: Callable[[bytes], LedgerEntry]
    extra: object = None

    def __len__(self) -> int:
        return len(self.expires)

    def line(self, i: int) -> bytes:
        """Line ``i`` (with its newline)."""
        return self.text[self.starts[i] : self.starts[i + 1]]

    def _probe(self, name: str, h: int) -> tuple[int, int]:
        """(slot, line) of ``name`` of hash ``h``, or (the empty slot it would take, -1)."""
        slots, hashes = self.slots, self.hashes
        mask = len(slots) - 1
        at = h & mask
        while True:
            i = slots[at]
            if i < 0 or (hashes[i] == h and self.name_of(self.line(i)) == name):
                return at, i
            at = (at + 1) & mask

    def find(self, name: str) -> int | None:
        """The line of ``name``, or None."""
        i = self._probe(name, hash(name))[1]
        return None if i < 0 else i


def saved_ledger(
    text: bytes,
    starts: array[int],
    expires: array[int],
    xids: array[int],
    hashes: array[int],
    *,
    name_of: Callable[[bytes], str],
    decode: Callable[[bytes], LedgerEntry],
    extra: object = None,
) -> SavedLedger | str:
    """The SavedLedger of ``text`` whose lines start at ``starts`` (each line's expiry,
    xid and name hash in the other arrays; ``starts`` gets the text's length appended),
    or the name found on two lines.
    """
    starts.append(len(text))
    size = 1
    while size < 2 * len(hashes) + 1:
        size *= 2
    saved = SavedLedger(
        text, starts, expires, xids, hashes, array("i", [-1]) * size, name_of, decode, extra
    )
    slots, mask, line = saved.slots, size - 1, saved.line
    for i in range(len(hashes)):
        h = hashes[i]
        at = h & mask
        while (j := slots[at]) >= 0:
            if hashes[j] == h and name_of(line(j)) == name_of(line(i)):
                return name_of(line(i))
            at = (at + 1) & mask
        slots[at] = i
    return saved


class LazyLedger(Mapping[str, LedgerEntry]):
    """A ledger by name, in expiry order: a saved ledger's lines less ``gone`` (line
    numbers taken out), then the entries ``added`` since (decoded, in expiry order),
    merged by expiry (a tie: the saved line first).

    Read-only to all but the planner, which changes its own copy (:meth:`edited`)
    with :meth:`pop` and :meth:`put` during one plan.
    """

    __slots__ = ("added", "base", "gone")

    def __init__(
        self,
        base: SavedLedger | None = None,
        gone: set[int] | None = None,
        added: dict[str, LedgerEntry] | None = None,
    ) -> None:
        self.base = base
        self.gone: set[int] = gone if gone is not None else set()
        self.added: dict[str, LedgerEntry] = added if added is not None else {}

    # reading

    def _line_of(self, name: str) -> int | None:
        base = self.base
        if base is None:
            return None
        i = base.find(name)
        return None if i is None or i in self.gone else i

    def __len__(self) -> int:
        saved = 0 if self.base is None else len(self.base) - len(self.gone)
        return saved + len(self.added)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return name in self.added or self._line_of(name) is not None

    def __getitem__(self, name: str) -> LedgerEntry:
        entry = self.added.get(name)
        if entry is not None:
            return entry
        i = self._line_of(name)
        if i is None:
            raise KeyError(name)
        assert self.base is not None
        return self.base.decode(self.base.line(i))

    def get(self, name: str, default: LedgerEntry | None = None) -> LedgerEntry | None:  # type: ignore[override]
        """``name``'s entry (decoded), or ``default``."""
        try:
            return self[name]
        except KeyError:
            return default

    def _merged(self) -> Iterator[tuple[int, str | None]]:
        """(saved line number, None) or (-1, added name), in expiry order."""
        base = self.base
        added = iter(self.added.items())
        nxt = next(added, None)
        if base is not None:
            gone, expires = self.gone, base.expires
            for i in range(len(base)):
                if i in gone:
                    continue
                while nxt is not None and nxt[1].expires_s < expires[i]:
                    yield -1, nxt[0]
                    nxt = next(added, None)
                yield i, None
        while nxt is not None:
            yield -1, nxt[0]
            nxt = next(added, None)

    def __iter__(self) -> Iterator[str]:
        base = self.base
        for i, name in self._merged():
            yield name if name is not None else base.name_of(base.line(i))  # type: ignore[union-attr]

    def items(self) -> Iterator[tuple[str, LedgerEntry]]:  # type: ignore[override]
        """(name, entry) in expiry order, each saved entry decoded."""
        base = self.base
        for i, name in self._merged():
            if name is not None:
                yield name, self.added[name]
            else:
                assert base is not None
                entry = base.decode(base.line(i))
                yield entry.slice.name, entry

    def values(self) -> Iterator[LedgerEntry]:  # type: ignore[override]
        """The entries in expiry order, each saved one decoded."""
        return (entry for _, entry in self.items())

    def due(self, now_s: int) -> list[str]:
        """The names whose entries expire by ``now_s``: the heads of the saved lines and
        of the added entries (nothing else is looked at, nothing decoded).
        """
        out = []
        base = self.base
        if base is not None:
            gone, expires = self.gone, base.expires
            for i in range(len(base)):
                if expires[i] > now_s:
                    break
                if i not in gone:
                    out.append(base.name_of(base.line(i)))
        for name, entry in self.added.items():
            if entry.expires_s > now_s:
                break
            out.append(name)
        return out

    def xid_pairs(self) -> Iterator[tuple[int, str]]:
        """(xid, name) of every entry, in expiry order, none decoded."""
        base = self.base
        for i, name in self._merged():
            if name is not None:
                yield self.added[name].slice.xid, name
            else:
                assert base is not None
                yield base.xids[i], base.name_of(base.line(i))

    def pieces(self) -> Iterator[memoryview | tuple[str, LedgerEntry]]:
        """The ledger for its encoder, in expiry order: runs of saved lines (as they are)
        and the added entries.
        """
        base = self.base
        view = memoryview(base.text) if base is not None else memoryview(b"")
        run: int | None = None  # the first line of the current run of saved lines
        last = 0
        for i, name in self._merged():
            if name is None:
                if run is None or i != last + 1:
                    if run is not None:
                        yield view[base.starts[run] : base.starts[last + 1]]  # type: ignore[union-attr]
                    run = i
                last = i
                continue
            if run is not None:
                yield view[base.starts[run] : base.starts[last + 1]]  # type: ignore[union-attr]
                run = None
            yield name, self.added[name]
        if run is not None:
            yield view[base.starts[run] : base.starts[last + 1]]  # type: ignore[union-attr]

    @property
    def changes(self) -> int:
        """Entries taken out of or added to the saved lines."""
        return len(self.gone) + len(self.added)

    # the planner's changes, on its own copy

    def edited(self) -> LazyLedger:
        """A copy to change (the saved lines shared)."""
        return LazyLedger(self.base, set(self.gone), dict(self.added))

    def pop(self, name: str) -> LedgerEntry | None:  # type: ignore[override]
        """Take ``name``'s entry out (decoded), or None."""
        entry = self.added.pop(name, None)
        if entry is not None:
            return entry
        i = self._line_of(name)
        if i is None:
            return None
        self.gone.add(i)
        assert self.base is not None
        return self.base.decode(self.base.line(i))

    def put(self, name: str, entry: LedgerEntry) -> None:
        """Add ``name`` (not in the ledger) where its expiry puts it among the added."""
        added = self.added
        last = next(reversed(added.values()), None)
        added[name] = entry
        if last is not None and last.expires_s > entry.expires_s:  # rare: periods changed
            ordered = sorted(added.items(), key=lambda item: item[1].expires_s)
            added.clear()
            added.update(ordered)


def editable(ledger: Mapping[str, LedgerEntry]) -> LazyLedger:
    """A LazyLedger copy of ``ledger`` for the planner to change (a plain mapping, in
    expiry order, becomes its added entries).
    """
    if isinstance(ledger, LazyLedger):
        return ledger.edited()
    return LazyLedger(None, None, dict(ledger))


def due_names(ledger: Mapping[str, LedgerEntry], now_s: int) -> list[str]:
    """The names of ``ledger`` (in expiry order) whose entries expire by ``now_s``,
    found at its head.
    """
    if isinstance(ledger, LazyLedger):
        return ledger.due(now_s)
    names = []
    for name, entry in ledger.items():
        if now_s < entry.expires_s:
            break
        names.append(name)
    return names


def xid_pairs(ledger: Mapping[str, LedgerEntry]) -> Iterator[tuple[int, str]]:
    """(xid, name) of each entry of ``ledger``; a saved one is not decoded."""
    if isinstance(ledger, LazyLedger):
        return ledger.xid_pairs()
    return ((entry.slice.xid, name) for name, entry in ledger.items())

"""A bounded reader of Python 2 pickles (protocols 0-2) that executes nothing.

It interprets the opcodes itself (not ``pickle``): it builds scalars, tuples,
lists, dicts and, for ``bwmon.Slice`` and the two helpers Python 2 uses to rebuild
instances, a stand-in that merely holds attributes (:class:`LegacySlice`); any
other global is refused, and every cost (size, objects, depth, memo, time) is
bounded by :class:`PickleLimits`. The legacy importer reads the file (at most
``max_file_bytes``) and maps what this builds to a State.
"""

from __future__ import annotations

import codecs
import reprlib
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bwenforcer.errors import LegacyImportError

Clock = Callable[[], float]

MAX_FILE_BYTES = 64 * 2**20  # a node with 4,000 slices writes well under 2 MiB


class LegacySlice:
    """Stand-in for ``bwmon.Slice``: holds the pickled attributes, runs no code of its own."""

    __slots__ = ("attrs",)
    attrs: dict[Any, Any]

    def __init__(self) -> None:
        self.attrs = {}


class _Py2Object:
    """Stand-in for ``__builtin__.object`` (the base named by ``copy_reg._reconstructor``)."""


class _Reconstructor:
    """Stand-in for ``copy_reg._reconstructor``: the interpreter rebuilds only a LegacySlice."""


_ALLOWED: Mapping[tuple[str, str], object] = {
    ("bwmon", "Slice"): LegacySlice,
    ("copy_reg", "_reconstructor"): _Reconstructor,
    ("copyreg", "_reconstructor"): _Reconstructor,
    ("__builtin__", "object"): _Py2Object,
    ("builtins", "object"): _Py2Object,
}


@dataclass(frozen=True)
class PickleLimits:
    """Upper bounds of what reading one legacy pickle may cost.

    A node of 4,096 slices writes about 2 MiB, 200,000 objects, 5 levels deep; the
    bounds leave room for that and stop the tiny pickles that refer to one object a
    billion times, nest 100,000 levels deep or make one key cost 2**60 to hash.
    """

    max_file_bytes: int = MAX_FILE_BYTES
    max_objects: int = 1_000_000  # objects pushed, and the size of any one object's tree
    max_container_len: int = 100_000
    max_depth: int = 32
    max_memo: int = 1_000_000
    max_stack: int = 200_000
    max_time_s: float = 30.0


DEFAULT_LIMITS = PickleLimits()


class _Refused(Exception):
    """The pickle breaks a limit or uses what bwmon never wrote; str() is the reason."""


class _Unsafe(_Refused):
    """The pickle names a global or persistent id that could run code; refused as it is."""


_CONTAINERS = (tuple, list, dict, LegacySlice)
_KEY_TYPES = (str, int, float, type(None))  # bool is an int; bwmon keyed by xid and name


class _Interpreter:
    """Runs the opcodes of a Python 2 pickle (protocols 0-2) with every cost counted.

    The objects are built here rather than by ``pickle.Unpickler``, which cannot be
    bounded: its memo grows to the largest index named, and nothing stops a shared
    object from being nested or hashed exponentially often. A container may not change
    once it is inside another one (Python 2 only writes cycles that way), so the size
    (every reference counted) and depth recorded when it is nested stay true.
    """

    def __init__(self, raw: bytes, limits: PickleLimits, deadline_s: float, clock: Clock) -> None:
        self.raw = raw
        self.pos = 0
        self.limits = limits
        self.deadline_s = deadline_s
        self.clock = clock
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.objects = 0
        # id of every container built -> (tree size, depth, sealed); `keep` holds them
        # so that no id is reused while its entry is here.
        self.info: dict[int, tuple[int, int, bool]] = {}
        self.keep: list[object] = []

    # --- reading the arguments ---------------------------------------------------------

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.raw):
            raise _Refused("ends in the middle of an opcode")
        data = self.raw[self.pos : self.pos + n]
        self.pos += n
        return data

    def line(self) -> bytes:
        end = self.raw.find(b"\n", self.pos)
        if end < 0:
            raise _Refused("ends in the middle of an opcode")
        data = self.raw[self.pos : end]
        self.pos = end + 1
        return data

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def decimal(self) -> int:
        text = self.line()
        if len(text) > 40:  # a 64-bit counter has 20 digits
            raise _Refused("integer of more than 40 digits")
        return int(text.rstrip(b"L"))

    def quoted(self) -> str:
        text = self.line()
        if len(text) < 2 or text[:1] not in (b"'", b'"') or text[-1:] != text[:1]:
            raise _Refused("string without quotes")
        return codecs.escape_decode(text[1:-1])[0].decode("latin1")

    # --- the objects ---------------------------------------------------------------------

    def push(self, value: object) -> None:
        self.objects += 1
        if self.objects > self.limits.max_objects:
            raise _Refused(f"more than {self.limits.max_objects} objects")
        if len(self.stack) >= self.limits.max_stack:
            raise _Refused(f"more than {self.limits.max_stack} objects on the stack")
        self.stack.append(value)

    def pop(self) -> Any:
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise _Refused("pops an empty stack")
        return self.stack.pop()

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise _Refused("no mark to pop to")
        at = self.marks.pop()
        items = self.stack[at:]
        del self.stack[at:]
        return items

    def nest(self, children: list[Any]) -> tuple[int, int]:
        """Seal the children; the tree size and depth of a container holding them."""
        size, depth = 1, 0
        for child in children:
            if isinstance(child, _CONTAINERS):
                child_size, child_depth, _ = self.info[id(child)]
                self.info[id(child)] = (child_size, child_depth, True)
                size += child_size
                depth = max(depth, child_depth)
            else:
                size += 1
        return size, depth + 1

    def record(self, container: object, size: int, depth: int) -> None:
        if size > self.limits.max_objects:
            raise _Refused(f"one object refers to more than {self.limits.max_objects} others")
        if depth > self.limits.max_depth:
            raise _Refused(f"nested more than {self.limits.max_depth} levels deep")
        self.info[id(container)] = (size, depth, False)

    def new(self, container: object, children: list[Any]) -> None:
        if len(children) > self.limits.max_container_len:
            raise _Refused(f"a container of more than {self.limits.max_container_len} items")
        self.keep.append(container)
        self.record(container, *self.nest(children))
        self.push(container)

    def grow(self, container: object, children: list[Any], new_len: int) -> None:
        """Account for children added to a container that is not yet nested."""
        if new_len > self.limits.max_container_len:
            raise _Refused(f"a container of more than {self.limits.max_container_len} items")
        add_size, add_depth = self.nest(children)
        size, depth, sealed = self.info[id(container)]
        if sealed:
            raise _Refused("changes an object after nesting it (a cycle)")
        self.record(container, size + add_size - 1, max(depth, add_depth))

    def set_items(self, target: object, items: list[Any]) -> None:
        if not isinstance(target, dict) or len(items) % 2:
            raise _Refused("SETITEMS without a dict and pairs")
        keys = items[::2]
        for key in keys:
            if not isinstance(key, _KEY_TYPES):
                raise _Refused(f"a dict key is a {type(key).__name__}")
        self.grow(target, items, len(target) + len(keys))
        target.update(zip(keys, items[1::2], strict=True))

    def instance(self, cls: object, args: object) -> None:
        if cls is not LegacySlice or args:
            raise _Refused("builds an object other than a bwmon.Slice")
        self.new(LegacySlice(), [])

    # --- the opcodes ---------------------------------------------------------------------

    def run(self) -> object:
        while True:
            if self.clock() > self.deadline_s:
                raise _Refused(f"took more than {self.limits.max_time_s:g} s")
            at = self.pos
            if at >= len(self.raw):
                raise _Refused("ends before its STOP opcode")
            code = self.take(1)
            try:
                if code == b".":
                    value = self.pop()
                    if self.stack or self.marks:
                        raise _Refused("objects left on the stack at STOP")
                    return value
                self.step(code)
            except _Unsafe:
                raise
            except _Refused as exc:
                raise _Refused(f"{exc} (opcode {code!r} at byte {at})") from None
            except (ValueError, UnicodeError, OverflowError, struct.error) as exc:
                raise _Refused(f"{reprlib.repr(str(exc))} (opcode {code!r} at byte {at})") from None

    def step(self, code: bytes) -> None:
        push = self.push
        if code == b"\x80":
            if self.uint(1) > 2:
                raise _Refused("pickle protocol above 2: not written by Python 2")
        elif code == b"(":
            if len(self.marks) >= self.limits.max_stack:
                raise _Refused(f"more than {self.limits.max_stack} marks")
            self.marks.append(len(self.stack))
        elif code == b"0":
            self.pop()
        elif code == b"1":
            self.pop_mark()
        elif code == b"2":
            if not self.stack:
                raise _Refused("DUP of an empty stack")
            push(self.stack[-1])
        elif code == b"N":
            push(None)
        elif code in (b"\x88", b"\x89"):
            push(code == b"\x88")
        elif code == b"I":
            text = self.raw[self.pos : self.pos + 3]
            if text in (b"00\n", b"01\n"):
                self.pos += 3
                push(text == b"01\n")
            else:
                push(self.decimal())
        elif code == b"J":
            push(int.from_bytes(self.take(4), "little", signed=True))
        elif code == b"K":
            push(self.uint(1))
        elif code == b"M":
            push(self.uint(2))
        elif code == b"L":
            push(self.decimal())
        elif code in (b"\x8a", b"\x8b"):
            n = self.uint(1) if code == b"\x8a" else self.uint(4)
            if n > 32:
                raise _Refused(f"integer of {n} bytes")
            push(int.from_bytes(self.take(n), "little", signed=True))
        elif code == b"F":
            push(float(self.line()))
        elif code == b"G":
            push(struct.unpack(">d", self.take(8))[0])
        elif code == b"S":
            push(self.quoted())
        elif code in (b"T", b"U"):
            push(self.take(self.uint(4) if code == b"T" else self.uint(1)).decode("latin1"))
        elif code == b"V":
            push(self.line().decode("raw_unicode_escape"))
        elif code == b"X":
            push(self.take(self.uint(4)).decode("utf-8", "surrogatepass"))
        elif code == b")":
            self.new((), [])
        elif code in (b"\x85", b"\x86", b"\x87"):
            n = code[0] - 0x84
            if len(self.stack) - (self.marks[-1] if self.marks else 0) < n:
                raise _Refused("TUPLE of an empty stack")
            items = self.stack[-n:]
            del self.stack[-n:]
            self.new(tuple(items), items)
        elif code == b"t":
            items = self.pop_mark()
            self.new(tuple(items), items)
        elif code == b"]":
            self.new([], [])
        elif code == b"l":
            items = self.pop_mark()
            self.new(list(items), items)
        elif code in (b"a", b"e"):
            items = [self.pop()] if code == b"a" else self.pop_mark()
            target = self.pop()
            if not isinstance(target, list):
                raise _Refused("APPEND to something other than a list")
            self.grow(target, items, len(target) + len(items))
            target.extend(items)
            self.stack.append(target)
        elif code == b"}":
            self.new({}, [])
        elif code == b"d":
            items = self.pop_mark()
            target: dict[Any, Any] = {}
            self.new(target, [])
            self.set_items(target, items)
        elif code in (b"s", b"u"):
            items = self.pop_mark() if code == b"u" else [self.pop(), self.pop()][::-1]
            target = self.pop()
            self.set_items(target, items)
            self.stack.append(target)
        elif code in (b"g", b"h", b"j"):
            index = self.decimal() if code == b"g" else self.uint(1 if code == b"h" else 4)
            if index not in self.memo:
                raise _Refused(f"memo {index} was never stored")
            push(self.memo[index])
        elif code in (b"p", b"q", b"r"):
            index = self.decimal() if code == b"p" else self.uint(1 if code == b"q" else 4)
            if not self.stack:
                raise _Refused("PUT of an empty stack")
            if index not in self.memo and len(self.memo) >= self.limits.max_memo:
                raise _Refused(f"more than {self.limits.max_memo} memo entries")
            self.memo[index] = self.stack[-1]
        elif code in (b"c", b"i"):
            module = self.line().decode("ascii")
            name = self.line().decode("ascii")
            found = _ALLOWED.get((module, name))
            if found is None:
                what = reprlib.repr(f"{module}.{name}")[1:-1]
                raise _Unsafe(f"refusing to load {what}: not a bwmon.Slice")
            if code == b"c":
                push(found)
            else:
                self.instance(found, self.pop_mark())
        elif code == b"o":
            items = self.pop_mark()
            if not items:
                raise _Refused("OBJ without a class")
            self.instance(items[0], items[1:])
        elif code == b"\x81":
            args = self.pop()
            self.instance(self.pop(), args)
        elif code == b"R":
            args = self.pop()
            func = self.pop()
            if func is not _Reconstructor or not (
                isinstance(args, tuple)
                and len(args) == 3
                and args[0] is LegacySlice
                and args[1] is _Py2Object
                and args[2] is None
            ):
                raise _Refused("calls something other than copy_reg._reconstructor(bwmon.Slice)")
            self.instance(LegacySlice, ())
        elif code == b"b":
            state = self.pop()
            target = self.pop()
            if not isinstance(target, LegacySlice) or not isinstance(state, dict):
                raise _Refused("BUILD of something other than a bwmon.Slice from a dict")
            self.grow(target, [state], 1)
            target.attrs = state
            self.stack.append(target)
        elif code in (b"P", b"Q"):
            raise _Unsafe("refusing a persistent id: not a bwmon pickle")
        else:
            raise _Refused("an opcode Python 2 does not write for bwmon's data")


def unpickle(
    raw: bytes, source: str, limits: PickleLimits, deadline_s: float, clock: Clock
) -> object:
    """The object pickled in ``raw``, built within ``limits`` and before ``deadline_s`` on
    ``clock``; LegacyImportError (one line naming ``source``) if it cannot be, or is unsafe.
    """
    try:
        return _Interpreter(raw, limits, deadline_s, clock).run()
    except _Unsafe as exc:
        raise LegacyImportError(f"{source}: {exc}") from None
    except _Refused as exc:
        raise LegacyImportError(f"{source}: not a readable bwmon pickle: {exc}") from None

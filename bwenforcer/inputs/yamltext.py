"""Reading the operator's YAML files strictly, and walking the parsed mapping by key path.

The config and the slices file are read with :class:`StrictLoader` (YAML 1.2
booleans, no base-60 numbers, a key given twice is an error); :class:`KeyReader`
takes values out of one mapping of the document and names the key path in every
error, e.g. ``defaults.exempt.limit: "12 parsecs" is not a size``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import yaml

from bwenforcer.core.units import format_duration
from bwenforcer.errors import ConfigError, UnitError

_BASE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_MERGE_TAG = "tag:yaml.org,2002:merge"
# YAML 1.2's core schema where 1.1 surprises people: only true/false are booleans
# (``on: monday`` is a key named "on", ``yes`` a string), and 06:30 is a string,
# not the base-60 number 390. Other numbers as in YAML 1.1.
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(
    r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"
)
_FLOAT = re.compile(
    r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


MAX_INT_DIGITS = 1000  # far above any value here; far below Python's int conversion limit


class OverlongNumber:
    """A YAML integer of more than MAX_INT_DIGITS digits, kept as what it is, not converted.

    Python refuses to convert integers of more than 4,300 digits (a ValueError from
    inside the parser, with a traceback); this stands in for one, so every check
    downstream refuses it in its own words: the config key is one line, a slices
    record is skipped. It is no number, no string and not JSON, so nothing
    mistakes it for a value (and the slices cache is not written for it).
    """

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"<a number of {self.digits} digits>"


def _resolvers() -> dict[str | None, list[tuple[str, re.Pattern[str]]]]:
    replaced = {_BOOL_TAG, _INT_TAG, _FLOAT_TAG}
    table = {
        first: [(tag, regex) for tag, regex in pairs if tag not in replaced]
        for first, pairs in _BASE_LOADER.yaml_implicit_resolvers.items()
    }
    for tag, regex, firsts in (
        (_BOOL_TAG, _BOOL, "tTfF"),
        (_INT_TAG, _INT, "-+0123456789"),
        (_FLOAT_TAG, _FLOAT, "-+0123456789."),
    ):
        for first in firsts:
            table.setdefault(first, []).append((tag, regex))
    return table


class StrictLoader(_BASE_LOADER):  # type: ignore[misc,valid-type]
    """The safe loader for the config and the slices file: YAML 1.2 booleans, no
    base-60 numbers, and a key given twice in one mapping is an error (the second
    would silently win)."""

    yaml_implicit_resolvers = _resolvers()

    def construct_yaml_int(self, node: yaml.ScalarNode) -> object:
        """An int, or an :class:`OverlongNumber` for one too long to convert safely."""
        digits = sum(c.isalnum() for c in str(node.value))
        if digits > MAX_INT_DIGITS:
            return OverlongNumber(digits)
        return super().construct_yaml_int(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[object, object]:
        """The mapping of ``node``; ConstructorError at the second of two equal keys."""
        pairs = list(node.value)  # the base class replaces merge keys by what they merge
        mapping: dict[object, object] = super().construct_mapping(node, deep=deep)
        if len(mapping) == len(pairs) and not any(k.tag == _MERGE_TAG for k, _ in pairs):
            return mapping  # as many keys as pairs: none repeated (the usual case, fast)
        seen: set[object] = set()
        for key_node, _value in pairs:
            if key_node.tag == _MERGE_TAG:
                continue  # merged keys may be overridden: that is what << is for
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return mapping


StrictLoader.add_constructor(_INT_TAG, StrictLoader.construct_yaml_int)


def read_yaml(path: str) -> object:
    """Parse a YAML file (C loader when available); ConfigError with file and line if bad."""
    return parse_yaml(read_bytes(path), path)


MAX_FILE_BYTES = 64 * 2**20  # a slices file of 100,000 slices is ~10 MiB
MAX_VALUES = 5_000_000  # values in a parsed document, aliases counted where they are used


def read_bytes(path: str) -> bytes:
    """The bytes of a config or slices file (at most MAX_FILE_BYTES); ConfigError naming
    it if it cannot be read or is larger.
    """
    try:
        with open(path, "rb") as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_FILE_BYTES // 2**20} MiB")
    return raw


def _check_size(data: object, path: str) -> None:
    """ConfigError if ``data`` holds more than MAX_VALUES values once its aliases are
    expanded (a few lines of nested aliases can stand for billions: every later reader
    of the data, the slices cache's JSON first, would expand them).
    """
    stack, seen = [data], 0
    while stack:
        value = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise ConfigError(f"{path}: more than {MAX_VALUES} values (aliases expanding?)")
        if isinstance(value, dict):
            stack.extend(value.values())
            seen += len(value)  # the keys
        elif isinstance(value, list):
            stack.extend(value)


def parse_yaml(raw: bytes, path: str) -> object:
    """Parse the bytes of the YAML file ``path``; ConfigError with file and line if bad."""
    try:
        data = yaml.load(raw.decode("utf-8"), Loader=StrictLoader)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 (byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "YAML"
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: {where}: {problem}") from None
    _check_size(data, path)
    return data


class KeyReader:
    """Walks one mapping of the YAML document, naming key paths in its errors."""

    def __init__(self, data: object, path: str, source: str) -> None:
        self.source = source
        self.path = path
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self.error("expected a mapping", at=path)
        self.data: dict[str, object] = data
        self.used: set[str] = set()

    def error(self, problem: str, at: str | None = None) -> ConfigError:
        """A ConfigError naming the file, the key path ``at`` (default: this one), ``problem``."""
        where = at if at is not None else self.path
        return ConfigError(f"{self.source}: {where or '(top level)'}: {problem}")

    def key(self, name: str) -> str:
        """The key path of ``name`` in this mapping."""
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        """Whether the mapping gives ``name``."""
        return name in self.data

    def raw(self, name: str) -> object:
        """The value of ``name`` as parsed (None if absent), marked as used."""
        self.used.add(name)
        return self.data.get(name)

    def sub(self, name: str) -> KeyReader:
        """A reader of the mapping under ``name`` (an absent or null one reads as empty)."""
        return KeyReader(self.raw(name), self.key(name), self.source)

    def parsed(
        self, name: str, parse: Callable[[object], int], default: int, high_s: int | None = None
    ) -> int:
        """A rate, size or duration; a duration also at most ``high_s`` if given."""
        if not self.has(name):
            return default
        value = self.raw(name)
        try:
            result = parse(value)
        except UnitError as exc:
            raise self.error(str(exc), at=self.key(name)) from None
        if high_s is not None and result > high_s:
            raise self.error(
                f"{value!r} is above the maximum {format_duration(high_s)}", at=self.key(name)
            )
        return result

    def optional(self, name: str, parse: Callable[[object], int]) -> int | None:
        """Like :meth:`parsed`, with None for an absent or null value."""
        if not self.has(name) or self.raw(name) is None:
            self.used.add(name)
            return None
        return self.parsed(name, parse, 0)

    def text(self, name: str, default: str | None, *, allow_null: bool = True) -> str | None:
        """A non-empty string; null gives None if ``allow_null``."""
        if not self.has(name):
            return default
        value = self.raw(name)
        if value is None and allow_null:
            return None
        if not isinstance(value, str) or not value:
            raise self.error(f"{value!r} is not a non-empty string", at=self.key(name))
        return value

    def choice(self, name: str, options: tuple[str, ...], default: str) -> str:
        """One of ``options``."""
        value = self.text(name, default, allow_null=False)
        if value not in options:
            raise self.error(f"{value!r} is not one of {', '.join(options)}", at=self.key(name))
        return value

    def flag(self, name: str, default: bool) -> bool:
        """``true`` or ``false`` (YAML 1.2: not ``yes``, ``on``)."""
        if not self.has(name):
            return default
        value = self.raw(name)
        if not isinstance(value, bool):
            raise self.error(f"{value!r} is not true or false", at=self.key(name))
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        """A whole number ``low``..``high`` (not a boolean)."""
        if not self.has(name):
            return default
        value = self.raw(name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(f"{value!r} is not a whole number {low}..{high}", at=self.key(name))
        return value

    def strings(self, name: str) -> tuple[str, ...]:
        """A list of non-empty strings; one string is a list of one, absent or null none."""
        if not self.has(name) or self.raw(name) is None:
            return ()
        value = self.raw(name)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(f"{value!r} is not a list of strings", at=self.key(name))
        return tuple(value)

    def done(self) -> None:
        """Refuse the first key of the mapping that no one read (a typo would be ignored)."""
        unknown = sorted(set(self.data) - self.used, key=str)
        if unknown:
            raise self.error("unknown key", at=self.key(str(unknown[0])))

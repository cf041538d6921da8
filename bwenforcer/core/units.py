"""Parse and format rates (bit/s), sizes (bytes) and durations (seconds) as integers.

Rates follow tc: ``bit kbit mbit gbit tbit`` are powers of 1000 bits,
``kibit mibit gibit tibit`` powers of 1024 bits, ``bps kbps mbps gbps tbps`` and
``kibps mibps gibps tibps`` the same in bytes per second; a bare number is bit/s.
Sizes: ``B KB MB GB TB`` (powers of 1000) and ``KiB MiB GiB TiB`` (powers of 1024);
a bare number is bytes. Durations: ``s m h d w`` and sums such as ``1h30m``; a bare
number is seconds. Unit names are case-insensitive, as in tc.

Every parsed value has an upper bound (far above any real node, far below what
the kernel's 64-bit fields, the state file or the clock would overflow on):
rates up to 10 Tbit/s, sizes up to 1 EiB (2**60 bytes), durations up to 100 years.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from bwenforcer.errors import UnitError

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_QUANTITY = re.compile(rf"^\s*{_NUMBER}\s*([a-z]*)\s*$", re.IGNORECASE)

_SI = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_IEC = {"ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def _rate_units() -> dict[str, int]:
    """Unit name → bits per second of one unit."""
    units: dict[str, int] = {"": 1}
    for prefix, factor in (_SI | _IEC).items():
        units[f"{prefix}bit"] = factor
        units[f"{prefix}bps"] = factor * 8
    return units


RATE_UNITS_BPS = _rate_units()
SIZE_UNITS_BYTES = {"": 1, "b": 1} | {f"{p}b": f for p, f in (_SI | _IEC).items() if p}
DURATION_UNITS_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_RATE_BPS = 10 * 10**12  # 10 Tbit/s
MAX_SIZE_BYTES = 2**60  # 1 EiB
MAX_DURATION_S = 36525 * 86400  # 100 years
_DURATION_TERM = re.compile(rf"{_NUMBER}\s*([a-z]*)\s*", re.IGNORECASE)


def _scaled(value: str, number: str, factor: int, what: str) -> int:
    try:
        exact = Decimal(number) * factor
    except InvalidOperation as exc:  # the regex makes this unreachable; keep the message
        raise UnitError(f"{value!r} is not a {what}") from exc
    return int(exact.to_integral_value(rounding=ROUND_HALF_UP))


def _bounded(value: object, result: int, maximum: int, shown: str) -> int:
    if result > maximum:
        raise UnitError(f"{_shown(value)} is above the maximum {shown}")
    return result


def _shown(value: object) -> str:
    """``repr(value)``, cut short: a message stays one readable line."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _parse(value: object, units: dict[str, int], what: str) -> int:
    if isinstance(value, bool):
        raise UnitError(f"{value!r} is not a {what}")
    if isinstance(value, int):
        if value < 0:
            raise UnitError(f"{value!r} is not a {what}: negative")
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0:
            raise UnitError(f"{value!r} is not a {what}")
        return int(Decimal(repr(value)).to_integral_value(rounding=ROUND_HALF_UP))
    if not isinstance(value, str):
        raise UnitError(f"{value!r} is not a {what}")
    match = _QUANTITY.match(value)
    if not match or match.group(2).lower() not in units:
        raise UnitError(f"{value!r} is not a {what}")
    return _scaled(value, match.group(1), units[match.group(2).lower()], what)


def parse_rate_bps(value: object) -> int:
    """Parse a tc rate (``"10mbit"``, ``"512kbit"``, ``"1mbps"``, ``1000``) into bit/s."""
    result = _parse(value, RATE_UNITS_BPS, "rate (e.g. 10mbit, 512kbit, 1mbps)")
    return _bounded(value, result, MAX_RATE_BPS, "10tbit")


def parse_size_bytes(value: object) -> int:
    """Parse a size (``"5.4GiB"``, ``"100MB"``, ``4096``) into bytes."""
    result = _parse(value, SIZE_UNITS_BYTES, "size (e.g. 100MB, 5.4GiB)")
    return _bounded(value, result, MAX_SIZE_BYTES, "1048576TiB (2**60 B)")


def parse_duration_s(value: object) -> int:
    """Parse a duration (``"30s"``, ``"15m"``, ``"1h30m"``, ``"1d"``, ``60``) into seconds."""
    what = "duration (e.g. 30s, 15m, 1h, 1d)"
    if not isinstance(value, str):
        return _bounded(value, _parse(value, {"": 1}, what), MAX_DURATION_S, "36525d")
    text = value.strip()
    if not text:
        raise UnitError(f"{value!r} is not a {what}")
    total = Decimal(0)
    pos = 0
    while pos < len(text):
        term = _DURATION_TERM.match(text, pos)
        if not term or term.group(2).lower() not in DURATION_UNITS_S:
            raise UnitError(f"{value!r} is not a {what}")
        total += Decimal(term.group(1)) * DURATION_UNITS_S[term.group(2).lower()]
        pos = term.end()
    result = int(total.to_integral_value(rounding=ROUND_HALF_UP))
    return _bounded(value, result, MAX_DURATION_S, "36525d")


def _exact(amount: int, steps: tuple[tuple[int, str], ...], base: str) -> str:
    for factor, name in steps:
        if amount >= factor and amount % factor == 0:
            return f"{amount // factor}{name}"
    return f"{amount}{base}"


def format_rate(bps: int) -> str:
    """Exact tc notation of a rate in bit/s: ``parse_rate_bps(format_rate(x)) == x``."""
    steps = ((10**12, "tbit"), (10**9, "gbit"), (10**6, "mbit"), (10**3, "kbit"))
    return _exact(bps, steps, "bit")


def format_size(size_bytes: int) -> str:
    """Exact notation of a size: ``parse_size_bytes(format_size(x)) == x``."""
    steps = (
        (2**40, "TiB"),
        (10**12, "TB"),
        (2**30, "GiB"),
        (10**9, "GB"),
        (2**20, "MiB"),
        (10**6, "MB"),
        (2**10, "KiB"),
        (10**3, "KB"),
    )
    return _exact(size_bytes, steps, "B")


def format_duration(seconds: int) -> str:
    """Exact compact notation of a duration: ``parse_duration_s(format_duration(x)) == x``."""
    if seconds == 0:
        return "0s"
    parts = []
    rest = seconds
    for name, factor in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= factor:
            parts.append(f"{rest // factor}{name}")
            rest %= factor
    return "".join(parts)


def _human(amount: float, steps: tuple[tuple[float, str], ...], base: str) -> str:
    for factor, name in steps:
        if amount >= factor:
            value = amount / factor
            text = f"{value:.3g}"  # 999.96 rounds up to "1e+03": whole units then
            return f"{text}{name}" if "e" not in text else f"{value:.0f}{name}"
    return f"{amount:.0f}{base}"


def human_rate(bps: int) -> str:
    """Rounded rate for people: ``1.5Mbit/s``."""
    steps = ((1e12, "Tbit/s"), (1e9, "Gbit/s"), (1e6, "Mbit/s"), (1e3, "kbit/s"))
    return _human(bps, steps, "bit/s")


_SIZE_STEPS = ((2.0**40, "TiB"), (2.0**30, "GiB"), (2.0**20, "MiB"), (2.0**10, "KiB"))
_MIB, _GIB, _TIB = 2**20, 2**30, 2**40


def human_size(size_bytes: int) -> str:
    """Rounded size for people in binary units: ``5.4GiB``."""
    # _human's text, the common case inline (reports print millions): below 999.5 of
    # its unit a value's three digits never take "%.3g"'s exponent
    for factor, name in _SIZE_STEPS:
        if size_bytes >= factor:
            value = size_bytes / factor
            if value < 999.5:
                return f"{value:.3g}{name}"
            return _human(size_bytes, _SIZE_STEPS, "B")
    return f"{size_bytes:.0f}B"


def size_namer(max_remembered: int = 1 << 16) -> Callable[[int], str]:
    """:func:`human_size` for a long run of sizes (a report prints millions), remembered.

    Its text changes only at rounding edges a few thousandths of a value apart, so
    the sizes of a range 1/1024 of a unit wide (a KiB from 1 MiB up, a MiB from 1 GiB
    up to 1 TiB) print alike unless an edge falls inside the range: the text of its
    ends tells (the text never goes back as a size grows). A range with an edge
    inside is remembered as such and its sizes are formatted one by one, as are sizes
    outside those units. At most ``max_remembered`` ranges are held (then forgotten).
    """
    memo: dict[int, str] = {}

    def name(size_bytes: int) -> str:
        if not _MIB <= size_bytes < _TIB:
            return human_size(size_bytes)
        # MiB-wide ranges from 1 GiB (positive keys), KiB-wide below (negative)
        key = size_bytes >> 20 if size_bytes >= _GIB else -(size_bytes >> 10)
        text = memo.get(key)
        if text is None:
            shift = 20 if key > 0 else 10
            low = abs(key) << shift
            text = human_size(low)
            if human_size(low + (1 << shift) - 1) != text:
                text = ""  # a rounding edge inside: each size on its own
            if len(memo) >= max_remembered:
                memo.clear()
            memo[key] = text
        return text or human_size(size_bytes)

    return name


def human_duration(seconds: float) -> str:
    """Rounded duration for people: ``3h12m``, ``45s``, ``2d4h``."""
    rest = max(0, int(seconds))
    if rest < 60:
        return f"{rest}s"
    days, rest = divmod(rest, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m"


def kbit_to_bps(kbit_per_s: int) -> int:
    """Historic rspec rate unit (kbit/s) to bit/s."""
    return kbit_per_s * 1000


def kib_to_bytes(kib: int) -> int:
    """Historic rspec size unit (KiB) to bytes."""
    return kib * 1024

"""The legacy bwmon pickle importer: faithful Python 2 pickles in, nothing executed."""

from __future__ import annotations

import dataclasses
import io
import itertools
import logging
import pickle
import pickletools
import shutil
import struct
import subprocess
import sys
import tracemalloc
import types
from pathlib import Path
from typing import Any

import pytest

from bwenforcer.core.model import ClassPolicy, ClassState, LedgerEntry, SliceState, State
from bwenforcer.core.settings import Config
from bwenforcer.errors import LegacyImportError
from bwenforcer.store.codec import state_from_json, state_to_json
from bwenforcer.store.legacy import import_legacy
from bwenforcer.store.pickleread import PickleLimits

NOW_S = 1_763_800_000
VERSION = "$Id: bwmon.py,v 1.1.2.11 2007/06/26 18:03:55 faiyaza Exp $"
CONFIG = Config(period_s=86400)


# --- a Python 2 pickler, opcode for opcode ---------------------------------------------


class Py2Long(int):
    """A Python 2 ``long`` (pickled as L…L / LONG1 rather than as an int)."""


class Py2Unicode(str):
    """A Python 2 ``unicode`` (pickled as V / BINUNICODE rather than as a byte string)."""


@dataclasses.dataclass
class Py2Instance:
    """An instance of ``module.name`` with these attributes, as bwmon pickled its Slices."""

    attrs: dict[str, Any]
    newstyle: bool = False  # old-style `class Slice:` (as in bwmon) or `class Slice(object):`
    module: str = "bwmon"
    name: str = "Slice"


class Py2Pickler:
    """Emit what Python 2.7's pickle.dumps writes for these values (memo PUTs included).

    Only what bwmon's state holds: None, bool, int, long, float, str, unicode, tuple,
    dict, and instances of old-style or new-style classes.
    """

    def __init__(self, protocol: int) -> None:
        self.protocol = protocol
        self.out = bytearray()
        self.memo = 0

    def dumps(self, obj: object) -> bytes:
        if self.protocol == 2:
            self.out += b"\x80\x02"
        self.save(obj)
        self.out += b"."
        return bytes(self.out)

    def put(self) -> None:
        i = self.memo
        self.memo += 1
        if self.protocol == 0:
            self.out += b"p%d\n" % i
        elif i < 256:
            self.out += b"q" + bytes([i])
        else:
            self.out += b"r" + struct.pack("<I", i)

    def save(self, obj: object) -> None:
        bin_ = self.protocol >= 1
        out = self.out
        if obj is None:
            out += b"N"
        elif isinstance(obj, bool):
            if self.protocol == 2:
                out += b"\x88" if obj else b"\x89"
            else:
                out += b"I01\n" if obj else b"I00\n"
        elif isinstance(obj, Py2Long):
            if self.protocol == 2:
                data = int(obj).to_bytes((obj.bit_length() + 8) // 8, "little", signed=True)
                out += b"\x8a" + bytes([len(data)]) + data
            else:
                out += b"L%dL\n" % obj
        elif isinstance(obj, int):
            if bin_ and 0 <= obj < 256:
                out += b"K" + bytes([obj])
            elif bin_ and 0 <= obj < 65536:
                out += b"M" + struct.pack("<H", obj)
            elif bin_ and -(2**31) <= obj < 2**31:
                out += b"J" + struct.pack("<i", obj)
            else:
                out += b"I%d\n" % obj
        elif isinstance(obj, float):
            out += b"G" + struct.pack(">d", obj) if bin_ else b"F" + repr(obj).encode() + b"\n"
        elif isinstance(obj, Py2Unicode):
            data = obj.encode("utf-8")
            if bin_:
                out += b"X" + struct.pack("<I", len(data)) + data
            else:
                out += b"V" + obj.encode("raw_unicode_escape") + b"\n"
            self.put()
        elif isinstance(obj, str):
            data = obj.encode("latin1")
            if not bin_:
                out += b"S" + repr(obj).encode("ascii") + b"\n"
            elif len(data) < 256:
                out += b"U" + bytes([len(data)]) + data
            else:
                out += b"T" + struct.pack("<I", len(data)) + data
            self.put()
        elif isinstance(obj, tuple):
            self.save_tuple(obj)
        elif isinstance(obj, dict):
            self.save_dict(obj)
        elif isinstance(obj, Py2Instance):
            self.save_instance(obj)
        else:
            raise TypeError(f"cannot pickle {obj!r} the Python 2 way")

    def save_tuple(self, obj: tuple[Any, ...]) -> None:
        if not obj:
            self.out += b")" if self.protocol >= 1 else b"(t"
            return
        if self.protocol == 2 and len(obj) <= 3:
            for item in obj:
                self.save(item)
            self.out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(obj)]
        else:
            self.out += b"("
            for item in obj:
                self.save(item)
            self.out += b"t"
        self.put()

    def save_dict(self, obj: dict[Any, Any]) -> None:
        if self.protocol == 0:
            self.out += b"(d"
            self.put()
            for k, v in obj.items():
                self.save(k)
                self.save(v)
                self.out += b"s"
            return
        self.out += b"}"
        self.put()
        items = list(obj.items())
        if len(items) == 1:
            self.save(items[0][0])
            self.save(items[0][1])
            self.out += b"s"
        elif items:
            self.out += b"("
            for k, v in items:
                self.save(k)
                self.save(v)
            self.out += b"u"

    def save_global(self, module: str, name: str) -> None:
        self.out += b"c" + f"{module}\n{name}\n".encode()
        self.put()

    def save_instance(self, obj: Py2Instance) -> None:
        if not obj.newstyle:  # pickle.py save_inst
            self.out += b"("
            if self.protocol >= 1:
                self.save_global(obj.module, obj.name)
                self.out += b"o"
            else:
                self.out += b"i" + f"{obj.module}\n{obj.name}\n".encode()
        elif self.protocol == 2:  # save_reduce with copy_reg.__newobj__
            self.save_global(obj.module, obj.name)
            self.out += b")\x81"
        else:  # object.__reduce_ex__(0 or 1): copy_reg._reconstructor
            self.save_global("copy_reg", "_reconstructor")
            self.out += b"("
            self.save_global(obj.module, obj.name)
            self.save_global("__builtin__", "object")
            self.out += b"Nt"
            self.put()
            self.out += b"R"
        self.put()
        self.save_dict(obj.attrs)
        self.out += b"b"


def py2_dumps(obj: object, protocol: int) -> bytes:
    return Py2Pickler(protocol).dumps(obj)


# --- bwmon's data -----------------------------------------------------------------------


def bwmon_slice(xid: int, name: str, time_s: float, sent: int, sent_i2: int, **extra: Any) -> dict:
    """A bwmon.Slice's __dict__ as the 2007 module left it (rates kbit/s, sizes KiB)."""
    attrs = {
        "xid": xid,
        "name": name,
        "time": time_s,
        "bytes": sent,
        "i2bytes": sent_i2,
        "MaxRate": 10000,
        "MinRate": 8,
        "Maxi2Rate": 100000,
        "Mini2Rate": 16,
        "MaxKByte": 5662310,
        "ThreshKByte": 4529848,
        "Maxi2KByte": 17196646,
        "Threshi2KByte": 13757316,
        "Share": 1,
        "Sharei2": 1,
        "emailed": False,
    }
    attrs.update(extra)
    return attrs


def legacy_data(deaddb_form: str, newstyle: bool = False) -> tuple[Any, ...]:
    def inst(attrs: dict) -> Py2Instance:
        return Py2Instance(attrs, newstyle=newstyle)

    live = {
        0: inst(bwmon_slice(0, "root", NOW_S - 10_000.5, 0, 0)),
        0xFFF: inst(bwmon_slice(0xFFF, "default", NOW_S - 10_000.5, 0, 0)),
        12: inst(
            bwmon_slice(
                12, "pl_alpha", NOW_S - 3600.75, Py2Long(123_456_789_012), 4_096, emailed=True
            )
        ),
        345: inst(
            bwmon_slice(
                345,
                Py2Unicode("pl_beta"),
                NOW_S - 60.0,
                70_000,
                Py2Long(9),
                MaxRate=2000,
                MaxKByte=1024,
                ThreshKByte=512,
                Share=3,
                Sharei2=2,
            )
        ),
    }
    dead_slice = inst(bwmon_slice(77, "pl_gone", NOW_S - 7200.0, 555, 666, emailed=True))
    if deaddb_form == "slice":
        deaddb = {"pl_gone": dead_slice}
    else:
        deaddb = {"pl_gone": {"slice": dead_slice, "htb": dead_htb(555 + 3 * GIB, 666 + 5000)}}
    return (VERSION, live, deaddb)


GIB = 2**30


def dead_htb(counter_bytes: int, counter_i2_bytes: int, name: str = "pl_gone") -> dict:
    """What later bwmon versions saved next to a dead Slice: gethtbs()'s entry at its death."""
    return {
        "share": 1,
        "minrate": 8000,
        "maxrate": 10_000_000,
        "maxexemptrate": 100_000_000,
        "minexemptrate": 16000,
        "usedbytes": counter_bytes,
        "name": name,
        "usedi2bytes": counter_i2_bytes,
    }


def expected_state(deaddb_form: str = "slice") -> State:
    def pol(limit_kib: int, thresh_kib: int, min_kbit: int, max_kbit: int, share: int):
        return ClassPolicy(
            limit_kib * 1024, thresh_kib * 1024, min_kbit * 1000, max_kbit * 1000, share
        )

    default_policy = pol(5662310, 4529848, 8, 10000, 1)
    exempt_policy = pol(17196646, 13757316, 16, 100000, 1)
    alpha_start = NOW_S - 3601
    beta_start = NOW_S - 60
    gone_start = NOW_S - 7200
    # (used, last counter): the later form also saved the counters at the slice's death
    gone_default, gone_exempt = ((0, 555), (0, 666))
    if deaddb_form == "dict":
        gone_default, gone_exempt = ((3 * GIB, 555 + 3 * GIB), (5000, 666 + 5000))
    return State(
        slices={
            12: SliceState(
                "pl_alpha",
                12,
                alpha_start,
                alpha_start + 86400,
                ClassState(default_policy, 0, 123_456_789_012, notified=True),
                ClassState(exempt_policy, 0, 4_096, notified=True),
            ),
            345: SliceState(
                "pl_beta",
                345,
                beta_start,
                beta_start + 86400,
                ClassState(pol(1024, 512, 8, 2000, 3), 0, 70_000),
                ClassState(pol(17196646, 13757316, 16, 100000, 2), 0, 9),
            ),
        },
        ledger={
            "pl_gone": LedgerEntry(
                SliceState(
                    "pl_gone",
                    77,
                    gone_start,
                    gone_start + 86400,
                    ClassState(default_policy, *gone_default, notified=True),
                    ClassState(exempt_policy, *gone_exempt, notified=True),
                ),
                died_s=NOW_S,
            )
        },
    )


def write(tmp_path: Path, data: bytes, name: str = "bwmon.dat") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def globals_named(data: bytes) -> set[str]:
    """Every module.name the pickle's GLOBAL / INST opcodes refer to."""
    return {
        str(arg).replace(" ", ".")
        for op, arg, _ in pickletools.genops(data)
        if op.name in ("GLOBAL", "INST")
    }


# --- tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [0, 1, 2])
@pytest.mark.parametrize("deaddb_form", ["slice", "dict"])
@pytest.mark.parametrize("newstyle", [False, True], ids=["classic", "newstyle"])
def test_import_of_each_python2_pickle_form(
    tmp_path: Path, protocol: int, deaddb_form: str, newstyle: bool
) -> None:
    data = py2_dumps(legacy_data(deaddb_form, newstyle), protocol)
    pickletools.dis(data, out=io.StringIO())  # raises unless every opcode is well formed
    assert "bwmon.Slice" in globals_named(data)
    state = import_legacy(write(tmp_path, data), CONFIG, NOW_S)
    assert state == expected_state(deaddb_form)


def test_imported_state_survives_the_state_file(tmp_path: Path) -> None:
    state = import_legacy(write(tmp_path, py2_dumps(legacy_data("slice"), 2)), CONFIG, NOW_S)
    again = state_from_json(state_to_json(state, NOW_S), "state.json")
    assert again == dataclasses.replace(state, saved_s=NOW_S)


def test_first_cycle_counts_exactly_the_bytes_since_the_legacy_period_start(
    tmp_path: Path,
) -> None:
    from bwenforcer.core.policy import counter_delta

    state = import_legacy(write(tmp_path, py2_dumps(legacy_data("slice"), 0)), CONFIG, NOW_S)
    alpha = state.slices[12].default
    assert counter_delta(123_456_789_012 + 5_000, alpha.last_counter_bytes) == 5_000


def test_policy_falls_back_to_the_config_for_attributes_older_versions_lacked(
    tmp_path: Path,
) -> None:
    attrs = {"xid": 5, "name": "pl_old", "time": NOW_S - 10, "bytes": 1, "i2bytes": 2}
    data = py2_dumps((VERSION, {5: Py2Instance(attrs)}, {}), 2)
    st = import_legacy(write(tmp_path, data), CONFIG, NOW_S).slices[5]
    d = CONFIG.defaults["default"]
    assert st.default.policy == ClassPolicy(
        d.limit_bytes, d.limit_bytes * 8 // 10, d.min_rate_bps, CONFIG.node_cap_bps, d.share
    )
    assert st.exempt.policy.max_rate_bps == CONFIG.bwmax_bps
    assert (st.default.notified, st.default.capped) == (False, False)


def test_later_versions_capped_flag_is_kept_even_when_it_was_two(tmp_path: Path) -> None:
    attrs = bwmon_slice(5, "pl_c", NOW_S - 10, 1, 2, capped=2)
    data = py2_dumps((VERSION, {5: Py2Instance(attrs)}, {}), 1)
    st = import_legacy(write(tmp_path, data), CONFIG, NOW_S).slices[5]
    assert st.default.capped is True and st.exempt.capped is True


def test_one_bad_slice_is_skipped_and_named(tmp_path: Path, caplog: Any) -> None:
    live = {
        5: Py2Instance(bwmon_slice(5, "pl_ok", NOW_S - 10, 1, 2)),
        6: Py2Instance(bwmon_slice(6, "pl_bad", NOW_S - 10, -3, 2)),
        70000: Py2Instance(bwmon_slice(70000, "pl_wide", NOW_S - 10, 1, 2)),
    }
    data = py2_dumps((VERSION, live, {}), 2)
    state = import_legacy(write(tmp_path, data), CONFIG, NOW_S)
    assert set(state.slices) == {5}
    assert "skipping slice pl_bad (6): bytes = -3" in caplog.text
    assert "skipping slice pl_wide (70000): xid 70000 out of range" in caplog.text


def test_a_name_with_a_line_break_is_skipped_and_logged_escaped(
    tmp_path: Path, caplog: Any
) -> None:
    live = {
        5: Py2Instance(bwmon_slice(5, "pl_ok", NOW_S - 10, 1, 2)),
        6: Py2Instance(bwmon_slice(6, "pl_a\nFAKE line", NOW_S - 10, 1, 2)),
    }
    deaddb = {"pl_d\r\nFAKE": Py2Instance(bwmon_slice(9, "pl_d\r\nFAKE", NOW_S - 100, 1, 2))}
    data = py2_dumps((VERSION, live, deaddb), 2)
    with caplog.at_level(logging.INFO):
        state = import_legacy(write(tmp_path, data), CONFIG, NOW_S)
    assert set(state.slices) == {5} and state.ledger == {}
    messages = [r.getMessage() for r in caplog.records]
    assert not any("\n" in m or "\r" in m for m in messages), messages
    assert any("skipping slice 'pl_a\\nFAKE line' (6): name" in m for m in messages), messages
    assert any("skipping dead slice 'pl_d\\r\\nFAKE'" in m for m in messages), messages


def test_expired_and_revived_dead_slices_stay_out_of_the_ledger(tmp_path: Path) -> None:
    live = {5: Py2Instance(bwmon_slice(5, "pl_back", NOW_S - 10, 1, 2))}
    deaddb = {
        "pl_back": Py2Instance(bwmon_slice(9, "pl_back", NOW_S - 100, 1, 2)),
        "pl_old": Py2Instance(bwmon_slice(8, "pl_old", NOW_S - 86400, 1, 2)),
        "pl_live": Py2Instance(bwmon_slice(7, "pl_live", NOW_S - 86399, 1, 2)),
    }
    state = import_legacy(write(tmp_path, py2_dumps((VERSION, live, deaddb), 0)), CONFIG, NOW_S)
    assert set(state.ledger) == {"pl_live"}
    assert state.ledger["pl_live"].slice.xid == 7


UNSAFE = [
    ("os", "system"),
    ("posix", "system"),
    ("subprocess", "call"),
    ("__builtin__", "eval"),
    ("builtins", "exec"),
    ("bwmon", "os"),
]


def evil_argument(name: str, marker: Path) -> str:
    shell = f"touch {marker}"
    if name in ("eval", "exec"):
        return f"__import__('os').system({shell!r})"
    return shell


@pytest.mark.parametrize(("module", "name"), UNSAFE)
def test_a_pickle_calling_anything_else_is_refused_and_nothing_runs(
    tmp_path: Path, module: str, name: str
) -> None:
    marker = tmp_path / "pwned"
    arg = evil_argument(name, marker).encode()
    top_level = f"c{module}\n{name}\n(S".encode() + repr(arg.decode()).encode() + b"\ntR."
    # the same call hidden in a Slice's attribute, protocol 2, in place of the name
    hidden = bytearray(py2_dumps((VERSION, {5: Py2Instance({"name": "pl_x"})}, {}), 2))
    call = f"c{module}\n{name}\n".encode() + b"T" + struct.pack("<I", len(arg)) + arg + b"\x85R"
    at = hidden.index(b"U\x04pl_x")
    hidden[at : at + 6] = call
    for data in (top_level, bytes(hidden)):
        assert f"{module}.{name}" in globals_named(data)
        with pytest.raises(LegacyImportError) as info:
            import_legacy(write(tmp_path, data), CONFIG, NOW_S)
        assert f"refusing to load {module}.{name}: not a bwmon.Slice" in str(info.value)
        assert "\n" not in str(info.value)
        assert not marker.exists()
    if (module, name) == ("os", "system"):  # the bytes are live: a plain unpickler runs them
        pickle.loads(top_level)
        assert marker.exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a readable bwmon pickle"),
        (b"garbage", "not a readable bwmon pickle"),
        (pickle.dumps({"a": 1}, protocol=2), "expected a (version, slices, deaddb) tuple"),
        (pickle.dumps((1, 2), protocol=0), "expected a (version, slices, deaddb) tuple"),
        (pickle.dumps(("v", [], {}), protocol=2), "slices is a list, not a dict"),
        (pickle.dumps(("v", {}, []), protocol=2), "deaddb is a list, not a dict"),
        (pickle.dumps(("v", {1: "x"}, {}), protocol=2), "slices[1] is not an xid"),
        (pickle.dumps(("v", {}, {"a": 3}), protocol=2), "deaddb['a'] is not a name"),
        (b"\x80\x02P1\n.", "persistent id"),
    ],
)
def test_malformed_files_are_one_line_errors(tmp_path: Path, data: bytes, message: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(LegacyImportError) as info:
        import_legacy(path, CONFIG, NOW_S)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_is_an_import_error(tmp_path: Path) -> None:
    with pytest.raises(LegacyImportError, match="cannot read: No such file"):
        import_legacy(str(tmp_path / "nope"), CONFIG, NOW_S)


def find_python2() -> str | None:
    """A working Python 2.7 interpreter, if this machine has one (pyenv shims may not run)."""
    candidates = [
        shutil.which("python2.7"),
        *Path("/root/.pyenv/versions").glob("2.7*/bin/python2.7"),
    ]
    for candidate in candidates:
        if (
            candidate
            and subprocess.run(
                [str(candidate), "-c", "pass"], check=False, capture_output=True
            ).returncode
            == 0
        ):
            return str(candidate)
    return None


PY2_SCRIPT = r"""
import pickle, sys
class Slice:
    pass
class NewSlice(object):
    pass
NewSlice.__name__ = "Slice"
bwmon = type(sys)("bwmon")
sys.modules["bwmon"] = bwmon
bwmon.Slice = NewSlice if sys.argv[2] == "new" else Slice
bwmon.Slice.__module__ = "bwmon"
s = bwmon.Slice()
s.__dict__.update({"xid": 12, "name": "pl_alpha", "time": 1.5, "bytes": 123456789012L,
                   "i2bytes": 0, "emailed": True, "MaxRate": 2000})
sys.stdout.write(" ".join(s.__dict__.keys()) + "\n")
sys.stdout.write(pickle.dumps(("v", {12: s}, {}), int(sys.argv[1])))
"""


@pytest.mark.parametrize("protocol", [0, 1, 2])
@pytest.mark.parametrize("style", ["classic", "new"])
def test_the_test_pickler_matches_real_python2(tmp_path: Path, protocol: int, style: str) -> None:
    """Our hand-made pickles are byte for byte what Python 2.7 writes."""
    # What Python 2.7.18 wrote, kept so the comparison runs on machines without it.
    golden = (
        Path(__file__).resolve().parents[1] / "data" / "py2" / f"bwmon-p{protocol}-{style}.out"
    ).read_bytes()
    python2 = find_python2()
    out = golden
    if python2 is not None:
        out = subprocess.run(
            [python2, "-c", PY2_SCRIPT, str(protocol), style], capture_output=True, check=True
        ).stdout
        assert out == golden
    order, real = out.split(b"\n", 1)
    values = {"xid": 12, "name": "pl_alpha", "time": 1.5, "bytes": Py2Long(123456789012)}
    values |= {"i2bytes": 0, "emailed": True, "MaxRate": 2000}
    attrs = {key: values[key] for key in order.decode().split()}  # Python 2's dict order
    ours = py2_dumps(("v", {12: Py2Instance(attrs, newstyle=style == "new")}, {}), protocol)
    assert ours == real
    state = import_legacy(write(tmp_path, real), CONFIG, NOW_S)
    alpha = state.slices[12]
    assert (alpha.period_start_s, alpha.default.last_counter_bytes) == (1, 123456789012)
    assert alpha.default.policy.max_rate_bps == 2_000_000 and alpha.exempt.notified


# --- dead slices of the later format keep their usage ---------------------------------


def test_a_dead_slice_keeps_the_bytes_it_sent_in_the_later_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deaddb[name] = {'slice': Slice, 'htb': gethtbs()[xid]}, pickled by Python's own pickler."""
    bwmon = types.ModuleType("bwmon")

    class Slice:  # what bwmon.Slice pickles as: a class named bwmon.Slice with a __dict__
        pass

    Slice.__module__, Slice.__qualname__ = "bwmon", "Slice"
    bwmon.Slice = Slice  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bwmon", bwmon)
    dead = Slice()
    dead.__dict__.update(bwmon_slice(77, "pl_gone", NOW_S - 7200.0, 10_000, 20_000))
    deaddb = {"pl_gone": {"slice": dead, "htb": dead_htb(10_000 + 3 * GIB, 20_000 + 10 * 2**20)}}
    data = pickle.dumps(("$Id$", {}, deaddb), protocol=2)
    assert "bwmon.Slice" in globals_named(data)

    entry = import_legacy(write(tmp_path, data), CONFIG, NOW_S).ledger["pl_gone"]

    assert (entry.slice.default.used_bytes, entry.slice.exempt.used_bytes) == (3 * GIB, 10 * 2**20)
    assert entry.slice.default.last_counter_bytes == 10_000 + 3 * GIB
    assert entry.slice.period_start_s == NOW_S - 7200


def test_a_dead_slice_whose_counter_went_back_counts_from_zero(tmp_path: Path) -> None:
    """As in a live cycle: a counter below the period's baseline restarted (node reboot)."""
    dead = Py2Instance(bwmon_slice(77, "pl_gone", NOW_S - 7200.0, 10_000, 20_000))
    deaddb = {"pl_gone": {"slice": dead, "htb": dead_htb(4_000, 25_000)}}
    entry = import_legacy(write(tmp_path, py2_dumps((VERSION, {}, deaddb), 0)), CONFIG, NOW_S)
    gone = entry.ledger["pl_gone"].slice
    assert (gone.default.used_bytes, gone.exempt.used_bytes) == (4_000, 5_000)


@pytest.mark.parametrize(
    ("htb", "problem"),
    [
        ("x", "htb is a str, not a dict"),
        ({"usedbytes": 5}, "htb has no usedi2bytes"),
        ({"usedbytes": -1, "usedi2bytes": 5}, "usedbytes = -1 is not a non-negative number"),
    ],
)
def test_a_dead_slice_with_unusable_counters_is_skipped_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, htb: object, problem: str
) -> None:
    deaddb = {
        "pl_bad": {"slice": Py2Instance(bwmon_slice(7, "pl_bad", NOW_S - 10, 1, 2)), "htb": htb},
        "pl_ok": {
            "slice": Py2Instance(bwmon_slice(8, "pl_ok", NOW_S - 10, 1, 2)),
            "htb": dead_htb(11, 12),
        },
    }
    state = import_legacy(write(tmp_path, py2_dumps((VERSION, {}, deaddb), 2)), CONFIG, NOW_S)
    assert set(state.ledger) == {"pl_ok"}
    assert f"skipping dead slice pl_bad: {problem}" in caplog.text


# --- hostile pickles: every cost is bounded -------------------------------------------

TUPLE2 = b"h\x00h\x00\x86"  # GET 0 twice, TUPLE2


def memo_chain(levels: int, pair: bytes) -> bytes:
    """Protocol 2: x0 = None, x(n+1) = a pair of xn and xn (shared, via the memo)."""
    out = b"Nq\x00"
    for _ in range(levels):
        out += b"0" + pair + b"q\x00"  # POP xn, pair two GETs of it, PUT
    return out


def legacy_tuple(version: bytes, slices: bytes = b"}", deaddb: bytes = b"}") -> bytes:
    return b"\x80\x02" + version + slices + deaddb + b"\x87."


def assert_refused(tmp_path: Path, data: bytes, message: str, **kwargs: Any) -> None:
    path = write(tmp_path, data)
    with pytest.raises(LegacyImportError) as info:
        import_legacy(path, CONFIG, NOW_S, **kwargs)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and message in text, text
    assert "\n" not in text and len(text) < 300


def test_a_huge_memo_index_costs_no_memory(tmp_path: Path) -> None:
    """9 bytes: PROTO 2, None, LONG_BINPUT 0x01000000, STOP. The C unpickler sizes its memo
    by the index (256 MiB here; 3.1 GiB for a larger index)."""
    data = b"\x80\x02Nr\x00\x00\x00\x01."
    assert len(data) == 9
    tracemalloc.start()
    try:
        assert_refused(tmp_path, data, "expected a (version, slices, deaddb) tuple")
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < 16 * 2**20


@pytest.mark.parametrize("pair", [TUPLE2, b"(h\x00h\x00l"], ids=["tuples", "lists"])
def test_one_object_referred_to_exponentially_often_is_refused(tmp_path: Path, pair: bytes) -> None:
    """60 doublings: a 500-byte pickle whose version is a tree of 2**60 references."""
    data = legacy_tuple(memo_chain(60, pair))
    assert_refused(tmp_path, data, "one object refers to more than 1000000 others")


def test_a_tuple_dag_used_as_a_dict_key_is_refused(tmp_path: Path) -> None:
    """Hashing a tuple walks every path through it: 2**64 for this one (never finishes)."""
    key = memo_chain(64, TUPLE2)
    assert_refused(tmp_path, legacy_tuple(b"N", b"}" + key + b"K\x01s"), "refers to more than")
    small_key = memo_chain(2, TUPLE2)
    assert_refused(
        tmp_path, legacy_tuple(b"N", b"}" + small_key + b"K\x01s"), "dict key is a tuple"
    )


@pytest.mark.parametrize(
    "nested",
    [b"N" + b"\x85" * 100_000, b"(" * 100_000 + b"t" * 100_000, b"]" * 100_001 + b"a" * 100_000],
    ids=["tuple1", "mark-tuple", "lists"],
)
def test_deep_nesting_is_refused(tmp_path: Path, nested: bytes) -> None:
    """100,000 levels: hashing, comparing or printing it overflows the C stack."""
    data = legacy_tuple(b"N", b"}" + b"K\x01" + nested + b"s")
    assert_refused(tmp_path, data, "nested more than 32 levels deep")


@pytest.mark.parametrize(
    "cycle",
    [b"]2a", b"]q\x00h\x00\x85h\x00Na0"],
    ids=["self", "after-nesting"],
)
def test_a_container_changed_after_nesting_is_refused(tmp_path: Path, cycle: bytes) -> None:
    assert_refused(tmp_path, legacy_tuple(cycle), "changes an object after nesting it")


def test_the_import_stops_at_its_deadline(tmp_path: Path) -> None:
    """The clock is passed in: this one advances a second per opcode read."""
    data = py2_dumps(legacy_data("dict"), 0)
    ticks = itertools.count()
    assert_refused(tmp_path, data, "took more than 30 s", clock=lambda: float(next(ticks)))
    ticks = itertools.count()
    fast = PickleLimits(max_time_s=10_000)
    assert import_legacy(write(tmp_path, data), CONFIG, NOW_S, fast, lambda: float(next(ticks)))


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (PickleLimits(max_objects=50), "more than 50 objects"),
        (PickleLimits(max_container_len=3), "a container of more than 3 items"),
        (PickleLimits(max_memo=5), "more than 5 memo entries"),
        (PickleLimits(max_stack=4), "more than 4 objects on the stack"),
        (PickleLimits(max_depth=3), "nested more than 3 levels deep"),
        (PickleLimits(max_file_bytes=100), "larger than 100 bytes"),
    ],
)
def test_each_limit_applies_to_an_ordinary_file(
    tmp_path: Path, limits: PickleLimits, message: str
) -> None:
    data = py2_dumps(legacy_data("dict"), 1)
    assert import_legacy(write(tmp_path, data), CONFIG, NOW_S) == expected_state("dict")
    assert_refused(tmp_path, data, message, limits=limits)


def test_a_hostile_pickle_is_one_line_and_exit_code_5_from_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bwenforcer.cli import main

    evil = write(tmp_path, legacy_tuple(memo_chain(64, TUPLE2)))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"state_file: {tmp_path}/state.json\nslices_file: null\n")
    code = main(["--config", str(cfg), "state", "import-legacy", evil])
    err = capsys.readouterr().err
    assert code == 5
    assert len(err.strip().splitlines()) == 1 and evil in err and "Traceback" not in err

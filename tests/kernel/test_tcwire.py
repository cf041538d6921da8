"""The netlink codec on plain bytes: golden messages, pyroute2 as an independent decoder,
a message captured from the kernel, and round trips through synthetic dumps."""

from __future__ import annotations

import errno
import struct
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.tcmsg import tcmsg

from bwenforcer.core.model import ClassOp, ClassRates
from bwenforcer.kernel import wire as w

little_endian_only = pytest.mark.skipif(
    sys.byteorder != "little", reason="golden bytes are little-endian"
)

# RTM_NEWTCLASS of 1:14d2 under 1:100 on ifindex 3 (create, exclusive), seq 7:
# rate 8kbit, ceil 2mbit, quantum 3200 (share 2), no rate tables.
GOLDEN_CLASS = bytes.fromhex(
    "60000000" "2800" "0106" "07000000" "00000000"  # nlmsghdr: len 96, type 40, flags, seq, pid
    "00000000" "03000000" "d2140100" "00010100" "00000000"  # tcmsg: ifindex, 1:14d2, 1:100
    "0800" "0100" "68746200"  # TCA_KIND "htb"
    "3400" "0200"  # TCA_OPTIONS
    "3000" "0100"  # TCA_HTB_PARMS (struct tc_htb_opt)
    "00" "01" "0000" "0000" "0000" "e8030000"  # rate: linklayer ethernet, 1,000 bytes/s
    "00" "01" "0000" "0000" "0000" "90d00300"  # ceil: 250,000 bytes/s
    "40787d01"  # buffer: 1,600 bytes at 1,000 B/s = 1.6 s = 25,000,000 ticks of 64 ns
    "a0860100"  # cbuffer: 1,600 bytes at 250,000 B/s = 6.4 ms = 100,000 ticks
    "800c0000" "00000000" "00000000"  # quantum 3200, level, prio
)  # fmt: skip

# An RTM_NEWTCLASS for 1:1fff as the kernel (6.18) dumped it after 4 packets, 3,168 bytes
# (`tc -s class show` agreed): TCA_KIND, TCA_OPTIONS, TCA_STATS2, TCA_STATS, TCA_XSTATS.
KERNEL_CLASS = bytes.fromhex(
    "ec0000002800020092100000237800000000000002000000ff1f0100000101000000ff1f0800010068746200"
    "34000200300001000001000000000000e8030000000100000000000020bcbe0040787d01d007000040060000"
    "00000000000000004800070014000100600c0000000000000400000000000000180003000000000000000000"
    "00000000000000000100000018000400030000000100000000000000d49f82ffcdfeffff2c000300600c0000"
    "0000000004000000000000000100000000000000000000000000000000000000000000001800040003000000"
    "0100000000000000d49f82ffcdfeffff"
)
KERNEL_CLASS_SEQ = 4242

# the program of NETLINK-NOTES.md in `tc`'s bytecode notation, verified there with traffic
# the mark → class program as `tc filter add … bpf bytecode` takes it (both mark
# conventions; checked with real traffic on a tree built by bwlimit's commands)
TC_BYTECODE = (
    "10,32 0 0 4294963220,21 7 0 0,37 2 0 4094,68 0 0 69632,22 0 0 0,"
    "53 0 3 4096,37 2 0 12287,68 0 0 65536,22 0 0 0,6 0 0 0"
)


def decode_tc(msg: bytes) -> tcmsg:
    decoded = tcmsg(msg)
    decoded.decode()
    return decoded


def attrs(payload: bytes) -> dict[int, bytes]:
    """Top-level rtattrs of ``payload`` by type (a decoder independent of tcwire)."""
    found = {}
    offset = 0
    while offset + 4 <= len(payload):
        length, kind = struct.unpack_from("=HH", payload, offset)
        found[kind & 0x3FFF] = payload[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return found


def dumped_class(
    seq: int,
    class_handle: int,
    rate_bps: int,
    ceil_bps: int,
    quantum_bytes: int,
    sent_bytes: int,
    *,
    kind: bytes = b"htb\0",
    extra_top: bytes = b"",
    extra_stats: bytes = b"",
    nested_flag: int = 0,
) -> bytes:
    """A class as the kernel dumps it; ``extra_*`` are attributes a parser must skip,
    ``nested_flag`` NLA_F_NESTED on TCA_STATS2, which some kernels set."""
    if kind == b"htb\0":
        options = w.htb_class_options(rate_bps, ceil_bps, quantum_bytes)
    else:
        options = w.attr(w.TCA_KIND, kind)
    stats2 = w.attr(
        w.TCA_STATS2 | nested_flag,
        extra_stats
        + w.attr(w.TCA_STATS_BASIC, struct.pack("=QI4x", sent_bytes, 7))
        + w.attr(3, bytes(20)),  # TCA_STATS_QUEUE
    )
    body = extra_top + options + stats2 + w.attr(3, bytes(40)) + w.attr(4, bytes(20))
    return w.message(
        w.RTM_NEWTCLASS,
        flags=w.NLM_F_MULTI,
        seq=seq,
        ifindex=2,
        handle=class_handle,
        parent=0x10100,
        body=body,
    )


def done(seq: int) -> bytes:
    return struct.pack("=IHHIIi", 20, w.NLMSG_DONE, w.NLM_F_MULTI, seq, 0, 0)


def nlmsg_error(seq: int, code: int) -> bytes:
    """NLMSG_ERROR: negative errno (0 = ACK) and the header of the message it answers."""
    original = struct.pack("=IHHII", 96, w.RTM_NEWTCLASS, w.NLM_F_REQUEST, seq, 0)
    return struct.pack("=IHHIIi", 36, w.NLMSG_ERROR, 0, seq, 0, -code) + original


# --- encoding ------------------------------------------------------------------


@little_endian_only
def test_class_message_golden_bytes() -> None:
    body = w.htb_class_options(8_000, 2_000_000, 3200)
    msg = w.message(
        w.RTM_NEWTCLASS,
        flags=w.NLM_F_REQUEST | w.NLM_F_CREATE | w.NLM_F_EXCL,
        seq=7,
        ifindex=3,
        handle=0x114D2,
        parent=0x10100,
        body=body,
    )
    assert msg.hex() == GOLDEN_CLASS.hex()


def test_class_message_as_pyroute2_reads_it() -> None:
    msg = decode_tc(
        w.message(
            w.RTM_NEWTCLASS,
            flags=w.NLM_F_REQUEST,
            seq=9,
            ifindex=4,
            handle=0x124D2,
            parent=0x10020,
            body=w.htb_class_options(16_000, 10_000_000, 4800),
        )
    )
    assert (msg["index"], msg["handle"], msg["parent"]) == (4, 0x124D2, 0x10020)
    assert msg["header"]["sequence_number"] == 9
    assert msg.get_attr("TCA_KIND") == "htb"
    options = msg.get_attr("TCA_OPTIONS")
    parms = options.get_attr("TCA_HTB_PARMS")
    assert (parms["rate"], parms["ceil"], parms["quantum"]) == (2_000, 1_250_000, 4800)
    assert parms["buffer"] == 1600 * 1_000_000_000 // (2_000 * 64)
    assert parms["cbuffer"] == 1600 * 1_000_000_000 // (1_250_000 * 64)
    names = [name for name, _ in options["attrs"]]
    assert names == ["TCA_HTB_PARMS"]  # no rate tables, no 64-bit rates below 2**32 B/s


def test_rates_of_2_to_the_32_bytes_per_second_and_more_go_in_rate64_and_ceil64() -> None:
    options = decode_tc(
        w.message(
            w.RTM_NEWTCLASS,
            flags=w.NLM_F_REQUEST,
            seq=1,
            ifindex=2,
            handle=0x10001,
            parent=0,
            body=w.htb_class_options(40_000_000_000, 80_000_000_000, 1600),
        )
    ).get_attr("TCA_OPTIONS")
    parms = options.get_attr("TCA_HTB_PARMS")
    assert (parms["rate"], parms["ceil"]) == (0xFFFFFFFF, 0xFFFFFFFF)
    assert options.get_attr("TCA_HTB_RATE64") == 5_000_000_000
    assert options.get_attr("TCA_HTB_CEIL64") == 10_000_000_000
    # just below the limit: no 64-bit attribute
    small = attrs(attrs(w.htb_class_options(8 * 0xFFFFFFFF, 8 * 0xFFFFFFFF, 1600))[2])
    assert set(small) == {w.TCA_HTB_PARMS}


def test_root_qdisc_and_leaf_pfifo_as_pyroute2_reads_them() -> None:
    root = decode_tc(
        w.message(
            w.RTM_NEWQDISC,
            flags=w.NLM_F_REQUEST,
            seq=1,
            ifindex=2,
            handle=0x10000,
            parent=w.TC_H_ROOT,
            body=w.htb_qdisc_options(0x1FFF),
        )
    )
    init = root.get_attr("TCA_OPTIONS").get_attr("TCA_HTB_INIT")
    assert (init["version"], init["defcls"], init["rate2quantum"]) == (3, 0x1FFF, 10)
    leaf = decode_tc(
        w.message(
            w.RTM_NEWQDISC,
            flags=w.NLM_F_REQUEST,
            seq=1,
            ifindex=2,
            handle=0x14D20000,
            parent=0x114D2,
            body=w.pfifo_options(1000),
        )
    )
    assert leaf.get_attr("TCA_KIND") == "pfifo"
    assert leaf.get_attr("TCA_OPTIONS")["limit"] == 1000


def test_bpf_filter_carries_the_mark_to_class_program_as_tc_writes_it() -> None:
    msg = w.message(
        w.RTM_NEWTFILTER,
        flags=w.NLM_F_REQUEST,
        seq=1,
        ifindex=2,
        handle=1,
        parent=0x10000,
        body=w.bpf_filter_options(0x11FFF),
        info=w.filter_info(2),
    )
    decoded = decode_tc(msg)
    assert decoded.get_attr("TCA_KIND") == "bpf"
    assert decoded["info"] >> 16 == 2  # priority
    assert struct.unpack("!H", struct.pack("=H", decoded["info"] & 0xFFFF))[0] == 0x0003  # all
    options = attrs(attrs(msg[36:])[w.TCA_OPTIONS])
    assert struct.unpack("=I", options[w.TCA_BPF_CLASSID])[0] == 0x11FFF
    count, *program = TC_BYTECODE.split(",")
    assert struct.unpack("=H", options[w.TCA_BPF_OPS_LEN])[0] == int(count)
    expected = [tuple(int(x) for x in insn.split()) for insn in program]
    ops = options[w.TCA_BPF_OPS]
    assert [struct.unpack_from("=HBBI", ops, i) for i in range(0, len(ops), 8)] == expected


@little_endian_only
def test_a_batch_encodes_each_op_as_message_builds_it() -> None:
    """Create (class + leaf pfifo), change and delete, numbered from the first sequence
    number; the create of 1:14d2 is the golden message."""
    ops = [
        ClassOp("create", 0x4D2, "default", ClassRates(8_000, 2_000_000, 2)),
        ClassOp("change", 0x4D2, "exempt", ClassRates(16_000, 10_000_000, 3)),
        ClassOp("delete", 0x4D3, "default"),
    ]
    messages, owners, refused = w.ClassOpEncoder(3).encode(ops, 7)
    assert (owners, refused) == ([0, 0, 1, 2], {})
    assert messages[0].hex() == GOLDEN_CLASS.hex()
    excl = w.NLM_F_REQUEST | w.NLM_F_CREATE | w.NLM_F_EXCL
    expected = [
        (w.RTM_NEWQDISC, excl, 8, 0x14D20000, 0x114D2, w.pfifo_options(1000)),
        (w.RTM_NEWTCLASS, w.NLM_F_REQUEST, 9, 0x124D2, 0x10020,
         w.htb_class_options(16_000, 10_000_000, 4800)),
        (w.RTM_DELTCLASS, w.NLM_F_REQUEST, 10, 0x114D3, 0x10100, b""),
    ]  # fmt: skip
    for msg, (msg_type, flags, seq, handle, parent, body) in zip(
        messages[1:], expected, strict=True
    ):
        assert msg == w.message(
            msg_type, flags=flags, seq=seq, ifindex=3, handle=handle, parent=parent, body=body
        )


def test_a_batch_refuses_an_out_of_range_xid_alone() -> None:
    ops = [
        ClassOp("change", 1, "default", ClassRates(8_000, 1_000_000, 1)),
        ClassOp("change", 70000, "default", ClassRates(8_000, 1_000_000, 1)),
        ClassOp("delete", 2, "exempt"),
    ]
    encoder = w.ClassOpEncoder(2)
    for _ in range(2):  # the second time from the encoder's memo of each class's tcmsg
        messages, owners, refused = encoder.encode(ops, 1)
        assert owners == [0, 2] and list(refused) == [1]
        assert "70000 out of range" in str(refused[1])
        assert [struct.unpack_from("=IHHI", m)[3] for m in messages] == [1, 2]


def test_link_request_asks_for_the_device_by_name_with_an_ack() -> None:
    msg = ifinfmsg(w.link_request(5, "v0"))
    msg.decode()
    assert msg.get_attr("IFLA_IFNAME") == "v0"
    assert msg["header"]["type"] == w.RTM_GETLINK
    assert msg["header"]["flags"] == w.NLM_F_REQUEST | w.NLM_F_ACK
    assert msg["header"]["sequence_number"] == 5


def test_with_ack_sets_only_the_ack_flag() -> None:
    acked = w.with_ack(GOLDEN_CLASS)
    header = struct.unpack_from("=IHHII", acked)
    assert header[2] == w.NLM_F_REQUEST | w.NLM_F_CREATE | w.NLM_F_EXCL | w.NLM_F_ACK
    assert acked[:6] == GOLDEN_CLASS[:6] and acked[8:] == GOLDEN_CLASS[8:]


# --- decoding ------------------------------------------------------------------


@little_endian_only
def test_a_class_dumped_by_the_kernel() -> None:
    expected = w.ClassRecord(0x11FFF, 0x10100, 1_000, 12_500_000, 1600, 3168)
    assert w.parse_class(memoryview(KERNEL_CLASS)) == expected
    records: list[w.ClassRecord] = []
    buffer = KERNEL_CLASS + done(KERNEL_CLASS_SEQ)
    assert w.parse_class_dump(memoryview(buffer), KERNEL_CLASS_SEQ, records) == 0
    assert records == [expected]


def test_dump_across_buffers_skips_other_answers_and_ends_at_done() -> None:
    seq = 31
    first = dumped_class(seq, 0x11001, 8_000, 1_000_000, 1600, 5) + dumped_class(
        seq + 1,
        0x11002,
        8_000,
        1_000_000,
        1600,
        6,  # a stale answer to another request
    )
    second = (
        dumped_class(seq, 0x12001, 16_000, 2_000_000, 3200, 2**40)
        + nlmsg_error(seq - 1, errno.EEXIST)  # left over from an earlier batch
        + done(seq)
        + dumped_class(seq, 0x11003, 8_000, 1_000_000, 1600, 7)  # after DONE: not read
    )
    records: list[w.ClassRecord] = []
    assert w.parse_class_dump(memoryview(first), seq, records) is None
    assert w.parse_class_dump(memoryview(second), seq, records) == 0
    assert records == [
        w.ClassRecord(0x11001, 0x10100, 1_000, 125_000, 1600, 5),
        w.ClassRecord(0x12001, 0x10100, 2_000, 250_000, 3200, 2**40),
    ]


def test_dump_reports_the_kernels_error() -> None:
    records: list[w.ClassRecord] = []
    buffer = memoryview(nlmsg_error(12, errno.ENODEV))
    assert w.parse_class_dump(buffer, 12, records) == errno.ENODEV
    assert records == []


def test_classes_of_other_kinds_are_skipped() -> None:
    records: list[w.ClassRecord] = []
    buffer = dumped_class(3, 0x20001, 0, 0, 0, 99, kind=b"mq\0") + done(3)
    assert w.parse_class_dump(memoryview(buffer), 3, records) == 0
    assert records == []


def test_a_truncated_buffer_yields_what_is_whole_and_no_more() -> None:
    whole = dumped_class(4, 0x11001, 8_000, 80_000, 1600, 1)
    cut = dumped_class(4, 0x11002, 8_000, 80_000, 1600, 2)[:100]
    records: list[w.ClassRecord] = []
    assert w.parse_class_dump(memoryview(whole + cut), 4, records) is None
    assert [r.handle for r in records] == [0x11001]
    assert [m[0] for m in w.split(memoryview(whole + cut))] == [w.RTM_NEWTCLASS]


def test_error_code_and_split() -> None:
    buffer = memoryview(nlmsg_error(8, 0) + nlmsg_error(9, errno.ENOENT))
    found = [(t, seq, w.error_code(m)) for t, _flags, seq, m in w.split(buffer)]
    assert found == [(w.NLMSG_ERROR, 8, 0), (w.NLMSG_ERROR, 9, errno.ENOENT)]


unknown_attr = st.builds(
    lambda kind, size: w.attr(kind, bytes(size)),
    st.integers(min_value=9, max_value=200),
    st.integers(min_value=0, max_value=40),
)
bits_per_s = st.integers(min_value=8, max_value=8 * 2**40).map(lambda bps: bps // 8 * 8)


@given(
    rate_bps=bits_per_s,
    ceil_bps=bits_per_s,
    share=st.integers(min_value=1, max_value=1000),
    sent=st.integers(min_value=0, max_value=2**64 - 1),
    extra_top=st.lists(unknown_attr, max_size=3).map(b"".join),
    extra_stats=st.sampled_from([b"", w.attr(2, bytes(16))]),  # TCA_STATS_RATE_EST first
    nested_flag=st.sampled_from([0, 0x8000]),
)
def test_dump_round_trip(
    rate_bps: int,
    ceil_bps: int,
    share: int,
    sent: int,
    extra_top: bytes,
    extra_stats: bytes,
    nested_flag: int,
) -> None:
    quantum_bytes = share * 1600
    seq = 77
    msg = dumped_class(
        seq,
        0x11234,
        rate_bps,
        ceil_bps,
        quantum_bytes,
        sent,
        extra_top=extra_top,
        extra_stats=extra_stats,
        nested_flag=nested_flag,
    )
    expected = w.ClassRecord(0x11234, 0x10100, rate_bps // 8, ceil_bps // 8, quantum_bytes, sent)
    records: list[w.ClassRecord] = []
    assert w.parse_class_dump(memoryview(msg + msg + done(seq)), seq, records) == 0
    assert records == [expected, expected]
    assert w.parse_class(memoryview(msg)) == expected


def run_classic_bpf(program: tuple[tuple[int, int, int, int], ...], mark: int) -> int:
    """A classic BPF interpreter for the instructions the mark program uses."""
    a, pc = 0, 0
    for _ in range(len(program) + 1):
        code, jt, jf, k = program[pc]
        pc += 1
        if code == 0x20 and k == (0xFFFFF000 + 20) & 0xFFFFFFFF:
            a = mark
        elif code in (0x15, 0x25, 0x35):  # jeq, jgt, jge #k
            taken = {0x15: a == k, 0x25: a > k, 0x35: a >= k}[code]
            pc += jt if taken else jf
        elif code == 0x44:
            a |= k
        elif code == 0x16:
            return a
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"instruction {code:#x} not interpreted")
    raise AssertionError("no return")


def expected_classid(mark: int) -> int:
    """Mark = xid (the node manager's) → 1:1<xid>; 0x1000|xid, 0x2000|xid (bwenforcer's
    ``uid`` classifier) → that class; anything else: no match (0), the default class."""
    if 1 <= mark <= 0xFFE:
        return 0x10000 | 0x1000 | mark
    if 0x1000 <= mark <= 0x2FFF:
        return 0x10000 | mark
    return 0


@given(mark=st.one_of(st.integers(0, 0x3FFF), st.integers(0, 2**32 - 1)))
def test_the_mark_program_maps_both_conventions_and_nothing_else(mark: int) -> None:
    classid = run_classic_bpf(w.MARK_TO_CLASS_PROGRAM, mark)
    assert classid == expected_classid(mark)
    # never the qdisc's own handle 1:0 (HTB's direct, unshaped path) nor another major
    assert classid == 0 or (classid >> 16 == 1 and classid & 0xFFFF >= 0x1000)


def test_the_mark_program_on_every_small_mark_and_the_edges() -> None:
    for mark in [*range(0x4000), 0x10000, 0x11F5, 0x401F5, 0xFFFFFFFF, 0x80001000]:
        assert run_classic_bpf(w.MARK_TO_CLASS_PROGRAM, mark) == expected_classid(mark), mark
    assert run_classic_bpf(w.MARK_TO_CLASS_PROGRAM, 501) == 0x111F5  # xid 501 → 1:11f5
    assert run_classic_bpf(w.MARK_TO_CLASS_PROGRAM, 0x10000) == 0  # was 1:0, unshaped


def test_a_filter_dump_answer_is_read() -> None:
    body = w.bpf_filter_options(0x11FFF)
    msg = bytearray(
        w.message(w.RTM_NEWTFILTER, flags=2, seq=9, ifindex=2, handle=1, parent=0x10000,
                  body=body, info=w.filter_info(2))
    )  # fmt: skip
    done = struct.pack("=IHHII", 20, w.NLMSG_DONE, 2, 9, 0) + b"\0" * 4
    records: list[w.FilterRecord] = []
    assert w.parse_filter_dump(memoryview(bytes(msg) + done), 9, records) == 0
    (record,) = records
    assert record.handle == 1 and record.kind == b"bpf" and record.classid == 0x11FFF
    assert record.ops == w.bpf_ops(w.MARK_TO_CLASS_PROGRAM)
    assert record.info >> 16 == 2


def expected_tagged_classid(mark: int) -> int:
    """classifier.mode uid, cgroup: 0x1000|xid, 0x2000|xid → that class; anything else,
    a bare xid too (a kernel packet's stray mark), no match: the default class."""
    return 0x10000 | mark if 0x1000 <= mark <= 0x2FFF else 0


@given(mark=st.one_of(st.integers(0, 0x3FFF), st.integers(0, 2**32 - 1)))
def test_the_tagged_program_maps_tagged_marks_and_nothing_else(mark: int) -> None:
    classid = run_classic_bpf(w.TAGGED_MARK_TO_CLASS_PROGRAM, mark)
    assert classid == expected_tagged_classid(mark)
    assert classid == 0 or (classid >> 16 == 1 and classid & 0xFFFF >= 0x1000)


def test_the_tagged_program_on_every_small_mark_and_the_edges() -> None:
    for mark in [*range(0x4000), 0x10000, 0x11F5, 0x401F5, 0xFFFFFFFF, 0x80001000]:
        classid = run_classic_bpf(w.TAGGED_MARK_TO_CLASS_PROGRAM, mark)
        assert classid == expected_tagged_classid(mark), mark
    assert run_classic_bpf(w.TAGGED_MARK_TO_CLASS_PROGRAM, 212) == 0  # bare: default class
    assert run_classic_bpf(w.TAGGED_MARK_TO_CLASS_PROGRAM, 0x10D4) == 0x110D4
    assert run_classic_bpf(w.TAGGED_MARK_TO_CLASS_PROGRAM, 0x20D4) == 0x120D4
    assert run_classic_bpf(w.TAGGED_MARK_TO_CLASS_PROGRAM, 0x10000) == 0  # never 1:0
    assert w.mark_program(True) is w.MARK_TO_CLASS_PROGRAM
    assert w.mark_program(False) is w.TAGGED_MARK_TO_CLASS_PROGRAM

"""nftobj's decoding: the one-pattern read of a counter and the attribute walk agree,
on a message laid out as the kernel sends it (the kernel test compares both with nft).
"""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from bwenforcer.kernel import nftobj as o
from bwenforcer.kernel.nftsets import _attr


def _kernel_counter(
    table: str, name: str, handle: int, use: int, bytes_: int, packets: int
) -> bytes:
    """A counter object's attributes in the kernel's order (nf_tables_fill_obj_info)."""
    data = _attr(o.NFTA_COUNTER_BYTES, struct.pack("!Q", bytes_)) + _attr(
        o.NFTA_COUNTER_PACKETS, struct.pack("!Q", packets)
    )
    return (
        _attr(o.NFTA_OBJ_TABLE, table.encode() + b"\0")
        + _attr(o.NFTA_OBJ_NAME, name.encode() + b"\0")
        + _attr(o.NFTA_OBJ_TYPE, struct.pack("!I", o.NFT_OBJECT_COUNTER))
        + _attr(o.NFTA_OBJ_HANDLE, struct.pack("!Q", handle))
        + _attr(o.NFTA_OBJ_USE, struct.pack("!I", use))
        + _attr(o.NFTA_OBJ_DATA, data)
    )


@given(
    st.sampled_from(["bwenforcer_in", "t", "abcd"]),
    st.integers(0x1000, 0x2FFF),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
)
def test_counter_pattern_reads_what_the_attribute_walk_reads(
    table: str, mark: int, handle: int, use: int, bytes_: int, packets: int
) -> None:
    body = _kernel_counter(table, f"c{mark:x}", handle, use, bytes_, packets)
    walked = o._parse_object(body)
    assert walked == o.NftObject(f"c{mark:x}", "counter", handle, use, bytes_, packets)
    found = o._counter_pattern(table).fullmatch(body)
    assert found is not None
    name, h, u, b, p = found.groups()
    assert (name.decode(), *(int.from_bytes(x, "big") for x in (h, u, b, p))) == (
        walked.name, walked.handle, walked.use, walked.value, walked.extra
    )  # fmt: skip
    # another table's counter, a limit's name: not the fast path's
    assert o._counter_pattern(table + "x").fullmatch(body) is None
    other = _kernel_counter(table, f"l{mark:x}", handle, use, bytes_, packets)
    assert o._counter_pattern(table).fullmatch(other) is None


def test_comment_round_trips_through_userdata() -> None:
    assert o._parse_udata_comment(o._udata_comment("bwenforcer 8000 bit/s")) == (
        "bwenforcer 8000 bit/s"
    )
    assert o._parse_udata_comment(b"") is None

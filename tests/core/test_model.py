"""The model's fast constructors build exactly what the dataclass constructors would."""

from __future__ import annotations

import dataclasses

import pytest

from bwenforcer.core.model import (
    ClassPolicy,
    ClassRates,
    ClassState,
    KernelClass,
    KernelSlice,
    SliceState,
    fast_init,
)
from bwenforcer.core.plan import CreateClass, Notify, SetRates

POLICY = ClassPolicy(10, 8, 1, 2, 1)
RATES = ClassRates(8_000, 16_000, 2)
SAMPLES = {
    ClassRates: (8_000, 16_000, 2),
    KernelClass: (RATES, 123),
    KernelSlice: (7, KernelClass(RATES, 1), None),
    ClassState: (POLICY, 5, 6, 7, True, False, 5000, "due", (1, 2), 8),
    SliceState: ("pl_a", 7, 1, 2, ClassState(POLICY), ClassState(POLICY, 1)),
    CreateClass: ("pl_a", 7, "default", RATES, "new"),
    SetRates: ("pl_a", 7, "exempt", RATES, ClassRates(8_000, 24_000, 1)),
    Notify: ("pl_a", 7, ("default",), "share", 8000),
}


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_fast_constructor_sets_every_field_positionally_and_by_name(cls: type) -> None:
    values = SAMPLES[cls]
    names = [f.name for f in dataclasses.fields(cls)]
    by_position, by_name = cls(*values), cls(**dict(zip(names, values, strict=True)))
    assert [getattr(by_position, n) for n in names] == list(values)
    assert by_position == by_name and hash(by_position) == hash(by_name)
    assert dataclasses.replace(by_position) == by_position
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(by_position, names[0], values[0])
    with pytest.raises(TypeError):
        cls(*values, "one too many")
    with pytest.raises(TypeError):
        cls(**dict(zip(names, values, strict=True)), unknown=1)


def test_fast_constructor_keeps_the_defaults() -> None:
    state = ClassState(POLICY)
    assert (state.used_bytes, state.last_counter_bytes, state.ceil_bps) == (0, 0, 0)
    assert (state.capped, state.notified) == (False, False)
    with pytest.raises(TypeError):
        ClassState()  # type: ignore[call-arg]


def test_a_default_factory_is_refused() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class WithFactory:
        items: list[int] = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError, match="default factories"):
        fast_init(WithFactory)

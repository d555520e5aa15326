"""An upload's spool keeps the pieces written to it as they came and joins them once when read: it
reads, seeks and moves to disk exactly as the BytesIO it replaces would."""

from __future__ import annotations

import io
import os
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagegate.wire.forms import BudgetedSpool, SpoolBudget

PIECES = [os.urandom(size) for size in (65_536, 1, 0, 40_000, 65_536, 7)]
WHOLE = b"".join(PIECES)


def spool(max_size: int = 1 << 20) -> BudgetedSpool:
    return BudgetedSpool(SpoolBudget(1 << 30), max_size)


def test_pieces_read_back_whole_and_in_parts_as_from_a_bytesio() -> None:
    ours, theirs = spool(), io.BytesIO()
    for piece in PIECES:
        assert ours.write(piece) == theirs.write(piece)
        assert ours.tell() == theirs.tell()
    assert ours.read() == theirs.read() == b"", "written to the end, the position is at the end"
    for offset, size in ((0, 10), (65_530, 20), (len(WHOLE) - 5, 100)):
        ours.seek(offset)
        theirs.seek(offset)
        assert ours.read(size) == theirs.read(size)
    ours.seek(0)
    assert ours.read() == WHOLE
    assert not ours.on_disk
    ours.close()


def test_writing_after_reading_appends_where_the_position_is() -> None:
    ours, theirs = spool(), io.BytesIO()
    for target in (ours, theirs):
        target.write(b"head-")
        target.seek(0)
        target.read(2)
        target.seek(0, io.SEEK_END)
        target.write(memoryview(b"tail"))
        target.seek(0)
    assert ours.read() == theirs.read() == b"head-tail"
    ours.close()


def test_a_spool_past_its_size_moves_to_disk_with_its_bytes_and_position() -> None:
    ours = spool(max_size=100_000)
    for piece in PIECES:
        ours.write(piece)
    assert ours.on_disk
    assert ours.tell() == len(WHOLE)
    ours.seek(0)
    assert ours.read() == WHOLE
    ours.close()


def test_a_closed_spool_refuses_what_a_closed_bytesio_refuses() -> None:
    ours = spool()
    ours.write(b"gone")
    ours.close()
    assert ours.closed
    for ask in (ours.read, lambda: ours.write(b"x"), lambda: ours.seek(0)):
        with pytest.raises(ValueError):
            ask()


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.binary(max_size=300)),
        st.tuples(st.just("read"), st.integers(min_value=-1, max_value=700)),
        st.tuples(st.just("seek"), st.tuples(st.integers(min_value=-50, max_value=900), st.sampled_from([0, 1, 2]))),
        st.tuples(st.just("tell"), st.none()),
    ),
    max_size=40,
)


@given(OPERATIONS)
def test_any_writes_reads_and_seeks_behave_as_on_a_bytesio(operations: list[tuple[str, object]]) -> None:
    ours, theirs = spool(), io.BytesIO()
    for name, argument in operations:
        outcomes: list[object] = []
        for target in (ours, theirs):
            try:
                if name == "write":
                    outcomes.append(target.write(argument))  # type: ignore[arg-type]
                elif name == "read":
                    outcomes.append(target.read(argument))  # type: ignore[arg-type]
                elif name == "seek":
                    offset, whence = cast(tuple[int, int], argument)
                    outcomes.append(target.seek(offset, whence))
                else:
                    outcomes.append(target.tell())
            except ValueError as exc:
                outcomes.append(type(exc))
        assert outcomes[0] == outcomes[1], (name, argument)
    ours.seek(0)
    theirs.seek(0)
    assert ours.read() == theirs.read()
    ours.close()

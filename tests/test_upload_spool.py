"""An upload's spool keeps the pieces written to it as they came and joins them once when read: it
reads, seeks and moves to disk exactly as the BytesIO it replaces would."""

from __future__ import annotations

import io
import os

import pytest

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

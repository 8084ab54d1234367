"""The table codecs and typed views: what the app writes reads back; garbage in a changelog is skipped, never fatal."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.topology import CELL, COUNT_KEY, FLAG, INT, SEEN, TEXT, TableView
from aggregator.windows import Cell, CountKey, Seen

KEY = CountKey("i", 60, 1_767_225_600_000, "movement", "north", "left", "SB", "car")


@pytest.mark.parametrize(
    ("codec", "value"),
    [(CELL, Cell(3, True)), (CELL, Cell(0)), (SEEN, Seen("i", 5)), (INT, 1_767_225_600_000), (FLAG, True), (FLAG, False), (COUNT_KEY, KEY), (TEXT, "cam-1")],
)
def test_codecs_round_trip(codec, value) -> None:  # type: ignore[no-untyped-def]
    assert codec.load(codec.dump(value)) == value


@settings(deadline=None)
@given(st.binary(max_size=60))
def test_codecs_refuse_garbage_with_value_or_type_errors(raw: bytes) -> None:
    for codec in (CELL, SEEN, INT, FLAG, COUNT_KEY):
        try:
            codec.load(raw)
        except (ValueError, TypeError, UnicodeDecodeError):
            pass


def test_view_skips_entries_that_do_not_decode() -> None:
    table: dict[bytes, bytes] = {}
    view: TableView[CountKey, Cell] = TableView(table, COUNT_KEY, CELL, "windows")
    view[KEY] = Cell(2)
    table[b"garbage key"] = b"[1,false]"
    table[COUNT_KEY.dump(KEY.__class__(*("j", 60, 0, "line", "l", "in", "in", "car")))] = b"not a cell"
    assert list(view.items()) == [(KEY, Cell(2))]
    assert list(view) == [KEY, CountKey("j", 60, 0, "line", "l", "in", "in", "car")]  # keys decode; the bad value is skipped on read
    assert view.get(CountKey("j", 60, 0, "line", "l", "in", "in", "car")) is None
    assert KEY in view and len(table) == 3
    del view[KEY]
    assert KEY not in view

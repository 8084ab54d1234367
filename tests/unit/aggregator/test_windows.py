"""Interval assignment at boundaries, closing with grace, the series a crossing is counted in, and the window store."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.windows import Cell, CountKey, WindowStore, count_keys, final_counts, interval_end_ms, interval_start_ms, is_closed
from traffic.wire import CrossingEvent

T = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a multiple of every interval


@pytest.mark.parametrize(
    ("time_ms", "interval_s", "start_ms"),
    [
        (T, 900, T),  # exactly on a boundary: the interval that starts there
        (T - 1, 900, T - 900_000),  # one ms before: the previous interval
        (T + 899_999, 900, T),  # last ms of the interval
        (T + 900_000, 900, T + 900_000),  # its end belongs to the next one (end is exclusive)
        (T + 7 * 60_000 + 30_000, 900, T),  # 00:07:30 is in 00:00-00:15
        (T + 16 * 60_000, 900, T + 900_000),  # 00:16 is in 00:15-00:30 (aligned to :00/:15/:30/:45 UTC)
        (T + 61_234, 60, T + 60_000),  # one-minute intervals
        (0, 60, 0),  # the epoch itself
    ],
)
def test_interval_start(time_ms: int, interval_s: int, start_ms: int) -> None:
    assert interval_start_ms(time_ms, interval_s) == start_ms


T7 = 1_715_670_000_000  # 2024-05-14 07:00:00 UTC, on a 15-minute (and hour) boundary
MINUTE = 60_000


@pytest.mark.parametrize(
    ("time_ms", "interval_s", "offset_ms", "expected"),
    [
        (T7, 900, 0, T7),  # exactly on a boundary: the interval that starts there
        (T7 - 1, 900, 0, T7 - 15 * MINUTE),  # 1 ms before the boundary: the previous interval
        (T7 + 15 * MINUTE - 1, 900, 0, T7),  # last millisecond of an interval
        (T7 + 15 * MINUTE, 900, 0, T7 + 15 * MINUTE),  # first millisecond of the next one
        (T7 + 90_500, 60, 0, T7 + MINUTE),  # 1-minute intervals: 07:01:30.5 -> 07:01
        (0, 900, 0, 0),  # epoch 0 (traffic count without --start): first interval starts at 0
        (T7 + 10 * MINUTE, 3600, 19_800_000, T7 - 30 * MINUTE),  # +05:30: 07:10 UTC = 12:40 local -> 12:00 local = 06:30 UTC
        (T7 + 10 * MINUTE, 900, 19_800_000, T7),  # +05:30 does not shift 15-minute bins (5:30 is a multiple of 15 min)
    ],
)
def test_interval_start_on_a_local_clock(time_ms: int, interval_s: int, offset_ms: int, expected: int) -> None:
    assert interval_start_ms(time_ms, interval_s, offset_ms) == expected


@settings(deadline=None)
@given(st.integers(0, 4_102_444_800_000), st.sampled_from([60, 300, 900, 3600]))
def test_interval_contains_time_and_is_aligned(time_ms: int, interval_s: int) -> None:
    start = interval_start_ms(time_ms, interval_s)
    assert start <= time_ms < interval_end_ms(start, interval_s)
    assert start % (interval_s * 1000) == 0


@settings(deadline=None)
@given(st.integers(0, 4_102_444_800_000), st.sampled_from([60, 900, 3600]), st.integers(-12 * 3_600_000, 14 * 3_600_000))
def test_interval_on_a_local_clock_contains_time_and_starts_on_a_local_boundary(time_ms: int, interval_s: int, offset_ms: int) -> None:
    start = interval_start_ms(time_ms, interval_s, offset_ms)
    assert start <= time_ms < interval_end_ms(start, interval_s)
    assert (start + offset_ms) % (interval_s * 1000) == 0
    assert count_keys(crossing("line", time_ms), [interval_s], offset_ms)[0].interval_start_ms == start


@pytest.mark.parametrize(
    ("watermark_ms", "closed"),
    [
        (T + 60_000, False),  # at the interval's end: still in grace
        (T + 69_999, False),  # 1 ms before end + grace
        (T + 70_000, True),  # end + grace reached: final
    ],
)
def test_is_closed_after_grace(watermark_ms: int, closed: bool) -> None:
    assert is_closed(T, 60, watermark_ms, grace_s=10) is closed


def crossing(kind: str, time_ms: int, event_id: str = "c:s:1:x") -> CrossingEvent:
    if kind == "line":
        return CrossingEvent(event_id=event_id, kind="line", intersection="i", camera="c", session="s", track_id=1, vehicle_class="car", time_ms=time_ms, line="l1", direction="westbound")
    return CrossingEvent(
        event_id=event_id, kind="movement", intersection="i", camera="c", session="s", track_id=1, vehicle_class="bus",
        time_ms=time_ms, approach="north", exit="south", movement="through", direction="SB",
    )  # fmt: skip


def test_count_keys_of_a_movement_and_a_line() -> None:
    assert count_keys(crossing("movement", T + 61_000), [900, 60]) == [
        CountKey("i", 900, T, "movement", "north", "through", "SB", "bus"),
        CountKey("i", 60, T + 60_000, "movement", "north", "through", "SB", "bus"),
    ]
    assert count_keys(crossing("line", T), [60]) == [CountKey("i", 60, T, "line", "l1", "westbound", "westbound", "car")]


def test_key_round_trip_and_record() -> None:
    key = CountKey("i", 60, T, "movement", "north", "u-turn", "SB", "car")
    assert CountKey.decode(key.encode()) == key
    record = key.record(3, final=True)
    assert (record.interval_end_ms - record.interval_start_ms, record.count, record.final) == (60_000, 3, True)


def test_final_counts_deduplicate_by_event_id() -> None:
    counts = final_counts([crossing("line", T, "a"), crossing("line", T + 1, "a"), crossing("line", T + 2, "b")], [60])
    assert list(counts.values()) == [2]


@pytest.mark.parametrize(
    "text",
    [
        "[]",  # not eight fields
        '["i", 60, 0, "movement", "a", "m", "d"]',  # seven
        '["i", "60", 0, "movement", "a", "m", "d", "car"]',  # interval as text
        '["i", 60, 0, "bus", "a", "m", "d", "car"]',  # unknown series
        '["i", 0, 0, "line", "a", "m", "d", "car"]',  # zero interval
        '{"intersection": "i"}',  # an object
        "not json",
    ],
)
def test_count_key_decode_refuses_what_encode_never_writes(text: str) -> None:
    with pytest.raises((ValueError, TypeError)):
        CountKey.decode(text)


def store(grace_s: float = 10) -> WindowStore:
    return WindowStore((60,), grace_s)


def test_store_counts_once_per_event_id_and_lists_provisional_changes() -> None:
    s = store()
    assert s.add(crossing("line", T + 1_000, "a")).counted
    assert s.add(crossing("line", T + 2_000, "a")).replay  # a redelivered crossing
    s.add(crossing("line", T + 3_000, "b"))
    key = CountKey("i", 60, T, "line", "l1", "westbound", "westbound", "car")
    assert s.provisional() == [(key, 2)]
    assert s.provisional() == []  # nothing changed since
    s.add(crossing("line", T + 4_000, "c"))
    assert s.provisional() == [(key, 3)]


def test_store_closes_by_watermark_after_grace_and_refuses_late_crossings() -> None:
    s = store(grace_s=10)
    s.add(crossing("line", T + 1_000, "a"))
    key = CountKey("i", 60, T, "line", "l1", "westbound", "westbound", "car")
    s.advance("i", T + 69_999)
    assert s.due("i") == []  # end + grace not reached
    s.advance("i", T + 70_000)
    assert s.due("i") == [key]
    assert s.closable([key]) == [(key, 1)] and not s.cells[key].final  # closable changes nothing
    assert s.close([key, key]) == [(key, 1)]  # once, even if asked twice
    assert s.close([key]) == []
    late = s.add(crossing("line", T + 2_000, "late"))
    assert late.late == (key,) and not late.counted  # its final record is out: not counted
    assert s.counts(final_only=True) == {key: 1}
    assert s.provisional() == []  # final cells are never provisional


def test_store_watermark_never_goes_back() -> None:
    s = store()
    assert s.advance("i", T + 5_000)
    assert not s.advance("i", T + 1_000)
    assert s.watermark("i") == T + 5_000
    assert s.watermark("other") is None


def test_store_purges_old_final_cells_and_ids_and_then_refuses_crossings_that_old() -> None:
    s = store(grace_s=0)
    s.add(crossing("line", T + 1_000, "a"))
    s.add(crossing("movement", T + 1_000, "m"))
    s.close(s.open_keys())
    s.advance("i", T + 60_000 + s.horizon_ms + 1)
    assert s.purge("i") == 4  # two final cells and two ids
    assert s.cells == {} and s.seen == {}
    again = s.add(crossing("line", T + 1_000, "a"))  # a replay older than the horizon: not a new interval
    assert again.late and not again.counted and s.cells == {}


def test_store_open_keys_and_due_are_per_intersection() -> None:
    s = store(grace_s=0)
    other = crossing("line", T + 1_000, "x").model_copy(update={"intersection": "j"})
    s.add(crossing("line", T + 1_000, "a"))
    s.add(other)
    s.advance("i", T + 60_000)
    assert [k.intersection for k in s.due("i")] == ["i"]
    assert s.due("j") == []  # j has no watermark yet
    assert {k.intersection for k in s.open_keys()} == {"i", "j"}


def test_store_on_any_mapping() -> None:
    """The app backs the store with typed table views: any MutableMapping works."""
    from collections import UserDict

    cells: UserDict = UserDict()
    s = WindowStore((60, 900), 5, cells=cells)  # type: ignore[arg-type]
    s.add(crossing("movement", T + 61_000, "m"))
    assert sorted(c.count for c in cells.values()) == [1, 1] and all(isinstance(c, Cell) for c in cells.values())


@settings(deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 7_200_000)), max_size=60), st.integers(0, 600))
def test_final_counts_equal_a_plain_count_of_distinct_ids(items: list[tuple[int, int]], grace: int) -> None:
    crossings = [crossing("line", T + t, f"c:s:{i}:l1") for i, t in items]
    finals = final_counts(crossings, [60, 900], grace)
    distinct = {f"c:s:{i}:l1": T + t for i, t in reversed(items)}  # the first occurrence of an id counts
    first = {}
    for i, t in items:
        first.setdefault(f"c:s:{i}:l1", T + t)
    for size in (60, 900):
        assert sum(n for k, n in finals.items() if k.interval_s == size) == len(distinct)
        for key, n in finals.items():
            if key.interval_s == size:
                assert n == sum(1 for t in first.values() if key.interval_start_ms <= t < key.interval_end_ms)

"""Interval assignment at boundaries, closing with grace, and the series a crossing is counted in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.windows import CountKey, count_keys, interval_end_ms, interval_start_ms, is_closed, tally
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


@given(st.integers(0, 4_102_444_800_000), st.sampled_from([60, 300, 900, 3600]))
def test_interval_contains_time_and_is_aligned(time_ms: int, interval_s: int) -> None:
    start = interval_start_ms(time_ms, interval_s)
    assert start <= time_ms < interval_end_ms(start, interval_s)
    assert start % (interval_s * 1000) == 0


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


def test_tally_deduplicates_by_event_id() -> None:
    counts = tally([crossing("line", T, "a"), crossing("line", T + 1, "a"), crossing("line", T + 2, "b")], [60])
    assert list(counts.values()) == [2]

"""Turning-movement report arithmetic: interval binning, peak hour, PHF, CSV layout, JSON result.

Every expected number here was computed by hand (see the comment of each case), not by the code.
"""

from __future__ import annotations

import csv
import io
from datetime import timedelta, timezone

import pytest

from offline.report import (
    PEAK_BIN_S,
    bin_events,
    build_report,
    find_peak_hour,
    parse_start,
    peak_hour_factor,
    report_columns,
)
from traffic.site import parse_site
from traffic.wire import CrossingEvent

T0 = 1_715_670_000_000  # 2024-05-14 07:00:00 UTC, on a 15-minute (and hour) boundary
MIN = 60_000

SITE = {
    "intersections": [
        {
            "id": "x1",
            "cameras": [
                {
                    "id": "cam-1",
                    "source": "file:///dev/null",
                    "approaches": [
                        {"id": "n", "compass": "north", "polygon": [[0.4, 0], [0.6, 0], [0.6, 0.1]]},
                        {"id": "e", "compass": "east", "polygon": [[0.9, 0.4], [1, 0.4], [1, 0.6]]},
                        {"id": "s", "compass": "south", "polygon": [[0.4, 1], [0.6, 1], [0.6, 0.9]]},
                        {"id": "w", "compass": "west", "polygon": [[0, 0.4], [0.1, 0.4], [0, 0.6]]},
                    ],
                    "lines": [{"id": "l1", "points": [[0.5, 0.2], [0.5, 0.8]], "in_label": "westbound", "out_label": "eastbound"}],
                },
                {
                    "id": "cam-lines",
                    "source": "file:///dev/null",
                    "lines": [
                        {"id": "stop", "points": [[0.1, 0.5], [0.9, 0.5]], "in_label": "SB", "out_label": "NB"},
                        {"id": "one-way", "points": [[0.5, 0.1], [0.5, 0.9]], "in_label": "WB", "out_label": "EB", "count": "in"},
                    ],
                },
            ],
        }
    ]
}


def _camera(camera_id: str = "cam-1"):
    return parse_site(SITE).camera(camera_id)[1]


_seq = iter(range(10**9))


def move(t_ms: int, frm: str = "n", to: str = "s", movement: str = "through", cls: str = "car") -> CrossingEvent:
    """A movement crossing at ``t_ms``."""
    n = next(_seq)
    return CrossingEvent(
        event_id=f"e{n}", kind="movement", intersection="x1", camera="cam-1", session="s", track_id=n,
        vehicle_class=cls, time_ms=t_ms, approach=frm, exit=to, movement=movement,
    )


def cross(t_ms: int, line: str = "l1", direction: str = "westbound", cls: str = "car") -> CrossingEvent:
    """A line crossing at ``t_ms``."""
    n = next(_seq)
    return CrossingEvent(
        event_id=f"e{n}", kind="line", intersection="x1", camera="cam-1", session="s", track_id=n,
        vehicle_class=cls, time_ms=t_ms, line=line, direction=direction,
    )


@pytest.mark.parametrize(
    ("hour", "busiest", "expected"),
    [
        (400, 100, 1.0),  # perfectly even hour: 400 / (4 * 100)
        (400, 160, 0.625),  # 400 / 640
        (7, 3, 7 / 12),  # small counts: 7 / (4 * 3) = 0.5833...
        (5, 5, 0.25),  # everything in one quarter: the minimum PHF
        (0, 0, None),  # nothing counted: PHF undefined, not a division by zero
    ],
)
def test_peak_hour_factor(hour: int, busiest: int, expected: float | None) -> None:
    result = peak_hour_factor(hour, busiest)
    assert result == pytest.approx(expected) if expected is not None else result is None


def _quarters(volumes: list[int], complete: list[bool] | None = None):
    """15-minute bins from T0 with ``volumes[i]`` N->S through cars in bin i."""
    events = [move(T0 + i * 15 * MIN + 60_000 + k) for i, v in enumerate(volumes) for k in range(v)]
    quarters = bin_events(events, (T0, T0 + len(volumes) * 15 * MIN), PEAK_BIN_S)
    if complete is not None:
        quarters = [q.__class__(q.start_ms, q.end_ms, c, q.counts) for q, c in zip(quarters, complete)]
    return quarters


@pytest.mark.parametrize(
    ("volumes", "complete", "start_bin", "volume", "busiest", "phf"),
    [
        ([10, 20, 30, 40], None, 0, 100, 40, 100 / 160),  # exactly one hour: the only candidate
        ([5, 10, 20, 30, 40], None, 1, 100, 40, 100 / 160),  # the later hour (07:15-08:15) beats 07:00-08:00 (65)
        ([40, 30, 20, 10, 40], None, 0, 100, 40, 100 / 160),  # tie 100 vs 100: the earliest hour wins
        ([1, 0, 3, 2, 2], None, 1, 7, 3, 7 / 12),  # empty quarter inside the peak hour: 0+3+2+2 = 7 beats 1+0+3+2 = 6
        ([1, 3, 2, 1, 0, 0], None, 0, 7, 3, 7 / 12),  # empty quarters at the end; PHF by hand 7 / (4*3)
        ([9, 1, 1, 1, 1], [False, True, True, True, True], 1, 4, 1, 1.0),  # an incomplete first bin is not eligible
        ([0, 0, 0, 0], None, 0, 0, 0, None),  # a complete hour with no traffic: volume 0, PHF undefined
    ],
)
def test_find_peak_hour(volumes, complete, start_bin, volume, busiest, phf) -> None:
    quarters = _quarters(volumes, complete)
    keys = [("movement", "n", "through")]
    peak = find_peak_hour(quarters, keys)
    assert peak is not None
    assert (peak.start_ms, peak.end_ms) == (T0 + start_bin * 15 * MIN, T0 + (start_bin + 4) * 15 * MIN)
    assert (peak.volume, peak.busiest_15min_volume) == (volume, busiest)
    assert peak.phf == pytest.approx(phf) if phf is not None else peak.phf is None


@pytest.mark.parametrize(
    ("volumes", "complete"),
    [
        ([5, 5, 5], None),  # 45 minutes counted: no hour at all
        ([5, 5, 5, 5], [True, True, True, False]),  # four bins but the last one only partly recorded
        ([5, 5, 5, 5, 5], [True, True, False, True, True]),  # a gap (incomplete bin) splits the hours
    ],
)
def test_no_peak_hour_without_a_complete_hour(volumes, complete) -> None:
    assert find_peak_hour(_quarters(volumes, complete), [("movement", "n", "through")]) is None


def test_bin_events_boundaries_empty_intervals_and_partial_coverage() -> None:
    # Recording 07:05 - 07:50 (45 min), 15-minute bins 07:00, 07:15, 07:30, 07:45.
    period = (T0 + 5 * MIN, T0 + 50 * MIN)
    events = [
        move(T0 + 5 * MIN),  # first instant of the recording -> 07:00 bin
        move(T0 + 15 * MIN),  # exactly on the 07:15 boundary -> 07:15 bin, not 07:00
        move(T0 + 15 * MIN - 1),  # one ms before it -> 07:00 bin
        move(T0 + 49 * MIN),  # -> 07:45 bin; 07:30 stays empty
    ]
    bins = bin_events(events, period, 900)
    assert [b.start_ms for b in bins] == [T0, T0 + 15 * MIN, T0 + 30 * MIN, T0 + 45 * MIN]
    assert [b.volume([("movement", "n", "through")]) for b in bins] == [2, 1, 0, 1]
    assert [b.complete for b in bins] == [False, True, True, False]  # the recording covers 07:15-07:45 fully


def test_event_outside_the_period_is_kept() -> None:
    # A vehicle whose movement is decided after the last frame (track timeout) must not vanish.
    bins = bin_events([move(T0 + 20 * MIN)], (T0, T0 + 15 * MIN), 900)
    assert [(b.start_ms, b.complete, sum(b.counts.values())) for b in bins] == [(T0, True, 0), (T0 + 15 * MIN, False, 1)]


def test_columns_follow_compass_order_and_movement_names() -> None:
    titles = [c.title for c in report_columns(_camera())]
    assert titles == [
        "SB Left", "SB Thru", "SB Right", "SB U-turn", "SB App Total",
        "WB Left", "WB Thru", "WB Right", "WB U-turn", "WB App Total",
        "NB Left", "NB Thru", "NB Right", "NB U-turn", "NB App Total",
        "EB Left", "EB Thru", "EB Right", "EB U-turn", "EB App Total",
    ]  # fmt: skip


def test_columns_of_a_camera_with_only_lines() -> None:
    titles = [c.title for c in report_columns(_camera("cam-lines"))]
    assert titles == ["stop SB", "stop NB", "stop Total", "one-way WB", "one-way Total"]  # count: in -> one direction


@pytest.mark.parametrize(
    ("text", "epoch_ms", "offset"),
    [
        (None, 0, timedelta(0)),  # no --start: epoch 0, UTC
        ("2024-05-14T07:00:00Z", T0, timedelta(0)),  # Z suffix
        ("2024-05-14T07:00:00", T0, timedelta(0)),  # naive: taken as UTC
        ("2024-05-14T09:00:00+02:00", T0, timedelta(hours=2)),  # local time with offset: same instant, zone kept
        ("2024-05-14 07:00:00.250+00:00", T0 + 250, timedelta(0)),  # space separator, milliseconds
    ],
)
def test_parse_start(text, epoch_ms, offset) -> None:
    ms, tz = parse_start(text)
    assert ms == epoch_ms and tz.utcoffset(None) == offset


@pytest.mark.parametrize("text", ["yesterday", "2024-13-01T00:00:00", "07:00"])  # words, a bad month, a time without date
def test_parse_start_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_start(text)


def _report(events, period, interval_s=900, tz=timezone.utc):
    return build_report(events, intersection="x1", camera=_camera(), classes=["car", "truck"], period_ms=period, interval_s=interval_s, tz=tz)


def _table(report) -> dict[tuple[str, str, str], dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(report.csv_text())))
    return {(r["Class"], r["Row"], r["Start"]): r for r in rows}


def test_csv_intervals_totals_peak_hour_and_phf() -> None:
    # 75 minutes, 07:00-08:15. Quarter volumes (all classes): 07:00 = 2, 07:15 = 0, 07:30 = 3, 07:45 = 1, 08:00 = 2.
    events = [
        move(T0 + 1 * MIN, "n", "s", "through"),  # 07:00 SB Thru car
        move(T0 + 15 * MIN - 1, "n", "e", "left", "truck"),  # 07:00 SB Left truck (last ms of the bin)
        move(T0 + 30 * MIN, "e", "w", "through"),  # 07:30 WB Thru car (exactly on the boundary)
        move(T0 + 31 * MIN, "e", "w", "through", "truck"),  # 07:30 WB Thru truck
        move(T0 + 44 * MIN, "s", "s", "u-turn"),  # 07:30 NB U-turn car
        move(T0 + 50 * MIN, "w", "s", "right"),  # 07:45 EB Right car
        move(T0 + 60 * MIN, "n", "s", "through"),  # 08:00 SB Thru car
        move(T0 + 74 * MIN, "n", "s", "through"),  # 08:00 SB Thru car
        cross(T0 + 2 * MIN),  # a line crossing: in the JSON, not in the movement CSV
    ]
    report = _report(events, (T0, T0 + 75 * MIN))
    table = _table(report)
    header = next(csv.reader(io.StringIO(report.csv_text())))
    assert header[:4] == ["Class", "Row", "Start", "End"] and header[-1] == "Int Total"

    all_rows = [r for (cls, kind, _), r in table.items() if cls == "All" and kind == "interval"]
    assert [r["Start"][11:16] for r in all_rows] == ["07:00", "07:15", "07:30", "07:45", "08:00"]
    assert [r["Int Total"] for r in all_rows] == ["2", "0", "3", "1", "2"]  # the empty 07:15 row is there
    first = table[("All", "interval", "2024-05-14 07:00:00")]
    assert (first["SB Thru"], first["SB Left"], first["SB App Total"], first["End"]) == ("1", "1", "2", "2024-05-14 07:15:00")
    assert table[("truck", "interval", "2024-05-14 07:00:00")]["SB Left"] == "1"
    assert table[("car", "interval", "2024-05-14 07:00:00")]["SB Left"] == "0"

    total = table[("All", "total", "2024-05-14 07:00:00")]
    assert (total["SB Thru"], total["WB Thru"], total["NB U-turn"], total["EB Right"], total["Int Total"]) == ("3", "2", "1", "1", "8")
    assert table[("truck", "total", "2024-05-14 07:00:00")]["Int Total"] == "2"

    # Peak hour: 07:00-08:00 = 2+0+3+1 = 6; 07:15-08:15 = 0+3+1+2 = 6; tie -> the earliest, 07:00.
    # PHF = 6 / (4 * 3) = 0.500. Per column: WB Thru 2 in one quarter -> 2 / (4*2) = 0.250.
    peak = table[("All", "peak hour", "2024-05-14 07:00:00")]
    assert (peak["End"], peak["Int Total"], peak["SB App Total"], peak["WB Thru"]) == ("2024-05-14 08:00:00", "6", "2", "2")
    phf = table[("All", "PHF", "2024-05-14 07:00:00")]
    assert (phf["Int Total"], phf["WB Thru"], phf["SB Thru"], phf["SB Right"]) == ("0.500", "0.250", "0.250", "")
    assert report.to_json()["peak_hour"] == {
        "start": "2024-05-14T07:00:00.000+00:00", "end": "2024-05-14T08:00:00.000+00:00",
        "volume": 6, "busiest_15min_volume": 3, "phf": 0.5,
    }  # fmt: skip
    # Truck block, same peak hour: 2 trucks in different quarters -> 2 / (4 * 1) = 0.500.
    assert table[("truck", "PHF", "2024-05-14 07:00:00")]["Int Total"] == "0.500"


def test_five_minute_intervals_keep_the_fifteen_minute_peak_hour() -> None:
    # 5-minute rows, but PHF from 15-minute bins: 4 vehicles in 07:00-07:05 and 4 in 07:50-07:55.
    events = [move(T0 + k * 1000) for k in range(4)] + [move(T0 + 50 * MIN + k * 1000) for k in range(4)]
    report = _report(events, (T0, T0 + 60 * MIN), interval_s=300)
    volumes = [i.volume(report.columns[1].keys) for i in report.intervals]
    assert len(volumes) == 12 and volumes == [4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0]  # 07:00-07:05 and 07:50-07:55
    # Quarters 4, 0, 0, 4 -> PHF 8 / (4 * 4) = 0.5 (a 5-minute PHF would be 8 / (12 * 4) = 0.167).
    assert report.peak_hour is not None and report.peak_hour.phf == pytest.approx(0.5)


def test_short_recording_has_no_peak_hour() -> None:
    report = _report([move(T0 + 1000)], (T0, T0 + 30_000))  # a 30-second clip
    assert report.peak_hour is None and report.to_json()["peak_hour"] is None
    phf = _table(report)[("All", "PHF", "n/a")]
    assert phf["End"] == "n/a" and phf["Int Total"] == ""


def test_local_time_zone_in_csv_and_json() -> None:
    tz = timezone(timedelta(hours=-4))
    report = _report([move(T0 + 16 * MIN)], (T0, T0 + 30 * MIN), tz=tz)
    table = _table(report)
    assert table[("All", "interval", "2024-05-14 03:15:00")]["Int Total"] == "1"  # 07:16 UTC = 03:16 at -04:00
    assert report.to_json()["intervals"][1]["start"] == "2024-05-14T03:15:00.000-04:00"


def test_json_counts_per_line_direction_movement_and_class() -> None:
    events = [
        cross(T0, "l1", "westbound", "car"),  # counted twice westbound car
        cross(T0 + 1, "l1", "westbound", "car"),
        cross(T0 + 2, "l1", "eastbound", "truck"),  # one eastbound truck
        move(T0 + 3, "n", "e", "left", "bus"),  # a class not in the site's list still appears
    ]
    doc = _report(events, (T0, T0 + MIN)).to_json()
    assert doc["lines"] == {"l1": {"westbound": {"car": 2, "truck": 0, "bus": 0}, "eastbound": {"car": 0, "truck": 1, "bus": 0}}}
    movements = {(m["approach"], m["exit"]): m for m in doc["movements"]}
    assert len(movements) == 16  # every movement of the table, zeros included
    assert movements[("n", "e")] == {"approach": "n", "exit": "e", "movement": "left", "label": "SB Left", "counts": {"car": 0, "truck": 0, "bus": 1}, "total": 1}
    assert movements[("s", "n")]["total"] == 0 and doc["classes"] == ["car", "truck", "bus"] and doc["crossings"] == 4

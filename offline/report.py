"""Turning-movement report of an offline count: interval binning, CSV layout, peak hour and PHF.

Pure arithmetic on :class:`traffic.wire.CrossingEvent` s; no video, no model, no broker. The
``traffic count`` command (``offline.count``) feeds it the crossings the counting core
produced and writes the two outputs described in ``docs/count.md``:

* a JSON result (counts per line, direction and class; per movement and class; per interval;
  the peak hour; run figures such as frames processed and wall time);
* a turning-movement count (TMC) CSV in the layout traffic engineers know from Jamar/Miovision
  exports: one block per vehicle class (``All`` first), one row per interval, one column per
  approach and movement (``SB Left, SB Thru, SB Right, SB U-turn, SB App Total, ...``), then a
  ``Total`` row, a ``Peak Hour`` row and a ``PHF`` row.

Intervals are half-open and aligned to the local clock of the recording; they are the streaming
app's intervals (``aggregator.windows.interval_start_ms`` with the recording's UTC offset), and
the counts in them are the final counts of the app's window store (``aggregator.windows.final_counts``)::

    07:00            07:15            07:30            07:45            08:00
      |---- bin 0 -----|---- bin 1 -----|---- bin 2 -----|---- bin 3 -----|
      [ t >= 07:00 and t < 07:15 )   an event at exactly 07:15:00.000 is in bin 1

The peak hour is always computed from 15-minute bins (the HCM definition), whatever the report
interval: the four consecutive *complete* 15-minute bins with the highest total (the earliest
wins a tie), and ``PHF = V_hour / (4 * V_15max)`` where ``V_15max`` is the busiest 15-minute bin
inside that hour. A bin is complete when the recording covers all of it; with less than one
complete hour there is no peak hour (``null`` in JSON, ``n/a`` in the CSV).
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from aggregator.windows import CountKey, final_counts, interval_start_ms
from traffic.site import Camera
from traffic.wire import CrossingEvent

PEAK_BIN_S = 900
"""Length of the bins the peak hour and PHF are computed from (seconds): 15 minutes, by definition."""

PEAK_BINS_PER_HOUR = 3600 // PEAK_BIN_S

MOVEMENT_ORDER = ("left", "through", "right", "u-turn")
MOVEMENT_TITLES = {"left": "Left", "through": "Thru", "right": "Right", "u-turn": "U-turn"}
_COMPASS_ORDER = {"north": 0, "east": 1, "south": 2, "west": 3}
ALL_CLASSES = "All"

SeriesKey = tuple[str, str, str]
"""``("movement", approach id, movement)`` or ``("line", line id, direction label)``."""


def series_key(key: CountKey) -> SeriesKey:
    """The report series of a window-store count key (its interval and class left out)."""
    return (key.series, key.approach, key.movement)


@dataclass(frozen=True, slots=True)
class Column:
    """One count column of the CSV.

    Attributes:
        title: header text, e.g. ``SB Left``.
        group: approach label (``SB``) or line id; App Total columns sum a group.
        keys: the series summed in this column (one for a movement, all of a group for a total).
    """

    title: str
    group: str
    keys: tuple[SeriesKey, ...]


def report_columns(camera: Camera) -> list[Column]:
    """CSV count columns for a camera, in report order, without the intersection total.

    With approaches: per approach (north, east, south, west order when compasses are set, else
    file order) its movements ``Left, Thru, Right, U-turn`` that exist in the movement table,
    then ``<label> App Total``. Without approaches (a camera that only has count lines): per
    line one column per direction label, then ``<line> Total``.
    """
    columns: list[Column] = []
    if camera.approaches:
        table = camera.movement_table()
        approaches = sorted(
            enumerate(camera.approaches),
            key=lambda pair: (_COMPASS_ORDER.get(pair[1].compass or "", 4), pair[0]),
        )
        for _, approach in approaches:
            made = {movement for (frm, _), movement in table.items() if frm == approach.id}
            group_keys: list[SeriesKey] = []
            for movement in MOVEMENT_ORDER:
                if movement in made:
                    key: SeriesKey = ("movement", approach.id, movement)
                    group_keys.append(key)
                    columns.append(Column(f"{approach.report_label} {MOVEMENT_TITLES[movement]}", approach.report_label, (key,)))
            columns.append(Column(f"{approach.report_label} App Total", approach.report_label, tuple(group_keys)))
    else:
        for line in camera.lines:
            labels = [line.in_label, line.out_label] if line.count == "both" else [line.in_label if line.count == "in" else line.out_label]
            group_keys = [("line", line.id, label) for label in dict.fromkeys(labels)]
            columns.extend(Column(f"{line.id} {key[2]}", line.id, (key,)) for key in group_keys)
            columns.append(Column(f"{line.id} Total", line.id, tuple(group_keys)))
    return columns


def total_keys(columns: Sequence[Column]) -> tuple[SeriesKey, ...]:
    """Every series of the report once (what ``Int Total`` sums)."""
    return tuple(dict.fromkeys(key for column in columns for key in column.keys))


@dataclass(frozen=True, slots=True)
class Interval:
    """Counts of one interval.

    Attributes:
        start_ms: interval start, epoch ms (inclusive).
        end_ms: interval end, epoch ms (exclusive).
        complete: True when the recording covers the whole interval.
        counts: (series key, vehicle class) -> vehicles.
    """

    start_ms: int
    end_ms: int
    complete: bool
    counts: Counter[tuple[SeriesKey, str]]

    def volume(self, keys: Iterable[SeriesKey], vehicle_class: str = ALL_CLASSES) -> int:
        """Vehicles of ``keys`` (of one class, or all classes) in this interval."""
        wanted = set(keys)
        return sum(n for (key, cls), n in self.counts.items() if key in wanted and (vehicle_class == ALL_CLASSES or cls == vehicle_class))


def bin_events(events: Iterable[CrossingEvent], period_ms: tuple[int, int], interval_s: int, offset_ms: int = 0) -> list[Interval]:
    """Sort crossings into every interval that overlaps the counted period, empty ones included.

    Args:
        events: crossings (any order).
        period_ms: counted period ``[start, end)`` in epoch ms (the recording's time span).
        interval_s: interval length (seconds).
        offset_ms: UTC offset of the local clock (ms), so that hourly bins start on local hours
            also where the offset is not a whole hour (``aggregator.windows.interval_start_ms``).

    Returns:
        Intervals in time order. Events outside the period are still counted (in an interval
        added for them, marked incomplete) so that no counted vehicle disappears from the report.
        Each crossing counts once per ``event_id``, as in the streaming app.
    """
    start, end = period_ms
    assert end >= start, "period must not end before it starts"
    size = interval_s * 1000
    counts: dict[int, Counter[tuple[SeriesKey, str]]] = {}
    first = interval_start_ms(start, interval_s, offset_ms)
    cursor = first
    while cursor < end or cursor == first:
        counts[cursor] = Counter()
        cursor += size
    for key, n in final_counts(events, (interval_s,), offset_ms=offset_ms).items():
        counts.setdefault(key.interval_start_ms, Counter())[(series_key(key), key.vehicle_class)] += n
    return [
        Interval(s, s + size, complete=start <= s and s + size <= end, counts=counts[s])
        for s in sorted(counts)
    ]


def peak_hour_factor(hour_volume: int, busiest_15min_volume: int) -> float | None:
    """PHF = hour volume / (4 x busiest 15-minute volume); None when nothing was counted.

    1.0 means traffic was spread evenly over the hour; 0.25 means it all came in one quarter.
    """
    assert 0 <= busiest_15min_volume <= hour_volume, "the busiest quarter is part of the hour"
    if busiest_15min_volume == 0:
        return None
    return hour_volume / (PEAK_BINS_PER_HOUR * busiest_15min_volume)


@dataclass(frozen=True, slots=True)
class PeakHour:
    """The busiest hour of the recording.

    Attributes:
        start_ms: start of the hour, epoch ms (on a 15-minute boundary).
        end_ms: end of the hour, epoch ms (exclusive).
        volume: vehicles counted in it (all series of the report, all classes).
        busiest_15min_volume: vehicles in its busiest 15-minute bin.
        phf: peak hour factor, see :func:`peak_hour_factor`.
        quarters: the four 15-minute bins of the hour.
    """

    start_ms: int
    end_ms: int
    volume: int
    busiest_15min_volume: int
    phf: float | None
    quarters: tuple[Interval, ...] = field(repr=False)


def find_peak_hour(quarters: Sequence[Interval], keys: Iterable[SeriesKey]) -> PeakHour | None:
    """Best four consecutive complete 15-minute bins by total volume of ``keys``.

    Args:
        quarters: 15-minute intervals in time order (from :func:`bin_events` with ``PEAK_BIN_S``).
        keys: series that make up the volume (usually every movement of the intersection).

    Returns:
        The peak hour (earliest one on a tie), or None with less than one complete hour.
    """
    keys = tuple(keys)
    best: PeakHour | None = None
    for i in range(len(quarters) - PEAK_BINS_PER_HOUR + 1):
        window = tuple(quarters[i : i + PEAK_BINS_PER_HOUR])
        if not all(q.complete for q in window):
            continue
        assert all(b.start_ms - a.start_ms == PEAK_BIN_S * 1000 for a, b in zip(window, window[1:])), "bins must be consecutive"
        volumes = [q.volume(keys) for q in window]
        volume = sum(volumes)
        if best is None or volume > best.volume:
            best = PeakHour(window[0].start_ms, window[-1].end_ms, volume, max(volumes), peak_hour_factor(volume, max(volumes)), window)
    return best


def parse_start(text: str | None) -> tuple[int, timezone]:
    """``--start`` ISO 8601 text -> (epoch ms, its time zone); no text = epoch 0 UTC.

    A time without an offset is taken as UTC (say ``+02:00`` for local time). A trailing ``Z``
    is accepted.

    Raises:
        ValueError: not an ISO 8601 date-time.
    """
    if not text:
        return 0, timezone.utc
    moment = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    offset = moment.utcoffset() or timedelta(0)
    return round(moment.timestamp() * 1000), timezone(offset)


def format_time(epoch_ms: int, tz: timezone) -> str:
    """``2024-05-14 07:15:00`` in the recording's zone (seconds kept: short intervals need them)."""
    return datetime.fromtimestamp(epoch_ms / 1000, tz).strftime("%Y-%m-%d %H:%M:%S")


def iso_time(epoch_ms: int, tz: timezone) -> str:
    """ISO 8601 with offset, milliseconds kept."""
    return datetime.fromtimestamp(epoch_ms / 1000, tz).isoformat(timespec="milliseconds")


@dataclass
class CountReport:
    """Everything ``traffic count`` reports, built by :func:`build_report`.

    Attributes:
        intersection: intersection id.
        camera: the camera the count is for (its lines, approaches, labels).
        classes: vehicle classes, in report order.
        interval_s: report interval (seconds).
        period_ms: counted period ``[start, end)``, epoch ms.
        tz: time zone of the recording (from ``--start``).
        events: every crossing, in the order the counter produced them.
        intervals: report intervals.
        quarters: 15-minute bins (for the peak hour).
        columns: CSV count columns (``Int Total`` excluded).
        peak_hour: the peak hour, or None with less than one complete hour.
        run: run figures (frames, wall time, model...) copied into the JSON result.
    """

    intersection: str
    camera: Camera
    classes: list[str]
    interval_s: int
    period_ms: tuple[int, int]
    tz: timezone
    events: list[CrossingEvent]
    intervals: list[Interval]
    quarters: list[Interval]
    columns: list[Column]
    peak_hour: PeakHour | None
    run: dict[str, Any] = field(default_factory=dict)

    # -- JSON ----------------------------------------------------------------------------------

    def line_counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """line id -> direction label -> class -> vehicles (every line and label, zeros included)."""
        result: dict[str, dict[str, dict[str, int]]] = {}
        for line in self.camera.lines:
            labels = dict.fromkeys([line.in_label, line.out_label])
            result[line.id] = {label: {cls: 0 for cls in self.classes} for label in labels}
        for event in self.events:
            if event.kind == "line":
                per_class = result.setdefault(str(event.line), {}).setdefault(str(event.direction), {cls: 0 for cls in self.classes})
                per_class[event.vehicle_class] = per_class.get(event.vehicle_class, 0) + 1
        return result

    def movement_counts(self) -> list[dict[str, Any]]:
        """One entry per (approach, exit) of the movement table: movement, label, counts by class."""
        labels = {a.id: a.report_label for a in self.camera.approaches}
        table = dict(self.camera.movement_table())
        counted: Counter[tuple[str, str, str]] = Counter()
        for event in self.events:
            if event.kind == "movement":
                table.setdefault((str(event.approach), str(event.exit)), str(event.movement))
                counted[(str(event.approach), str(event.exit), event.vehicle_class)] += 1
        entries = []
        for (frm, to), movement in table.items():
            counts = {cls: counted[(frm, to, cls)] for cls in self.classes}
            for (f, t, cls), n in counted.items():
                if (f, t) == (frm, to) and cls not in counts:
                    counts[cls] = n
            entries.append(
                {
                    "approach": frm,
                    "exit": to,
                    "movement": movement,
                    "label": f"{labels.get(frm, frm)} {MOVEMENT_TITLES.get(movement, movement)}",
                    "counts": counts,
                    "total": sum(counts.values()),
                }
            )
        return entries

    def to_json(self) -> dict[str, Any]:
        """The JSON result document (see docs/count.md)."""
        keys = total_keys(self.columns)
        peak = self.peak_hour
        return {
            "intersection": self.intersection,
            "camera": self.camera.id,
            **self.run,
            "period": {"start": iso_time(self.period_ms[0], self.tz), "end": iso_time(self.period_ms[1], self.tz)},
            "classes": self.classes,
            "lines": self.line_counts(),
            "movements": self.movement_counts(),
            "interval_s": self.interval_s,
            "intervals": [
                {
                    "start": iso_time(i.start_ms, self.tz),
                    "end": iso_time(i.end_ms, self.tz),
                    "complete": i.complete,
                    "columns": {c.title: i.volume(c.keys) for c in self.columns},
                    "total": i.volume(keys),
                }
                for i in self.intervals
            ],
            "peak_hour": None
            if peak is None
            else {
                "start": iso_time(peak.start_ms, self.tz),
                "end": iso_time(peak.end_ms, self.tz),
                "volume": peak.volume,
                "busiest_15min_volume": peak.busiest_15min_volume,
                "phf": None if peak.phf is None else round(peak.phf, 4),
            },
            "crossings": len(self.events),
        }

    # -- CSV -----------------------------------------------------------------------------------

    def csv_rows(self) -> list[list[str]]:
        """The TMC table as rows of text (header first); see the module docstring for the layout."""
        keys = total_keys(self.columns)
        header = ["Class", "Row", "Start", "End", *(c.title for c in self.columns), "Int Total"]
        rows = [header]
        for cls in [ALL_CLASSES, *self.classes]:
            for interval in self.intervals:
                rows.append(
                    [cls, "interval", format_time(interval.start_ms, self.tz), format_time(interval.end_ms, self.tz)]
                    + [str(interval.volume(c.keys, cls)) for c in self.columns]
                    + [str(interval.volume(keys, cls))]
                )
            rows.append(
                [cls, "total", format_time(self.period_ms[0], self.tz), format_time(self.period_ms[1], self.tz)]
                + [str(sum(i.volume(c.keys, cls) for i in self.intervals)) for c in self.columns]
                + [str(sum(i.volume(keys, cls) for i in self.intervals))]
            )
            rows.extend(self._peak_rows(cls, keys))
        return rows

    def _peak_rows(self, cls: str, keys: tuple[SeriesKey, ...]) -> list[list[str]]:
        """``Peak Hour`` volumes and ``PHF`` per column, within the intersection's peak hour."""
        peak = self.peak_hour
        n_values = len(self.columns) + 1
        if peak is None:
            return [[cls, "peak hour", "n/a", "n/a", *[""] * n_values], [cls, "PHF", "n/a", "n/a", *[""] * n_values]]
        start, end = format_time(peak.start_ms, self.tz), format_time(peak.end_ms, self.tz)
        volumes, factors = [], []
        for column_keys in [c.keys for c in self.columns] + [keys]:
            quarter_volumes = [q.volume(column_keys, cls) for q in peak.quarters]
            volumes.append(str(sum(quarter_volumes)))
            phf = peak_hour_factor(sum(quarter_volumes), max(quarter_volumes))
            factors.append("" if phf is None else f"{phf:.3f}")
        return [[cls, "peak hour", start, end, *volumes], [cls, "PHF", start, end, *factors]]

    def csv_text(self) -> str:
        """The CSV file's text."""
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(self.csv_rows())
        return buffer.getvalue()


def build_report(
    events: Iterable[CrossingEvent],
    *,
    intersection: str,
    camera: Camera,
    classes: Sequence[str],
    period_ms: tuple[int, int],
    interval_s: int = PEAK_BIN_S,
    tz: timezone = timezone.utc,
    run: dict[str, Any] | None = None,
) -> CountReport:
    """Bin crossings and find the peak hour.

    Args:
        events: the counter's crossings for this camera.
        intersection: intersection id.
        camera: the camera's site configuration.
        classes: vehicle classes in report order (the site's ``counting.classes``); classes seen
            in events but not listed are appended so no vehicle is left out.
        period_ms: counted period ``[start, end)``, epoch ms.
        interval_s: report interval (seconds, > 0).
        tz: the recording's time zone; intervals align to its clock.
        run: run figures for the JSON result.
    """
    if interval_s <= 0:
        raise ValueError(f"interval must be positive, got {interval_s} s")
    events = list(events)
    offset_ms = int((tz.utcoffset(None) or timedelta(0)).total_seconds() * 1000)
    seen = dict.fromkeys(e.vehicle_class for e in events)
    all_classes = list(dict.fromkeys(classes)) + sorted(c for c in seen if c not in classes)
    columns = report_columns(camera)
    quarters = bin_events(events, period_ms, PEAK_BIN_S, offset_ms)
    return CountReport(
        intersection=intersection,
        camera=camera,
        classes=all_classes,
        interval_s=interval_s,
        period_ms=period_ms,
        tz=tz,
        events=events,
        intervals=bin_events(events, period_ms, interval_s, offset_ms),
        quarters=quarters,
        columns=columns,
        peak_hour=find_peak_hour(quarters, total_keys(columns)),
        run=dict(run or {}),
    )

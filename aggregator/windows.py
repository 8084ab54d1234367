"""Tumbling count intervals, the count series a crossing belongs to, and the window store.

The streaming app aligns intervals to the Unix epoch (UTC), so 15-minute intervals start at :00,
:15, :30 and :45 of every hour, whatever time the aggregator started; the offline count
(offline/report.py) passes the recording's UTC offset (``offset_ms``) so that hourly intervals start
on local hours also where the offset is not a whole hour. Both bin with :func:`interval_start_ms`::

    time (event capture) --->
    |    interval k (900 s)    |   interval k+1          |
    [start_k ........... end_k)[start_k+1 ....
                               ^ end_k = start_k + 900 000 ms (exclusive: an event at end_k is in k+1)
                               |<-- grace_s -->| the interval is final once the intersection's
                                               event-time watermark passes end_k + grace
                                               (or the intersection went idle, or all its
                                               cameras ended their streams)

A crossing at time t counts in exactly one interval of each configured length.

:class:`WindowStore` holds the rules on top of that (count once per event id, late, close,
final, provisional, purge) on plain mappings, so the streaming app (mappings backed by faust
tables, aggregator/intersection_stage.py) and the offline count's report (dicts, through
:func:`final_counts`) apply the very same rules. Its lifecycle of one cell::

    add(crossing) --> open cell, count += 1 --> close(keys) --> final (published once)
                       |  provisional() lists it while it changes        |
                       +-- a crossing for a final interval, or older than the purge horizon: late
                                              purge(): final cells older than the horizon are forgotten
"""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import astuple, dataclass, field, fields
from typing import Literal

from traffic.wire import CountRecord, CrossingEvent


def interval_start_ms(time_ms: int, interval_s: int, offset_ms: int = 0) -> int:
    """Start (epoch ms) of the ``interval_s`` interval that contains ``time_ms``.

    Intervals are aligned to a clock ``offset_ms`` ahead of UTC (0: the Unix epoch, as the app
    counts; the offline count passes the recording's UTC offset, e.g. 19 800 000 for +05:30).
    """
    assert interval_s > 0, "interval_s must be positive"
    size = interval_s * 1000
    return time_ms - (time_ms + offset_ms) % size


def interval_end_ms(start_ms: int, interval_s: int) -> int:
    """Exclusive end (epoch ms) of the interval starting at ``start_ms``."""
    return start_ms + interval_s * 1000


def is_closed(start_ms: int, interval_s: int, watermark_ms: int, grace_s: float) -> bool:
    """True once the event-time watermark has passed the interval's end plus the grace period."""
    return watermark_ms >= interval_end_ms(start_ms, interval_s) + int(round(grace_s * 1000))


@dataclass(frozen=True, slots=True)
class CountKey:
    """One series in one interval: the key of a count (and of a :class:`CountRecord`).

    Attributes:
        intersection: intersection id.
        interval_s: interval length (s).
        interval_start_ms: interval start, epoch ms.
        series: ``movement`` or ``line``.
        approach: entry approach id, or line id for ``series="line"``.
        movement: left / through / right / u-turn, or the direction label for lines.
        direction: report label of the entry approach (e.g. ``SB``), or the line's direction label.
        vehicle_class: the track's class.
    """

    intersection: str
    interval_s: int
    interval_start_ms: int
    series: Literal["movement", "line"]
    approach: str
    movement: str
    direction: str
    vehicle_class: str

    @property
    def interval_end_ms(self) -> int:
        """Exclusive end of the interval (epoch ms)."""
        return interval_end_ms(self.interval_start_ms, self.interval_s)

    def encode(self) -> str:
        """Stable text form (a JSON list), used as a table key."""
        return json.dumps(list(astuple(self)), separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | bytes) -> "CountKey":
        """Inverse of :meth:`encode`; ValueError (or TypeError) on anything else."""
        fields = json.loads(text)
        if not isinstance(fields, list) or len(fields) != 8:
            raise ValueError(f"not a count key: {text[:80]!r}")
        key = cls(*fields)
        types = (str, int, int, str, str, str, str, str)
        if not all(type(v) is t for v, t in zip(astuple(key), types)) or key.series not in ("movement", "line") or key.interval_s <= 0:
            raise ValueError(f"not a count key: {text[:80]!r}")
        return key

    def record(self, count: int, final: bool) -> CountRecord:
        """The wire record of this series and interval."""
        return CountRecord(
            intersection=self.intersection,
            interval_s=self.interval_s,
            interval_start_ms=self.interval_start_ms,
            interval_end_ms=self.interval_end_ms,
            series=self.series,
            approach=self.approach,
            movement=self.movement,
            direction=self.direction,
            vehicle_class=self.vehicle_class,
            count=count,
            final=final,
        )


def count_keys(crossing: CrossingEvent, intervals_s: Iterable[int], offset_ms: int = 0) -> list[CountKey]:
    """The series (one per configured interval length) a crossing is counted in; ``offset_ms`` as in :func:`interval_start_ms`."""
    if crossing.kind == "movement":
        assert crossing.approach is not None and crossing.movement is not None
        series: Literal["movement", "line"] = "movement"
        approach, movement, direction = crossing.approach, crossing.movement, crossing.direction or ""
    else:
        assert crossing.line is not None and crossing.direction is not None
        series, approach, movement, direction = "line", crossing.line, crossing.direction, crossing.direction
    return [
        CountKey(crossing.intersection, s, interval_start_ms(crossing.time_ms, s, offset_ms), series, approach, movement, direction, crossing.vehicle_class)
        for s in intervals_s
    ]


@dataclass(slots=True)
class Cell:
    """The count of one series in one interval, and whether it was published as final."""

    count: int
    final: bool = False


@dataclass(frozen=True, slots=True)
class Seen:
    """A counted crossing id: which intersection it was counted for, and its time (to purge it)."""

    intersection: str
    time_ms: int


@dataclass(frozen=True, slots=True)
class Added:
    """What :meth:`WindowStore.add` did with one crossing.

    Attributes:
        counted: the keys whose count went up (empty for a replay or a late crossing).
        late: the keys refused because their interval is final or past the purge horizon.
        replay: the crossing id was counted before (a redelivery): nothing changed.
    """

    counted: tuple[CountKey, ...] = ()
    late: tuple[CountKey, ...] = ()
    replay: bool = False


@dataclass
class WindowStore:
    """Interval counts of one or more intersections with the window rules, on plain mappings.

    Args:
        intervals_s: interval lengths (s), from the site's ``counting`` section.
        grace_s: how long after its end an interval stays open for late crossings (s).
        cells: key -> count cell (the app backs it with a faust table; offline: a dict).
        seen: crossing ``event_id`` -> :class:`Seen` (de-duplication of replays).
        watermarks: intersection id -> its event-time watermark (epoch ms), never decreasing.
        offset_ms: alignment of the intervals, see :func:`interval_start_ms` (the app: 0, UTC).

    ``dirty`` (keys changed since the last :meth:`provisional`) and an index of the open keys per
    intersection live in memory only: after a restart, provisional records resume with the next
    change, and the index is rebuilt from ``cells`` (call :meth:`reindex` when the mappings change
    under the store, e.g. after a rebalance).
    """

    intervals_s: tuple[int, ...]
    grace_s: float
    cells: MutableMapping[CountKey, Cell] = field(default_factory=dict)
    seen: MutableMapping[str, Seen] = field(default_factory=dict)
    watermarks: MutableMapping[str, int] = field(default_factory=dict)
    offset_ms: int = 0
    dirty: set[CountKey] = field(default_factory=set)
    _open: dict[str, set[CountKey]] | None = field(default=None, repr=False)

    def reindex(self) -> None:
        """Forget the in-memory index of open keys; it is rebuilt from ``cells`` when next needed."""
        self._open = None
        self.dirty = {k for k in self.dirty if k in self.cells}

    def _index(self) -> dict[str, set[CountKey]]:
        if self._open is None:
            self._open = {}
            for key, cell in self.cells.items():
                if not cell.final:
                    self._open.setdefault(key.intersection, set()).add(key)
        return self._open

    @property
    def horizon_ms(self) -> int:
        """How far behind its watermark an intersection's state is kept (ms): two of the longest intervals plus grace."""
        return 2 * max(self.intervals_s) * 1000 + int(round(self.grace_s * 1000))

    def watermark(self, intersection: str) -> int | None:
        """The intersection's event-time watermark (epoch ms), None before the first one."""
        return self.watermarks.get(intersection)

    def advance(self, intersection: str, time_ms: int) -> bool:
        """Move the intersection's watermark forward (never back); True when it moved."""
        current = self.watermarks.get(intersection)
        if current is not None and time_ms <= current:
            return False
        self.watermarks[intersection] = time_ms
        return True

    def add(self, crossing: CrossingEvent) -> Added:
        """Count one crossing in every interval length, once per ``event_id``."""
        if crossing.event_id in self.seen:
            return Added(replay=True)
        wm = self.watermarks.get(crossing.intersection)
        counted: list[CountKey] = []
        late: list[CountKey] = []
        for key in count_keys(crossing, self.intervals_s, self.offset_ms):
            cell = self.cells.get(key)
            if (cell is not None and cell.final) or (wm is not None and key.interval_end_ms < wm - self.horizon_ms):
                late.append(key)  # its final record is out (or forgotten): a late count would contradict it
                continue
            self.cells[key] = Cell((cell.count if cell else 0) + 1)
            self.dirty.add(key)
            self._index().setdefault(key.intersection, set()).add(key)
            counted.append(key)
        if counted:
            self.seen[crossing.event_id] = Seen(crossing.intersection, crossing.time_ms)
        return Added(tuple(counted), tuple(late))

    def open_keys(self, intersection: str | None = None) -> list[CountKey]:
        """Keys of the open (not final) intervals, of one intersection or all, in key order."""
        index = self._index()
        keys = index.get(intersection, ()) if intersection is not None else (k for ks in index.values() for k in ks)
        return sorted(keys, key=_order)

    def open_intersections(self) -> list[str]:
        """Intersections that have open intervals."""
        return [i for i, keys in self._index().items() if keys]

    def due(self, intersection: str) -> list[CountKey]:
        """Open keys of the intersection whose interval the watermark has closed (end + grace passed)."""
        wm = self.watermarks.get(intersection)
        if wm is None:
            return []
        return [k for k in self.open_keys(intersection) if is_closed(k.interval_start_ms, k.interval_s, wm, self.grace_s)]

    def closable(self, keys: Iterable[CountKey]) -> list[tuple[CountKey, int]]:
        """(key, count) of those keys that are open: what :meth:`close` will make final (nothing changes).

        Why apart: the app publishes the final records first and marks the cells final after, so a
        crash in between repeats a final record (harmless) instead of losing it.
        """
        out: list[tuple[CountKey, int]] = []
        for key in dict.fromkeys(keys):
            cell = self.cells.get(key)
            if cell is not None and not cell.final:
                out.append((key, cell.count))
        return out

    def close(self, keys: Iterable[CountKey]) -> list[tuple[CountKey, int]]:
        """Make these intervals final; returns (key, count) of those that were open (publish them once)."""
        out = self.closable(keys)
        index = self._index()
        for key, count in out:
            self.cells[key] = Cell(count, final=True)
            self.dirty.discard(key)
            index.get(key.intersection, set()).discard(key)
        return out

    def provisional(self) -> list[tuple[CountKey, int]]:
        """(key, count) of the open intervals changed since the last call (published as provisional)."""
        out = []
        for key in sorted(self.dirty, key=_order):
            cell = self.cells.get(key)
            if cell is not None and not cell.final:
                out.append((key, cell.count))
        self.dirty.clear()
        return out

    def purge(self, intersection: str) -> int:
        """Forget final intervals and counted ids that no crossing can reach any more; returns how many entries went."""
        wm = self.watermarks.get(intersection)
        if wm is None:
            return 0
        horizon = wm - self.horizon_ms
        old = [k for k, cell in self.cells.items() if cell.final and k.intersection == intersection and k.interval_end_ms < horizon]
        for key in old:
            del self.cells[key]
        ids = [e for e, s in self.seen.items() if s.intersection == intersection and s.time_ms < horizon]
        for event_id in ids:
            del self.seen[event_id]
        return len(old) + len(ids)

    def counts(self, final_only: bool = False) -> dict[CountKey, int]:
        """Key -> count of every cell held (only final ones with ``final_only``)."""
        return {k: cell.count for k, cell in sorted(self.cells.items(), key=lambda kv: _order(kv[0])) if cell.final or not final_only}

    def __iter__(self) -> Iterator[CountKey]:
        return iter(self.cells)


_order = operator.attrgetter(*(f.name for f in fields(CountKey)))
"""Sort key of CountKey: its fields in order (C speed; ``astuple`` deep-copies)."""


def final_counts(crossings: Iterable[CrossingEvent], intervals_s: Iterable[int], grace_s: float = 0.0, offset_ms: int = 0) -> dict[CountKey, int]:
    """The final records a finished stream of crossings gives: every crossing counted once, every interval closed.

    What the app publishes once every camera of an intersection has ended its stream; the
    offline count's report bins with it (``offset_ms``: the recording's UTC offset) and tests
    use it as the expected result.
    """
    store = WindowStore(tuple(intervals_s), grace_s, offset_ms=offset_ms)
    for crossing in crossings:
        store.add(crossing)
    store.close(store.open_keys())
    return store.counts(final_only=True)

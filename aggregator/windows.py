"""Tumbling count intervals aligned to the epoch, and the count series a crossing belongs to.

Intervals are aligned to the Unix epoch (UTC), so 15-minute intervals start at :00, :15, :30 and
:45 of every hour, whatever time the aggregator started::

    time (event capture) --->
    |    interval k (900 s)    |   interval k+1          |
    [start_k ........... end_k)[start_k+1 ....
                               ^ end_k = start_k + 900 000 ms (exclusive: an event at end_k is in k+1)
                               |<-- grace_s -->| the interval is final once the intersection's
                                               event-time watermark passes end_k + grace
                                               (or nothing arrived for idle_close_s of wall time)

A crossing at time t counts in exactly one interval of each configured length.
"""

from __future__ import annotations

import json
from dataclasses import astuple, dataclass
from typing import Literal

from traffic.wire import CountRecord, CrossingEvent


def interval_start_ms(time_ms: int, interval_s: int) -> int:
    """Start (epoch ms) of the ``interval_s`` interval that contains ``time_ms``."""
    assert interval_s > 0, "interval_s must be positive"
    size = interval_s * 1000
    return time_ms - time_ms % size


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

    def encode(self) -> str:
        """Stable text form (a JSON list), used as a table key."""
        return json.dumps(list(astuple(self)), separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> "CountKey":
        """Inverse of :meth:`encode`."""
        return cls(*json.loads(text))

    def record(self, count: int, final: bool) -> CountRecord:
        """The wire record of this series and interval."""
        return CountRecord(
            intersection=self.intersection,
            interval_s=self.interval_s,
            interval_start_ms=self.interval_start_ms,
            interval_end_ms=interval_end_ms(self.interval_start_ms, self.interval_s),
            series=self.series,
            approach=self.approach,
            movement=self.movement,
            direction=self.direction,
            vehicle_class=self.vehicle_class,
            count=count,
            final=final,
        )


def count_keys(crossing: CrossingEvent, intervals_s: list[int]) -> list[CountKey]:
    """The series (one per configured interval length) a crossing is counted in."""
    if crossing.kind == "movement":
        assert crossing.approach is not None and crossing.movement is not None
        series: Literal["movement", "line"] = "movement"
        approach, movement, direction = crossing.approach, crossing.movement, crossing.direction or ""
    else:
        assert crossing.line is not None and crossing.direction is not None
        series, approach, movement, direction = "line", crossing.line, crossing.direction, crossing.direction
    return [
        CountKey(crossing.intersection, s, interval_start_ms(crossing.time_ms, s), series, approach, movement, direction, crossing.vehicle_class)
        for s in intervals_s
    ]


def tally(crossings: list[CrossingEvent], intervals_s: list[int]) -> dict[CountKey, int]:
    """Count crossings per series and interval (de-duplicated by ``event_id``), as the app does."""
    seen: set[str] = set()
    counts: dict[CountKey, int] = {}
    for crossing in crossings:
        if crossing.event_id in seen:
            continue
        seen.add(crossing.event_id)
        for key in count_keys(crossing, intervals_s):
            counts[key] = counts.get(key, 0) + 1
    return counts

"""What the counter remembers about one track: bounded, whatever the track's length.

A track is seen as its ground point (bottom-centre of the box, normalized image coordinates) over
time. Movements are decided from where the track *started moving* and where it ended, so a car
queued at a red light, or parked and jittering by a pixel, does not count as motion::

      anchor (first point)                 motion starts: the point first leaves the
         o · · o · o  (jitter < eps)       anchor's circle of radius ``motion_eps``
                   \\
                    o---o----o----o----o   head: the first HEAD_POINTS points from there
                                     ...   tail: the last TAIL_POINTS points (a ring)

Memory per track: a few dozen floats (head, tail, class votes, one side state per line).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from aggregator.geometry import LineSideState, Point

HEAD_POINTS = 8
TAIL_POINTS = 8
ZONE_RUNS_KEPT = 3
TWO_WHEELERS = ("motorcycle", "bicycle")
RIDDEN_SHARE = 0.25
"""A person track with this share of two-wheeler votes is a ridden two-wheeler (see ``vehicle_class``)."""


@dataclass(slots=True)
class TimedPoint:
    """A ground point at a capture time."""

    time_ms: int
    x: float
    y: float

    @property
    def point(self) -> Point:
        """(x, y)."""
        return (self.x, self.y)


@dataclass(slots=True)
class TrackState:
    """One track's bounded memory.

    Attributes:
        first_ms: capture time of its first frame.
        last_seen_ms: capture time of its last frame.
        hits: frames it was seen in.
        votes: label -> summed detector confidence over the track's frames (class vote).
        lines: line id -> side state for the hysteresis.
        counted_lines: lines this track was counted on.
        anchor: where it stood still before it started moving (its first point until then).
        moving: it has left the anchor's circle.
        head: the first points after it started moving (the anchor first).
        tail: its last points.
        path_length: distance travelled since it started moving (normalized units).
        movement_done: its movement was decided (counted or not).
        pending_lines: crossings made while its class was not a counted one (a rider seen before
            its scooter): line id -> (direction label, capture time); counted once the class is.
        runs: the approach zones it passed through since it started moving, in order (a zone
            left and entered again is two runs); the first and last ZONE_RUNS_KEPT are kept.
        zone: the zone it is in now; anchor_zone: the zone where it stood before moving.
        size: height of its last box (normalized), the scale for distance gates.
    """

    first_ms: int
    last_seen_ms: int
    hits: int = 0
    votes: dict[str, float] = field(default_factory=dict)
    lines: dict[str, LineSideState] = field(default_factory=dict)
    counted_lines: set[str] = field(default_factory=set)
    anchor: TimedPoint | None = None
    moving: bool = False
    head: list[TimedPoint] = field(default_factory=list)
    tail: deque[TimedPoint] = field(default_factory=lambda: deque(maxlen=TAIL_POINTS))
    path_length: float = 0.0
    movement_done: bool = False
    size: float = 0.0
    pending_lines: dict[str, tuple[str, int]] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)
    zone: str | None = None
    anchor_zone: str | None = None

    def observe(
        self, time_ms: int, point: Point, label: str, confidence: float, size: float, motion_eps: float, zone: str | None = None
    ) -> None:
        """Add one frame's observation of the track (``zone``: the approach zone its ground point is in)."""
        self._visit(zone)
        self.last_seen_ms = time_ms
        self.hits += 1
        self.votes[label] = self.votes.get(label, 0.0) + confidence
        self.size = size
        here = TimedPoint(time_ms, point[0], point[1])
        if self.tail:
            last = self.tail[-1]
            step = math.hypot(here.x - last.x, here.y - last.y)
            if self.moving:
                self.path_length += step
        self.tail.append(here)
        if self.anchor is None:
            self.anchor = here
            self.anchor_zone = zone
            return
        if not self.moving:
            if math.hypot(here.x - self.anchor.x, here.y - self.anchor.y) >= motion_eps:
                self.moving = True
                self.head = [self.anchor, here]
                self.path_length = math.hypot(here.x - self.anchor.x, here.y - self.anchor.y)
                self.runs = [self.anchor_zone] if self.anchor_zone is not None else []
                self.zone = self.anchor_zone
                self._visit(zone)
            return
        if len(self.head) < HEAD_POINTS:
            self.head.append(here)

    def _visit(self, zone: str | None) -> None:
        """Record the zone runs (a run: consecutive frames in one zone) once it moves; bounded to the first and last few."""
        if not self.moving:
            return
        if zone is not None and zone != self.zone:
            self.runs.append(zone)
            if len(self.runs) > 2 * ZONE_RUNS_KEPT:
                del self.runs[ZONE_RUNS_KEPT]
        self.zone = zone

    @property
    def vehicle_class(self) -> str:
        """The label with the largest summed confidence (ties: the label seen first).

        A track seen partly as a ``person`` and partly as a two-wheeler is a ridden two-wheeler
        (the detector often finds the rider and misses the scooter under it): it takes the best
        two-wheeler label once two-wheelers hold at least ``RIDDEN_SHARE`` of its votes.
        """
        wheels = {label: score for label, score in self.votes.items() if label in TWO_WHEELERS}
        if wheels and "person" in self.votes and sum(wheels.values()) >= RIDDEN_SHARE * sum(self.votes.values()):
            best = max(wheels.values())
            return next(label for label, score in wheels.items() if score == best)
        best = max(self.votes.values())
        return next(label for label, score in self.votes.items() if score == best)

    @property
    def start(self) -> TimedPoint:
        """Where it started moving (its first point if it never moved)."""
        assert self.anchor is not None
        return self.head[0] if self.head else self.anchor

    @property
    def end(self) -> TimedPoint:
        """Its last point."""
        return self.tail[-1]

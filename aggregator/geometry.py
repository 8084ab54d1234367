"""Plane geometry of count lines and approach zones, in normalized image coordinates.

Coordinates are x right, y down, both in [0, 1] (see :mod:`traffic.site`). A tracked vehicle is
represented by the bottom-centre of its box (where the wheels touch the road), so a tall truck and a
low car crossing at the same place cross the line at the same time.

Line crossing with hysteresis::

                       in side (normal n = AB turned 90 degrees clockwise on screen)
                          ^ d > 0
        - - - - - - - - - | - - - - - - - -   d = +h   \
        A ======================> B                       > dead band: no side change inside it
        - - - - - - - - - - - - - - - - - -   d = -h   /
                            d < 0  out side

    ``d`` is the signed distance of the point from the infinite line AB. A point is on a side
    only once it is at least ``h`` (the hysteresis) away from the line; inside the dead band it
    keeps its previous side. A crossing is a change of confirmed side whose path (from the last
    point confirmed on the old side to the current point) cuts the line *within* the segment AB:
    a vehicle driving around the end of the line changes side without crossing it.

A car that stops on the line and rocks back and forth by less than ``h`` in stop-and-go traffic
never leaves the dead band and is not counted again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Point = tuple[float, float]


@dataclass(frozen=True, slots=True)
class LineGeometry:
    """A directed segment A -> B with its unit normal pointing to the ``in`` side.

    Attributes:
        a: first point (normalized).
        b: second point (normalized).
    """

    a: Point
    b: Point

    def __post_init__(self) -> None:
        if self.length < 1e-9:
            raise ValueError(f"zero-length line {self.a} -> {self.b}")

    @property
    def length(self) -> float:
        """Length of AB (normalized units)."""
        return math.hypot(self.b[0] - self.a[0], self.b[1] - self.a[1])

    def signed_distance(self, p: Point) -> float:
        """Distance of ``p`` from the infinite line AB: positive on the ``in`` side.

        The ``in`` normal is AB turned 90 degrees clockwise on screen (y down): ``(-dy, dx)``.
        """
        dx, dy = self.b[0] - self.a[0], self.b[1] - self.a[1]
        return ((p[0] - self.a[0]) * -dy + (p[1] - self.a[1]) * dx) / self.length

    def crossing_within_segment(self, p: Point, q: Point) -> bool:
        """True if the path p -> q meets the line at a point between A and B (ends included).

        ``p`` and ``q`` must lie on opposite sides (or on the line); the meeting point is found on
        the infinite line and projected onto AB.
        """
        dp, dq = self.signed_distance(p), self.signed_distance(q)
        if dp == dq:  # parallel path (both on the line): it touches the line; use p's projection
            s = 0.0
        else:
            s = dp / (dp - dq)
        x = p[0] + s * (q[0] - p[0])
        y = p[1] + s * (q[1] - p[1])
        dx, dy = self.b[0] - self.a[0], self.b[1] - self.a[1]
        t = ((x - self.a[0]) * dx + (y - self.a[1]) * dy) / (self.length**2)
        return -1e-9 <= t <= 1 + 1e-9


def side_of(distance: float, hysteresis: float) -> int:
    """+1 (in side), -1 (out side) or 0 (inside the dead band of half-width ``hysteresis``).

    With ``hysteresis == 0`` a point exactly on the line is in the dead band (0).
    """
    if distance > 0 and distance >= hysteresis:
        return 1
    if distance < 0 and -distance >= hysteresis:
        return -1
    return 0


@dataclass(slots=True)
class LineSideState:
    """What one track remembers about one line: its confirmed side and where it was confirmed.

    ``birth`` is the signed distance of the track's first point from the line when that point was
    near the segment (within the birth margin), else None: a track first seen on or just past a
    line, moving away from it, was crossing it when the detector first found it.
    """

    side: int = 0
    point: Point | None = None
    birth: float | None = None


def step_line(state: LineSideState, line: LineGeometry, p: Point, hysteresis: float) -> int:
    """Advance ``state`` with the new point ``p``; return +1 / -1 for a crossing to the in / out side, else 0.

    Why stateful: the crossing is decided from confirmed sides only (see the module docstring),
    so jitter inside the dead band never produces a crossing.
    """
    side = side_of(line.signed_distance(p), hysteresis)
    if side == 0:
        return 0
    previous, previous_point = state.side, state.point
    state.side, state.point = side, p
    if previous == 0 or previous == side or previous_point is None:
        return 0
    return side if line.crossing_within_segment(previous_point, p) else 0


def projection(line: LineGeometry, p: Point) -> float:
    """Where ``p`` projects onto AB: 0 at A, 1 at B (outside [0, 1] beyond the ends)."""
    dx, dy = line.b[0] - line.a[0], line.b[1] - line.a[1]
    return ((p[0] - line.a[0]) * dx + (p[1] - line.a[1]) * dy) / (line.length**2)


def point_in_polygon(p: Point, polygon: Sequence[Point]) -> bool:
    """True if ``p`` is inside ``polygon`` or on its boundary (even-odd rule, exact for points on edges).

    A small exact function instead of shapely: it is called for every track and zone of every frame
    and must pickle with the counter's state.
    """
    x, y = p
    n = len(polygon)
    inside = False
    for i in range(n):
        x1, y1 = polygon[i]
        x2, y2 = polygon[(i + 1) % n]
        # on the edge: collinear and within the edge's bounding box
        cross = (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1)
        if abs(cross) <= 1e-12 and min(x1, x2) - 1e-12 <= x <= max(x1, x2) + 1e-12 and min(y1, y2) - 1e-12 <= y <= max(y1, y2) + 1e-12:
            return True
        if (y1 > y) != (y2 > y):
            x_at = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
            if x < x_at:
                inside = not inside
    return inside


def bottom_centre(box: tuple[float, float, float, float]) -> Point:
    """The ground point of a normalized xyxy box: middle of its bottom edge."""
    return ((box[0] + box[2]) / 2.0, box[3])

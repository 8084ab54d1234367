"""Which movement a finished track made: its entry and exit approach, from its whole trajectory.

Each approach zone is where one leg's traffic enters and leaves the picture. A track's entry is
the zone where it started moving, its exit the zone where it was last seen. Tracks do not always
start or end inside a zone (first seen behind another vehicle just outside it, lost under an
occlusion before reaching it), so a missing end is found along the direction of travel::

        entry zone                                   exit zone
       +---------+                                  +---------+
       |    <- - - - - o====o====o====o====o- - - ->  |        |
       +---------+  back along the first heading     along the last heading
                    (at most ``reach`` away)          (at most ``reach`` away)

A track that hardly moved (``min_travel``) makes no movement: parked cars and queues that never
leave do not become u-turns. A u-turn (entry = exit) also needs the track to have gone at least
``uturn_depth`` away from where it started.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from aggregator.geometry import Point, point_in_polygon
from aggregator.trajectory import TimedPoint, TrackState

Zone = tuple[str, list[Point]]


@dataclass(frozen=True)
class MovementRules:
    """Thresholds of the decision, normalized image units (the site file's ``counting`` section)."""

    min_travel: float = 0.08
    uturn_depth: float = 0.2
    reach: float = 0.12


def zone_of(point: Point, zones: Sequence[Zone]) -> str | None:
    """The first zone containing ``point`` (zones should not overlap), else None."""
    return next((zone_id for zone_id, polygon in zones if point_in_polygon(point, polygon)), None)


def ray_hit(origin: Point, direction: Point, zones: Sequence[Zone], reach: float) -> str | None:
    """The zone first met going from ``origin`` along ``direction`` within ``reach``, else None."""
    dx, dy = direction
    norm = math.hypot(dx, dy)
    if norm < 1e-9:
        return None
    dx, dy = dx / norm, dy / norm
    best: tuple[float, str] | None = None
    for zone_id, polygon in zones:
        for i in range(len(polygon)):
            t = _ray_segment(origin, (dx, dy), polygon[i], polygon[(i + 1) % len(polygon)])
            if t is not None and t <= reach and (best is None or t < best[0]):
                best = (t, zone_id)
    return best[1] if best else None


def _ray_segment(o: Point, d: Point, a: Point, b: Point) -> float | None:
    """Distance along the unit ray o + t d (t >= 0) to segment ab, or None."""
    ex, ey = b[0] - a[0], b[1] - a[1]
    denom = d[0] * ey - d[1] * ex
    if abs(denom) < 1e-12:
        return None
    wx, wy = a[0] - o[0], a[1] - o[1]
    t = (wx * ey - wy * ex) / denom
    s = (wx * d[1] - wy * d[0]) / denom
    if t >= 0 and -1e-9 <= s <= 1 + 1e-9:
        return t
    return None


def _heading(points: Sequence[TimedPoint], min_step: float) -> Point:
    """Direction from the first point to the first later point at least ``min_step`` away (else the last)."""
    first = points[0]
    for p in points[1:]:
        if math.hypot(p.x - first.x, p.y - first.y) >= min_step:
            return (p.x - first.x, p.y - first.y)
    last = points[-1]
    return (last.x - first.x, last.y - first.y)


def decide(state: TrackState, zones: Sequence[Zone], rules: MovementRules) -> tuple[str, str] | None:
    """(entry, exit) of a finished track, or None when it made no countable movement."""
    if not state.moving or not state.head:
        return None
    start, end = state.start, state.end
    if math.hypot(end.x - start.x, end.y - start.y) < rules.min_travel and state.path_length < 2 * rules.uturn_depth:
        return None
    step = rules.min_travel / 2
    entry = zone_of(start.point, zones)
    if entry is None:
        hx, hy = _heading(state.head, step)
        entry = ray_hit(start.point, (-hx, -hy), zones, rules.reach)
    tail = list(state.tail)
    exit_ = zone_of(end.point, zones)
    if exit_ is None:
        hx, hy = _heading(tail[::-1], step)  # from the end backwards: the reverse of the last heading
        exit_ = ray_hit(end.point, (-hx, -hy), zones, rules.reach)
    if entry is None or exit_ is None:
        return None
    if entry == exit_ and state.path_length < 2 * rules.uturn_depth:
        return None  # in and out of the same zone without going anywhere: not a u-turn
    return entry, exit_

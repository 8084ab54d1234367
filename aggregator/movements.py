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

Where the heading at an end points to no zone (a box growing out of an occlusion bends the first
heading), the direction of the whole way, start to end, stands in for it.

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
    reach: float = 0.45


def zone_of(point: Point, zones: Sequence[Zone]) -> str | None:
    """The first zone containing ``point`` (zones should not overlap), else None."""
    return next((zone_id for zone_id, polygon in zones if point_in_polygon(point, polygon)), None)


def zone_ahead(origin: Point, direction: Point, zones: Sequence[Zone], reach: float, max_angle_deg: float = 35.0) -> str | None:
    """The zone that lies most nearly along ``direction`` from ``origin`` (within ``reach`` and ``max_angle_deg``).

    A cone rather than a ray: vehicles turn, and a heading measured over a few frames points a
    little off; of the zones within reach, the one whose nearest point is at the smallest angle
    from the heading is where the vehicle came from (or goes to).
    """
    dx, dy = direction
    norm = math.hypot(dx, dy)
    if norm < 1e-9:
        return None
    dx, dy = dx / norm, dy / norm
    best: tuple[float, float, str] | None = None
    for zone_id, polygon in zones:
        px, py = _nearest_on_polygon(origin, polygon)
        vx, vy = px - origin[0], py - origin[1]
        distance = math.hypot(vx, vy)
        if distance > reach or distance < 1e-9:
            continue
        angle = math.degrees(math.acos(max(-1.0, min(1.0, (vx * dx + vy * dy) / distance))))
        if angle <= max_angle_deg and (best is None or (angle, distance) < (best[0], best[1])):
            best = (angle, distance, zone_id)
    return best[2] if best else None


def _nearest_on_polygon(p: Point, polygon: Sequence[Point]) -> Point:
    best: tuple[float, Point] | None = None
    for i in range(len(polygon)):
        a, b = polygon[i], polygon[(i + 1) % len(polygon)]
        ex, ey = b[0] - a[0], b[1] - a[1]
        length2 = ex * ex + ey * ey
        t = 0.0 if length2 < 1e-18 else max(0.0, min(1.0, ((p[0] - a[0]) * ex + (p[1] - a[1]) * ey) / length2))
        q = (a[0] + t * ex, a[1] + t * ey)
        d = math.hypot(p[0] - q[0], p[1] - q[1])
        if best is None or d < best[0]:
            best = (d, q)
    assert best is not None
    return best[1]


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
    """(entry, exit) of a finished track, or None when it made no countable movement.

    Each end is decided by the best evidence there is: the zone it started (ended) in; else the
    zone it came from (goes to) along its heading, within ``reach``; else the first (last) zone it
    passed through, when that is not the zone at its other end.
    """
    if not state.moving or not state.head:
        return None
    start, end = state.start, state.end
    if math.hypot(end.x - start.x, end.y - start.y) < rules.min_travel and state.path_length < 2 * rules.uturn_depth:
        return None
    runs = state.runs
    entry = zone_of(start.point, zones) or _behind(state, zones, rules)
    exit_ = zone_of(end.point, zones) or _ahead(state, zones, rules)
    if entry is None and runs and runs[0] != exit_:
        entry = runs[0]
    if exit_ is None and runs and runs[-1] != entry:
        exit_ = runs[-1]
    if entry is None or exit_ is None:
        return None
    if entry == exit_ and (len(runs) < 2 or state.path_length < 2 * rules.uturn_depth):
        return None  # in and out of the same zone without going anywhere: not a u-turn
    return entry, exit_


def _behind(state: TrackState, zones: Sequence[Zone], rules: MovementRules) -> str | None:
    """The zone it came from: back along its first heading from where it started moving."""
    hx, hy = _heading(state.head, rules.min_travel / 2)
    found = zone_ahead(state.start.point, (-hx, -hy), zones, rules.reach)
    if found is None:  # first heading bent by a box growing out of an occlusion: the whole way's direction
        found = zone_ahead(state.start.point, (state.start.x - state.end.x, state.start.y - state.end.y), zones, rules.reach)
    return found


def _ahead(state: TrackState, zones: Sequence[Zone], rules: MovementRules) -> str | None:
    """The zone it was heading to: on along its last heading from where it was last seen.

    A track that stood still at its end (queued, or lost while waiting) has no last heading of
    its own, and a last heading can point to no zone: the direction from where it started moving
    to where it ended stands in for it.
    """
    tail = list(state.tail)
    step = rules.min_travel / 2
    if math.hypot(tail[-1].x - tail[0].x, tail[-1].y - tail[0].y) >= step:
        hx, hy = _heading(tail[::-1], step)  # from the end backwards: the reverse of the last heading
        found = zone_ahead(state.end.point, (-hx, -hy), zones, rules.reach)
        if found is not None:
            return found
    return zone_ahead(state.end.point, (state.end.x - state.start.x, state.end.y - state.start.y), zones, rules.reach)

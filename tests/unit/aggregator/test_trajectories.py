"""What the tracker is fed (duplicates, riders), how a track's motion is remembered, and which movement it made."""

from __future__ import annotations

import numpy as np
import pytest

from aggregator.detection_cleanup import drop_riders, merge_duplicates
from aggregator.movements import MovementRules, decide, ray_hit, zone_of
from aggregator.trajectory import HEAD_POINTS, TAIL_POINTS, TrackState
from traffic.detections import Detections, box_ioa, box_iou
from traffic.wire import Detection


def dets(*rows: tuple[str, float, tuple[float, float, float, float]]) -> Detections:
    return Detections.from_arrays([r[2] for r in rows], [r[1] for r in rows], [0] * len(rows), [r[0] for r in rows])


@pytest.mark.parametrize(
    ("rows", "kept"),
    [
        ([("car", 0.8, (0, 0, 10, 10)), ("truck", 0.6, (0, 0, 10, 11))], ["car"]),  # one van as car and truck: the better one stays
        ([("car", 0.5, (0, 0, 10, 10)), ("truck", 0.7, (1, 0, 11, 10))], ["truck"]),  # IoU 0.82 > 0.7
        ([("car", 0.8, (0, 0, 10, 10)), ("car", 0.6, (6, 0, 16, 10))], ["car", "car"]),  # side by side (IoU 0.25): two vehicles
        ([("car", 0.8, (0, 0, 10, 10))], ["car"]),  # alone
        ([], []),  # nothing
    ],
)
def test_merge_duplicates(rows: list, kept: list[str]) -> None:
    assert list(merge_duplicates(dets(*rows), iou=0.7).class_name) == kept


@pytest.mark.parametrize(
    ("rows", "kept"),
    [
        # rider standing on the scooter: lower half of the person inside the scooter's box, centred over it
        ([("person", 0.8, (10, 0, 20, 30)), ("motorcycle", 0.7, (5, 15, 25, 40))], ["motorcycle"]),
        # a pedestrian beside a parked scooter: not on it
        ([("person", 0.8, (30, 0, 40, 30)), ("motorcycle", 0.7, (5, 15, 25, 40))], ["person", "motorcycle"]),
        # a pedestrian behind a bicycle, taller, standing far above it: only a sliver of the lower half overlaps
        ([("person", 0.8, (10, 0, 20, 60)), ("bicycle", 0.7, (5, 50, 25, 70))], ["person", "bicycle"]),
        # persons next to a car are never riders
        ([("person", 0.8, (10, 0, 20, 30)), ("car", 0.7, (5, 15, 25, 40))], ["person", "car"]),
    ],
)
def test_drop_riders(rows: list, kept: list[str]) -> None:
    assert list(drop_riders(dets(*rows)).class_name) == kept


def test_box_overlaps() -> None:
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], float)
    assert box_iou(a, b).round(3).tolist() == [[0.333, 0.0, 1.0]]
    assert box_ioa(a, b).round(3).tolist() == [[0.5, 0.0, 1.0]]
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)


def test_detections_round_trip_through_the_wire() -> None:
    wire = (Detection(class_id=2, label="car", confidence=0.9, box=(0.1, 0.2, 0.3, 0.4)),)
    d = Detections.from_wire(wire, 640, 480)
    assert d.xyxy.tolist() == [[64.0, 96.0, 192.0, 192.0]]
    assert d.to_wire(640, 480) == wire
    assert d.bottom_centres().tolist() == [[128.0, 192.0]]
    assert len(d[np.array([False])]) == 0


def track(points: list[tuple[float, float]], eps: float = 0.02) -> TrackState:
    state = TrackState(first_ms=0, last_seen_ms=0)
    for i, p in enumerate(points):
        state.observe(i * 100, p, "car", 0.9, 0.1, eps, zone_of(p, ZONES))
    return state


def line_of(a: tuple[float, float], b: tuple[float, float], n: int = 20) -> list[tuple[float, float]]:
    return [(a[0] + (b[0] - a[0]) * i / n, a[1] + (b[1] - a[1]) * i / n) for i in range(n + 1)]


# two zones: "north" across the top, "south" across the bottom; "east" at the right edge
ZONES = [
    ("north", [(0.0, 0.0), (1.0, 0.0), (1.0, 0.2), (0.0, 0.2)]),
    ("south", [(0.0, 0.8), (1.0, 0.8), (1.0, 1.0), (0.0, 1.0)]),
    ("east", [(0.85, 0.3), (1.0, 0.3), (1.0, 0.7), (0.85, 0.7)]),
]
RULES = MovementRules(min_travel=0.08, uturn_depth=0.2, reach=0.12)


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        (line_of((0.5, 0.1), (0.5, 0.9)), ("north", "south")),  # zone to zone
        (line_of((0.5, 0.28), (0.5, 0.9)), ("north", "south")),  # first seen 0.08 past the north zone: back along its heading
        (line_of((0.5, 0.4), (0.5, 0.9)), None),  # first seen 0.2 past it: farther than reach, entry unknown
        # first seen 0.08 past the north zone, its box growing sideways out of an occlusion: the first heading points
        # nowhere (east), the whole way's direction back to the north zone
        (line_of((0.5, 0.28), (0.56, 0.29), n=6) + line_of((0.56, 0.29), (0.56, 0.9))[1:], ("north", "south")),
        (line_of((0.5, 0.1), (0.5, 0.5)) + line_of((0.5, 0.5), (0.92, 0.5))[1:], ("north", "east")),  # a turn
        ([(0.5, 0.1)] * 10 + [(0.51, 0.11), (0.5, 0.1)] * 5, None),  # parked in a zone, jittering: no motion
        (line_of((0.5, 0.1), (0.5, 0.16)), None),  # moved, but less than min_travel
        (line_of((0.3, 0.1), (0.3, 0.45)) + line_of((0.3, 0.45), (0.4, 0.1))[1:], ("north", "north")),  # a real u-turn
        (line_of((0.3, 0.15), (0.3, 0.27)) + line_of((0.3, 0.27), (0.35, 0.1))[1:], None),  # a short loop out of the zone: not a u-turn
        ([(0.5, 0.1)] * 30 + line_of((0.5, 0.1), (0.5, 0.9)), ("north", "south")),  # queued at a red light, then through
        (line_of((0.5, 0.02), (0.5, 0.1)) + line_of((0.5, 0.1), (0.5, 0.6))[1:], None),  # from far up the north road, lost mid-way: exit unknown
        (line_of((0.5, 0.5), (0.5, 0.98)), None),  # first seen mid-way, into the south zone: 0.3 from the north zone, entry unknown
        (line_of((0.92, 0.5), (0.5, 0.5)) + line_of((0.5, 0.5), (0.5, 0.02))[1:], ("east", "north")),  # on past its exit zone, up the road
        (line_of((0.5, 0.33), (0.5, 0.1)), None),  # a short way into the north zone from the middle: one zone, no second end
    ],
)
def test_decide(points: list[tuple[float, float]], expected: tuple[str, str] | None) -> None:
    assert decide(track(points), ZONES, RULES) == expected


def test_track_memory_is_bounded() -> None:
    state = track(line_of((0.1, 0.1), (0.9, 0.9), n=5000))
    assert len(state.head) == HEAD_POINTS and len(state.tail) == TAIL_POINTS
    assert state.path_length == pytest.approx(0.8 * 2**0.5, rel=1e-6)


def test_class_vote_weighs_confidence() -> None:
    state = TrackState(first_ms=0, last_seen_ms=0)
    for label, conf in [("truck", 0.3), ("truck", 0.3), ("bus", 0.9)]:
        state.observe(0, (0.5, 0.5), label, conf, 0.1, 0.02)
    assert state.vehicle_class == "bus"  # 0.9 > 0.6 although seen once


def test_ray_hit() -> None:
    assert ray_hit((0.5, 0.5), (0.0, -1.0), ZONES, reach=0.4) == "north"
    assert ray_hit((0.5, 0.5), (0.0, -1.0), ZONES, reach=0.2) is None
    assert ray_hit((0.5, 0.5), (1.0, 0.0), ZONES, reach=0.5) == "east"
    assert ray_hit((0.5, 0.5), (0.0, 0.0), ZONES, reach=1.0) is None  # no direction

"""Line side, crossing with hysteresis, point in polygon: the pure geometry of the counter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.geometry import LineGeometry, LineSideState, bottom_centre, point_in_polygon, side_of, step_line

HORIZONTAL = LineGeometry((0.2, 0.5), (0.8, 0.5))  # A -> B points right: "in" is downwards
VERTICAL_DOWN = LineGeometry((0.5, 0.2), (0.5, 0.8))  # A -> B points down: "in" is leftwards


@pytest.mark.parametrize(
    ("line", "point", "expected_sign"),
    [
        (HORIZONTAL, (0.5, 0.6), 1),  # below a rightward line: in side (normal = AB turned clockwise on screen)
        (HORIZONTAL, (0.5, 0.4), -1),  # above it: out side
        (VERTICAL_DOWN, (0.4, 0.5), 1),  # left of a downward line: in side (the demo's west-leg line)
        (VERTICAL_DOWN, (0.6, 0.5), -1),  # right of it: out side
        (HORIZONTAL, (0.95, 0.6), 1),  # beyond the segment's end: the side of the infinite line still applies
        (HORIZONTAL, (0.5, 0.5), 0),  # exactly on the line
    ],
)
def test_signed_distance_sign(line: LineGeometry, point: tuple[float, float], expected_sign: int) -> None:
    d = line.signed_distance(point)
    assert (d > 0) - (d < 0) == expected_sign


def test_signed_distance_is_euclidean() -> None:
    # a diagonal line: the distance does not depend on the line's length or angle
    line = LineGeometry((0.0, 0.0), (0.3, 0.4))
    assert abs(abs(line.signed_distance((0.4, 0.0))) - 0.32) < 1e-12


@pytest.mark.parametrize(
    ("distance", "hysteresis", "side"),
    [
        (0.02, 0.01, 1),  # clearly on the in side
        (-0.02, 0.01, -1),  # clearly on the out side
        (0.005, 0.01, 0),  # inside the dead band
        (0.01, 0.01, 1),  # exactly at the band's edge counts as past it
        (0.0, 0.0, 0),  # on the line with no hysteresis: no side
        (1e-9, 0.0, 1),  # a hair off the line with no hysteresis
    ],
)
def test_side_of(distance: float, hysteresis: float, side: int) -> None:
    assert side_of(distance, hysteresis) == side


def run_path(line: LineGeometry, points: list[tuple[float, float]], hysteresis: float = 0.01) -> list[int]:
    state = LineSideState()
    return [c for c in (step_line(state, line, p, hysteresis) for p in points) if c]


@pytest.mark.parametrize(
    ("points", "crossings"),
    [
        ([(0.5, 0.3), (0.5, 0.45), (0.5, 0.55), (0.5, 0.7)], [1]),  # straight down through the middle: one "in"
        ([(0.5, 0.7), (0.5, 0.3)], [-1]),  # straight up in one jump: one "out"
        ([(0.5, 0.3), (0.5, 0.7), (0.5, 0.3), (0.5, 0.7)], [1, -1, 1]),  # back and forth: every side change
        ([(0.9, 0.3), (0.9, 0.7)], []),  # passes beside the segment's end: not a crossing
        ([(0.1, 0.4), (0.9, 0.6)], [1]),  # diagonal path cutting the segment in the middle
        ([(0.05, 0.3), (0.3, 0.7)], []),  # diagonal path meeting the infinite line left of A
        ([(0.2, 0.3), (0.2, 0.7)], [1]),  # through the end point A exactly: inside the extent
        # stop-and-go on the line: creeping into the dead band and stopping there, rocking by less than the
        # hysteresis, then driving on: one crossing, not one per stop
        ([(0.5, 0.4), (0.5, 0.495), (0.5, 0.505), (0.5, 0.497), (0.5, 0.508), (0.5, 0.499), (0.5, 0.6)], [1]),
        ([(0.5, 0.5), (0.5, 0.505), (0.5, 0.7)], []),  # first seen on the line: no confirmed side before, no crossing
    ],
)
def test_step_line(points: list[tuple[float, float]], crossings: list[int]) -> None:
    assert run_path(HORIZONTAL, points) == crossings


def test_without_hysteresis_jitter_on_the_line_crosses_every_time() -> None:
    # why the hysteresis exists: the same stop-and-go jitter with h = 0 changes side at every frame
    jitter = [(0.5, 0.4), (0.5, 0.495), (0.5, 0.505), (0.5, 0.497), (0.5, 0.508), (0.5, 0.499), (0.5, 0.6)]
    assert len(run_path(HORIZONTAL, jitter, hysteresis=0.0)) == 5


def test_zero_length_line_is_refused() -> None:
    with pytest.raises(ValueError, match="zero-length"):
        LineGeometry((0.3, 0.3), (0.3, 0.3))


SQUARE = [(0.2, 0.2), (0.6, 0.2), (0.6, 0.6), (0.2, 0.6)]
CONCAVE = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.5, 0.3), (0.0, 1.0)]  # an arrowhead pointing down


@pytest.mark.parametrize(
    ("point", "polygon", "inside"),
    [
        ((0.4, 0.4), SQUARE, True),  # centre
        ((0.7, 0.4), SQUARE, False),  # right of it
        ((0.2, 0.4), SQUARE, True),  # on the left edge: boundary counts as inside
        ((0.6, 0.6), SQUARE, True),  # on a corner
        ((0.4, 0.6), SQUARE, True),  # on the bottom edge
        ((0.5, 0.5), CONCAVE, False),  # in the notch of a concave polygon
        ((0.9, 0.5), CONCAVE, True),  # in its right arm
        ((0.5, 0.1), CONCAVE, True),  # above the notch
    ],
)
def test_point_in_polygon(point: tuple[float, float], polygon: list[tuple[float, float]], inside: bool) -> None:
    assert point_in_polygon(point, polygon) is inside


@given(st.floats(0, 1), st.floats(0, 1))
def test_point_in_polygon_agrees_with_shapely(x: float, y: float) -> None:
    from shapely.geometry import Point, Polygon

    polygon, point = Polygon(CONCAVE), Point(x, y)
    if polygon.exterior.distance(point) < 1e-9:  # our boundary test has a 1e-12 tolerance: skip the rounding zone
        return
    assert point_in_polygon((x, y), CONCAVE) == polygon.covers(point)


def test_bottom_centre() -> None:
    assert bottom_centre((0.2, 0.1, 0.4, 0.5)) == pytest.approx((0.3, 0.5))

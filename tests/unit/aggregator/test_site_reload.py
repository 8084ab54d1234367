"""Hot reload in the counting core: a counter reconfigured with new lines keeps its tracks and
never counts a vehicle for where a line used to be; checkpoints carry the geometry."""

from __future__ import annotations

import copy

from aggregator import checkpoint
from aggregator.counting import CameraCounter
from aggregator.sessions import SessionGate
from tests.synthetic import CAMERA, INTERSECTION, SITE
from traffic.site import parse_site
from traffic.wire import Detection, DetectionEvent


def _site(north_y: float | None = None):
    data = copy.deepcopy(SITE)
    if north_y is not None:
        lines = data["intersections"][0]["cameras"][0]["lines"]
        lines[0]["points"] = [[0.3, north_y], [0.7, north_y]]
    return parse_site(data, "<test>")


def _still_car(n: int, start: int = 0) -> list[DetectionEvent]:
    """A car standing at (0.5, 0.5) (bottom centre), one event per frame at 10 fps."""
    return [
        DetectionEvent(camera=CAMERA, intersection=INTERSECTION, session="s1", seq=f, capture_ms=1_767_225_645_000 + f * 100, model="m",
                       width=640, height=480, detections=(Detection(class_id=2, label="car", confidence=0.9, box=(0.45, 0.42, 0.55, 0.5)),))
        for f in range(start, start + n)
    ]  # fmt: skip


def test_a_line_moved_past_a_still_car_does_not_count_it_and_its_track_goes_on() -> None:
    counter = CameraCounter(_site(), CAMERA)
    assert not [c for e in _still_car(20) for c in counter.update(e)]
    tracks = counter.active_tracks
    assert tracks == 1
    moved = counter.reconfigured(_site(north_y=0.65))  # the car is now on the other side of north-stop
    assert moved.active_tracks == tracks and moved.next_seq == counter.next_seq and moved.session == counter.session
    later = [c for e in _still_car(20, start=20) for c in moved.update(e)]
    assert not [c for c in later if c.kind == "line"], later
    # What re-arming prevents: the same state without it counts the car that never moved.
    stale = CameraCounter.restore(_site(north_y=0.65), CAMERA, counter.snapshot())
    assert [c.line for e in _still_car(20, start=20) for c in stale.update(e) if c.kind == "line"] == ["north-stop"]


def test_a_checkpoint_carries_the_geometry_and_one_without_it_reads_as_unknown() -> None:
    site = _site()
    _, camera = site.camera(CAMERA)
    geometry = checkpoint.camera_geometry(camera)
    assert "north-stop" in geometry and "synthetic.mp4" not in geometry  # never the source (it may hold a password)
    assert checkpoint.camera_geometry(_site(north_y=0.65).camera(CAMERA)[1]) != geometry
    counter = CameraCounter(site, CAMERA)
    record = checkpoint.read(CAMERA, checkpoint.encode(CAMERA, counter.snapshot(), SessionGate(), geometry))
    assert record.geometry == geometry
    assert checkpoint.read(CAMERA, checkpoint.encode(CAMERA, counter.snapshot(), SessionGate())).geometry == ""

"""CameraCounter: line crossings, movements, classes, timeouts, de-duplication and reordering."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aggregator.counting import CameraCounter
from tests.synthetic import CAMERA, synthetic_site, synthetic_stream
from traffic.errors import ConfigError, ContractError
from traffic.site import Site, parse_site
from traffic.wire import CrossingEvent, Detection, DetectionEvent

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
BOX_W, BOX_H = 0.1, 0.08


def small_site(count: str = "both", hysteresis: float = 0.01, timeout_s: float = 1.0, reach: float = 0.12) -> Site:
    """A horizontal line at y=0.5 (in = downwards) and two zones: top (north) and bottom (south).

    ``reach`` 0.12 (the default is longer): the cases below place tracks 0.05 and 0.15 from a zone.
    """
    return parse_site(
        {
            "intersections": [{"id": "x1", "cameras": [{
                "id": "cam", "source": "x.mp4", "fps": 10,
                "lines": [{"id": "mid", "points": [[0.1, 0.5], [0.9, 0.5]], "in_label": "southbound", "out_label": "northbound", "count": count}],
                "approaches": [
                    {"id": "north", "compass": "north", "polygon": [[0, 0], [1, 0], [1, 0.25], [0, 0.25]]},
                    {"id": "south", "compass": "south", "polygon": [[0, 0.75], [1, 0.75], [1, 1], [0, 1]]},
                ],
            }]}],
            "counting": {"classes": ["car", "truck"], "track_timeout_s": timeout_s, "line_hysteresis": hysteresis, "reach": reach},
        }
    )  # fmt: skip


def events_for(paths: list[list[tuple[float, float] | None]], labels: list[list[str]] | None = None, session: str = "s", camera: str = "cam") -> list[DetectionEvent]:
    """One event per frame; paths[i][f] is the bottom-centre of vehicle i in frame f (None = not seen)."""
    n = max(len(p) for p in paths)
    out = []
    for f in range(n):
        dets = []
        for i, path in enumerate(paths):
            if f < len(path) and path[f] is not None:
                x, y = path[f]  # type: ignore[misc]
                label = labels[i][f] if labels else "car"
                dets.append(Detection(class_id=2, label=label, confidence=0.9, box=(max(0, x - BOX_W / 2), max(0, y - BOX_H), min(1, x + BOX_W / 2), y)))
        out.append(DetectionEvent(camera=camera, intersection="x1", session=session, seq=f, capture_ms=T0 + f * 100, model="m", width=640, height=480, detections=tuple(dets)))
    return out


def straight(y0: float, y1: float, x: float = 0.5, step: float = 0.02) -> list[tuple[float, float] | None]:
    n = max(1, round(abs(y1 - y0) / step))
    return [(x, y0 + (y1 - y0) * i / n) for i in range(n + 1)]


def run(counter: CameraCounter, events: list[DetectionEvent]) -> list[CrossingEvent]:
    out: list[CrossingEvent] = []
    for e in events:
        out += counter.update(e)
    return out + counter.finish()


def summary(crossings: list[CrossingEvent]) -> list[tuple[str, str]]:
    return sorted((c.kind, c.direction if c.kind == "line" else f"{c.approach}>{c.exit}:{c.movement}") for c in crossings)  # type: ignore[operator]


STOP_AND_GO = straight(0.1, 0.49) + [(0.5, 0.5 + d) for d in (0.004, -0.006, 0.008, -0.003, 0.0, 0.006, -0.007, 0.002) * 4] + straight(0.51, 0.9)


@pytest.mark.parametrize(
    ("count", "path", "expected"),
    [
        ("both", straight(0.1, 0.9), [("line", "southbound"), ("movement", "north>south:through")]),  # top to bottom: in + through
        ("both", straight(0.9, 0.1), [("line", "northbound"), ("movement", "south>north:through")]),  # bottom to top: out
        ("in", straight(0.9, 0.1), [("movement", "south>north:through")]),  # line counts only "in": the out crossing is ignored
        ("out", straight(0.1, 0.9), [("movement", "north>south:through")]),  # line counts only "out"
        ("both", STOP_AND_GO, [("line", "southbound"), ("movement", "north>south:through")]),  # stop-and-go on the line: once
        ("both", straight(0.1, 0.6) + straight(0.6, 0.4)[1:] + straight(0.4, 0.6)[1:], [("line", "southbound")]),  # back and forth: once per track and line; ends farther than `reach` from any zone
        ("both", straight(0.1, 0.4) + straight(0.4, 0.1)[1:], [("movement", "north>north:u-turn")]),  # leaves its zone and comes back: u-turn
        ("both", straight(0.1, 0.2, step=0.005), []),  # stays in its entry zone: no movement, no line
        ("both", straight(0.3, 0.7), [("line", "southbound"), ("movement", "north>south:through")]),  # first seen just past the north zone, lost just before the south zone: extended along its heading (within `reach`)
        ("both", straight(0.4, 0.6), [("line", "southbound")]),  # seen only in the middle, farther than `reach` from both zones: line only
        ("both", straight(0.5, 0.9), [("line", "southbound")]),  # first seen on the line, moving away: it was crossing (line_birth_margin)
        ("both", straight(0.62, 0.9), []),  # first seen 0.12 past the line (beyond the 0.1 birth margin): not counted
    ],
)
def test_single_vehicle(count: str, path: list[tuple[float, float] | None], expected: list[tuple[str, str]]) -> None:
    counter = CameraCounter(small_site(count=count), "cam")
    assert summary(run(counter, events_for([path]))) == sorted(expected)
    assert counter.active_tracks == 0


def test_movement_is_decided_when_the_track_ends_and_carries_its_last_capture_time() -> None:
    # drives through the north and south zones; decided only once the track is over (its whole path is known)
    site = small_site()
    counter = CameraCounter(site, "cam")
    events = events_for([straight(0.1, 0.9)])
    crossings = [c for e in events for c in counter.update(e)]
    movements = [c for c in crossings if c.kind == "movement"]
    assert movements == []  # still seen at the last frame: not decided yet
    later = DetectionEvent(camera="cam", intersection="x1", session="s", seq=len(events), capture_ms=events[-1].capture_ms + 1500, model="m", width=640, height=480)
    decided = counter.update(later)  # 1.5 s of capture time later > track_timeout_s = 1: the track ended
    assert [(c.kind, c.movement, c.time_ms) for c in decided] == [("movement", "through", events[-1].capture_ms)]
    assert decided[0].event_id == "cam:s:1:north>south"


def test_class_is_the_most_frequent_label_and_uncounted_classes_are_ignored() -> None:
    path = straight(0.1, 0.9)
    labels = [["truck" if i % 3 else "car" for i in range(len(path))]]  # 2/3 truck
    counter = CameraCounter(small_site(), "cam")
    crossings = run(counter, events_for([path], labels))
    assert {c.vehicle_class for c in crossings} == {"truck"}
    person = run(CameraCounter(small_site(), "cam"), events_for([path], [["person"] * len(path)]))
    assert person == []  # persons are not in counting.classes


def test_two_vehicles_side_by_side_are_counted_separately() -> None:
    crossings = run(CameraCounter(small_site(), "cam"), events_for([straight(0.1, 0.9, x=0.3), straight(0.9, 0.1, x=0.7)]))
    assert summary(crossings) == sorted(
        [("line", "southbound"), ("line", "northbound"), ("movement", "north>south:through"), ("movement", "south>north:through")]
    )
    assert len({c.track_id for c in crossings}) == 2


def test_tracks_not_seen_for_the_timeout_are_forgotten() -> None:
    counter = CameraCounter(small_site(timeout_s=1.0), "cam")
    events = events_for([straight(0.1, 0.3, step=0.01)])
    for e in events:
        counter.update(e)
    assert counter.active_tracks == 1
    empty = [DetectionEvent(camera="cam", intersection="x1", session="s", seq=len(events) + i, capture_ms=events[-1].capture_ms + 100 * (i + 1), model="m", width=640, height=480) for i in range(12)]
    for e in empty:
        counter.update(e)
    assert counter.active_tracks == 0


def test_unknown_camera_and_wrong_camera() -> None:
    with pytest.raises(ConfigError, match="nope"):
        CameraCounter(small_site(), "nope")
    counter = CameraCounter(small_site(), "cam")
    with pytest.raises(ContractError) as info:
        counter.update(events_for([straight(0.1, 0.2)], camera="other")[0])
    assert info.value.reason == "wrong_camera"


# -- ordering and de-duplication -----------------------------------------------------------------


def processed_seqs(order: list[int], limit: int = 3) -> tuple[list[int], int]:
    """Feed seqs in `order` to a counter; return the seqs it processed (in order) and its duplicates."""
    counter = CameraCounter(small_site(), "cam", reorder_limit=limit)
    seen: list[int] = []
    events = {e.seq: e for e in events_for([[None] * 20])}
    for seq in order:
        counter.update(events[seq], observer=lambda event, tracked, crossings: seen.append(event.seq))
    return seen, counter.duplicates


@pytest.mark.parametrize(
    ("order", "processed", "duplicates"),
    [
        ([0, 1, 2, 3], [0, 1, 2, 3], 0),  # in order
        ([0, 1, 1, 2, 0], [0, 1, 2], 2),  # redeliveries of earlier seqs are dropped and counted
        ([0, 2, 1, 3], [0, 1, 2, 3], 0),  # swapped pair: 2 waits for 1
        ([0, 1, 2, 3, 1, 2, 3, 4], [0, 1, 2, 3, 4], 3),  # a restarted worker replays from its committed offset
        ([0, 1, 3, 2, 2, 4], [0, 1, 2, 3, 4], 1),  # old and new worker interleaving
        ([0, 2, 3, 4, 5], [0, 2, 3, 4, 5], 0),  # seq 1 went to the DLQ: skipped once 3 events wait (limit 3)
        ([0, 2, 3, 1, 4], [0, 1, 2, 3, 4], 0),  # the missing seq arrives while 2 events wait (< limit): filled in order
        ([0, 2, 3, 4, 1, 5], [0, 2, 3, 4, 5], 1),  # it arrives after the skip: a duplicate
        ([0, 2, 2, 2], [0], 2),  # the same early event repeated is held once
        ([1, 0, 2], [0, 1, 2], 0),  # two workers racing at the start of a session: seq 1 first
    ],
)
def test_ordering(order: list[int], processed: list[int], duplicates: int) -> None:
    got, dups = processed_seqs(order)
    assert (got, dups) == (processed, duplicates)


def test_finish_processes_what_waits_behind_a_gap() -> None:
    counter = CameraCounter(small_site(), "cam", reorder_limit=50)
    path = straight(0.1, 0.9)
    events = events_for([path])
    crossings: list[CrossingEvent] = []
    for e in events:
        if e.seq != 3:  # frame 3 never arrives
            crossings += counter.update(e)
    assert crossings == []  # everything waits behind seq 3
    assert summary(counter.finish()) == [("line", "southbound"), ("movement", "north>south:through")]
    assert counter.skipped == 1


def test_new_session_finishes_the_old_one_and_restarts_track_ids() -> None:
    counter = CameraCounter(small_site(), "cam")
    first = events_for([straight(0.1, 0.9)], session="a")
    second = events_for([straight(0.9, 0.1)], session="b")
    out: list[CrossingEvent] = []
    for e in first:
        out += counter.update(e)
    out += counter.update(second[0])  # the stream restarted: session a's track ends now
    assert [c.movement for c in out if c.kind == "movement"] == ["through"]
    for e in second[1:]:
        out += counter.update(e)
    out += counter.finish()
    assert [(c.session, c.track_id, c.kind) for c in out if c.kind == "movement"] == [("a", 1, "movement"), ("b", 1, "movement")]
    before = counter.duplicates
    counter.update(first[-1])  # a late redelivery from the finished session
    assert counter.duplicates == before + 1


def test_synthetic_ground_truth() -> None:
    site = synthetic_site()
    stream = synthetic_stream(per_movement=2, site=site)
    crossings = run(CameraCounter(site, CAMERA), stream.events)
    assert Counter((c.approach, c.exit, c.movement, c.vehicle_class) for c in crossings if c.kind == "movement") == stream.movements
    assert Counter((c.line, c.direction, c.vehicle_class) for c in crossings if c.kind == "line") == stream.lines
    assert len({c.event_id for c in crossings}) == len(crossings)


_SHORT = synthetic_stream(per_movement=1, spacing_frames=10)
_SHORT_SITE = synthetic_site()
_BASELINE = run(CameraCounter(_SHORT_SITE, CAMERA), _SHORT.events)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_redeliveries_and_local_reordering_do_not_change_counts(seed: int) -> None:
    # a delivery order a broker can produce: every event at least once, redeliveries of recent
    # events (restarted workers), and swaps within a few positions (two workers racing)
    rng = random.Random(seed)
    events = list(_SHORT.events)
    order: list[DetectionEvent] = []
    for i, e in enumerate(events):
        order.append(e)
        if rng.random() < 0.05:
            order += events[max(0, i - rng.randint(1, 8)) : i + 1]
    for _ in range(len(order) // 10):
        i = rng.randrange(len(order) - 3)
        j = i + rng.randint(1, 3)
        order[i], order[j] = order[j], order[i]
    counter = CameraCounter(_SHORT_SITE, CAMERA)
    assert run(counter, order) == _BASELINE
    assert counter.duplicates == len(order) - len(events)
    assert counter.skipped == 0


def test_joining_a_session_mid_stream_skips_after_one_buffer_fill() -> None:
    # retention dropped seq 0..9 before the aggregator started: it waits for reorder_limit events, then starts
    got, dups = processed_seqs(list(range(10, 16)), limit=3)
    assert (got, dups) == ([10, 11, 12, 13, 14, 15], 0)


def test_end_of_session_marker_ends_the_tracks_in_seq_order() -> None:
    # the ingester's end marker arrives (possibly before the last frame): tracks end when it is processed, in seq order
    events = events_for([straight(0.1, 0.9)])
    marker = DetectionEvent(camera="cam", intersection="x1", session="s", seq=len(events), capture_ms=events[-1].capture_ms + 100, model="m", width=640, height=480, end_of_session=True)
    counter = CameraCounter(small_site(), "cam")
    out = [c for e in events[:-1] for c in counter.update(e)]
    out += counter.update(marker)  # ahead of the last frame: held
    assert [c.kind for c in out] == ["line"]
    decided = counter.update(events[-1])
    assert [(c.kind, c.time_ms) for c in decided] == [("movement", events[-1].capture_ms)]  # the time it was last seen
    assert counter.active_tracks == 0


def test_a_restored_snapshot_counts_on_exactly_like_an_uninterrupted_counter() -> None:
    # the default tracker (buffered IoU) must pickle with the checkpoint; the restored counter keeps ids and sides
    site = synthetic_site(tracker={"buffer": 0.6, "match_thresh": 0.9})
    events = synthetic_stream(per_movement=1, spacing_frames=10, site=site).events
    straight_through = run(CameraCounter(site, CAMERA), events)
    first = CameraCounter(site, CAMERA)
    half = len(events) // 2
    out = [c for e in events[:half] for c in first.update(e)]
    second = CameraCounter.restore(site, CAMERA, first.snapshot())
    out += run(second, events[half:])
    assert out == straight_through and len(out) > 10

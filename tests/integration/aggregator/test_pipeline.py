"""The aggregator as a real faust worker (subprocess) against the real broker, with synthetic ground truth.

Synthetic detection events (tests.synthetic: 2 vehicles per movement of a 4-leg intersection,
two count lines) go to the test's detections topic; the final records on the counts topic must
give exactly the ground truth, and exactly what the plain CameraCounter loop gives per interval.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from aggregator.counting import CameraCounter
from aggregator.windows import CountKey, final_counts
from tests.integration.aggregator.harness import Aggregator, Output, committed, send, totals
from tests.synthetic import CAMERA, INTERSECTION, SyntheticStream, end_marker, synthetic_site, synthetic_stream
from traffic.settings import TopicSettings


@pytest.fixture(scope="module")
def stream() -> SyntheticStream:
    return synthetic_stream(per_movement=2)


@pytest.fixture(scope="module")
def expected(stream: SyntheticStream) -> dict[CountKey, int]:
    """Per-interval counts of the plain CameraCounter loop (checked against the ground truth in unit tests)."""
    counter = CameraCounter(synthetic_site(), CAMERA)
    crossings = [c for e in stream.events for c in counter.update(e)] + counter.finish()
    return final_counts(crossings, synthetic_site().counting.intervals_s)


def ground_truth_totals(stream: SyntheticStream) -> Counter[tuple[str, str, str, str]]:
    totals: Counter[tuple[str, str, str, str]] = Counter()
    for (entry, _exit, movement, cls), n in stream.movements.items():
        totals[("movement", entry, movement, cls)] += n
    for (line, direction, cls), n in stream.lines.items():
        totals[("line", line, direction, cls)] += n
    return totals


@pytest.fixture
def aggregator(tmp_path: Path, kafka_bootstrap: str, topic_settings: TopicSettings) -> Iterator[Aggregator]:
    agg = Aggregator(tmp_path, kafka_bootstrap, topic_settings, idle_close_s=4)
    try:
        yield agg
    finally:
        agg.kill()


def test_counts_match_ground_truth_and_bad_input_goes_to_the_dlq(
    aggregator: Aggregator, kafka_bootstrap: str, topic_settings: TopicSettings, stream: SyntheticStream, expected: dict[CountKey, int]
) -> None:
    truth = ground_truth_totals(stream)
    n = sum(truth.values())
    unknown = stream.events[0].model_copy(update={"camera": "cam-unknown"})
    bad = [(b"cam-synth", b"{not json"), (b"cam-unknown", unknown.encode())]
    out = Output(kafka_bootstrap, topic_settings)
    aggregator.start()
    # bad input first: the app must go on; then the stream, then the same stream again (a full redelivery)
    send(kafka_bootstrap, topic_settings.detections, stream.events[:100], extra=bad)
    send(kafka_bootstrap, topic_settings.detections, stream.events[100:])
    send(kafka_bootstrap, topic_settings.detections, stream.events)
    finals = out.wait_finals(n, aggregator)
    try:
        assert totals(finals, 900) == truth  # 2 vehicles per movement, line crossings: exactly
        assert totals(finals, 60) == truth  # the 1-minute intervals split them but add up to the same
        assert finals == expected  # per interval, identical to the plain CameraCounter loop
        assert {k.interval_start_ms for k in finals if k.interval_s == 60} == {1_767_225_600_000, 1_767_225_660_000}
        assert any(not r["final"] for r in out.records)  # provisional records while intervals were open
        ids = [c.event_id for c in out.crossings]
        assert len(ids) == len(set(ids)) == n  # each vehicle published once on the crossings topic
        reasons = sorted(h["reason"] for _, h in out.dlq)
        assert reasons == [b"malformed", b"unknown_camera"]
        assert all(h["stage"] == b"aggregator" for _, h in out.dlq)
        assert unknown.encode() in [v for v, _ in out.dlq]  # the bad input, unchanged
        status, metrics = aggregator.get("/metrics")
        assert status == 200
        vehicles = sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("traffic_vehicles_total{"))
        assert vehicles == sum(n for (series, *_), n in truth.items() if series == "movement")
        assert f'traffic_aggregator_duplicates_total{{camera="{CAMERA}"}} {float(len(stream.events))}' in metrics
        assert 'traffic_aggregator_dlq_total{reason="unknown_camera"} 1.0' in metrics
        assert f'intersection="{INTERSECTION}"' in metrics and "traffic_aggregator_count_latency_seconds_bucket" in metrics
        assert aggregator.get("/readyz")[0] == 200
    finally:
        out.close()
    assert aggregator.stop() == 0


def test_a_live_camera_handed_over_mid_interval_loses_no_crossing(
    aggregator: Aggregator, kafka_bootstrap: str, topic_settings: TopicSettings
) -> None:
    """An ingester stopped on a live camera (a rolling update) ends its session with a handover marker.

    The next ingester goes on in a new session inside the same intervals. Before handover markers,
    the end marker made the intersection's intervals final, and every crossing of the new session
    in them was dropped as late (the 30-minute soak's counts were off by this).
    """
    first = synthetic_stream(per_movement=1, session="before-update").events
    last = first[-1]
    handover = end_marker(last, handover=True)
    second = synthetic_stream(per_movement=1, session="after-update", start_ms=last.capture_ms + 2_000, seed=8).events
    end = end_marker(second[-1])  # the recording's real end
    events = [*first, handover, *second, end]
    counter = CameraCounter(synthetic_site(), CAMERA)
    expected = final_counts([c for e in events for c in counter.update(e)] + counter.finish(), synthetic_site().counting.intervals_s)
    assert {k.interval_start_ms for k in expected if k.interval_s == 900} == {first[0].capture_ms // 900_000 * 900_000}  # one 15-min interval
    out = Output(kafka_bootstrap, topic_settings)
    try:
        aggregator.start()
        send(kafka_bootstrap, topic_settings.detections, events)
        finals = out.wait_finals(sum(n for k, n in expected.items() if k.interval_s == 900), aggregator, timeout_s=90)
        assert finals == expected  # both sessions, every interval: nothing dropped as late
        assert "late crossing for a final interval" not in aggregator.logs()
    finally:
        out.close()


@pytest.mark.faults
@pytest.mark.slow  # an aggregator restart mid-stream (45 s): the faults stage (-m faults) runs it with the ten kill -9
def test_restart_mid_stream_gives_the_same_final_counts(
    tmp_path: Path, kafka_bootstrap: str, topic_settings: TopicSettings, stream: SyntheticStream, expected: dict[CountKey, int]
) -> None:
    agg = Aggregator(tmp_path, kafka_bootstrap, topic_settings, idle_close_s=10)
    out = Output(kafka_bootstrap, topic_settings)
    half = len(stream.events) // 2  # vehicles are on the road at this frame: tracks must survive the restart
    try:
        agg.start()
        send(kafka_bootstrap, topic_settings.detections, stream.events[:half])
        deadline = time.monotonic() + 90
        while committed(kafka_bootstrap, agg.app_id, topic_settings.detections) < half:
            assert time.monotonic() < deadline, f"first half not consumed:\n{agg.logs()}"
            assert agg.proc is not None and agg.proc.poll() is None, agg.logs()
            time.sleep(0.3)
        assert agg.stop() == 0  # SIGTERM: faust flushes and commits on the way out
        out.poll()
        assert not any(r["final"] and r["interval_s"] == 900 for r in out.records)  # nothing final yet
        send(kafka_bootstrap, topic_settings.detections, stream.events[half:])  # while it is down
        agg.start()
        finals = out.wait_finals(sum(expected[k] for k in expected if k.interval_s == 900), agg)
        assert finals == expected  # as if it had never stopped
        assert sorted({c.event_id for c in out.crossings}) == sorted(
            {f"{c.camera}:{c.session}:{c.track_id}:{c.line or f'{c.approach}>{c.exit}'}" for c in out.crossings}
        )
        assert len({c.event_id for c in out.crossings}) == sum(expected[k] for k in expected if k.interval_s == 900)
        assert "camera state restored" in agg.logs()
    finally:
        out.close()
        agg.kill()


def test_a_wrong_clock_a_huge_event_and_a_dense_scene_change_nothing_and_state_stays_small(
    aggregator: Aggregator, kafka_bootstrap: str, topic_settings: TopicSettings
) -> None:
    """Issue 11's first two problems, against the real app.

    * One event of the camera with a capture time of 2**53 (a wrong clock) used to move the
      intersection's watermark: every interval final, later crossings dropped as late.
    * One event with 20,000 boxes used to make a 20 MB state snapshot the producer refused: the
      app died, and died again on the same event after each restart.
    * A dense scene (300 boxes, every one a live track) used to write a 300 KB snapshot per event.
    """
    dense = synthetic_stream(per_movement=1, crowd=294, session="dense")
    expected = final_counts(
        (lambda c: [x for e in dense.events for x in c.update(e)] + c.finish())(CameraCounter(synthetic_site(), CAMERA)),
        synthetic_site().counting.intervals_s,
    )
    future = dense.events[60].model_copy(update={"seq": 61, "capture_ms": 2**53})  # seq 61 arrives first from the wrong clock
    huge = dense.events[80].model_copy(update={"seq": 10_000, "detections": dense.events[80].detections * 67})  # 20,000 boxes
    out = Output(kafka_bootstrap, topic_settings)
    aggregator.start()
    send(kafka_bootstrap, topic_settings.detections, dense.events[:61])
    send(kafka_bootstrap, topic_settings.detections, [], extra=[(CAMERA.encode(), future.encode()), (CAMERA.encode(), huge.encode())])
    send(kafka_bootstrap, topic_settings.detections, dense.events[61:])
    try:
        finals = out.wait_finals(sum(n for k, n in expected.items() if k.interval_s == 900), aggregator, timeout_s=300)
        assert finals == expected
        reasons = sorted(h["reason"] for _, h in out.dlq)
        assert reasons == [b"capture_time_future", b"oversized"]
        status, metrics = aggregator.get("/metrics")
        assert f'traffic_aggregator_capture_time_refused_total{{camera="{CAMERA}",reason="capture_time_future"}} 1.0' in metrics
        written = next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("traffic_aggregator_checkpoint_bytes_total "))
        per_event = written / len(dense.events)
        # a snapshot of this scene is about 300 KB raw and 30 KB packed; once per commit interval, not per event
        assert 0 < per_event < 20 * 1024, f"{per_event:.0f} bytes of checkpoint per event"
    finally:
        out.close()
    assert aggregator.stop() == 0

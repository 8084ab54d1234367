"""Hostile records written into a running pipeline: nothing restarts, each goes to the DLQ with its reason, counts stay.

One pipeline (one broker, the ingester on the sample video in real time, one worker, the
aggregator) runs while 47 kinds of bad records are written into its topics - frames, detection
events, and the aggregator's internal and control topics - plus two forged wake-ups that must
change nothing. Then:

* no service restarted (the same processes, alive, all the way);
* every bad record is in the DLQ exactly once, refused by the expected stage with the expected
  reason (matched by a ``fuzz-kind`` header, or for frames the worker passed on, by the tag in
  their session or camera id);
* the final counts equal ``traffic count`` on the same video (which the end-to-end tests show to
  equal an undisturbed streaming run).
"""

from __future__ import annotations

import json
import struct
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.partitioner.default import murmur2

from devkit.local_pipeline import LocalPipeline, PipelineConfig
from traffic.wire import Detection, DetectionEvent, FrameHeaders

from .test_pipeline import offline_count

REPO = Path(__file__).resolve().parents[2]
CAMERA, INTERSECTION = "cam-demo", "demo-intersection"
SETTLE_S = 300


@dataclass(frozen=True)
class Hostile:
    """One bad record and what must become of it (stage and reason in the DLQ; None: ignored, no effect)."""

    kind: str
    topic: str
    value: bytes | None
    key: bytes | None
    headers: list[tuple[str, bytes]]
    stage: str | None
    reason: str | None
    partition: int | None = None


def _jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return data.tobytes()


def _bomb(small: bytes, width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims ``width`` x ``height`` (decoding would allocate w*h*3 bytes)."""
    i = 2
    while True:
        marker, (length,) = small[i + 1], struct.unpack(">H", small[i + 2 : i + 4])
        if marker in (0xC0, 0xC2):
            return small[: i + 5] + struct.pack(">HH", height, width) + small[i + 9 :]
        i += 2 + length


def _frame_headers(session: str, seq: int = 0, camera: str = CAMERA, intersection: str = INTERSECTION, capture_ms: int | None = None,
                   width: int = 640, height: int = 480, end: bool = False) -> list[tuple[str, bytes]]:  # fmt: skip
    now = int(time.time() * 1000) if capture_ms is None else capture_ms
    return FrameHeaders(camera, intersection, session, seq, now, width, height, end=end).to_kafka()


def _replace(headers: list[tuple[str, bytes]], name: str, value: bytes | None) -> list[tuple[str, bytes]]:
    return [(n, value) for n, v in headers if n == name and value is not None] + [(n, v) for n, v in headers if n != name]


def _event(session: str, seq: int = 3, camera: str = CAMERA, intersection: str = INTERSECTION, capture_ms: int | None = None,
           detections: int = 1) -> DetectionEvent:  # fmt: skip
    def box(i: int) -> tuple[float, float, float, float]:
        x, y = 0.01 + (i % 30) * 0.03, 0.01 + (i // 30 % 30) * 0.03
        return (x, y, x + 0.01, y + 0.01)

    boxes = tuple(Detection(class_id=2, label="car", confidence=0.8, box=box(i)) for i in range(detections))
    return DetectionEvent(
        camera=camera, intersection=intersection, session=session, seq=seq, capture_ms=int(time.time() * 1000) if capture_ms is None else capture_ms,
        model="fuzz", width=640, height=480, detections=boxes,
    )  # fmt: skip


def hostile_records(pipeline: LocalPipeline, frame: bytes) -> list[Hostile]:
    """The bad records, by topic. ``frame`` is a real 640x480 JPEG of the sample video."""
    t = pipeline.topics
    app_id = f"run-{pipeline.run_id}-aggregator"
    control, by_intersection = f"{app_id}-camera-control", f"{app_id}-by-intersection"
    cam = CAMERA.encode()
    png = cv2.imencode(".png", np.zeros((480, 640, 3), np.uint8))[1].tobytes()
    big = _jpeg(np.full((4320, 7680, 3), 90, np.uint8))
    small = _jpeg(np.zeros((8, 8, 3), np.uint8))
    good = _frame_headers("fz-frame")
    rng = np.random.default_rng(5)
    out: list[Hostile] = []

    def frame_(kind: str, value: bytes | None, headers: list[tuple[str, bytes]], stage: str | None, reason: str | None, key: bytes = cam) -> None:
        out.append(Hostile(kind, t.frames, value, key, headers + [("fuzz-kind", kind.encode())], stage, reason))

    frame_("frame-empty", b"", _frame_headers("fz-empty"), "worker", "undecodable")
    frame_("frame-random-bytes", rng.bytes(20_000), _frame_headers("fz-random"), "worker", "undecodable")
    frame_("frame-truncated", frame[: len(frame) // 2], _frame_headers("fz-truncated"), "worker", "undecodable")
    frame_("frame-png", png, _frame_headers("fz-png"), "worker", "undecodable")
    frame_("frame-8k", big, _frame_headers("fz-8k", width=7680, height=4320), "worker", "too_large")
    frame_("frame-decompression-bomb", _bomb(small, 16384, 16384), _frame_headers("fz-bomb", width=16384, height=16384), "worker", "too_large")
    frame_("frame-size-mismatch", frame, _frame_headers("fz-size", width=320, height=240), "worker", "size_mismatch")
    frame_("frame-no-headers", frame, [], "worker", "missing_header")
    frame_("frame-missing-capture-time", frame, _replace(good, "capture_ms", None), "worker", "missing_header")
    frame_("frame-duplicated-header", frame, good + [("seq", b"9")], "worker", "bad_header")
    frame_("frame-non-utf8-header", frame, _replace(good, "camera", b"\xff\xfe\xfd"), "worker", "bad_header")
    frame_("frame-width-out-of-range", frame, _replace(good, "width", b"99999"), "worker", "bad_header")
    frame_("frame-negative-seq", frame, _replace(good, "seq", b"-4"), "worker", "bad_header")
    frame_("frame-capture-not-a-number", frame, _replace(good, "capture_ms", b"yesterday"), "worker", "bad_header")
    frame_("frame-bad-camera-id", frame, _replace(good, "camera", b"cam demo/../etc"), "worker", "bad_header")
    frame_("frame-far-future", frame, _frame_headers("fz-future", capture_ms=2**53), "worker", "capture_time_future")
    frame_("frame-ancient", frame, _frame_headers("fz-ancient", capture_ms=0), "worker", "capture_time_stale")
    frame_("frame-unknown-camera", frame, _frame_headers("fz-unknown-camera-frame", camera="fz-unknown-camera-frame"), "aggregator", "unknown_camera", key=b"fz-unknown-camera-frame")
    frame_("frame-foreign-intersection", frame, _frame_headers("fz-foreign-intersection-frame", intersection="fz-elsewhere"), "aggregator", "intersection_mismatch")
    frame_("frame-foreign-session", frame, _frame_headers("fz-foreign-session-frame"), "aggregator", "foreign_session")
    frame_("frame-foreign-end-marker", b"", _frame_headers("fz-foreign-end-frame", seq=5, end=True), "aggregator", "foreign_session")

    def event_(kind: str, value: bytes | None, reason: str, partition: int | None = None, key: bytes = cam) -> None:
        out.append(Hostile(kind, t.detections, value, key, [("fuzz-kind", kind.encode())], "aggregator", reason, partition))

    valid = json.loads(_event("fz-event").encode())
    event_("event-not-json", b"{this is not json", "malformed")
    event_("event-empty", None, "empty")
    event_("event-deeply-nested", b'{"camera":' + b"[" * 50_000 + b"]" * 50_000 + b"}", "malformed")
    event_("event-nan-confidence", json.dumps({**valid, "detections": [{**valid["detections"][0], "confidence": float("nan")}]}).encode(), "malformed")
    event_("event-20000-boxes", _event("fz-huge", detections=20_000).encode(), "oversized")
    event_("event-301-boxes", _event("fz-301", detections=301).encode(), "too_many_detections")
    event_("event-box-out-of-range", json.dumps({**valid, "detections": [{**valid["detections"][0], "box": [0.1, 0.1, 1.5, 0.2]}]}).encode(), "malformed")
    event_("event-box-inverted", json.dumps({**valid, "detections": [{**valid["detections"][0], "box": [0.5, 0.5, 0.1, 0.1]}]}).encode(), "malformed")
    event_("event-foreign-session", _event("fz-foreign-session-event", seq=17).encode(), "foreign_session")
    event_("event-unknown-camera", _event("fz-x", camera="fz-unknown-camera-event").encode(), "unknown_camera", key=b"fz-unknown-camera-event")
    event_("event-foreign-intersection", _event("fz-x", intersection="fz-elsewhere").encode(), "intersection_mismatch")
    event_("event-far-future", _event("fz-future-event", capture_ms=2**53).encode(), "capture_time_future")
    event_("event-ancient", _event("fz-ancient-event", capture_ms=1).encode(), "capture_time_stale")
    own = (murmur2(cam) & 0x7FFFFFFF) % t.detections_partitions
    event_("event-wrong-partition", _event("fz-wrong-partition").encode(), "wrong_partition", partition=(own + 1) % t.detections_partitions)
    event_("event-unknown-field", json.dumps({**valid, "admin": True}).encode(), "malformed")
    event_("event-non-utf8", b'{"camera": "\xff\xfe"}', "malformed")
    event_("event-negative-seq", json.dumps({**valid, "seq": -1}).encode(), "malformed")
    event_("event-json-array", json.dumps([valid]).encode(), "malformed")
    event_("event-padded-over-1mib", _event("fz-padded").encode()[:-1] + b" " * (1024 * 1024) + b"}", "oversized")

    def internal(kind: str, topic: str, value: bytes, key: bytes, stage: str | None, reason: str | None) -> None:
        out.append(Hostile(kind, topic, value, key, [("fuzz-kind", kind.encode())], stage, reason))

    inter = INTERSECTION.encode()
    internal("internal-garbage", by_intersection, rng.bytes(300), inter, "aggregator", "internal_malformed")
    internal("internal-unknown-kind", by_intersection, b'{"kind": "reset", "intersection": "demo-intersection"}', inter, "aggregator", "internal_malformed")
    internal("internal-watermark-far-future", by_intersection, json.dumps({"kind": "watermark", "intersection": INTERSECTION, "camera": CAMERA, "time_ms": 2**53}).encode(), inter, "aggregator", "capture_time_future")
    internal("internal-crossing-unknown-intersection", by_intersection, json.dumps({"kind": "crossing", "crossing": {
        "event_id": "x:1", "kind": "line", "intersection": "fz-nowhere", "camera": CAMERA, "session": "s", "track_id": 1, "vehicle_class": "car",
        "time_ms": int(time.time() * 1000), "line": "l", "direction": "in"}}).encode(), b"fz-nowhere", "aggregator", "internal_refused")  # fmt: skip
    internal("internal-watermark-foreign-camera", by_intersection, json.dumps({"kind": "watermark", "intersection": INTERSECTION, "camera": "fz-cam", "time_ms": 5}).encode(), inter, "aggregator", "internal_refused")
    internal("control-garbage", control, b"\x00\x01garbage", cam, "aggregator", "internal_malformed")
    internal("control-finish-unknown-camera", control, json.dumps({"kind": "finish", "camera": "fz-cam", "session": None, "next_seq": 0, "events": 0}).encode(), b"fz-cam", "aggregator", "unknown_camera")
    internal("control-forged-finish", control, json.dumps({"kind": "finish", "camera": CAMERA, "session": "s", "next_seq": 1, "events": 1}).encode(), cam, None, None)
    internal("internal-forged-close", by_intersection, json.dumps({"kind": "close", "intersection": INTERSECTION}).encode(), inter, None, None)
    return out


def _offline_totals(shared: Path, tmp: Path) -> Counter[tuple[str, str, str, str]]:
    return +offline_count(shared, tmp, CAMERA)[1]


def _dead_letters(pipeline: LocalPipeline) -> Iterator[tuple[str | None, dict[str, bytes], bytes | None]]:
    """(kind, headers, value) of every DLQ record; the kind from the fuzz header or the tag in the event's ids."""
    consumer = KafkaConsumer(pipeline.topics.dlq, **pipeline.kafka.kafka_python(), auto_offset_reset="earliest", group_id=None, consumer_timeout_ms=3000)
    try:
        for record in consumer:
            headers = {n: v for n, v in record.headers}
            kind = headers.get("fuzz-kind", b"").decode() or None
            if kind is None and record.value:
                try:
                    doc = json.loads(record.value)
                    tag = f"{doc.get('session', '')} {doc.get('camera', '')} {doc.get('intersection', '')}"
                except ValueError:
                    tag = ""
                tags = {"fz-unknown-camera-frame": "frame-unknown-camera", "fz-foreign-intersection-frame": "frame-foreign-intersection",
                        "fz-foreign-session-frame": "frame-foreign-session", "fz-foreign-end-frame": "frame-foreign-end-marker"}  # fmt: skip
                kind = next((k for t, k in tags.items() if t in tag), None)
            yield kind, headers, record.value
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def sample_frame(shared: Path) -> bytes:
    cap = cv2.VideoCapture(str(shared / "videos" / "intersection.mp4"))
    ok, image = cap.read()
    cap.release()
    assert ok
    return _jpeg(image)


@pytest.mark.faults
@pytest.mark.slow  # an offline count and a real-time pipeline run (2-3 min); the decoders' property tests stay in the default suite
@pytest.mark.timeout(1800)  # an offline count and a real-time pipeline run, on a shared machine
def test_hostile_records_go_to_the_dlq_and_change_no_count(kafka_bootstrap: str, shared: Path, tmp_path: Path, sample_frame: bytes) -> None:
    cfg = PipelineConfig(
        bootstrap=kafka_bootstrap, site=REPO / "deploy" / "sites" / "intersection-demo.yaml", camera=CAMERA,
        source=str(shared / "videos" / "intersection.mp4"), model=str(shared / "models" / "yolo11n_int8_openvino_model"),
        out_dir=tmp_path / "run", workers=1, realtime=True,
    )  # fmt: skip
    pipeline = LocalPipeline(cfg)
    records = hostile_records(pipeline, sample_frame)  # built first: a mistake here fails in a second
    bad = [r for r in records if r.reason is not None]
    expected_totals = _offline_totals(shared, tmp_path)
    try:
        pipeline.start_services()
        pids = {name: child.proc.pid for name, child in pipeline.children.items()}
        pipeline.start_ingest()
        assert pipeline.counts is not None
        deadline = time.monotonic() + 120
        while pipeline.counts.end_offset(pipeline.topics.detections) < 40:  # the real stream is under way
            assert time.monotonic() < deadline, f"no detections: {pipeline.stats()}"
            pipeline.check_children()
            time.sleep(0.5)
        producer = KafkaProducer(**pipeline.kafka.kafka_python(), acks="all", max_request_size=8 * 1024 * 1024)
        for r in records:
            producer.send(r.topic, key=r.key, value=r.value, headers=r.headers, partition=r.partition)
        producer.flush()
        producer.close()
        largest = pipeline.largest_interval()
        deadline = time.monotonic() + SETTLE_S
        while True:
            time.sleep(1.0)
            pipeline.check_children()  # raises if a service died
            pipeline.counts.poll()
            ingest_done = not pipeline.children["ingest"].alive()
            if ingest_done and pipeline.counts.end_offset(pipeline.topics.dlq) >= len(bad) and pipeline.counts.all_final(largest):
                time.sleep(3.0)  # anything more (a double count, a late dead letter) would arrive now
                pipeline.counts.poll()
                break
            assert time.monotonic() < deadline, f"pipeline did not settle: {pipeline.stats()}"
        final = pipeline.counts.totals(largest, final_only=True)
        assert all(pipeline.children[name].alive() and pipeline.children[name].proc.pid == pid for name, pid in pids.items()), "a service restarted"
        letters = list(_dead_letters(pipeline))
    finally:
        pipeline.stop()
    found = Counter((kind, h.get("stage", b"").decode(), h.get("reason", b"").decode()) for kind, h, _ in letters)
    expected = Counter((r.kind, r.stage, r.reason) for r in bad)
    assert found == expected, f"missing: {expected - found}; unexpected: {found - expected}"
    assert len(expected) >= 30, "at least 30 kinds of hostile records"
    assert Counter(final) == expected_totals  # the counts of an undisturbed run
    assert sum(expected_totals.values()) > 5

"""File sources end to end against the real broker: headers, seq, sizes, sampling, determinism.

The service runs in-process here (no signals or logs to check); see test_rtsp.py for the
subprocess tests.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from kafka import KafkaConsumer

from ingest.sampler import sample_file
from ingest.service import IngestService
from ingest.settings import IngestSettings
from traffic.settings import KafkaSettings, TopicSettings
from traffic.site import load_site
from traffic.wire import FrameHeaders


def _site_file(tmp_path: Path, video: Path, fps: float, max_width: int = 640) -> Path:
    site = {"intersections": [{"id": "it-1", "cameras": [{"id": "cam-1", "source": str(video), "fps": fps, "max_width": max_width}]}]}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site))
    return path


def frame_headers(kafka: KafkaSettings, topic: str) -> list[FrameHeaders]:
    """The headers of every frame on ``topic`` (end-of-session markers left out), read until 5 s pass without one."""
    consumer = KafkaConsumer(
        topic, **kafka.kafka_python(), auto_offset_reset="earliest",
        enable_auto_commit=False, consumer_timeout_ms=5000, max_partition_fetch_bytes=8 * 1024 * 1024,
    )  # fmt: skip
    try:
        return [h for h in (FrameHeaders.from_kafka(r.headers) for r in consumer) if not h.end]
    finally:
        consumer.close()


def _consume(kafka: KafkaSettings, topic: str, expected: int, timeout_ms: int = 10_000) -> list:
    """Records of ``topic`` until ``expected`` arrived, plus whatever else comes within 1 s."""
    consumer = KafkaConsumer(
        topic,
        **kafka.kafka_python(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    records = []
    try:
        deadline = time.monotonic() + timeout_ms / 1000
        while time.monotonic() < deadline and len(records) < expected:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        for batch in consumer.poll(timeout_ms=1_000).values():  # anything extra (duplicates) would show up here
            records.extend(batch)
    finally:
        consumer.close()
    return [r for r in records if not FrameHeaders.from_kafka(r.headers).end]


def _markers(kafka: KafkaSettings, topic: str) -> list[FrameHeaders]:
    """The end-of-session markers on ``topic``."""
    consumer = KafkaConsumer(topic, **kafka.kafka_python(), auto_offset_reset="earliest", enable_auto_commit=False,
                             consumer_timeout_ms=3000, max_partition_fetch_bytes=8 * 1024 * 1024)  # fmt: skip
    try:
        return [h for h in (FrameHeaders.from_kafka(r.headers) for r in consumer) if h.end]
    finally:
        consumer.close()


def _run(settings: IngestSettings, kafka: KafkaSettings, topics: TopicSettings) -> IngestService:
    service = IngestService(settings, kafka, topics)
    assert service.run() == 0
    return service


def _decode(value: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "JPEG does not decode"
    return image


def _metric(service: IngestService, name: str, **labels: str) -> float:
    value = service.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_file_as_fast_as_possible_is_complete_and_matches_sample_file(
    tmp_path: Path, shared: Path, kafka_settings: KafkaSettings, topic_settings: TopicSettings
) -> None:
    """40 frames at 10 of 30 fps: one session, seq 0..39, 640x480 JPEGs, exactly sample_file's frames."""
    video = shared / "videos" / "intersection.mp4"
    settings = IngestSettings(site_config=str(_site_file(tmp_path, video, 10)), realtime=False, max_frames=40, metrics_port=0)
    service = _run(settings, kafka_settings, topic_settings)

    records = _consume(kafka_settings, topic_settings.frames, 40)
    assert len(records) == 40
    headers = [FrameHeaders.from_kafka(r.headers) for r in records]
    (marker,) = _markers(kafka_settings, topic_settings.frames)  # the session ends with one end-of-session marker
    assert (marker.session, marker.seq) == (headers[0].session, 40) and marker.capture_ms >= headers[-1].capture_ms
    assert not marker.handover  # the stream is over (a file played out), not handed to another ingester
    assert {r.key for r in records} == {b"cam-1"}
    assert {(h.camera, h.intersection) for h in headers} == {("cam-1", "it-1")}
    assert len({h.session for h in headers}) == 1
    assert [h.seq for h in headers] == list(range(40))  # one partition per camera: in order, gap-free
    for record, h in zip(records, headers):
        assert _decode(record.value).shape == (480, 640, 3) and (h.width, h.height) == (640, 480)
    capture = [h.capture_ms for h in headers]
    assert {b - a for a, b in zip(capture, capture[1:])} == {100}  # exactly 10 fps of capture time

    # The same frames as sample_file at the same fps: same capture times, same pixels up to JPEG loss.
    expected = sample_file(video, 10, capture[0])
    for record, h, frame in zip(records[:5], headers, expected):
        assert frame.capture_ms == h.capture_ms
        diff = np.abs(_decode(record.value).astype(np.int16) - frame.image.astype(np.int16)).mean()
        assert diff < 3.0, f"frame {frame.frame_index} differs by {diff:.1f} grey levels on average"
    expected.close()  # type: ignore[attr-defined]

    assert _metric(service, "traffic_ingest_frames_published_total", camera="cam-1") == 40
    assert _metric(service, "traffic_ingest_frames_sampled_total", camera="cam-1") >= 40
    assert _metric(service, "traffic_ingest_frames_read_total", camera="cam-1") >= 118  # frames 0..117 at least
    assert _metric(service, "traffic_ingest_bytes_sent_total", camera="cam-1") == sum(len(r.value) for r in records)
    assert _metric(service, "traffic_ingest_frames_dropped_total", camera="cam-1", reason="buffer_full") == 0
    assert _metric(service, "traffic_ingest_publish_latency_seconds_count", camera="cam-1") == 40


def test_1080p_is_resized_and_sampled(tmp_path: Path, shared: Path, kafka_settings: KafkaSettings, topic_settings: TopicSettings) -> None:
    """1920x1080 at 5 of 30 fps, max_width 640: 640x360 JPEGs, 200 ms apart."""
    video = shared / "videos" / "pedestrians_1080p.mp4"
    settings = IngestSettings(site_config=str(_site_file(tmp_path, video, 5)), realtime=False, max_frames=8, metrics_port=0)
    _run(settings, kafka_settings, topic_settings)
    records = _consume(kafka_settings, topic_settings.frames, 8)
    headers = [FrameHeaders.from_kafka(r.headers) for r in records]
    assert [h.seq for h in headers] == list(range(8))
    assert all((h.width, h.height) == (640, 360) and _decode(r.value).shape == (360, 640, 3) for r, h in zip(records, headers))
    capture = [h.capture_ms for h in headers]
    assert {b - a for a, b in zip(capture, capture[1:])} == {200}


def test_file_realtime_publishes_at_the_sampling_rate(
    tmp_path: Path, shared: Path, kafka_settings: KafkaSettings, topic_settings: TopicSettings
) -> None:
    """Real-time play: 25 frames at 10 fps take ~2.4 s of wall clock (producer timestamps), within 10 %."""
    video = shared / "videos" / "intersection.mp4"
    settings = IngestSettings(site_config=str(_site_file(tmp_path, video, 10)), realtime=True, max_frames=25, metrics_port=0)
    _run(settings, kafka_settings, topic_settings)
    records = _consume(kafka_settings, topic_settings.frames, 25)
    headers = [FrameHeaders.from_kafka(r.headers) for r in records]
    assert [h.seq for h in headers] == list(range(25))
    capture_rate = 24 / ((headers[-1].capture_ms - headers[0].capture_ms) / 1000)
    wall_rate = 24 / ((records[-1].timestamp - records[0].timestamp) / 1000)
    assert capture_rate == pytest.approx(10, rel=0.1)
    assert wall_rate == pytest.approx(10, rel=0.1)
    # published close to their capture time, not in a burst at the end
    assert all(abs(r.timestamp - h.capture_ms) < 500 for r, h in zip(records, headers))


def test_looping_file_starts_a_new_session_per_pass(
    tmp_path: Path, shared: Path, kafka_settings: KafkaSettings, topic_settings: TopicSettings
) -> None:
    """909 frames at 1 of 30 fps = 31 frames per pass; 40 frames = a full pass + 9, each pass seq from 0."""
    video = shared / "videos" / "intersection.mp4"
    settings = IngestSettings(
        site_config=str(_site_file(tmp_path, video, 1)), realtime=False, loop=True, max_frames=40, metrics_port=0
    )
    service = _run(settings, kafka_settings, topic_settings)
    headers = [FrameHeaders.from_kafka(r.headers) for r in _consume(kafka_settings, topic_settings.frames, 40)]
    sessions = list(dict.fromkeys(h.session for h in headers))
    assert len(sessions) == 2
    assert [h.seq for h in headers if h.session == sessions[0]] == list(range(31))
    assert [h.seq for h in headers if h.session == sessions[1]] == list(range(9))
    assert service.metrics.registry.get_sample_value("traffic_ingest_reconnects_total", {"camera": "cam-1"}) == 0


def test_demo_site_serves_cam_demo(demo_site_file: Path, shared: Path, kafka_settings: KafkaSettings, topic_settings: TopicSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example site file works as is (source from TRAFFIC_SHARED_DIR), via TRAFFIC_SITE_CONFIG."""
    monkeypatch.setenv("TRAFFIC_SHARED_DIR", str(shared))
    monkeypatch.setenv("TRAFFIC_SITE_CONFIG", str(demo_site_file))
    assert "cam-demo" in load_site(demo_site_file).cameras()
    _run(IngestSettings(realtime=False, max_frames=5, metrics_port=0), kafka_settings, topic_settings)
    headers = [FrameHeaders.from_kafka(r.headers) for r in _consume(kafka_settings, topic_settings.frames, 5)]
    assert [(h.camera, h.intersection, h.seq) for h in headers] == [("cam-demo", "demo-intersection", i) for i in range(5)]

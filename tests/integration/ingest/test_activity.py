"""The ingester's activity gate against the real broker: unchanged frames go out without a JPEG.

A synthetic recording of the sample intersection with its traffic removed (real pixels, see
test_count_synthetic.py): 2 s empty, a car driving through for 1 s, 3 s empty. The frames of the
empty road must leave as ``unchanged-since`` records with no value, each naming the last frame
sent whole, at least one whole frame every ``activity_max_reuse_s``; every frame with the car
moving goes whole.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ingest.settings import IngestSettings
from traffic.settings import KafkaSettings, TopicSettings
from traffic.wire import FrameHeaders

from tests.integration.offline.test_count_synthetic import eastbound, make_video
from .test_file import _consume, _run


def _site(tmp_path: Path, video: Path) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({"intersections": [{"id": "it-1", "cameras": [{"id": "cam-1", "source": str(video), "fps": 10}]}]}))
    return path


def test_empty_road_frames_leave_without_jpeg_and_name_their_reference(
    tmp_path: Path, shared: Path, kafka_settings: KafkaSettings, topic_settings: TopicSettings
) -> None:
    video = make_video(shared / "videos" / "intersection.mp4", tmp_path / "quiet.mp4", [eastbound(20, 10)], total_frames=60, fps=10)
    settings = IngestSettings(site_config=str(_site(tmp_path, video)), realtime=False, metrics_port=0, activity_max_reuse_s=2.0)
    service = _run(settings, kafka_settings, topic_settings)
    records = _consume(kafka_settings, topic_settings.frames, 60)
    headers = [FrameHeaders.from_kafka(r.headers) for r in records]
    assert [h.seq for h in headers] == list(range(60))
    reference = None
    for record, h in zip(records, headers):
        if h.unchanged_since is None:
            assert record.value[:2] == b"\xff\xd8"  # a whole frame: its JPEG
            reference = h
        else:
            assert record.value == b""  # no JPEG
            assert reference is not None and h.unchanged_since == reference.seq, "must name the last frame sent whole"
            assert h.capture_ms - reference.capture_ms < 2000  # a whole frame at least every activity_max_reuse_s
    unchanged = [h.seq for h in headers if h.unchanged_since is not None]
    assert not set(unchanged) & set(range(20, 30)), "a frame with the car moving was not sent whole"
    assert len(unchanged) >= 40, f"only {len(unchanged)} of the 50 empty-road frames were recognised as unchanged"
    metric = service.metrics.registry.get_sample_value
    assert metric("traffic_ingest_frames_unchanged_total", {"camera": "cam-1"}) == len(unchanged)
    assert metric("traffic_ingest_frames_published_total", {"camera": "cam-1"}) == 60
    assert metric("traffic_ingest_bytes_sent_total", {"camera": "cam-1"}) == sum(len(r.value) for r in records)


def test_gate_off_sends_every_frame_whole(tmp_path: Path, shared: Path, kafka_settings: KafkaSettings, topic_settings: TopicSettings) -> None:
    video = make_video(shared / "videos" / "intersection.mp4", tmp_path / "quiet.mp4", [], total_frames=20, fps=10)
    settings = IngestSettings(site_config=str(_site(tmp_path, video)), realtime=False, metrics_port=0, activity_gate=False)
    _run(settings, kafka_settings, topic_settings)
    records = _consume(kafka_settings, topic_settings.frames, 20)
    assert len(records) == 20
    assert all(FrameHeaders.from_kafka(r.headers).unchanged_since is None and r.value[:2] == b"\xff\xd8" for r in records)

"""One dead-letter header schema for every stage; refused frames lose their image unless asked to keep it (frames DLQ)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pytest

from traffic.dlq import DLQ_HEADERS, DeadLetterInfo, dead_letter, event_dead_letter, frame_dead_letter
from traffic.settings import TopicSettings
from traffic.wire import FrameHeaders


@dataclass
class Record:  # the attributes kafka-python's ConsumerRecord and faust's Message share
    topic: str
    partition: int
    offset: int
    key: Any
    value: Any
    headers: Any


JPEG = b"\xff\xd8" + bytes(range(256)) * 40 + b"\xff\xd9"
FRAME = Record("traffic.frames", 3, 1234, b"cam-1", JPEG, FrameHeaders("cam-1", "x-1", "s1", 7, 1_700_000_000_000, 640, 480).to_kafka())


def test_a_refused_frame_keeps_headers_size_and_hash_but_not_the_image() -> None:
    letter = frame_dead_letter(FRAME, TopicSettings(), stage="worker", reason="unknown_camera", detail="camera 'cam-1' is not in the site")
    assert letter.topic == "traffic.dlq" and letter.value == b"" and letter.key == b"cam-1"
    info = DeadLetterInfo.from_headers(letter.headers)
    assert (info.reason, info.stage, info.value_kept, info.value_bytes) == ("unknown_camera", "worker", False, len(JPEG))
    assert info.value_sha256 == hashlib.sha256(JPEG).hexdigest()
    assert (info.source_topic, info.source_partition, info.source_offset) == ("traffic.frames", 3, 1234)
    assert FrameHeaders.from_kafka(info.original_headers) == FrameHeaders.from_kafka(FRAME.headers), "the camera and capture time stay findable"
    assert [name for name, _ in letter.headers[-len(DLQ_HEADERS):]] == list(DLQ_HEADERS)


def test_keeping_images_sends_them_to_the_frames_dlq_with_the_frames_retention() -> None:
    topics = TopicSettings(dlq_keep_frame_images=True)
    letter = frame_dead_letter(FRAME, topics, stage="worker", reason="undecodable", detail="bad")
    assert letter.topic == topics.frames_dlq and letter.value == JPEG
    assert DeadLetterInfo.from_headers(letter.headers).value_kept


def test_events_go_unchanged_to_the_dlq_and_faust_dict_headers_work() -> None:
    event = Record("traffic.detections", 0, 5, "cam-1", b'{"not": "an event"}', {"trace": "abc"})
    letter = event_dead_letter(event, TopicSettings(), stage="aggregator", reason="malformed", detail="DetectionEvent: camera: missing")
    assert letter.topic == "traffic.dlq" and letter.value == event.value and letter.key == b"cam-1"
    info = DeadLetterInfo.from_headers(letter.headers)
    assert info.stage == "aggregator" and info.value_kept and info.original_headers == [("trace", b"abc")]


def test_detail_is_one_masked_line_of_at_most_500_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAFFIC_KAFKA_SASL_PASSWORD", "hunter2-pw")
    detail = "line one\nrtsp://admin:cam-pass@10.0.0.1/s hunter2-pw " + "x" * 1000
    info = DeadLetterInfo.from_headers(dead_letter(FRAME, stage="worker", reason="r", detail=detail, topic="d").headers)
    assert "\n" not in info.detail and len(info.detail) == 500
    assert "cam-pass" not in info.detail and "hunter2-pw" not in info.detail


def test_a_hostile_record_cannot_pose_as_a_dead_letter_of_another_reason() -> None:
    hostile = Record("traffic.frames", 0, 1, None, b"x", [("reason", b"all-good"), ("stage", b"nobody"), ("camera", b"c")])
    letter = dead_letter(hostile, stage="worker", reason="missing_header", detail="frame is missing headers", topic="d")
    assert [v for n, v in letter.headers if n == "reason"] == [b"missing_header"]
    assert DeadLetterInfo.from_headers(letter.headers).original_headers == [("camera", b"c")]


def test_empty_and_missing_values_and_headers() -> None:
    letter = dead_letter(Record("t", 0, 0, None, None, None), stage="worker", reason="empty", detail="", topic="d")
    info = DeadLetterInfo.from_headers(letter.headers)
    assert info.value_bytes == 0 and info.value_sha256 == hashlib.sha256(b"").hexdigest() and info.original_headers == []
    with pytest.raises(KeyError, match="reason"):
        DeadLetterInfo.from_headers([("stage", b"worker")])

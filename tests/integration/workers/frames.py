"""Test helpers: publish real frames of the sample video to Kafka, read events back, run a worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cv2
from kafka import KafkaConsumer, KafkaProducer

from devkit.broker import free_port
from traffic.settings import KafkaSettings, TopicSettings
from traffic.wire import DetectionEvent, FrameHeaders


def video_jpegs(video: Path, count: int, every: int = 3, quality: int = 80) -> list[bytes]:
    """``count`` JPEG frames of ``video``, one in ``every`` (10 fps from a 30 fps file)."""
    cap = cv2.VideoCapture(str(video))
    out: list[bytes] = []
    index = 0
    try:
        while len(out) < count:
            ok, frame = cap.read()
            if not ok:
                break
            if index % every == 0:
                ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
                assert ok
                out.append(buf.tobytes())
            index += 1
    finally:
        cap.release()
    return out


def publish_frames(kafka: KafkaSettings, topic: str, jpegs: list[bytes], camera: str = "cam-demo",
                   intersection: str = "demo-intersection", session: str | None = None, start_ms: int | None = None,
                   width: int = 640, height: int = 480) -> str:  # fmt: skip
    """Publish frames with contract headers (seq 0..n-1); returns the session id."""
    session = session or uuid.uuid4().hex[:12]
    start_ms = start_ms if start_ms is not None else int(time.time() * 1000)
    producer = KafkaProducer(**kafka.kafka_python(), acks="all", max_request_size=4 * 1024 * 1024)
    try:
        for seq, jpeg in enumerate(jpegs):
            headers = FrameHeaders(camera, intersection, session, seq, start_ms + seq * 100, width, height)
            producer.send(topic, key=camera.encode(), value=jpeg, headers=headers.to_kafka())
        producer.flush(timeout=60)
    finally:
        producer.close()
    return session


def read_events(kafka: KafkaSettings, topic: str, expected_keys: int, timeout_s: float = 120) -> list[DetectionEvent]:
    """Detection events until ``expected_keys`` distinct (camera, session, seq) are seen or the timeout."""
    consumer = KafkaConsumer(topic, **kafka.kafka_python(), auto_offset_reset="earliest", group_id=None)
    events: list[DetectionEvent] = []
    keys: set[tuple[str, str, int]] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while len(keys) < expected_keys and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                for message in batch:
                    event = DetectionEvent.decode(message.value)
                    events.append(event)
                    keys.add(event.frame_key)
    finally:
        consumer.close()
    return events


def read_raw(kafka: KafkaSettings, topic: str, expected: int, timeout_s: float = 60) -> list:
    """Raw records of ``topic`` until ``expected`` arrived or the timeout."""
    consumer = KafkaConsumer(topic, **kafka.kafka_python(), auto_offset_reset="earliest", group_id=None)
    out: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                out.extend(batch)
    finally:
        consumer.close()
    return out


def start_worker(kafka: KafkaSettings, topics: TopicSettings, model: Path, log_path: Path, group: str,
                 extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:  # fmt: skip
    """A ``traffic worker`` subprocess in its own process group; returns it and its metrics port."""
    port = free_port()
    env = {
        **os.environ, "TRAFFIC_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "TRAFFIC_WORKER_MODEL": str(model),
        "TRAFFIC_WORKER_GROUP_ID": group, "TRAFFIC_WORKER_METRICS_PORT": str(port),
        **{f"TRAFFIC_TOPICS_{k.upper()}": str(v) for k, v in topics.model_dump().items()}, **(extra_env or {}),
    }  # fmt: skip
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "traffic.cli", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    return proc, port

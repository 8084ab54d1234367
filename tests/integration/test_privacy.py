"""No picture of the public outlives the frames' retention; persons found by the detector are blurred.

Against the real broker (whose retention check runs every 5 s in tests) and the real model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from kafka import TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from traffic import clients
from traffic.dlq import DeadLetterInfo
from traffic.settings import KafkaSettings, TopicSettings
from traffic.topics import admin_client
from traffic.wire import FrameHeaders

from tests.integration.workers.frames import publish_frames, read_events, read_raw, start_worker, video_jpegs




def _topics(prefix: str, **kw) -> TopicSettings:
    return TopicSettings(
        frames=f"{prefix}.frames", detections=f"{prefix}.detections", crossings=f"{prefix}.crossings", counts=f"{prefix}.counts",
        dlq=f"{prefix}.dlq", frames_dlq=f"{prefix}.frames-dlq", frames_partitions=1, detections_partitions=1, output_partitions=1, **kw,
    )  # fmt: skip


def _configs(kafka: KafkaSettings, topic: str) -> dict[str, str]:
    admin = admin_client(kafka)
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])["topic"][topic]
    finally:
        admin.close()
    return {k: v["value"] for k, v in described.items()}


def test_the_topics_command_gives_every_image_topic_the_frames_retention(kafka_settings: KafkaSettings) -> None:
    topics = _topics(f"p{uuid.uuid4().hex[:8]}")
    env = {**os.environ, **clients.environment(kafka_settings), **{f"TRAFFIC_TOPICS_{k.upper()}": str(v) for k, v in topics.model_dump().items()}}
    proc = subprocess.run([sys.executable, "-m", "traffic.cli", "topics", "create"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ten_minutes, fourteen_days = str(10 * 60 * 1000), str(14 * 86400 * 1000)
    for image_topic in (topics.frames, topics.frames_dlq):
        cfg = _configs(kafka_settings, image_topic)
        assert cfg["retention.ms"] == ten_minutes and cfg["cleanup.policy"] == "delete", image_topic
        assert int(cfg["segment.ms"]) <= int(ten_minutes) // 2, f"{image_topic}: an open segment would hold images past the retention"
    assert _configs(kafka_settings, topics.dlq)["retention.ms"] == fourteen_days  # events keep the DLQ's retention


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_ready(port: int, proc: subprocess.Popen, timeout_s: float = 240) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the worker exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("the worker did not get ready")


def _records_left(kafka: KafkaSettings, topic: str) -> int:
    consumer = clients.consumer(kafka, client_id="retention-probe")
    try:
        tp = TopicPartition(topic, 0)
        return consumer.end_offsets([tp])[tp] - consumer.beginning_offsets([tp])[tp]
    finally:
        consumer.close()


def test_a_refused_frame_is_unreadable_with_its_image_after_the_frames_retention(
    kafka_settings: KafkaSettings, shared: Path, model: Path, tmp_path: Path
) -> None:
    """Kept for debugging (dlq_keep_frame_images): in the frames DLQ, gone with the frames' retention; the DLQ never has it."""
    retention_ms = 6000
    topics = _topics(f"r{uuid.uuid4().hex[:8]}", frames_retention_ms=retention_ms, dlq_keep_frame_images=True)
    from traffic.topics import create_topics

    create_topics(kafka_settings, topics)
    good = video_jpegs(shared / "videos" / "intersection.mp4", 1)
    bad = good[0][: len(good[0]) // 2]  # a truncated JPEG from a real camera picture
    proc, port = start_worker(kafka_settings, topics, model, tmp_path / "w.log", f"g-{uuid.uuid4().hex[:6]}", {"TRAFFIC_WORKER_SITE_CONFIG": ""})
    try:
        _wait_ready(port, proc)  # the frames themselves only live 6 s here: send them once the worker consumes
        headers = FrameHeaders("cam-demo", "demo-intersection", "sbad", 0, int(time.time() * 1000), 640, 480).to_kafka()
        producer = clients.producer(kafka_settings, client_id="t", acks="all", max_request_size=4 * 1024 * 1024)
        producer.send(topics.frames, key=b"cam-demo", value=bad, headers=headers).get(timeout=30)
        producer.close()
        session = publish_frames(kafka_settings, topics.frames, good)
        events = read_events(kafka_settings, topics.detections, 1)
        kept = read_raw(kafka_settings, topics.frames_dlq, 1)
    finally:
        _stop(proc)
    written = time.monotonic()
    assert {e.session for e in events} == {session}
    assert len(kept) == 1 and kept[0].value == bad, "the debugging copy has the image"
    info = DeadLetterInfo.from_headers(kept[0].headers)
    assert (info.reason, info.stage, info.value_kept) == ("undecodable", "worker", True)
    assert _records_left(kafka_settings, topics.dlq) == 0, "nothing of it in the long-lived DLQ"
    # retention + half of it (segment roll) + the broker's 5 s retention check, with a wide margin for a loaded machine
    deadline = written + retention_ms * 1.5 / 1000 + 5 + 60
    while _records_left(kafka_settings, topics.frames_dlq) and time.monotonic() < deadline:
        time.sleep(1)
    left = _records_left(kafka_settings, topics.frames_dlq)
    assert left == 0, f"the refused frame's image is still readable {time.monotonic() - written:.0f} s after it was written"
    assert read_raw(kafka_settings, topics.frames_dlq, 1, timeout_s=3) == []


def test_the_annotator_blurs_the_persons_the_detector_finds(model: Path, tmp_path: Path) -> None:
    """bus.jpg has people in front of a bus: each detected person's box ends up smooth, the bus keeps its detail."""
    import cv2

    from offline.annotate import VideoAnnotator
    from offline.count import FrameResult
    from traffic.detections import Detections
    from traffic.site import load_site
    from workers.detector import Detector, DetectorSettings

    import ultralytics

    bus = Path(ultralytics.__file__).parent / "assets" / "bus.jpg"  # people in front of a bus, shipped with ultralytics
    image = cv2.resize(cv2.imread(str(bus)), (640, 480))
    (found,) = Detector(DetectorSettings(model=str(model), classes=("person", "bus"), batch_size=1)).detect([image])
    persons = [d for d in found if d.label == "person"]
    assert len(persons) >= 2, found
    _, camera = load_site(Path(__file__).resolve().parents[2] / "deploy" / "sites" / "intersection-demo.yaml").camera("cam-demo")
    out = VideoAnnotator(tmp_path / "a.mp4", camera, 10).draw(FrameResult(0, 0, image, Detections.empty(), [], tuple(found)))
    gray_in, gray_out = (cv2.cvtColor(i, cv2.COLOR_BGR2GRAY).astype(np.float32) for i in (image, out))
    for d in persons:
        x1, y1, x2, y2 = d.box
        rows, cols = slice(int(y1 * 480) + 2, int(y2 * 480) - 2), slice(int(x1 * 640) + 2, int(x2 * 640) - 2)
        before = np.median(np.abs(cv2.Laplacian(gray_in[rows, cols], cv2.CV_32F)))
        after = np.median(np.abs(cv2.Laplacian(gray_out[rows, cols], cv2.CV_32F)))
        assert after < 0.25 * before, f"person at {d.box} is not blurred ({before:.1f} -> {after:.1f})"

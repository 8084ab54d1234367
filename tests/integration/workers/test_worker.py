"""Detection workers against the real broker and the real model."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from kafka import KafkaProducer

from traffic.dlq import DeadLetterInfo
from traffic.settings import KafkaSettings, TopicSettings
from traffic.wire import DetectionEvent, FrameHeaders

from tests.integration.aggregator.harness import committed
from .frames import publish_frames, read_events, read_raw, start_worker, video_jpegs
from tests.integration.restarts import phases as log_phases

import ultralytics

BUS = Path(ultralytics.__file__).parent / "assets" / "bus.jpg"

RESUME_LIMIT_S = 15.0
"""Issue 11: a restarted worker resumes within 15 s of starting (static group membership: the
broker hands the partitions straight back to the same instance id, no wait for the dead member's
session). *Resumed*: from just before the new process is started to the first look (every 0.2 s)
that finds the group's committed offset on the frames topic beyond the one the killed process
left - it has published events of frames it had not and committed them; so it includes up to one
commit interval (``COMMIT_INTERVAL_MS``, 500 ms)."""

WORKER_PHASES = {"model loaded": "model_loaded", "worker running": "consumer_created", "partitions assigned": "assigned"}



def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()
    return proc.returncode


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name) and not line.startswith("#"))


def _wait_events_out(port: int, at_least: int, deadline: float, poll_s: float) -> None:
    """Until the worker on ``port`` has published ``at_least`` events, or ``deadline`` (monotonic) passes."""
    while time.monotonic() < deadline:
        try:
            if _metric(port, "traffic_worker_events_out_total") >= at_least:
                return
        except OSError:
            pass  # not serving /metrics yet
        time.sleep(poll_s)


def _readyz(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_batch_composition_does_not_change_detections(shared: Path, model: Path) -> None:
    """A frame alone, in a batch of 8, or at another place of a longer list: the same detections.

    This is what lets ``traffic count`` (frame by frame) and the streaming worker (micro-batches
    across cameras) produce identical counts.
    """
    from workers.detector import Detector, DetectorSettings

    frames = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in video_jpegs(shared / "videos" / "intersection.mp4", 10)]
    bus = cv2.imread(str(BUS))  # another frame size in the same batch (810x1080 beside 640x480)
    detector = Detector(DetectorSettings(model=str(model), batch_size=8))
    alone = [detector.detect([f])[0] for f in frames]
    mixed = detector.detect([bus, *frames])  # 11 frames: chunks of 8 and 3, a foreign size first
    assert mixed[1:] == alone
    assert mixed[0] == detector.detect([bus])[0]
    assert any(alone), "the sample frames have detections to compare"


def test_shared_model_finds_one_bus_and_four_persons(model: Path) -> None:
    from workers.detector import Detector, DetectorSettings

    detector = Detector(DetectorSettings(model=str(model)))
    (found,) = detector.detect([cv2.imread(str(BUS))])
    labels = sorted(d.label for d in found)
    assert labels == ["bus", "person", "person", "person", "person"]
    assert all(0 <= v <= 1 for d in found for v in d.box)


def test_every_frame_gets_an_event_with_cars(kafka_settings: KafkaSettings, topic_settings: TopicSettings,
                                             shared: Path, model: Path, tmp_path: Path) -> None:  # fmt: skip
    jpegs = video_jpegs(shared / "videos" / "intersection.mp4", 60)
    session = publish_frames(kafka_settings, topic_settings.frames, jpegs)
    proc, port = start_worker(kafka_settings, topic_settings, model, tmp_path / "w.log", f"g-{uuid.uuid4().hex[:6]}")
    try:
        events = read_events(kafka_settings, topic_settings.detections, 60)
        assert _metric(port, "traffic_worker_model_loaded") == 1
        status, detail = _readyz(port)
        assert (status, detail["model"], detail["kafka"]) == (200, "ok", "ok"), detail
        assert _metric(port, "traffic_worker_batch_size_count") > 0
        lags = [_metric(port, "traffic_worker_consumer_lag")]
        deadline = time.monotonic() + 15  # the gauge is refreshed every 2 s
        while lags[-1] != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            lags.append(_metric(port, "traffic_worker_consumer_lag"))
        assert lags[-1] == 0, f"every frame consumed, lag gauge went {lags}"
    finally:
        assert _stop(proc) == 0, (tmp_path / "w.log").read_text()[-3000:]
    assert {e.seq for e in events if e.session == session} == set(range(60))
    assert all(e.camera == "cam-demo" and e.width == 640 for e in events)
    cars = [sum(d.label == "car" for d in e.detections) for e in events]
    assert min(cars) >= 3, "the sample view always shows parked cars"


def test_two_workers_split_partitions_and_produce_every_event(kafka_settings: KafkaSettings, topic_settings: TopicSettings,
                                                              shared: Path, model: Path, tmp_path: Path) -> None:  # fmt: skip
    jpegs = video_jpegs(shared / "videos" / "intersection.mp4", 20)
    group = f"g-{uuid.uuid4().hex[:6]}"
    workers = [start_worker(kafka_settings, topic_settings, model, tmp_path / f"w{i}.log", group) for i in range(2)]
    try:
        time.sleep(8)  # both join the group before the frames arrive
        cameras = [f"cam-{i}" for i in range(8)]  # 8 keys spread over the 4 partitions
        for camera in cameras:
            publish_frames(kafka_settings, topic_settings.frames, jpegs, camera=camera)
        events = read_events(kafka_settings, topic_settings.detections, 8 * 20, timeout_s=180)
        per_worker = [_metric(port, "traffic_worker_frames_in_total") for _, port in workers]
    finally:
        for proc, _ in workers:
            _stop(proc)
    assert {(e.camera, e.seq) for e in events} == {(c, s) for c in cameras for s in range(20)}
    assert all(n > 0 for n in per_worker), f"one worker got no partition: {per_worker}"


def _hand_over(kafka_settings: KafkaSettings, topic_settings: TopicSettings, shared: Path, model: Path, tmp_path: Path,
               frames: int, after: int, stop_first: Callable[[subprocess.Popen], None]) -> tuple[str, list[DetectionEvent]]:  # fmt: skip
    """``frames`` frames of the sample published; the group's first worker stopped by ``stop_first`` once it published
    ``after`` events (or after 120 s); a second worker of the group goes on. Returns (the frames' session, every event read)."""
    session = publish_frames(kafka_settings, topic_settings.frames, video_jpegs(shared / "videos" / "intersection.mp4", frames))
    group = f"g-{uuid.uuid4().hex[:6]}"
    proc, port = start_worker(kafka_settings, topic_settings, model, tmp_path / "w1.log", group)
    _wait_events_out(port, after, time.monotonic() + 120, 0.1)
    stop_first(proc)
    proc2, _ = start_worker(kafka_settings, topic_settings, model, tmp_path / "w2.log", group)
    try:
        return session, read_events(kafka_settings, topic_settings.detections, frames, timeout_s=180)
    finally:
        _stop(proc2)


@pytest.mark.faults
@pytest.mark.slow  # a worker kill -9 and restart (30 s): the faults stage (-m faults); SIGTERM stays in the default suite
def test_kill_9_mid_stream_then_restart_loses_no_frame(kafka_settings: KafkaSettings, topic_settings: TopicSettings,
                                                        shared: Path, model: Path, tmp_path: Path) -> None:  # fmt: skip
    def kill_9(proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    session, events = _hand_over(kafka_settings, topic_settings, shared, model, tmp_path, 120, 40, kill_9)
    assert {e.seq for e in events if e.session == session} == set(range(120)), "a frame lost its event"


def _wait_committed(kafka: KafkaSettings, group: str, topic: str, beyond: int, proc: subprocess.Popen, log: Path, timeout_s: float) -> float:
    """Seconds until ``group`` has committed an offset beyond ``beyond`` on ``topic``."""
    started = time.monotonic()
    while committed(kafka.bootstrap_servers, group, topic) <= beyond:
        assert proc.poll() is None, f"worker exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() - started < timeout_s, f"no progress within {timeout_s} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    return time.monotonic() - started


@pytest.mark.faults
@pytest.mark.slow  # timed (model load dominates a restart: 11-12 s quiet, 30 s at load 8, docs/workers.md "Restart time"): after the default suite (-m faults)
@pytest.mark.timeout(600)
def test_kill_9_then_restart_with_the_same_instance_id_resumes_within_15_s(kafka_settings: KafkaSettings, topic_settings: TopicSettings,
                                                                           shared: Path, model: Path, tmp_path: Path) -> None:  # fmt: skip
    """Two ``kill -9`` mid-stream, each followed by a new worker with the same ``GROUP_INSTANCE_ID``."""
    jpegs = video_jpegs(shared / "videos" / "intersection.mp4", 100)
    start_ms = int(time.time() * 1000) - 60_000  # all in the past: inside the capture-time window
    for i in range(3):  # 300 frames: more than the test processes
        publish_frames(kafka_settings, topic_settings.frames, jpegs, session=f"r{i}", start_ms=start_ms + i * 10_000)
    group, env = f"g-{uuid.uuid4().hex[:6]}", {"TRAFFIC_WORKER_GROUP_INSTANCE_ID": "worker-recovery-0"}
    log = tmp_path / "w.log"
    proc, _ = start_worker(kafka_settings, topic_settings, model, log, group, env)
    resumes: list[float] = []
    phases: list[dict[str, float]] = []
    try:
        _wait_committed(kafka_settings, group, topic_settings.frames, 0, proc, log, 180)
        for _ in range(2):
            time.sleep(2.0)  # inference, with commits behind it
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            at = committed(kafka_settings.bootstrap_servers, group, topic_settings.frames)
            assert at < 300, "frames left to resume on"
            log_at = log.stat().st_size
            started_wall = time.time()
            proc, _ = start_worker(kafka_settings, topic_settings, model, log, group, env)
            resumes.append(_wait_committed(kafka_settings, group, topic_settings.frames, at, proc, log, 120))
            phases.append({**log_phases(log.read_bytes()[log_at:].decode(errors="replace"), started_wall, WORKER_PHASES),
                           "resumed": round(resumes[-1], 1)})  # fmt: skip
    finally:
        _stop(proc)
    print(f"worker restarts after kill -9 (machine load {os.getloadavg()[0]:.1f}): seconds from start {phases}")
    assert max(resumes) <= RESUME_LIMIT_S, f"a restart took {max(resumes):.1f} s to resume: {phases}"


def test_bad_frames_go_to_the_dlq_and_the_worker_goes_on(kafka_settings: KafkaSettings, topic_settings: TopicSettings,
                                                         shared: Path, model: Path, tmp_path: Path) -> None:  # fmt: skip
    good = video_jpegs(shared / "videos" / "intersection.mp4", 3)
    headers = FrameHeaders("cam-demo", "demo-intersection", "sbad", 0, int(time.time() * 1000), 640, 480).to_kafka()
    garbage = [(k, b"not-a-number") if k == "seq" else (k, v) for k, v in headers]
    producer = KafkaProducer(**kafka_settings.kafka_python(), acks="all", max_request_size=4 * 1024 * 1024)
    bad = [
        (b"\xff\xd8 this is not really a jpeg \xff\xd9", headers, "undecodable"),  # corrupt JPEG
        (good[0][: len(good[0]) // 2], headers, "undecodable"),  # truncated JPEG
        (good[0], None, "missing_header"),  # a frame without headers
        (good[0], garbage, "bad_header"),  # garbage header values
        (b"\x00" * 100, headers, "undecodable"),  # garbage value
    ]
    for value, hdrs, _ in bad:
        producer.send(topic_settings.frames, key=b"cam-demo", value=value, headers=hdrs)
    producer.flush()
    producer.close()
    session = publish_frames(kafka_settings, topic_settings.frames, good)
    proc, port = start_worker(kafka_settings, topic_settings, model, tmp_path / "w.log", f"g-{uuid.uuid4().hex[:6]}",
                              {"TRAFFIC_WORKER_SITE_CONFIG": ""})  # fmt: skip
    try:
        events = read_events(kafka_settings, topic_settings.detections, 3)
        dead = read_raw(kafka_settings, topic_settings.dlq, len(bad))
        dlq_metric = _metric(port, "traffic_worker_dlq_total")
        assert proc.poll() is None, "the worker must keep running"
    finally:
        _stop(proc)
    assert {e.seq for e in events if e.session == session} == {0, 1, 2}
    reasons = [dict(r.headers)["reason"].decode() for r in dead]
    assert sorted(reasons) == sorted(reason for _, _, reason in bad)
    assert all(dict(r.headers)["stage"] == b"worker" for r in dead)
    infos = [DeadLetterInfo.from_headers(r.headers) for r in dead]
    assert all(r.value == b"" and not i.value_kept for r, i in zip(dead, infos)), "no image of a refused frame in the DLQ"
    assert sorted(i.value_sha256 for i in infos) == sorted(hashlib.sha256(v).hexdigest() for v, _, _ in bad), "size and hash identify the input"
    assert sorted(i.value_bytes for i in infos) == sorted(len(v) for v, _, _ in bad)
    assert dlq_metric == len(bad)


def test_unknown_camera_goes_to_the_dlq(kafka_settings: KafkaSettings, topic_settings: TopicSettings, shared: Path,
                                        model: Path, demo_site_file: Path, tmp_path: Path) -> None:  # fmt: skip
    jpegs = video_jpegs(shared / "videos" / "intersection.mp4", 2)
    publish_frames(kafka_settings, topic_settings.frames, jpegs, camera="cam-nobody-knows")
    known = publish_frames(kafka_settings, topic_settings.frames, jpegs)
    proc, _ = start_worker(kafka_settings, topic_settings, model, tmp_path / "w.log", f"g-{uuid.uuid4().hex[:6]}",
                           {"TRAFFIC_WORKER_SITE_CONFIG": str(demo_site_file)})  # fmt: skip
    try:
        events = read_events(kafka_settings, topic_settings.detections, 2)
        dead = read_raw(kafka_settings, topic_settings.dlq, 2)
    finally:
        _stop(proc)
    assert {(e.camera, e.session) for e in events} == {("cam-demo", known)}
    assert [dict(r.headers)["reason"] for r in dead] == [b"unknown_camera"] * 2


def test_end_of_session_marker_becomes_an_end_event(kafka_settings: KafkaSettings, topic_settings: TopicSettings,
                                                    shared: Path, model: Path, tmp_path: Path) -> None:  # fmt: skip
    jpegs = video_jpegs(shared / "videos" / "intersection.mp4", 3)
    session = publish_frames(kafka_settings, topic_settings.frames, jpegs, start_ms=1_000_000)
    marker = FrameHeaders("cam-demo", "demo-intersection", session, 3, 1_000_200, 640, 480, end=True)
    producer = KafkaProducer(**kafka_settings.kafka_python(), acks="all")
    producer.send(topic_settings.frames, key=b"cam-demo", value=b"", headers=marker.to_kafka()).get(timeout=30)
    producer.close()
    proc, _ = start_worker(kafka_settings, topic_settings, model, tmp_path / "w.log", f"g-{uuid.uuid4().hex[:6]}",
                           {"TRAFFIC_WORKER_CAPTURE_MAX_AGE_S": str(60 * 365 * 86400)})  # capture times of 1970  # fmt: skip
    try:
        events = sorted(read_events(kafka_settings, topic_settings.detections, 4), key=lambda e: e.seq)
    finally:
        _stop(proc)
    assert [(e.seq, e.end_of_session) for e in events] == [(0, False), (1, False), (2, False), (3, True)]
    assert events[-1].detections == () and events[-1].capture_ms == 1_000_200


def test_streams_give_ultralytics_detections(shared: Path, model: Path) -> None:
    """The OpenVINO-streams engine (the default for this export) finds exactly what Ultralytics' predict finds."""
    from ultralytics import YOLO

    from workers.detector import _CONF_SLACK, Detector, DetectorSettings

    frames = [cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR) for j in video_jpegs(shared / "videos" / "intersection.mp4", 12)]
    frames.append(cv2.imread(str(BUS)))  # another size: the letterbox differs
    detector = Detector(DetectorSettings(model=str(model)))
    assert detector.engine == "openvino-streams" and detector.parallelism >= 1
    plain = YOLO(str(model), task="detect")
    expected = []
    for frame in frames:
        # The detector's own threshold (the default, with its slack): _detections then applies it to the rounded score.
        (result,) = plain.predict(frame, conf=detector.settings.conf - _CONF_SLACK, iou=0.7, classes=detector.class_ids, verbose=False)
        expected.append(detector._detections(result))  # noqa: SLF001 - the same conversion, to compare the model's output
    assert sum(map(len, expected)) > 20  # not vacuous: the frames have many boxes
    assert detector.detect(frames) == expected
    single = Detector(DetectorSettings(model=str(model), streams=1))
    assert single.engine == "ultralytics" and single.detect(frames) == expected


def test_unchanged_frames_skip_the_model_and_say_which_frame_they_reuse(kafka_settings: KafkaSettings, topic_settings: TopicSettings,
                                                                          shared: Path, model: Path, tmp_path: Path) -> None:  # fmt: skip
    """Frames the ingester marked unchanged (no JPEG) become events with reused_from_seq and no detections."""
    jpegs = video_jpegs(shared / "videos" / "intersection.mp4", 3)
    session = publish_frames(kafka_settings, topic_settings.frames, jpegs, start_ms=2_000_000)
    producer = KafkaProducer(**kafka_settings.kafka_python(), acks="all")
    for seq in (3, 4, 5):
        headers = FrameHeaders("cam-demo", "demo-intersection", session, seq, 2_000_000 + seq * 100, 640, 480, unchanged_since=2)
        producer.send(topic_settings.frames, key=b"cam-demo", value=b"", headers=headers.to_kafka())
    producer.flush()
    producer.close()
    proc, port = start_worker(kafka_settings, topic_settings, model, tmp_path / "w.log", f"g-{uuid.uuid4().hex[:6]}",
                              {"TRAFFIC_WORKER_CAPTURE_MAX_AGE_S": str(60 * 365 * 86400)})  # capture times of 1970  # fmt: skip
    try:
        events = sorted(read_events(kafka_settings, topic_settings.detections, 6), key=lambda e: e.seq)
        reused = _metric(port, "traffic_worker_frames_reused_total")
        decoded = _metric(port, "traffic_worker_decode_seconds_count")
    finally:
        assert _stop(proc) == 0
    assert [(e.seq, e.reused_from_seq) for e in events] == [(0, None), (1, None), (2, None), (3, 2), (4, 2), (5, 2)]
    assert all(e.detections for e in events[:3]) and not any(e.detections for e in events[3:])
    assert all(e.inference_ms is None for e in events[3:])
    assert (reused, decoded) == (3, 3)


def test_sigterm_with_batches_in_flight_commits_them_and_loses_nothing(kafka_settings: KafkaSettings, topic_settings: TopicSettings,
                                                                        shared: Path, model: Path, tmp_path: Path) -> None:  # fmt: skip
    """SIGTERM mid-stream: the batches in flight are finished, acknowledged and committed; the next worker goes on after them."""
    def sigterm(proc: subprocess.Popen) -> None:
        assert _stop(proc) == 0, (tmp_path / "w1.log").read_text()[-3000:]

    session, events = _hand_over(kafka_settings, topic_settings, shared, model, tmp_path, 80, 16, sigterm)
    seqs = [e.seq for e in events if e.session == session]
    assert set(seqs) == set(range(80)), "a frame lost its event"
    # A clean drain commits everything the first worker published, so the second one redoes nothing.
    assert len(seqs) == 80, f"{len(seqs) - 80} frames were published twice after a clean SIGTERM"


@pytest.mark.slow  # two workers and a backlog (~55 s): .ci/run runs it after the default suite
def test_rebalance_with_batches_in_flight_loses_nothing_and_commits_everything(kafka_settings: KafkaSettings, topic_settings: TopicSettings,
                                                                                shared: Path, model: Path, tmp_path: Path) -> None:  # fmt: skip
    """A second worker joins while the first is busy with a backlog: partitions are revoked with batches in flight."""
    from kafka import KafkaConsumer, TopicPartition

    jpegs = video_jpegs(shared / "videos" / "intersection.mp4", 100)
    cameras = [f"cam-{i}" for i in range(6)]  # 6 keys over the 4 partitions
    for camera in cameras:
        publish_frames(kafka_settings, topic_settings.frames, jpegs, camera=camera)
    group = f"g-{uuid.uuid4().hex[:6]}"
    first, port = start_worker(kafka_settings, topic_settings, model, tmp_path / "w1.log", group)
    second = None
    try:
        deadline = time.monotonic() + 180
        _wait_events_out(port, 24, deadline, 0.1)
        second, port2 = start_worker(kafka_settings, topic_settings, model, tmp_path / "w2.log", group)
        while time.monotonic() < deadline + 180:  # ready = the group gave it an assignment: the first worker's partitions were revoked
            try:
                if _readyz(port2)[0] == 200:
                    break
            except OSError:
                pass  # not listening yet (loading the model)
            time.sleep(0.2)
        busy = _metric(port, "traffic_worker_events_out_total")
        assert busy < 600, "the first worker had finished before the rebalance: nothing was in flight"
        events = read_events(kafka_settings, topic_settings.detections, 6 * 100, timeout_s=300)
        assert _metric(port2, "traffic_worker_frames_in_total") > 0, "the second worker got no partition"
    finally:
        for proc in (first, second):
            if proc is not None:
                assert _stop(proc) == 0
    assert {(e.camera, e.seq) for e in events} == {(c, s) for c in cameras for s in range(100)}
    consumer = KafkaConsumer(**kafka_settings.kafka_python(), group_id=group, enable_auto_commit=False)  # reads, never joins
    try:
        parts = [TopicPartition(topic_settings.frames, p) for p in consumer.partitions_for_topic(topic_settings.frames)]
        ends = consumer.end_offsets(parts)
        committed = {tp: consumer.committed(tp) or 0 for tp in parts}
    finally:
        consumer.close(autocommit=False)
    assert committed == ends, "after the drain every frame's offset is committed"

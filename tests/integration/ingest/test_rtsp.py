"""The ingester as a process against a real RTSP camera (GStreamer) and the real broker.

One run covers: frames of the RTSP stream arrive with valid headers at the sampling rate; the
camera is killed mid-stream and restarted on the same URL, and the ingester reconnects by itself
and goes on with the same session, seq where it stopped (metrics show the outage); a second, unreachable camera with credentials
never stops the service and its password never reaches the logs; SIGTERM ends the process
cleanly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from kafka import KafkaConsumer

from devkit.broker import free_port
from traffic.settings import KafkaSettings, TopicSettings
from traffic.wire import FrameHeaders

from .test_file import frame_headers

REPO = Path(__file__).resolve().parents[3]
CAMERA_PASSWORD = "Cam3raPw-0451"
BOGUS_PASSWORD = "b0gusSecret-9931"


def _simulated_camera(video: Path) -> object:
    from devkit.simulated_camera import SimulatedCamera, available

    ok, reason = available()
    if not ok:
        pytest.skip(f"simulated RTSP camera unavailable: {reason}")
    return SimulatedCamera(video, user="viewer", password=CAMERA_PASSWORD)


def _metrics(port: int) -> dict[tuple[str, str], float]:
    """(metric name, camera) -> value from /metrics (empty while the server is not up)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return {}
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("traffic_ingest_") and 'camera="' in line and "reason=" not in line and "_bucket" not in line:
            name = line.split("{", 1)[0]
            camera = line.split('camera="', 1)[1].split('"', 1)[0]
            out[(name, camera)] = float(line.rsplit(" ", 1)[1])
    return out


def test_rtsp_stream_outage_and_secrets(
    tmp_path: Path, shared: Path, kafka_settings: KafkaSettings, topic_settings: TopicSettings
) -> None:
    camera = _simulated_camera(shared / "videos" / "intersection.mp4")
    camera.start()  # type: ignore[attr-defined]
    site = {
        "intersections": [
            {
                "id": "it-rtsp",
                "cameras": [
                    {"id": "cam-rtsp", "source": "rtsp://127.0.0.1:9/set-by-override", "fps": 10, "max_width": 640},
                    {"id": "cam-bogus", "source": "rtsp://127.0.0.1:9/set-by-override", "fps": 10},
                ],
            }
        ]
    }
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(site))
    port = free_port()
    env = {
        **os.environ,
        "TRAFFIC_INGEST_SITE_CONFIG": str(site_file),
        # overrides carry the credentials; the variable name looks harmless on purpose, so only
        # the service's own URL masking can keep the passwords out of the logs
        "TRAFFIC_INGEST_SOURCES": f"cam-rtsp={camera.url},cam-bogus=rtsp://admin:{BOGUS_PASSWORD}@127.0.0.1:1/x",  # type: ignore[attr-defined]
        "TRAFFIC_INGEST_METRICS_PORT": str(port),
        "TRAFFIC_INGEST_OPEN_TIMEOUT_MS": "3000",
        "TRAFFIC_INGEST_READ_TIMEOUT_MS": "2000",
        "TRAFFIC_INGEST_BACKOFF_INITIAL_S": "0.2",
        "TRAFFIC_INGEST_BACKOFF_MAX_S": "1",
        "TRAFFIC_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "TRAFFIC_TOPICS_FRAMES": topic_settings.frames,
        "TRAFFIC_LOG_LEVEL": "DEBUG",
    }
    stderr_path = tmp_path / "ingest.stderr"
    consumer = KafkaConsumer(
        topic_settings.frames,
        **kafka_settings.kafka_python(),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    records: list = []
    camera_up_seen: list[float] = []

    def pump(seconds: float, until: Callable[[], bool] | None = None) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            up = _metrics(port).get(("traffic_ingest_camera_up", "cam-rtsp"))
            if up is not None:
                camera_up_seen.append(up)
            if until is not None and until():
                return

    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "traffic.cli", "ingest"], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=stderr
        )
        try:
            # 1. stream: at least 4 s of frames
            pump(30, until=lambda: len(records) >= 45)
            assert len(records) >= 45, "RTSP frames did not arrive"
            first_session = FrameHeaders.from_kafka(records[0].headers).session

            # 2. outage: kill the camera, see camera_up drop to 0, bring it back on the same URL
            camera.kill()  # type: ignore[attr-defined]
            camera_up_seen.clear()
            pump(10, until=lambda: 0.0 in camera_up_seen)
            assert 0.0 in camera_up_seen, "camera_up never went to 0 during the outage"
            time.sleep(1.5)
            before_restart = len(records)
            camera.start()  # type: ignore[attr-defined]

            # 3. the ingester reconnects by itself and the session goes on
            def resumed() -> bool:
                return len(records) >= before_restart + 20

            pump(40, until=resumed)
            assert resumed(), "no frames after the camera came back"
            metrics = _metrics(port)
            assert metrics[("traffic_ingest_reconnects_total", "cam-rtsp")] > 0
            assert metrics[("traffic_ingest_camera_up", "cam-rtsp")] == 1.0
            assert metrics[("traffic_ingest_reconnects_total", "cam-bogus")] > 0
            assert metrics[("traffic_ingest_camera_up", "cam-bogus")] == 0.0
            ready = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read())
            assert ready["ok"] is True
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = None
            camera.stop()  # type: ignore[attr-defined]
    pump(3)
    consumer.close()

    assert code == 0, f"ingester exited with {code}; stderr tail:\n{stderr_path.read_text()[-3000:]}"

    # Every record is a valid frame of cam-rtsp; one session across the outage, seq gap-free from 0,
    # and one end marker: at the SIGTERM, not at the outage (a reconnect is not the end of the stream).
    by_session: dict[str, list[FrameHeaders]] = defaultdict(list)
    markers = [FrameHeaders.from_kafka(r.headers) for r in records if FrameHeaders.from_kafka(r.headers).end]
    assert [m.session for m in markers] == [first_session], "expected one end marker, at the stop"
    assert markers[0].handover, "a live camera's ingester stopped: the camera goes on, the marker must say handover"
    assert FrameHeaders.from_kafka(records[-1].headers).end, "the end marker is the session's last record"
    records = [r for r in records if not FrameHeaders.from_kafka(r.headers).end]  # frames, not end markers
    for record in records:
        headers = FrameHeaders.from_kafka(record.headers)
        assert (record.key, headers.camera, headers.intersection) == (b"cam-rtsp", "cam-rtsp", "it-rtsp")
        by_session[headers.session].append(headers)
    assert list(by_session) == [first_session], "the session did not go on across the reconnect"
    for session, frames in by_session.items():
        assert [h.seq for h in frames] == list(range(len(frames))), f"session {session} has gaps or reordering"
    image = cv2.imdecode(np.frombuffer(records[-1].value, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (480, 640, 3) and (headers.width, headers.height) == (640, 480)

    # Sampling rate measured on capture times of the first connection (up to the outage's gap in
    # capture time, after the first second of start-up): 10 fps within 10 %.
    times = [h.capture_ms for h in by_session[first_session]]
    outage = next(i for i in range(1, len(times)) if times[i] - times[i - 1] > 1000)
    first = times[10:outage]
    rate = (len(first) - 1) / ((first[-1] - first[0]) / 1000)
    assert rate == pytest.approx(10, rel=0.1), f"sampled at {rate:.2f} fps"

    # Logs: JSON lines only (FFmpeg's own stderr chatter is silenced), no password anywhere.
    log_text = stderr_path.read_text()
    assert CAMERA_PASSWORD not in log_text and BOGUS_PASSWORD not in log_text
    lines = [line for line in log_text.splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # raises on any non-JSON line
    messages = {e["msg"] for e in events}
    assert {"camera state", "camera stream lost", "camera unavailable; backing off", "ingest stopped"} <= messages
    assert any("rtsp://admin:***@127.0.0.1:1/x" in json.dumps(e) for e in events)  # masked, but still useful


def test_stalled_rtsp_stream_is_detected_by_the_read_timeout(
    tmp_path: Path, shared: Path, kafka_settings: KafkaSettings, topic_settings: TopicSettings
) -> None:
    """A camera that freezes with its TCP connection open (SIGSTOP) must not hang the reader (opencv#24393).

    The read timeout ends the connection, reconnects time out while it is frozen, and after SIGCONT
    the ingester streams again, in the same session. In-process: only the state machine matters here.
    """
    from ingest.service import IngestService
    from ingest.settings import IngestSettings

    camera = _simulated_camera(shared / "videos" / "intersection.mp4")
    camera.start()  # type: ignore[attr-defined]
    site = {"intersections": [{"id": "it-1", "cameras": [{"id": "cam-1", "source": "rtsp://127.0.0.1:9/x", "fps": 5}]}]}
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(site))
    settings = IngestSettings(
        site_config=str(site_file),
        sources=f"cam-1={camera.url}",  # type: ignore[attr-defined]
        metrics_port=0,
        open_timeout_ms=1500,
        read_timeout_ms=1500,
        backoff_initial_s=0.2,
        backoff_max_s=0.5,
    )
    service = IngestService(settings, kafka_settings, topic_settings)
    registry = service.metrics.registry

    def value(name: str) -> float:
        return registry.get_sample_value(name, {"camera": "cam-1"}) or 0.0

    def wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and not condition():
            time.sleep(0.1)
        return condition()

    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    pid = camera.pid  # type: ignore[attr-defined]
    try:
        assert wait_for(lambda: value("traffic_ingest_frames_published_total") >= 5, 20), "no frames before the stall"
        os.killpg(pid, signal.SIGSTOP)
        stalled_at = time.monotonic()
        assert wait_for(lambda: value("traffic_ingest_camera_up") == 0.0, 10), "the frozen stream was not noticed"
        noticed_s = time.monotonic() - stalled_at
        assert wait_for(lambda: value("traffic_ingest_reconnects_total") >= 1, 10)
        published_during_stall = value("traffic_ingest_frames_published_total")
        time.sleep(1.0)
        os.killpg(pid, signal.SIGCONT)
        assert wait_for(lambda: value("traffic_ingest_frames_published_total") >= published_during_stall + 5, 30), (
            "no frames after the camera thawed"
        )
    finally:
        try:
            os.killpg(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        service.stop()
        thread.join(timeout=20)
        camera.stop()  # type: ignore[attr-defined]
    assert not thread.is_alive()
    # measured: read_timeout_ms + ~3 s (FFmpeg's RTSP demuxer adds its own wait); a hang would never end
    assert noticed_s < 1.5 + 5.0
    headers = frame_headers(kafka_settings, topic_settings.frames)
    sessions = list(dict.fromkeys(h.session for h in headers))
    assert len(sessions) == 1, f"the session did not go on across the reconnect: {sessions}"
    for session in sessions:
        assert [h.seq for h in headers if h.session == session] == list(range(sum(h.session == session for h in headers)))


def test_unknown_camera_is_a_config_error_with_exit_code_2(demo_site_file: Path, shared: Path) -> None:
    """A typo in --cameras fails at start-up with one clear line, not a traceback."""
    env = {**os.environ, "TRAFFIC_SHARED_DIR": str(shared), "TRAFFIC_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}
    proc = subprocess.run(
        [sys.executable, "-m", "traffic.cli", "ingest", "--site-config", str(demo_site_file), "--cameras", "cam-typo"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "cam-typo" in proc.stderr and "cam-demo" in proc.stderr and "Traceback" not in proc.stderr

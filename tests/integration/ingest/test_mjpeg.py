"""An HTTP-MJPEG camera (multipart/x-mixed-replace, as cheap IP cameras serve it) end to end."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from kafka import KafkaConsumer

from ingest.service import IngestService
from ingest.settings import IngestSettings
from traffic.settings import KafkaSettings, TopicSettings
from traffic.wire import FrameHeaders

SOURCE_FPS = 15.0


@pytest.fixture
def mjpeg_url(shared: Path) -> Iterator[str]:
    """``http://user:pw@127.0.0.1:<port>/video.mjpg`` streaming 30 frames of the sample video in a loop at 15 fps."""
    capture = cv2.VideoCapture(str(shared / "videos" / "intersection.mp4"))
    jpegs = [cv2.imencode(".jpg", capture.read()[1])[1].tobytes() for _ in range(30)]
    capture.release()
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            index, start = 0, time.monotonic()
            try:
                while not stop.is_set():
                    jpeg = jpegs[index % len(jpegs)]
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg) + jpeg + b"\r\n")
                    index += 1
                    time.sleep(max(0.0, start + index / SOURCE_FPS - time.monotonic()))
            except OSError:
                pass  # client went away

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://viewer:mjpeg-pw@127.0.0.1:{server.server_address[1]}/video.mjpg"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def test_mjpeg_camera(tmp_path: Path, mjpeg_url: str, kafka_settings: KafkaSettings, topic_settings: TopicSettings) -> None:
    """15 frames sampled at 5 of 15 fps: valid headers, seq 0..14, 640x480, 5 fps of capture time within 10 %."""
    site = {"intersections": [{"id": "it-1", "cameras": [{"id": "cam-mjpeg", "source": "http://127.0.0.1:9/x", "fps": 5}]}]}
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(site))
    settings = IngestSettings(site_config=str(site_file), sources=f"cam-mjpeg={mjpeg_url}", max_frames=15, metrics_port=0)
    service = IngestService(settings, kafka_settings, topic_settings)
    assert service.run() == 0

    consumer = KafkaConsumer(
        topic_settings.frames, **kafka_settings.kafka_python(), auto_offset_reset="earliest",
        enable_auto_commit=False, consumer_timeout_ms=3000, max_partition_fetch_bytes=8 * 1024 * 1024,
    )  # fmt: skip
    try:
        records = list(consumer)
    finally:
        consumer.close()
    records = [r for r in records if not FrameHeaders.from_kafka(r.headers).end]  # frames, not the end marker
    headers = [FrameHeaders.from_kafka(r.headers) for r in records]
    assert [h.seq for h in headers] == list(range(15)) and len({h.session for h in headers}) == 1
    for record, h in zip(records, headers):
        image = cv2.imdecode(np.frombuffer(record.value, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (480, 640, 3) and (h.width, h.height) == (640, 480)
    rate = 14 / ((headers[-1].capture_ms - headers[0].capture_ms) / 1000)
    assert rate == pytest.approx(5, rel=0.1)
    read = service.metrics.registry.get_sample_value("traffic_ingest_frames_read_total", {"camera": "cam-mjpeg"})
    assert read is not None and read >= 15 * 3 - 3  # every frame of the camera is read, a third kept

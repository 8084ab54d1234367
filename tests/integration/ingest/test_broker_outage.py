"""Kafka unreachable when the ingester starts, up later: it waits, then publishes everything.

A second, private LocalBroker is started on a port chosen in advance, a few seconds after the
ingester began retrying against it.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from ingest.service import IngestService
from ingest.settings import IngestSettings
from devkit.broker import LocalBroker, free_port
from traffic.settings import KafkaSettings, TopicSettings
from traffic.topics import create_topics

from .test_file import frame_headers


def _readyz(port: int) -> tuple[int, dict]:
    try:
        response = urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2)
        return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_broker_down_at_start_then_back(tmp_path: Path, shared: Path) -> None:
    kafka_port, metrics_port = free_port(), free_port()
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{kafka_port}", request_timeout_ms=5000)
    topics = TopicSettings(frames="outage.frames", frames_partitions=2)
    site = {
        "intersections": [
            {"id": "it-1", "cameras": [{"id": "cam-1", "source": str(shared / "videos" / "intersection.mp4"), "fps": 10}]}
        ]
    }
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(site))
    settings = IngestSettings(
        site_config=str(site_file),
        realtime=False,  # lossless: the reader waits for the broker instead of dropping
        max_frames=30,
        metrics_port=metrics_port,
        bootstrap_timeout_ms=1000,
        backoff_initial_s=0.2,
        backoff_max_s=1.0,
        shutdown_deadline_s=20,
    )
    service = IngestService(settings, kafka, topics)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(service.run()), daemon=True)
    thread.start()
    broker = LocalBroker(tmp_path / "late-broker", port=kafka_port)
    try:
        time.sleep(4)
        assert thread.is_alive(), "the ingester gave up while the broker was down"
        status, body = _readyz(metrics_port)
        assert status == 503 and body["kafka"] != "ok"
        assert service.metrics.registry.get_sample_value("traffic_ingest_frames_published_total", {"camera": "cam-1"}) == 0

        broker.start()
        create_topics(kafka, topics)
        thread.join(timeout=90)
        assert not thread.is_alive(), "the ingester did not finish after the broker came back"
        assert result == [0]

        headers = frame_headers(kafka, topics.frames)
    finally:
        service.stop()
        broker.stop()
    assert len({h.session for h in headers}) == 1
    assert [h.seq for h in headers] == list(range(30))  # nothing lost, nothing doubled while waiting
    assert service.metrics.registry.get_sample_value("traffic_ingest_frames_published_total", {"camera": "cam-1"}) == 30

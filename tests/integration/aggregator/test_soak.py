"""A 30-minute soak of the aggregator at real-time rate: memory and state stay flat, counts stay exact (slow).

Run with ``pytest -m slow tests/integration/aggregator/test_soak.py`` (``TRAFFIC_SOAK_S`` sets the
duration, default 1800). One camera at 10 fps with capture time = now, a new stream session every
~25 s (synthetic vehicles, about 1 per second), so intervals close, state is purged and sessions
come and go all the time, as on a live intersection whose ingester is restarted again and again
(each session ends with the handover marker an ingester stopped by SIGTERM sends for a live camera). Every minute the test samples the
aggregator's resident memory and the size of the camera's checkpoint; the last third of the run
must not be above the first third (after a warm-up) beyond a margin, and the final counts must
equal the plain counting loop's.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import psutil
import pytest
from kafka import KafkaProducer

from aggregator.counting import CameraCounter
from aggregator.windows import final_counts
from tests.integration.aggregator.harness import Aggregator, Output
from tests.synthetic import CAMERA, end_marker, synthetic_site, synthetic_stream
from traffic.settings import TopicSettings
from traffic.wire import DetectionEvent

pytestmark = pytest.mark.slow
SOAK_S = float(os.environ.get("TRAFFIC_SOAK_S", "1800"))


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name) and not line.startswith("#"))


@pytest.mark.timeout(SOAK_S + 1200)
def test_soak_memory_and_state_stay_flat(tmp_path: Path, kafka_bootstrap: str, topic_settings: TopicSettings) -> None:
    agg = Aggregator(tmp_path, kafka_bootstrap, topic_settings, idle_close_s=30, capture_max_age_s="3600", group_instance_id="soak")
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    sent: list[DetectionEvent] = []
    samples: list[tuple[float, float, float]] = []  # (elapsed s, RSS MB, checkpoint bytes)
    agg.start()
    started = time.monotonic()
    session = 0
    try:
        while time.monotonic() - started < SOAK_S:
            stream = synthetic_stream(per_movement=1, session=f"soak-{session}", start_ms=int(time.time() * 1000) + 500, seed=session).events
            session += 1
            for e in stream:
                delay = e.capture_ms / 1000 - time.time()
                if delay > 0:
                    time.sleep(delay)
                producer.send(topic_settings.detections, key=e.camera.encode(), value=e.encode())
                sent.append(e)
                if len(sent) % 600 == 0:  # every minute of stream
                    assert agg.proc is not None and agg.proc.poll() is None, agg.logs()
                    try:
                        status, text = agg.get("/metrics")
                    except OSError:  # still starting (a loaded machine): no sample this minute
                        continue
                    rss = psutil.Process(agg.proc.pid).memory_info().rss / 1e6
                    samples.append((time.monotonic() - started, rss, _metric(text, "traffic_aggregator_state_bytes")))
            # the session's end marker, as an ingester stopped on a live camera sends it (a rolling update)
            end = end_marker(stream[-1], handover=True)
            producer.send(topic_settings.detections, key=end.camera.encode(), value=end.encode())
            sent.append(end)
        producer.flush()
        _assert_flat(samples)  # before the counts: a wrong count must not hide the memory and state figures
        counter = CameraCounter(synthetic_site(), CAMERA)
        expected = final_counts([c for e in sent for c in counter.update(e)] + counter.finish(), synthetic_site().counting.intervals_s)
        out = Output(kafka_bootstrap, topic_settings)
        try:
            finals = out.wait_finals(sum(n for k, n in expected.items() if k.interval_s == 900), agg, timeout_s=300)
        finally:
            out.close()
        assert finals == expected
    finally:
        producer.close()
        agg.kill()


def _assert_flat(samples: list[tuple[float, float, float]]) -> None:
    """The last third of the samples is not above the first third (after a warm-up) beyond a margin."""
    third = max(1, len(samples) // 3)
    warm, late = samples[1 : 1 + third], samples[-third:]
    print("soak samples (s, RSS MB, checkpoint bytes):", [(round(s), round(r), int(b)) for s, r, b in samples], flush=True)
    assert warm and late, "too short a soak to compare"
    assert statistics.mean(r for _, r, _ in late) <= statistics.mean(r for _, r, _ in warm) * 1.15 + 20, "memory grows"
    assert statistics.mean(b for _, _, b in late) <= statistics.mean(b for _, _, b in warm) * 1.5 + 20_000, "state grows"

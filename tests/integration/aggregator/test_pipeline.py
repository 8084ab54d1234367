"""The aggregator as a real faust worker (subprocess) against the real broker, with synthetic ground truth.

Synthetic detection events (tests.synthetic: 2 vehicles per movement of a 4-leg intersection,
two count lines) go to the test's detections topic; the final records on the counts topic must
give exactly the ground truth, and exactly what the plain CameraCounter loop gives per interval.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError

from aggregator.counting import CameraCounter
from tests.synthetic import CAMERA, SITE, INTERSECTION, SyntheticStream, synthetic_site, synthetic_stream
from aggregator.windows import CountKey, final_counts
from devkit.broker import free_port
from traffic.settings import KafkaSettings, TopicSettings
from traffic.wire import CrossingEvent, DetectionEvent

REPO = Path(__file__).resolve().parents[2]
ARCHIVE_AGE_S = 20 * 365 * 86400
"""Capture-time age the tests allow: they replay recorded (synthetic) streams of 2026-01-01."""


@pytest.fixture(scope="module")
def stream() -> SyntheticStream:
    return synthetic_stream(per_movement=2)


@pytest.fixture(scope="module")
def expected(stream: SyntheticStream) -> dict[CountKey, int]:
    """Per-interval counts of the plain CameraCounter loop (checked against the ground truth in unit tests)."""
    counter = CameraCounter(synthetic_site(), CAMERA)
    crossings = [c for e in stream.events for c in counter.update(e)] + counter.finish()
    return final_counts(crossings, synthetic_site().counting.intervals_s)


def ground_truth_totals(stream: SyntheticStream) -> Counter[tuple[str, str, str, str]]:
    totals: Counter[tuple[str, str, str, str]] = Counter()
    for (entry, _exit, movement, cls), n in stream.movements.items():
        totals[("movement", entry, movement, cls)] += n
    for (line, direction, cls), n in stream.lines.items():
        totals[("line", line, direction, cls)] += n
    return totals


class Aggregator:
    """`python -m traffic.cli aggregate` in a subprocess with the test's topics and a unique app id."""

    def __init__(self, tmp: Path, bootstrap: str, topics: TopicSettings, idle_close_s: float) -> None:
        site_file = tmp / "site.yaml"
        site_file.write_text(yaml.safe_dump(SITE))
        self.app_id = f"agg-{topics.detections.split('.')[0]}"
        self.metrics_port = free_port()
        self.env = {
            **os.environ,
            "TRAFFIC_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "TRAFFIC_AGGREGATOR_SITE_CONFIG": str(site_file),
            "TRAFFIC_AGGREGATOR_APP_ID": self.app_id,
            "TRAFFIC_AGGREGATOR_DATA_DIR": str(tmp / "faust"),
            "TRAFFIC_AGGREGATOR_METRICS_PORT": str(self.metrics_port),
            "TRAFFIC_AGGREGATOR_IDLE_CLOSE_S": str(idle_close_s),
            "TRAFFIC_AGGREGATOR_PROVISIONAL_INTERVAL_S": "1",
            "TRAFFIC_AGGREGATOR_COMMIT_INTERVAL_S": "0.5",
            "TRAFFIC_AGGREGATOR_CAPTURE_MAX_AGE_S": str(ARCHIVE_AGE_S),  # the synthetic streams are of 2026-01-01
            **{f"TRAFFIC_TOPICS_{k.upper()}": str(v) for k, v in topics.model_dump().items()},
        }
        self.log = tmp / "aggregator.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Aggregator":
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "traffic.cli", "aggregate"], env=self.env, stderr=err, cwd=REPO)
        return self

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
            self.proc = None

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture
def aggregator(tmp_path: Path, kafka_bootstrap: str, topic_settings: TopicSettings) -> Iterator[Aggregator]:
    agg = Aggregator(tmp_path, kafka_bootstrap, topic_settings, idle_close_s=4)
    try:
        yield agg
    finally:
        agg.kill()


def send(bootstrap: str, topic: str, events: list[DetectionEvent], extra: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for e in events:
        producer.send(topic, key=e.camera.encode(), value=e.encode())
    for key, value in extra:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


class Output:
    """Everything the aggregator published, read incrementally."""

    def __init__(self, bootstrap: str, topics: TopicSettings) -> None:
        self.topics = topics
        self.consumer = KafkaConsumer(
            topics.counts, topics.crossings, topics.dlq, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=500
        )
        self.records: list[dict] = []
        self.crossings: list[CrossingEvent] = []
        self.dlq: list[tuple[bytes | None, dict[str, bytes]]] = []

    def poll(self) -> None:
        for m in self.consumer:
            if m.topic == self.topics.counts:
                self.records.append(json.loads(m.value))
            elif m.topic == self.topics.crossings:
                self.crossings.append(CrossingEvent.decode(m.value))
            else:
                self.dlq.append((m.value, dict(m.headers)))

    def finals(self) -> dict[CountKey, int]:
        out: dict[CountKey, int] = {}
        for r in self.records:
            if r["final"]:
                key = CountKey(r["intersection"], r["interval_s"], r["interval_start_ms"], r["series"], r["approach"], r["movement"], r["direction"], r["vehicle_class"])
                out[key] = r["count"]
        return out

    def wait_finals(self, total: int, agg: Aggregator, timeout_s: float = 120) -> dict[CountKey, int]:
        """Until every configured interval length has final records summing to ``total``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll()
            finals = self.finals()
            sums = Counter()
            for k, n in finals.items():
                sums[k.interval_s] += n
            if sums and all(sums[s] >= total for s in (900, 60)):
                time.sleep(1.0)  # anything more (a double count) would arrive now
                self.poll()
                return self.finals()
            assert agg.proc is None or agg.proc.poll() is None, f"aggregator exited:\n{agg.logs()}"
        raise AssertionError(f"no complete final counts within {timeout_s} s; have {sums}; log:\n{agg.logs()}")

    def close(self) -> None:
        self.consumer.close()


def totals(finals: dict[CountKey, int], interval_s: int) -> Counter[tuple[str, str, str, str]]:
    out: Counter[tuple[str, str, str, str]] = Counter()
    for k, n in finals.items():
        if k.interval_s == interval_s:
            out[(k.series, k.approach, k.movement, k.vehicle_class)] += n
    return +out


def committed(bootstrap: str, group: str, topic: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    except KafkaError:  # the group (or the offsets topic of a fresh broker) does not exist yet
        return 0
    finally:
        admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


def test_counts_match_ground_truth_and_bad_input_goes_to_the_dlq(
    aggregator: Aggregator, kafka_bootstrap: str, topic_settings: TopicSettings, stream: SyntheticStream, expected: dict[CountKey, int]
) -> None:
    truth = ground_truth_totals(stream)
    n = sum(truth.values())
    unknown = stream.events[0].model_copy(update={"camera": "cam-unknown"})
    bad = [(b"cam-synth", b"{not json"), (b"cam-unknown", unknown.encode())]
    out = Output(kafka_bootstrap, topic_settings)
    aggregator.start()
    # bad input first: the app must go on; then the stream, then the same stream again (a full redelivery)
    send(kafka_bootstrap, topic_settings.detections, stream.events[:100], extra=bad)
    send(kafka_bootstrap, topic_settings.detections, stream.events[100:])
    send(kafka_bootstrap, topic_settings.detections, stream.events)
    finals = out.wait_finals(n, aggregator)
    try:
        assert totals(finals, 900) == truth  # 2 vehicles per movement, line crossings: exactly
        assert totals(finals, 60) == truth  # the 1-minute intervals split them but add up to the same
        assert finals == expected  # per interval, identical to the plain CameraCounter loop
        assert {k.interval_start_ms for k in finals if k.interval_s == 60} == {1_767_225_600_000, 1_767_225_660_000}
        assert any(not r["final"] for r in out.records)  # provisional records while intervals were open
        ids = [c.event_id for c in out.crossings]
        assert len(ids) == len(set(ids)) == n  # each vehicle published once on the crossings topic
        reasons = sorted(h["reason"] for _, h in out.dlq)
        assert reasons == [b"malformed", b"unknown_camera"]
        assert all(h["stage"] == b"aggregator" for _, h in out.dlq)
        assert unknown.encode() in [v for v, _ in out.dlq]  # the bad input, unchanged
        status, metrics = aggregator.get("/metrics")
        assert status == 200
        vehicles = sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("traffic_vehicles_total{"))
        assert vehicles == sum(n for (series, *_), n in truth.items() if series == "movement")
        assert f'traffic_aggregator_duplicates_total{{camera="{CAMERA}"}} {float(len(stream.events))}' in metrics
        assert 'traffic_aggregator_dlq_total{reason="unknown_camera"} 1.0' in metrics
        assert f'intersection="{INTERSECTION}"' in metrics and "traffic_aggregator_count_latency_seconds_bucket" in metrics
        assert aggregator.get("/readyz")[0] == 200
    finally:
        out.close()
    assert aggregator.stop() == 0


def test_restart_mid_stream_gives_the_same_final_counts(
    tmp_path: Path, kafka_bootstrap: str, topic_settings: TopicSettings, stream: SyntheticStream, expected: dict[CountKey, int]
) -> None:
    agg = Aggregator(tmp_path, kafka_bootstrap, topic_settings, idle_close_s=10)
    out = Output(kafka_bootstrap, topic_settings)
    half = len(stream.events) // 2  # vehicles are on the road at this frame: tracks must survive the restart
    try:
        agg.start()
        send(kafka_bootstrap, topic_settings.detections, stream.events[:half])
        deadline = time.monotonic() + 90
        while committed(kafka_bootstrap, agg.app_id, topic_settings.detections) < half:
            assert time.monotonic() < deadline, f"first half not consumed:\n{agg.logs()}"
            assert agg.proc is not None and agg.proc.poll() is None, agg.logs()
            time.sleep(0.3)
        assert agg.stop() == 0  # SIGTERM: faust flushes and commits on the way out
        out.poll()
        assert not any(r["final"] and r["interval_s"] == 900 for r in out.records)  # nothing final yet
        send(kafka_bootstrap, topic_settings.detections, stream.events[half:])  # while it is down
        agg.start()
        finals = out.wait_finals(sum(expected[k] for k in expected if k.interval_s == 900), agg)
        assert finals == expected  # as if it had never stopped
        assert sorted({c.event_id for c in out.crossings}) == sorted(
            {f"{c.camera}:{c.session}:{c.track_id}:{c.line or f'{c.approach}>{c.exit}'}" for c in out.crossings}
        )
        assert len({c.event_id for c in out.crossings}) == sum(expected[k] for k in expected if k.interval_s == 900)
        assert "camera state restored" in agg.logs()
    finally:
        out.close()
        agg.kill()

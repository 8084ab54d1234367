"""What the aggregator's integration tests share: the app as a subprocess, sending events, reading what it published."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import yaml
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError

from aggregator.windows import CountKey
from devkit.broker import free_port
from tests.synthetic import SITE
from traffic.settings import TopicSettings
from traffic.wire import CrossingEvent, DetectionEvent

REPO = Path(__file__).resolve().parents[3]
ARCHIVE_AGE_S = 20 * 365 * 86400
"""Capture-time age the tests allow: they replay recorded (synthetic) streams of 2026-01-01."""


class Aggregator:
    """`python -m traffic.cli aggregate` in a subprocess with the test's topics and a unique app id."""

    def __init__(self, tmp: Path, bootstrap: str, topics: TopicSettings, idle_close_s: float, **env: str) -> None:
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
            **{f"TRAFFIC_AGGREGATOR_{k.upper()}": v for k, v in env.items()},
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


def send(bootstrap: str, topic: str, events: list[DetectionEvent], extra: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=8 * 1024 * 1024)
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



"""The local Kafka broker is real Kafka 4.x, both Python clients work with it, topics are idempotent."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from devkit.broker import KAFKA_VERSION, LocalBroker, jars_dir
from traffic.errors import BrokerError
from traffic.settings import KafkaSettings, TopicSettings
from traffic.topics import admin_client, create_topics


def test_broker_is_kafka_4_from_the_cached_jars(kafka_bootstrap: str) -> None:
    assert KAFKA_VERSION.startswith("4.")
    assert (jars_dir() / f"kafka_2.13-{KAFKA_VERSION}.jar").exists()
    admin = admin_client(KafkaSettings(bootstrap_servers=kafka_bootstrap))
    try:
        cluster = admin.describe_cluster()
        assert len(cluster["brokers"]) == 1
    finally:
        admin.close()


def test_round_trip_with_kafka_python(kafka_bootstrap: str) -> None:
    topic = f"rt-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", max_request_size=2 * 1024 * 1024)
    payload = os.urandom(300_000)  # a large frame-sized value with headers
    producer.send(topic, key=b"cam-1", value=payload, headers=[("seq", b"0")]).get(timeout=30)
    producer.close()
    consumer = KafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=20000,
        max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_bytes=8 * 1024 * 1024,
    )  # fmt: skip
    record = next(iter(consumer))
    consumer.close()
    assert (record.key, record.value, record.headers) == (b"cam-1", payload, [("seq", b"0")])


def test_round_trip_with_aiokafka(kafka_bootstrap: str) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = f"rt-{uuid.uuid4().hex[:8]}"

    async def run() -> tuple[bytes, bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"hello", key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", group_id="g1")
        await consumer.start()
        try:
            msg = await asyncio.wait_for(consumer.getone(), timeout=30)
            await consumer.commit()
            return msg.key, msg.value
        finally:
            await consumer.stop()

    assert asyncio.run(run()) == (b"k", b"hello")


def test_topic_creation_is_idempotent_with_configured_layout(kafka_settings: KafkaSettings) -> None:
    prefix = f"idem{uuid.uuid4().hex[:6]}"
    topics = TopicSettings(
        frames=f"{prefix}.frames", detections=f"{prefix}.det", crossings=f"{prefix}.cross", counts=f"{prefix}.counts",
        dlq=f"{prefix}.dlq", frames_dlq=f"{prefix}.frames-dlq", frames_partitions=5, frames_retention_ms=123000, max_message_bytes=3_000_000,
    )  # fmt: skip
    first = create_topics(kafka_settings, topics)
    second = create_topics(kafka_settings, topics)
    assert set(first.values()) == {"created"} and set(second.values()) == {"exists"}
    admin = admin_client(kafka_settings)
    try:
        (described,) = admin.describe_topics([topics.frames])
        assert len(described["partitions"]) == 5
        result = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topics.frames)])
        configs = result["topic"][topics.frames]
        assert configs["retention.ms"]["value"] == "123000"
        assert configs["max.message.bytes"]["value"] == "3000000"
    finally:
        admin.close()


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "traffic.cli", *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_topics_command_against_unreachable_broker_is_one_clear_line() -> None:
    started = time.monotonic()
    proc = _cli("topics", "create", "--bootstrap-servers", "127.0.0.1:1", "--request-timeout-ms", "3000")
    assert proc.returncode == 3
    assert "Kafka at 127.0.0.1:1 is unreachable" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - started < 30


def test_topics_command_without_bootstrap_is_a_config_error() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRAFFIC_KAFKA_BOOTSTRAP_SERVERS"}
    proc = subprocess.run([sys.executable, "-m", "traffic.cli", "topics", "create"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "TRAFFIC_KAFKA_BOOTSTRAP_SERVERS is not set" in proc.stderr


def test_second_start_on_same_data_dir_and_taken_port_are_clear_errors(tmp_path: Path) -> None:
    with LocalBroker(tmp_path / "a") as broker:
        with pytest.raises(BrokerError, match="already running"):
            LocalBroker(tmp_path / "a").start(timeout_s=10)
        started = time.monotonic()
        with pytest.raises(BrokerError, match=f"port {broker.port} is already in use"):
            LocalBroker(tmp_path / "b", port=broker.port).start(timeout_s=10)
        assert time.monotonic() - started < 5  # refused at once, no hang


def test_missing_cache_without_fetch_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAFFIC_CACHE_DIR", str(tmp_path / "empty-cache"))
    with pytest.raises(BrokerError, match="jars are not cached .*traffic broker fetch"):
        LocalBroker(tmp_path / "c", fetch=False).start()


def test_broker_cli_start_status_stop(tmp_path: Path) -> None:
    data = str(tmp_path / "cli")
    proc = _cli("broker", "start", "--data-dir", data, timeout=120)
    assert proc.returncode == 0, proc.stderr
    bootstrap = proc.stdout.strip().splitlines()[-1]
    try:
        assert _cli("broker", "status", "--data-dir", data).returncode == 0
        again = _cli("broker", "start", "--data-dir", data)
        assert again.returncode == 3 and "already running" in again.stderr
        assert create_topics(KafkaSettings(bootstrap_servers=bootstrap), TopicSettings(frames=f"cli{uuid.uuid4().hex[:6]}"))
    finally:
        assert _cli("broker", "stop", "--data-dir", data).stdout.strip() == "stopped"
    assert _cli("broker", "status", "--data-dir", data).returncode == 1

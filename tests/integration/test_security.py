"""The SASL_SSL broker refuses strangers, and each service's principal may do only what its KafkaUser ACLs say.

The ACLs come from deploy/k8s/components/strimzi/kafkauser.yaml (devkit.acls), renamed to this
test's topics, so the rules Kubernetes applies are the rules tested here.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from kafka import TopicPartition
from kafka.errors import GroupAuthorizationFailedError, KafkaError, TopicAuthorizationFailedError

from devkit.acls import kafka_users, provision
from devkit.broker import LocalBroker
from traffic import clients
from traffic.errors import BrokerUnavailable
from traffic.settings import KafkaSettings, TopicSettings
from traffic.topics import create_topics


def _names(prefix: str) -> tuple[TopicSettings, dict[str, str]]:
    topics = TopicSettings(
        frames=f"{prefix}.frames", detections=f"{prefix}.detections", crossings=f"{prefix}.crossings", counts=f"{prefix}.counts",
        dlq=f"{prefix}.dlq", frames_dlq=f"{prefix}.frames-dlq", frames_partitions=1, detections_partitions=1, output_partitions=1,
    )  # fmt: skip
    defaults = TopicSettings.model_construct()
    names = {getattr(defaults, f): getattr(topics, f) for f in ("frames", "detections", "crossings", "counts", "dlq", "frames_dlq")}
    return topics, {**names, "traffic-workers": f"{prefix}-workers", "traffic-aggregator": f"{prefix}-aggregator"}


@pytest.fixture
def provisioned(sasl_broker: LocalBroker) -> tuple[TopicSettings, dict[str, KafkaSettings], dict[str, str]]:
    topics, names = _names(f"s{uuid.uuid4().hex[:8]}")
    create_topics(sasl_broker.admin_settings(), topics)
    return topics, provision(sasl_broker.admin_settings(), names), names


def test_strangers_and_wrong_passwords_are_refused(sasl_broker: LocalBroker) -> None:
    admin = sasl_broker.admin_settings()
    quick = {"request_timeout_ms": 3000}
    attempts = {
        "plaintext": KafkaSettings(bootstrap_servers=sasl_broker.bootstrap, **quick),
        "tls without sasl": KafkaSettings(bootstrap_servers=sasl_broker.bootstrap, security_protocol="SSL", ssl_cafile=str(sasl_broker.ca_file), **quick),
        "wrong password": admin.model_copy(update={"sasl_password": admin.sasl_password.__class__("not-the-password"), **quick}),
        "unknown user": admin.model_copy(update={"sasl_username": "mallory", **quick}),
    }  # fmt: skip
    for what, kafka in attempts.items():
        with pytest.raises(BrokerUnavailable) as info:
            clients.admin(kafka, timeout_s=3).list_topics()
        assert admin.sasl_password.get_secret_value() not in str(info.value), what
    # faust's client (aiokafka) is refused too
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError, KafkaError as AIOKafkaError

    async def aio_connect() -> None:
        producer = AIOKafkaProducer(**clients.aiokafka_options(attempts["wrong password"]))
        try:
            await producer.start()
        finally:
            await producer.stop()

    with pytest.raises((AIOKafkaError, KafkaConnectionError)):
        asyncio.run(aio_connect())
    # ... and the right password works for both clients
    assert isinstance(clients.admin(admin).list_topics(), list)

    async def aio_ok() -> None:
        producer = AIOKafkaProducer(**clients.aiokafka_options(admin))
        await producer.start()
        await producer.stop()

    asyncio.run(aio_ok())


def _send(kafka: KafkaSettings, topic: str) -> None:
    producer = clients.producer(kafka, client_id="t", acks="all", max_block_ms=5000)
    try:
        producer.send(topic, b"x").get(timeout=10)
    finally:
        producer.close(timeout=2)


def _read(kafka: KafkaSettings, topic: str, group: str | None = None) -> int:
    """Records read from partition 0 within a few seconds (a refused read raises or reads nothing)."""
    consumer = clients.consumer(kafka, client_id="t", group_id=group, enable_auto_commit=False)
    try:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.seek_to_beginning()
        deadline = time.monotonic() + 6
        read = 0
        while not read and time.monotonic() < deadline:
            read = sum(len(batch) for batch in consumer.poll(timeout_ms=500).values())
        if group:
            consumer.commit()
        return read
    finally:
        consumer.close()


def test_each_principal_has_only_the_acls_it_needs(provisioned) -> None:
    topics, who, names = provisioned
    # what they need works
    _send(who["ingest"], topics.frames)
    assert _read(who["worker"], topics.frames, names["traffic-workers"]) == 1
    for topic in (topics.detections, topics.dlq, topics.frames_dlq):
        _send(who["worker"], topic)
    assert _read(who["aggregator"], topics.detections, names["traffic-aggregator"]) == 1
    for topic in (topics.crossings, topics.counts, topics.dlq):
        _send(who["aggregator"], topic)
    # what they do not need is refused
    refused = [
        ("ingest reads frames", lambda: _read(who["ingest"], topics.frames)),
        ("ingest writes detections", lambda: _send(who["ingest"], topics.detections)),
        ("worker writes counts", lambda: _send(who["worker"], topics.counts)),
        ("worker reads detections", lambda: _read(who["worker"], topics.detections)),
        ("worker joins another group", lambda: _read(who["worker"], topics.frames, names["traffic-aggregator"])),
        ("aggregator reads frames", lambda: _read(who["aggregator"], topics.frames)),
        ("aggregator writes frames", lambda: _send(who["aggregator"], topics.frames)),
        ("keda reads a frame", lambda: _read(who["keda"], topics.frames)),
        ("keda writes frames", lambda: _send(who["keda"], topics.frames)),
    ]
    for what, attempt in refused:  # every topic read here holds one record: a read that gets it was allowed
        try:
            allowed = attempt() not in (0, None) or "writes" in what
        except (TopicAuthorizationFailedError, GroupAuthorizationFailedError, KafkaError, BrokerUnavailable):
            allowed = False
        assert not allowed, f"{what} was allowed"
    # KEDA reads the lag: the topic's end offsets and the group's committed offsets
    keda = clients.consumer(who["keda"], client_id="keda-like", group_id=names["traffic-workers"], enable_auto_commit=False)
    admin = clients.admin(who["keda"])
    try:
        end = keda.end_offsets([TopicPartition(topics.frames, 0)])
        committed = admin.list_group_offsets(names["traffic-workers"])[names["traffic-workers"]]
    finally:
        keda.close()
        admin.close()
    assert sum(end.values()) == 1 and committed[TopicPartition(topics.frames, 0)].offset == 1


def test_the_acls_tested_are_the_strimzi_kafkausers() -> None:
    users = kafka_users()
    assert set(users) == {"traffic-ingest", "traffic-worker", "traffic-aggregator", "traffic-keda"}
    ops = {u: {(r.resource_type, r.name, op) for r in rules for op in r.operations} for u, rules in users.items()}
    assert ("topic", "traffic.frames", "Read") not in ops["traffic-ingest"] | ops["traffic-keda"] | ops["traffic-aggregator"]
    assert not any(r.resource_type == "cluster" for rules in users.values() for r in rules), "no service needs cluster rights"


def test_topics_command_without_create_rights_is_a_clear_config_error(provisioned) -> None:
    """`traffic topics create` as a service principal: the existing topics it may see are `exists`, the rest refused, exit 2."""
    import os
    import subprocess
    import sys

    topics, who, _ = provisioned
    env = {**os.environ, **clients.environment(who["worker"]), **{f"TRAFFIC_TOPICS_{k.upper()}": str(v) for k, v in topics.model_dump().items()}}
    proc = subprocess.run([sys.executable, "-m", "traffic.cli", "topics", "create"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{topics.frames}: exists" in proc.stdout and f"{topics.counts}: not-authorized" in proc.stdout
    assert "not authorized to create" in proc.stderr and who["worker"].sasl_password.get_secret_value() not in proc.stdout + proc.stderr

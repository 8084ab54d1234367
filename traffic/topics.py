"""Create the topics of the design idempotently, with partitions, retention and size limits."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from traffic.errors import BrokerUnavailable
from traffic.settings import KafkaSettings, TopicSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    """What one topic should look like."""

    name: str
    partitions: int
    config: dict[str, str]


def topic_specs(topics: TopicSettings) -> list[TopicSpec]:
    """The five topics of DESIGN.md from the settings."""
    big = {"max.message.bytes": str(topics.max_message_bytes)}
    return [
        TopicSpec(topics.frames, topics.frames_partitions, {**big, "retention.ms": str(topics.frames_retention_ms)}),
        TopicSpec(topics.detections, topics.detections_partitions, {"retention.ms": str(topics.detections_retention_ms)}),
        TopicSpec(topics.crossings, topics.output_partitions, {"retention.ms": str(topics.output_retention_ms)}),
        TopicSpec(topics.counts, topics.output_partitions, {"retention.ms": str(topics.output_retention_ms)}),
        TopicSpec(topics.dlq, topics.output_partitions, {**big, "retention.ms": str(topics.dlq_retention_ms)}),
    ]


def admin_client(kafka: KafkaSettings, timeout_s: float = 10.0) -> KafkaAdminClient:
    """An admin client, or BrokerUnavailable with the servers named (no stack trace for users)."""
    try:
        cfg = {**kafka.kafka_python(), "request_timeout_ms": int(min(kafka.request_timeout_ms, timeout_s * 1000))}
        return KafkaAdminClient(**cfg, client_id="traffic-admin", bootstrap_timeout_ms=cfg["request_timeout_ms"])
    except (KafkaError, OSError) as exc:
        raise BrokerUnavailable(f"Kafka at {kafka.bootstrap_servers} is unreachable: {exc.__class__.__name__}") from None


def create_topics(kafka: KafkaSettings, topics: TopicSettings) -> dict[str, str]:
    """Create missing topics; existing ones are left alone. Returns name -> ``created``/``exists``."""
    admin = admin_client(kafka)
    try:
        existing = set(admin.list_topics())
        result: dict[str, str] = {}
        for spec in topic_specs(topics):
            if spec.name in existing:
                result[spec.name] = "exists"
                continue
            try:
                admin.create_topics(
                    [NewTopic(spec.name, spec.partitions, topics.replication_factor, topic_configs=spec.config)]
                )
                result[spec.name] = "created"
            except TopicAlreadyExistsError:
                result[spec.name] = "exists"
            log.info("topic", extra={"topic": spec.name, "state": result[spec.name], "partitions": spec.partitions})
        return result
    finally:
        admin.close()

"""Create the topics of the design idempotently, with partitions, retention and size limits."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError, TopicAuthorizationFailedError

from traffic import clients
from traffic.settings import KafkaSettings, TopicSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    """What one topic should look like."""

    name: str
    partitions: int
    config: dict[str, str]


def image_topic_config(topics: TopicSettings) -> dict[str, str]:
    """Retention of topics holding images of the public (frames, frames DLQ).

    ``segment.ms`` is half the retention: Kafka deletes whole segments once their newest record
    is older than ``retention.ms``, so a segment that stays open for days (the broker's default
    roll is 7 days) would keep a quiet topic's images for days. With it an image is gone at most
    about 1.5 x retention + the broker's ``log.retention.check.interval.ms`` after it was written.
    """
    return {
        "max.message.bytes": str(topics.max_message_bytes),
        "retention.ms": str(topics.frames_retention_ms),
        "segment.ms": str(max(1000, topics.frames_retention_ms // 2)),
        "cleanup.policy": "delete",
    }


def topic_specs(topics: TopicSettings) -> list[TopicSpec]:
    """The topics of docs/contracts.md from the settings (frames, detections, crossings, counts, dlq, frames DLQ)."""
    big = {"max.message.bytes": str(topics.max_message_bytes)}
    return [
        TopicSpec(topics.frames, topics.frames_partitions, image_topic_config(topics)),
        TopicSpec(topics.detections, topics.detections_partitions, {"retention.ms": str(topics.detections_retention_ms)}),
        TopicSpec(topics.crossings, topics.output_partitions, {"retention.ms": str(topics.output_retention_ms)}),
        TopicSpec(topics.counts, topics.output_partitions, {"retention.ms": str(topics.output_retention_ms)}),
        TopicSpec(topics.dlq, topics.output_partitions, {**big, "retention.ms": str(topics.dlq_retention_ms)}),
        TopicSpec(topics.frames_dlq, topics.output_partitions, image_topic_config(topics)),
    ]


def admin_client(kafka: KafkaSettings, timeout_s: float = 10.0) -> KafkaAdminClient:
    """An admin client, or BrokerUnavailable with the servers named (no stack trace for users)."""
    return clients.admin(kafka, timeout_s=timeout_s)


def create_topics(kafka: KafkaSettings, topics: TopicSettings) -> dict[str, str]:
    """Create missing topics; existing ones are left alone. Returns name -> ``created``/``exists``/``not-authorized``.

    ``not-authorized``: the principal may neither see nor create the topic (a service whose ACLs
    do not cover it, e.g. the aggregator and the frames topic); logged, not raised, so a service
    that ensures its topics at start-up runs under least-privilege ACLs. ``traffic topics create``
    fails on it.
    """
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
            except TopicAuthorizationFailedError:
                result[spec.name] = "not-authorized"
                log.warning("not authorized to create topic (ACLs); assumed to be managed elsewhere", extra={"topic": spec.name})
                continue
            log.info("topic", extra={"topic": spec.name, "state": result[spec.name], "partitions": spec.partitions})
        return result
    finally:
        admin.close()

"""The faust-streaming app: detections -> per-camera counters -> per-intersection interval counts.

Two stages, each partitioned by the key its state needs::

    traffic.detections (key camera) ---+
    <app>-camera-control (key camera) -+-> camera stage: CameraCounter per camera (state table
                                       |   camera-state), de-dup by (session, seq), tracking,
                                       |   line crossings, movements
                                       +--> traffic.crossings (key intersection)      public
                                       +--> <app>-by-intersection (key intersection)  internal:
                                             crossings + camera watermarks, in order
    <app>-by-intersection -----------------> intersection stage: de-dup crossings by event_id
                                             (table seen), count per interval and series
                                             (table windows), watermark (table watermarks)
                                             +--> traffic.counts: provisional (throttled) and
                                                  final records (closed intervals)

A stream ends by its data: the camera stage ends a session's tracks when it processes the
session's end-of-session marker, then tells the intersection stage (a ``stream`` message); once
every camera of an intersection has ended, its open intervals are closed and published as final.
A housekeeping timer on every worker closes due intervals (watermark past end + grace) by sending
a ``close`` message through the intersection topic, because faust tables may only be changed from
inside a stream. As a fallback for streams that never send a marker (an ingester killed), it also
closes the intervals of an intersection idle for ``idle_close_s`` and ends the tracks of cameras
idle for ``idle_close_s / 2``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import faust

from aggregator.settings import AggregatorSettings
from aggregator.tables import Tables, define_tables
from traffic import clients
from traffic.health import Health
from traffic.settings import KafkaSettings, TopicSettings
from traffic.site import Camera, Intersection, Site

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """In-memory caches and throttles of one worker; none of it must survive (tables hold the state)."""

    counters: dict[str, Any] = field(default_factory=dict)  # camera -> CameraCounter (cache of camera-state)
    camera_partition: dict[str, int] = field(default_factory=dict)
    camera_last_wall: dict[str, float] = field(default_factory=dict)
    camera_idle_finished: set[str] = field(default_factory=set)
    watermark_sent_ms: dict[str, int] = field(default_factory=dict)
    stream_ended_sent: dict[str, bool] = field(default_factory=dict)  # what the intersection stage was told last
    intersection_last_wall: dict[str, float] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)  # windows keys changed since the last provisional records
    close_requested: dict[str, float] = field(default_factory=dict)
    last_provisional: float = field(default_factory=time.monotonic)
    last_purge: float = 0.0


@dataclass
class AggregatorApp:
    """Everything the agents need: configuration, the faust app, its topics and tables."""

    settings: AggregatorSettings
    kafka: KafkaSettings
    topics: TopicSettings
    site: Site
    cameras: dict[str, tuple[Intersection, Camera]]
    app: faust.App
    partitions: int
    detections: Any
    camera_control: Any
    by_intersection: Any
    crossings_out: Any
    counts_out: Any
    dlq_out: Any
    tables: Tables
    health: Health
    runtime: Runtime = field(default_factory=Runtime)


def create_app(
    settings: AggregatorSettings, kafka: KafkaSettings, topics: TopicSettings, site: Site, partitions: int, health: Health | None = None
) -> AggregatorApp:
    """Declare the faust app, its topics, tables and agents.

    Args:
        partitions: partitions of the detections topic; the internal topics and the tables get the
            same number (faust requires tables to be co-partitioned with their source topics).
    """
    from aggregator import agents

    app = faust.App(
        settings.app_id,
        **clients.faust_options(kafka),
        store=settings.store,
        datadir=settings.data_dir,
        web_enabled=settings.web_port > 0,
        web_port=settings.web_port or 6066,
        topic_partitions=partitions,
        topic_replication_factor=topics.replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval_s,
        producer_acks=-1,
        table_standby_replicas=0,
        autodiscover=False,
    )

    def raw_topic(name: str, **kw: Any) -> Any:
        return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", **kw)

    ctx = AggregatorApp(
        settings=settings,
        kafka=kafka,
        topics=topics,
        site=site,
        cameras=site.cameras(),
        app=app,
        partitions=partitions,
        detections=raw_topic(topics.detections),
        camera_control=raw_topic(internal_topic_names(settings)[0], partitions=partitions),
        by_intersection=raw_topic(internal_topic_names(settings)[1], partitions=partitions),
        crossings_out=raw_topic(topics.crossings),
        counts_out=raw_topic(topics.counts),
        dlq_out=raw_topic(topics.dlq),
        tables=define_tables(app, partitions),
        health=health or Health(checks=("kafka",), stall_s=max(60.0, 10 * settings.tick_interval_s)),
    )
    agents.register(ctx)
    return ctx


def topic_partitions(kafka: KafkaSettings, topic: str, timeout_s: float = 30.0) -> int:
    """Partitions of an existing topic (kafka-python metadata); BrokerUnavailable if Kafka does not answer."""
    from traffic.errors import ConfigError

    consumer = clients.consumer(kafka, client_id=f"{topic}-probe", enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = consumer.partitions_for_topic(topic)
            if found:
                return len(found)
            time.sleep(0.5)
        raise ConfigError(f"topic {topic!r} does not exist (create it with `traffic topics create`)")
    finally:
        consumer.close()


def internal_topic_names(settings: AggregatorSettings) -> tuple[str, str]:
    """Names of the app's internal topics (camera control, by intersection)."""
    return f"{settings.app_id}-camera-control", f"{settings.app_id}-by-intersection"


def create_internal_topics(kafka: KafkaSettings, topics: TopicSettings, settings: AggregatorSettings, partitions: int) -> None:
    """Create the internal topics with the detections' partition count (idempotent).

    Why not leave it to the producer: a broker that auto-creates topics would give them its default
    partition count, and the internal topics must be co-partitioned with the tables.
    """
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from traffic.topics import admin_client

    admin = admin_client(kafka)
    try:
        existing = set(admin.list_topics())
        for name in internal_topic_names(settings):
            if name in existing:
                continue
            try:
                admin.create_topics([NewTopic(name, partitions, topics.replication_factor, topic_configs={"retention.ms": str(topics.detections_retention_ms)})])
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


def run(settings: AggregatorSettings, kafka: KafkaSettings, topics: TopicSettings) -> int:
    """Run one aggregator worker until SIGTERM / SIGINT; offsets and tables are flushed on the way out."""
    from mode import Worker

    from traffic.health import HealthServer
    from traffic.site import load_site
    from traffic.topics import create_topics

    site = load_site(settings.site_config)
    create_topics(kafka, topics)
    partitions = topic_partitions(kafka, topics.detections)
    create_internal_topics(kafka, topics, settings, partitions)
    health = Health(checks=("kafka",), stall_s=max(60.0, 10 * settings.tick_interval_s))
    ctx = create_app(settings, kafka, topics, site, partitions, health)
    server = HealthServer(health, settings.metrics_port).start()
    # faust warns "producer buffer full" at every burst of changelog writes (its buffer holds 100
    # messages and drains on its own): not actionable, keep it out of the logs.
    logging.getLogger("faust.transport.producer").setLevel(logging.ERROR)
    log.info(
        "aggregator starting",
        extra={"app_id": settings.app_id, "detections": topics.detections, "partitions": partitions, "cameras": sorted(ctx.cameras)},
    )
    try:
        worker = Worker(ctx.app, loglevel=logging.getLogger().level or logging.INFO, override_logging=False, redirect_stdouts=False)
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        server.stop()
    return 0

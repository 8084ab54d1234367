"""The aggregator's topology: the faust app, its topics and its tables, in one place.

The stages (:mod:`aggregator.camera_stage`, :mod:`aggregator.intersection_stage`,
:mod:`aggregator.housekeeping`) import this module; it imports none of them::

    traffic.detections (key camera) ---+
    <app>-camera-control (key camera) -+-> camera stage: CameraCounter + SessionGate per camera,
                                       |   checkpointed in camera-state once per commit
                                       +--> traffic.crossings (key intersection)      public
                                       +--> <app>-by-intersection (key intersection)  internal:
                                             crossings, camera watermarks, stream states, in order
    <app>-by-intersection -----------------> intersection stage: WindowStore on the tables windows,
                                             seen, watermarks; camera-watermarks, streams
                                             +--> traffic.counts: provisional (throttled) and
                                                  final records (closed intervals)

Tables (all raw bytes on the wire; the typed views below encode and decode in one place, and a
record that does not decode - garbage in a changelog - is skipped and logged, never fatal):

=====================  =====================  ==============================================  ==================
table                  key                    value                                           partitioned by
=====================  =====================  ==============================================  ==================
``camera-state``       camera id              checkpoint (aggregator.checkpoint), per commit  camera (murmur2)
``windows``            CountKey.encode()      ``[count, final]``                              intersection
``seen``               crossing event_id      ``[intersection, time_ms]`` (de-duplication)    intersection
``watermarks``         intersection id        its event-time watermark (ms)                   intersection
``camera-watermarks``  camera id              the camera's reported progress (ms)             intersection
``streams``            camera id              ``1`` once its stream ended, ``0`` live again   intersection
=====================  =====================  ==============================================  ==================

``camera-state`` is written when faust commits (outside a stream), so its partition comes from
the key (:class:`CameraStateTable`): the partition the camera's detections are on, as long as
their producer uses the Kafka default (murmur2) partitioner on the camera id key - the camera
stage refuses events that arrive on another partition (``wrong_partition``).

Closed intervals are derivable from the tables alone (``windows`` + ``watermarks``), so a restart
or rebalance between "interval due" and "final record sent" only delays the final record, never
loses it (faust's closed-window callbacks are not replayed after a crash: faust#185).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import faust

from aggregator import faust_fixes
from aggregator.settings import AggregatorSettings
from aggregator.windows import Cell, CountKey, Seen
from traffic import clients
from traffic.partitions import camera_partition
from traffic.dlq import DeadLetter, bounded_dead_letter
from traffic.settings import KafkaSettings, TopicSettings
from traffic.site import Camera, Intersection, Site

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class Codec(Generic[V]):
    """Bytes <-> value for a table's keys or values; ``load`` raises on anything it did not write."""

    dump: Callable[[V], bytes]
    load: Callable[[bytes], V]


def _load_text(raw: bytes) -> str:
    return raw.decode()


def _load_int(raw: bytes) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("negative")
    return value


def _load_cell(raw: bytes) -> Cell:
    count, final = json.loads(raw)
    if type(count) is not int or count < 0 or type(final) is not bool:
        raise ValueError("not a cell")
    return Cell(count, final)


def _load_seen(raw: bytes) -> Seen:
    intersection, time_ms = json.loads(raw)
    if type(intersection) is not str or type(time_ms) is not int:
        raise ValueError("not a seen entry")
    return Seen(intersection, time_ms)


def _load_flag(raw: bytes) -> bool:
    if raw not in (b"0", b"1"):
        raise ValueError("not a flag")
    return raw == b"1"


TEXT: Codec[str] = Codec(str.encode, _load_text)
INT: Codec[int] = Codec(lambda v: str(int(v)).encode(), _load_int)
FLAG: Codec[bool] = Codec(lambda v: b"1" if v else b"0", _load_flag)
CELL: Codec[Cell] = Codec(lambda c: f"[{c.count},{'true' if c.final else 'false'}]".encode(), _load_cell)
SEEN: Codec[Seen] = Codec(lambda s: json.dumps([s.intersection, s.time_ms]).encode(), _load_seen)
COUNT_KEY: Codec[CountKey] = Codec(lambda k: k.encode().encode(), CountKey.decode)
RAW: Codec[bytes] = Codec(bytes, bytes)


class TableView(MutableMapping[K, V]):
    """A faust table of raw bytes seen as a typed mapping; entries that do not decode are skipped (and logged once).

    Keys are decoded once and cached (the housekeeping timer iterates the windows every tick).
    """

    def __init__(self, table: Any, key: Codec[K], value: Codec[V], name: str) -> None:
        self.table, self.key, self.value, self.name = table, key, value, name
        self._keys: dict[bytes, K] = {}
        self._bad: set[bytes] = set()

    def _load_key(self, raw: bytes) -> K | None:
        key = self._keys.get(raw)
        if key is None and raw not in self._bad:
            try:
                key = self._keys[raw] = self.key.load(raw)
            except Exception:  # noqa: BLE001 - any garbage in a changelog
                self._skip(raw, "key")
            if len(self._keys) > 200_000:
                self._keys.clear()
        return key

    def _skip(self, raw: bytes, what: str) -> None:
        if raw in self._bad:
            return
        if len(self._bad) < 10_000:
            self._bad.add(raw)
        log.error("table entry that does not decode skipped", extra={"table": self.name, "part": what, "key": raw[:80].decode("utf-8", "replace")})

    def __getitem__(self, key: K) -> V:
        raw_key = self.key.dump(key)
        raw = self.table[raw_key]
        if raw is None:
            raise KeyError(key)
        try:
            return self.value.load(raw)
        except Exception:  # noqa: BLE001
            self._skip(raw_key, "value")
            raise KeyError(key) from None

    def __setitem__(self, key: K, value: V) -> None:
        self.table[self.key.dump(key)] = self.value.dump(value)

    def __delitem__(self, key: K) -> None:
        del self.table[self.key.dump(key)]

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]
        except KeyError:
            return False
        return True

    def __iter__(self) -> Iterator[K]:
        for raw in list(self.table.keys()):
            key = self._load_key(raw)
            if key is not None:
                yield key

    def __len__(self) -> int:
        return len(self.table)

    def items(self) -> Iterator[tuple[K, V]]:  # type: ignore[override]
        """(key, value) pairs that decode, without a second lookup per key."""
        for raw_key, raw in list(self.table.items()):
            key = self._load_key(raw_key)
            if key is None or raw is None:
                continue
            try:
                yield key, self.value.load(raw)
            except Exception:  # noqa: BLE001
                self._skip(raw_key, "value")


@dataclass(frozen=True)
class Tables:
    """The tables of one app instance (raw faust tables) and their typed views."""

    camera_state: Any
    windows: TableView[CountKey, Cell]
    seen: TableView[str, Seen]
    watermarks: TableView[str, int]
    camera_watermarks: TableView[str, int]
    streams: TableView[str, bool]

    @property
    def raw(self) -> list[Any]:
        """The faust tables themselves."""
        return [self.camera_state] + [view.table for view in (self.windows, self.seen, self.watermarks, self.camera_watermarks, self.streams)]


class CameraStateTable(faust.Table):
    """``camera-state``: written when faust commits (outside any stream), to the partition of the camera's detections.

    faust takes a table write's changelog partition from the event being processed; checkpoints
    are written between events, so the partition comes from the key instead (the camera id, as
    the detections are keyed), computed here rather than by the producer, whose metadata may not
    know the changelog topic yet.
    """

    def partition_for_key(self, key: Any) -> int | None:
        return camera_partition(key, self.partitions)


def define_tables(app: faust.App, partitions: int, max_record_bytes: int, segment_s: int = 600) -> Tables:
    """Declare the tables; ``partitions`` must equal the partitions of their source topics.

    Their changelogs are compacted topics whose segments roll every ``segment_s``: compaction
    never touches the open segment, so without it a camera's checkpoints (one per commit) would
    pile up for the broker's default of 7 days and a restart would replay all of them.
    """
    raw: dict[str, Any] = {"partitions": partitions, "key_type": bytes, "value_type": bytes}  # bytes: the "raw" codec
    segments = {"segment.ms": str(segment_s * 1000)}

    def view(name: str, key: Codec[Any], value: Codec[Any], help: str) -> TableView[Any, Any]:
        return TableView(app.Table(name, help=help, extra_topic_configs=segments, **raw), key, value, name)

    camera_state = app.tables.add(
        CameraStateTable(
            app, name="camera-state", beacon=app.tables.beacon, help="per-camera checkpoints",
            extra_topic_configs={**segments, "max.message.bytes": str(max_record_bytes)}, **raw,
        )  # fmt: skip
    )
    return Tables(
        camera_state=camera_state,
        windows=view("windows", COUNT_KEY, CELL, "interval counts"),
        seen=view("seen", TEXT, SEEN, "counted crossing ids"),
        watermarks=view("watermarks", TEXT, INT, "event-time watermark per intersection"),
        camera_watermarks=view("camera-watermarks", TEXT, INT, "event-time progress per camera"),
        streams=view("streams", TEXT, FLAG, "cameras whose stream ended"),
    )


@dataclass
class Topology:
    """Configuration, the faust app, its topics and tables: everything the stages share."""

    settings: AggregatorSettings
    topic_settings: TopicSettings
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

    def cameras_of(self, intersection: str) -> list[str]:
        """Camera ids of one intersection, in site order."""
        return [cam for cam, (inter, _) in self.cameras.items() if inter.id == intersection]

    def dead_letter(self, record: Any, reason: str, detail: str) -> DeadLetter:
        """The dead letter of ``record`` (topic, partition, offset, key, value, headers) in the one DLQ schema.

        The value is the input unchanged; one too large for the DLQ topic or the producer goes
        without it (``value_kept: false``, its size and SHA-256 kept): a DLQ write never fails for size.
        """
        return bounded_dead_letter(record, self.topic_settings, self.settings.max_request_bytes, stage="aggregator", reason=reason, detail=detail)


def build_topology(settings: AggregatorSettings, kafka: KafkaSettings, topics: TopicSettings, site: Site, partitions: int) -> Topology:
    """Declare the faust app, its topics and tables (no agents yet: the stages attach them).

    Args:
        partitions: partitions of the detections topic; the internal topics and the tables get the
            same number (faust requires tables to be co-partitioned with their source topics).
    """
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
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        consumer_group_instance_id=settings.group_instance_id or None,
        producer_acks=-1,
        producer_max_request_size=settings.max_request_bytes,
        consumer_max_fetch_size=settings.max_request_bytes,
        table_standby_replicas=0,
        autodiscover=False,
    )
    faust_fixes.install(app)  # three of faust-streaming 0.15.x's races that lose records

    def raw_topic(name: str, **kw: Any) -> Any:
        return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", **kw)

    control, by_intersection = internal_topic_names(settings)
    return Topology(
        settings=settings,
        topic_settings=topics,
        site=site,
        cameras=site.cameras(),
        app=app,
        partitions=partitions,
        detections=raw_topic(topics.detections),
        camera_control=raw_topic(control, partitions=partitions),
        by_intersection=raw_topic(by_intersection, partitions=partitions),
        crossings_out=raw_topic(topics.crossings),
        counts_out=raw_topic(topics.counts),
        dlq_out=raw_topic(topics.dlq),
        tables=define_tables(app, partitions, settings.max_request_bytes, settings.changelog_segment_s),
    )


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

"""The worker loop: poll a micro-batch, decode, detect, publish, wait for acks, commit.

    poll (<= batch_size records, <= max_wait_ms) ─> validate + decode ─> detect (one call)
        ─> produce one event per frame (+ DLQ records) ─> flush, all acked? ─> commit offsets
                                                           └─ no: seek back, back off, redo

At-least-once: offsets are committed only after every event (and DLQ record) produced for those
frames is acknowledged. Polls are sized to the batch (``max_poll_records = batch_size``), so the
time between polls is one batch's inference, far below ``max_poll_interval_ms``.

Rebalances: kafka-python calls the listener from inside ``poll()``, i.e. between batches or while
a batch is being filled. Records of revoked partitions that are still waiting in the unfinished
batch are dropped, uncommitted: their new owner processes them from the last committed offset.
A worker killed mid-batch (``kill -9``) produces the same effect: the frames of its last batch
may be published twice (once by it, once by the next owner). The aggregator de-duplicates by
(camera, session, seq), so this never changes counts.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from traffic import clients
from traffic.capture_time import ClockReport
from traffic.dlq import frame_dead_letter
from traffic.errors import BadInput, ContractError
from traffic.health import Health, HealthServer
from traffic.settings import KafkaSettings, TopicSettings
from traffic.site import load_site
from traffic.wire import FrameHeaders
from workers.events import detection_event
from workers import metrics
from workers.decode import decode_jpeg
from workers.detector import Detector, DetectorSettings
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)


@dataclass
class Frame:
    """A valid frame of the batch; ``image`` is None for an end-of-session marker."""

    record: Any
    headers: FrameHeaders
    image: np.ndarray | None


class _Revocations(ConsumerRebalanceListener):
    """Drops records of revoked partitions from the batch being filled."""

    def __init__(self, worker: "Worker") -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.worker.drop_partitions(set(revoked))

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # Ready once the group answered: an empty assignment (more workers than partitions) is ready too.
        self.worker.health.set("kafka", True)
        log.info("partitions assigned", extra={"partitions": sorted(tp.partition for tp in assigned)})


class Worker:
    """One detection worker; ``run()`` until ``stop()`` (or SIGTERM)."""

    def __init__(self, settings: WorkerSettings, kafka: KafkaSettings, topics: TopicSettings) -> None:
        self.settings = settings
        self.kafka = kafka
        self.topics = topics
        self.health = Health(checks=("kafka", "model"), stall_s=max(120.0, settings.max_poll_interval_ms / 1000))
        self._stop = threading.Event()
        self._pending: list[Any] = []
        self._known_cameras: set[str] | None = None
        self._capture_limits, self._clock_report = settings.capture_limits(), ClockReport()
        if settings.site_config:
            self._known_cameras = set(load_site(settings.site_config).cameras())
        self.detector: Detector | None = None
        self.consumer: KafkaConsumer | None = None
        self.producer: KafkaProducer | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self, *_: object) -> None:
        """Finish the current batch, publish, commit, then leave the group."""
        self._stop.set()

    def start(self) -> None:
        """Connect to Kafka and load the model (the model first: it is the slow part)."""
        s = self.settings
        self.detector = Detector(DetectorSettings(
            model=s.model, device=s.device, half=s.half, classes=s.class_names(), conf=s.conf, iou=s.iou,
            imgsz=s.imgsz, batch_size=s.batch_size,
        ))  # fmt: skip
        metrics.MODEL_LOADED.set(1)
        self.health.set("model", True)
        fetch = max(s.max_frame_bytes * 2, 8 * 1024 * 1024)
        self.producer = clients.producer(
            self.kafka, client_id="traffic-worker", acks="all", linger_ms=5, max_request_size=max(1024 * 1024, s.max_frame_bytes + 65536),
            compression_type=None, retries=2**31 - 1, delivery_timeout_ms=int(s.publish_timeout_s * 1000),
        )  # fmt: skip
        self.consumer = clients.consumer(
            self.kafka, client_id="traffic-worker", group_id=s.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
            max_poll_records=s.batch_size, max_poll_interval_ms=s.max_poll_interval_ms,
            max_partition_fetch_bytes=fetch, fetch_max_bytes=fetch * 4,
            group_instance_id=s.group_instance_id or None, session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=min(3000, s.session_timeout_ms // 3),
        )  # fmt: skip
        self.consumer.subscribe([self.topics.frames], listener=_Revocations(self))
        self.health.set("kafka", False, "joining the consumer group")

    def close(self) -> None:
        """Close clients; the consumer leaves its group so partitions move at once."""
        if self.consumer is not None:
            self.consumer.close(autocommit=False)
            self.consumer = None
        if self.producer is not None:
            self.producer.close(timeout=10)
            self.producer = None
        self.health.set("kafka", False, "closed")

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        """Process batches until stopped."""
        assert self.consumer is not None and self.producer is not None
        last_lag = 0.0
        while not self._stop.is_set():
            self.health.beat()
            batch = self._fill_batch()
            if batch:
                self._process(batch)
            if time.monotonic() - last_lag > 2:
                self._update_lag()
                last_lag = time.monotonic()
        log.info("stopping: last batch done, offsets committed")

    def drop_partitions(self, revoked: set[TopicPartition]) -> None:
        """Forget pending records of partitions this worker no longer owns (never committed)."""
        before = len(self._pending)
        self._pending = [r for r in self._pending if TopicPartition(r.topic, r.partition) not in revoked]
        if before != len(self._pending):
            log.info("dropped uncommitted records of revoked partitions", extra={"records": before - len(self._pending)})

    def _fill_batch(self) -> list[Any]:
        """Up to batch_size records; wait at most max_wait_ms once the first one arrived."""
        assert self.consumer is not None
        size, wait_s = self.settings.batch_size, self.settings.max_wait_ms / 1000
        self._pending = []
        first_at: float | None = None
        while len(self._pending) < size and not self._stop.is_set():
            timeout_ms = 500 if first_at is None else max(0, int((first_at + wait_s - time.monotonic()) * 1000))
            polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=size - len(self._pending))
            for records in polled.values():
                self._pending.extend(records)
            if self._pending and first_at is None:
                first_at = time.monotonic()
            if first_at is None:
                break  # idle: return to the loop (lag gauge, stop flag); the next call polls again
            if time.monotonic() >= first_at + wait_s:
                break
        metrics.FRAMES_IN.inc(len(self._pending))
        return self._pending

    def _validate(self, record: Any) -> Frame:
        """Headers, size, camera and JPEG checks; ContractError/BadInput with a DLQ reason."""
        headers = FrameHeaders.from_kafka(record.headers)
        if record.value is None or len(record.value) > self.settings.max_frame_bytes:
            raise ContractError(f"frame of {len(record.value or b'')} bytes exceeds max_frame_bytes", "oversized")
        if self._known_cameras is not None and headers.camera not in self._known_cameras:
            raise ContractError(f"camera {headers.camera!r} is not in the site configuration", "unknown_camera")
        try:
            self._capture_limits.check(headers.capture_ms)
        except ContractError as exc:
            self._clock_report.refused(headers.camera, exc, headers.capture_ms, "worker")
            raise
        if headers.end:
            return Frame(record, headers, None)  # end-of-session marker: no image, passed on as an event
        started = time.perf_counter()
        try:
            image = decode_jpeg(record.value, self.settings.max_frame_pixels, expect=(headers.width, headers.height))
        except ContractError:
            raise
        except BadInput as exc:
            raise ContractError(str(exc), "undecodable") from None
        metrics.DECODE_SECONDS.observe(time.perf_counter() - started)
        return Frame(record, headers, image)

    def _process(self, batch: list[Any]) -> None:
        assert self.detector is not None and self.producer is not None and self.consumer is not None
        frames: list[Frame] = []
        futures = []
        for record in batch:
            try:
                frames.append(self._validate(record))
            except ContractError as exc:
                futures.append(self._dead_letter(record, exc))
        images = [f for f in frames if f.image is not None]
        found: dict[int, tuple] = {}
        per_frame_ms: float | None = None
        if images:
            now_ms = time.time() * 1000
            for frame in images:
                metrics.FRAME_AGE.observe(max(0.0, (now_ms - frame.headers.capture_ms) / 1000))
            started = time.perf_counter()
            results = self.detector.detect([f.image for f in images])  # type: ignore[misc]
            elapsed = time.perf_counter() - started
            metrics.INFERENCE_SECONDS.observe(elapsed)
            metrics.BATCH_SIZE.observe(len(images))
            per_frame_ms = round(elapsed * 1000 / len(images), 2)
            found = {id(f): r for f, r in zip(images, results)}
        for frame in frames:  # input order: a camera's events keep their frames' order
            h = frame.headers
            event = detection_event(h, self.detector.model_name, found.get(id(frame), ()), per_frame_ms)
            futures.append(self.producer.send(self.topics.detections, key=h.camera.encode(), value=event.encode()))
        started = time.perf_counter()
        if not self._await(futures):
            self._rewind(batch)
            return
        metrics.PUBLISH_SECONDS.observe(time.perf_counter() - started)
        metrics.EVENTS_OUT.inc(len(frames))  # end-of-session markers included: they are events too
        self._commit(batch)

    def _dead_letter(self, record: Any, exc: ContractError) -> Any:
        assert self.producer is not None
        metrics.DLQ.labels(exc.reason).inc()
        letter = frame_dead_letter(record, self.topics, stage="worker", reason=exc.reason, detail=str(exc))
        log.warning("frame refused to the DLQ", extra={"reason": exc.reason, "detail": str(exc), "dlq": letter.topic, "partition": record.partition, "offset": record.offset})
        return self.producer.send(letter.topic, key=letter.key, value=letter.value, headers=letter.headers)

    def _await(self, futures: list[Any]) -> bool:
        """True when every send was acknowledged; False (logged) when one failed."""
        assert self.producer is not None
        try:
            self.producer.flush(timeout=self.settings.publish_timeout_s)
            for future in futures:
                future.get(timeout=self.settings.publish_timeout_s)
            return True
        except KafkaError as exc:
            log.error("publishing failed; the batch will be processed again", extra={"error": repr(exc)})
            return False

    def _rewind(self, batch: list[Any]) -> None:
        """Seek back to the batch's first offsets so nothing is skipped; back off a little."""
        assert self.consumer is not None
        firsts: dict[TopicPartition, int] = {}
        for r in batch:
            tp = TopicPartition(r.topic, r.partition)
            firsts[tp] = min(firsts.get(tp, r.offset), r.offset)
        assigned = self.consumer.assignment()
        for tp, offset in firsts.items():
            if tp in assigned:
                self.consumer.seek(tp, offset)
        time.sleep(1.0)

    def _commit(self, batch: list[Any]) -> None:
        assert self.consumer is not None
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for r in batch:
            tp = TopicPartition(r.topic, r.partition)
            if tp not in offsets or offsets[tp].offset < r.offset + 1:
                offsets[tp] = OffsetAndMetadata(r.offset + 1, "", -1)
        assigned = self.consumer.assignment()
        offsets = {tp: om for tp, om in offsets.items() if tp in assigned}
        if not offsets:
            return
        try:
            self.consumer.commit(offsets)
        except KafkaError as exc:  # e.g. a rebalance happened: the new owner redoes these frames (duplicates only)
            log.warning("commit failed; frames may be processed again", extra={"error": repr(exc)})

    def _update_lag(self) -> None:
        assert self.consumer is not None
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            try:
                position = self.consumer.position(tp, timeout_ms=1000)
            except KafkaError:
                continue
            if position is not None:
                metrics.CONSUMER_LAG.labels(str(tp.partition)).set(max(0, high - position))


def serve(settings: WorkerSettings, kafka: KafkaSettings, topics: TopicSettings) -> int:
    """Run a worker process until SIGTERM/SIGINT; returns the exit code."""
    worker = Worker(settings, kafka, topics)
    server = HealthServer(worker.health, settings.metrics_port).start()
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    try:
        worker.start()
        log.info("worker running", extra={"group": settings.group_id, "topic": topics.frames, "batch_size": settings.batch_size})
        worker.run()
    finally:
        worker.close()
        server.stop()
    return 0

"""The worker: three stages around the model, so Kafka and JPEG work overlap inference.

    consumer thread (owns the KafkaConsumer)    inference threads           publish thread
    poll <= batch_size records ──> validate,    Detector.detect per frame   events in poll order
    decode JPEG (releases the GIL), DLQ   ───>  (``parallelism`` threads,   ──> encode, produce
    commit the acknowledged prefix <──────┐      one OpenVINO request each;      │
                                          │      or one call per batch)          │
                                          └────────── broker acks (callbacks) ───┘

At-least-once: a batch's offsets are committed only after every event and DLQ record produced
for it was acknowledged (``acks=all``), and batches are committed in poll order - a finished
batch waits for the ones before it - so a partition's committed offset never passes a frame
whose event is not on ``traffic.detections``. A failed send: the worker lets what is in flight
finish, seeks every partition back to its first uncommitted offset, backs off and redoes them.

At most ``pipeline_batches`` batches are in flight; while the pipeline is full the consumer
thread waits for the oldest one (a batch's inference), so the time between polls stays far
below ``max_poll_interval_ms``.

Rebalances: kafka-python 3 runs the rebalance listener on the consumer's IO thread, where it must
not block (heartbeats) nor call blocking consumer APIs such as ``commit``. So the listener only
drops records of revoked partitions from the batch being filled. Batches already in flight finish
(their events are published) but are committed only for partitions still assigned afterwards;
the new owner of a revoked partition starts at its last committed offset and publishes those
frames again. A worker killed mid-batch (``kill -9``) leaves its last batches uncommitted in the
same way. Either way a frame can get more than one event, never none; what is redone is at most
the batches in flight (``pipeline_batches x batch_size`` frames) plus those acknowledged since the
last commit (commits are batched, every ``commit_interval_ms``, and forced before stopping).
The aggregator de-duplicates by (camera, session, seq), so this never changes counts.

Unchanged frames (``unchanged-since`` header, no JPEG: the ingester saw no activity) skip decode
and the model: the event says ``reused_from_seq`` and the aggregator, which sees a camera's
events in seq order, uses the detections of that frame (docs/contracts.md).
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from pydantic import ValidationError

from traffic import clients
from traffic.capture_time import ClockReport
from traffic.dlq import frame_dead_letter
from traffic.errors import BadInput, ContractError
from traffic.health import Health, HealthServer
from traffic.settings import KafkaSettings, TopicSettings
from traffic.site import load_site
from traffic.site_watch import SiteChange, SiteWatcher
from traffic.wire import FrameHeaders
from workers.events import detection_event
from workers import metrics
from workers.decode import decode_jpeg
from workers.detector import Detector, DetectorSettings
from workers.settings import WorkerSettings
from workers.streams import StageTimes

log = logging.getLogger(__name__)


@dataclass
class Frame:
    """A valid frame of a batch; ``image`` is None for an end-of-session marker and an unchanged frame."""

    record: Any
    headers: FrameHeaders
    image: np.ndarray | None
    detections: tuple = ()
    times: StageTimes | None = None


@dataclass
class Batch:
    """One poll's records on their way through the stages; committed once ``acked``."""

    records: list[Any]
    frames: list[Frame] = field(default_factory=list)
    fetch_s: float = 0.0
    decode_s: float = 0.0
    to_infer: int = 0  # frames still in the model
    events: int = 0  # detection events sent
    unacked: int = 0  # sends not yet acknowledged
    published: bool = False  # the publish thread has issued every event send
    failed: BaseException | None = None  # a send failed: redo the batch
    error: BaseException | None = None  # the model failed: stop the worker
    sent_at: float = 0.0
    acked_at: float = 0.0
    serialize_s: float = 0.0
    produce_s: float = 0.0

    @property
    def done(self) -> bool:
        """Nothing of it is still moving: every send answered (or the model failed)."""
        return self.error is not None or (self.published and self.unacked == 0)


class _Revocations(ConsumerRebalanceListener):
    """Drops records of revoked partitions from the batch being filled (runs on kafka-python's IO thread: never blocks)."""

    def __init__(self, worker: "Worker") -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.worker.drop_partitions(set(revoked))

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # Ready once the group answered: an empty assignment (more workers than partitions) is ready too.
        self.worker.health.set("kafka", True)
        log.info("partitions assigned", extra={"partitions": sorted(tp.partition for tp in assigned)})


_STOP = object()


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
        self._site_watch: SiteWatcher | None = None
        if settings.site_config:
            site = load_site(settings.site_config)
            self._known_cameras = set(site.cameras())
            if settings.site_reload_s > 0:  # cameras added to the site file are accepted without a restart
                self._site_watch = SiteWatcher(settings.site_config, site, self._new_site, interval_s=settings.site_reload_s, results=metrics.SITE_RELOADS)
        self.detector: Detector | None = None
        self.consumer: KafkaConsumer | None = None
        self.producer: KafkaProducer | None = None
        self._inflight: deque[Batch] = deque()
        self._uncommitted: list[Batch] = []  # acknowledged, in poll order, not yet committed
        self._last_commit = 0.0
        self._progress = threading.Condition()  # notified whenever a batch moves (inferred, published, acked)
        self._infer_q: queue.Queue[Any] = queue.Queue()
        self._publish_q: queue.Queue[Any] = queue.Queue()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------------
    def _new_site(self, change: SiteChange) -> None:
        """The site watcher's callback: the known cameras of the new file (one assignment: thread-safe)."""
        self._known_cameras = set(change.site.cameras())

    def stop(self, *_: object) -> None:
        """Finish the batches in flight, publish, commit, then leave the group."""
        self._stop.set()

    def start(self) -> None:
        """Load the model (the slow part), start the stage threads, connect to Kafka."""
        s = self.settings
        self.detector = Detector(DetectorSettings(
            model=s.model, device=s.device, half=s.half, classes=s.class_names(), conf=s.conf, iou=s.iou,
            imgsz=s.imgsz, batch_size=s.batch_size, streams=s.streams,
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
        for i in range(self.detector.parallelism):
            self._threads.append(threading.Thread(target=self._infer_loop, name=f"infer-{i}", daemon=True))
        self._threads.append(threading.Thread(target=self._publish_loop, name="publish", daemon=True))
        for thread in self._threads:
            thread.start()
        if self._site_watch is not None:
            self._site_watch.start()

    def close(self) -> None:
        """Stop the stage threads and close clients; the consumer leaves its group so partitions move at once."""
        if self._site_watch is not None:
            self._site_watch.stop()
        for thread in self._threads:
            (self._publish_q if thread.name == "publish" else self._infer_q).put(_STOP)
        for thread in self._threads:
            thread.join(timeout=30)
        self._threads = []
        if self.consumer is not None:
            self.consumer.close(autocommit=False)
            self.consumer = None
        if self.producer is not None:
            self.producer.close(timeout=10)
            self.producer = None
        if self.detector is not None:
            self.detector.close()
        self.health.set("kafka", False, "closed")

    # -- consumer thread -----------------------------------------------------------------------
    def run(self) -> None:
        """Process batches until stopped; then let the ones in flight finish and commit them."""
        assert self.consumer is not None and self.producer is not None
        last_lag = 0.0
        while not self._stop.is_set():
            self.health.beat()
            self._settle()
            if len(self._inflight) >= self.settings.pipeline_batches:
                with self._progress:  # full: wait for the oldest batch (about one batch's inference)
                    self._progress.wait_for(lambda: self._inflight[0].done or self._stop.is_set(), timeout=0.2)
            else:
                batch = self._fill_batch()
                if batch is not None:
                    self._dispatch(batch)
            if time.monotonic() - last_lag > 2:
                self._update_lag()
                last_lag = time.monotonic()
        self._wait_inflight(self.settings.publish_timeout_s + 30)
        self._settle(rewind=False, force=True)
        log.info("stopping: batches in flight done, offsets committed", extra={"left_uncommitted": len(self._inflight)})

    def drop_partitions(self, revoked: set[TopicPartition]) -> None:
        """Listener: forget records of revoked partitions in the batch being filled (never committed)."""
        before = len(self._pending)
        self._pending = [r for r in self._pending if TopicPartition(r.topic, r.partition) not in revoked]
        if before != len(self._pending):
            log.info("dropped uncommitted records of revoked partitions", extra={"records": before - len(self._pending)})

    def _fill_batch(self) -> Batch | None:
        """Up to batch_size records; wait at most max_wait_ms once the first one arrived."""
        assert self.consumer is not None
        size, wait_s = self.settings.batch_size, self.settings.max_wait_ms / 1000
        self._pending = []
        first_at: float | None = None
        fetch_s = 0.0
        while len(self._pending) < size and not self._stop.is_set():
            timeout_ms = 500 if first_at is None else max(0, int((first_at + wait_s - time.monotonic()) * 1000))
            started = time.perf_counter()
            polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=size - len(self._pending))
            records = [r for part in polled.values() for r in part]
            if records:  # time spent waiting for an empty topic is idle, not a frame's cost
                fetch_s += time.perf_counter() - started
            self._pending.extend(records)
            if self._pending and first_at is None:
                first_at = time.monotonic()
            if first_at is None:
                break  # idle: return to the loop (lag gauge, stop flag); the next call polls again
            if time.monotonic() >= first_at + wait_s:
                break
        if not self._pending:
            return None
        metrics.FRAMES_IN.inc(len(self._pending))
        return Batch(records=self._pending, fetch_s=fetch_s)

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
        if headers.end or headers.unchanged_since is not None:
            return Frame(record, headers, None)  # end-of-session marker or unchanged frame: no image, passed on as an event
        started = time.perf_counter()
        try:
            image = decode_jpeg(record.value, self.settings.max_frame_pixels, expect=(headers.width, headers.height))
        except ContractError:
            raise
        except BadInput as exc:
            raise ContractError(str(exc), "undecodable") from None
        elapsed = time.perf_counter() - started
        metrics.DECODE_SECONDS.observe(elapsed)
        metrics.STAGE_SECONDS.labels("decode").observe(elapsed)
        return Frame(record, headers, image)

    def _dispatch(self, batch: Batch) -> None:
        """Validate and decode on this thread, DLQ the bad ones, hand the images to the model."""
        assert self.detector is not None
        for record in batch.records:
            try:
                batch.frames.append(self._validate(record))
            except ContractError as exc:
                self._dead_letter(batch, record, exc)
        images = [f for f in batch.frames if f.image is not None]
        reused = sum(1 for f in batch.frames if f.headers.unchanged_since is not None)
        if reused:
            metrics.FRAMES_REUSED.inc(reused)
        now_ms = time.time() * 1000
        for frame in images:
            metrics.FRAME_AGE.observe(max(0.0, (now_ms - frame.headers.capture_ms) / 1000))
        if images:
            metrics.BATCH_SIZE.observe(len(images))
        batch.to_infer = len(images)
        self._inflight.append(batch)
        self._publish_q.put(batch)  # the publish thread takes batches in poll order
        if self.detector.parallelism > 1:  # frame by frame over the OpenVINO requests
            for frame in images:
                self._infer_q.put((batch, [frame]))
        elif images:  # one model call per batch (Ultralytics' path: GPU batches)
            self._infer_q.put((batch, images))

    def _wait_inflight(self, timeout_s: float) -> None:
        """Wait until every batch in flight is done (acknowledged, failed) or ``timeout_s`` passed."""
        with self._progress:
            self._progress.wait_for(lambda: all(b.done for b in self._inflight), timeout=timeout_s)

    def _settle(self, rewind: bool = True, force: bool = False) -> None:
        """Take the acknowledged prefix of the batches in flight; commit it every ``commit_interval_ms``; redo from a failed one."""
        while self._inflight and self._inflight[0].done:
            head = self._inflight[0]
            if head.error is not None:
                raise RuntimeError(f"inference failed: {head.error!r}") from head.error
            if head.failed is not None:
                break
            self._uncommitted.append(self._inflight.popleft())
            self._acknowledged(head)
        due = time.monotonic() - self._last_commit >= self.settings.commit_interval_ms / 1000
        if self._uncommitted and (force or due):
            self._commit(self._uncommitted)
            self._uncommitted = []
            self._last_commit = time.monotonic()
        if self._inflight and self._inflight[0].done and self._inflight[0].failed is not None and rewind:
            self._rewind()

    def _rewind(self) -> None:
        """A send failed: let the rest finish, seek back to the first uncommitted offsets, back off a little."""
        assert self.consumer is not None
        log.error("publishing failed; the batch will be processed again", extra={"error": repr(self._inflight[0].failed)})
        self._settle(rewind=False, force=True)  # what was acknowledged before the failed batch stays done
        self._wait_inflight(self.settings.publish_timeout_s + 30)
        firsts = self._first_offsets(self._inflight)
        self._inflight.clear()
        assigned = self.consumer.assignment()
        for tp, offset in firsts.items():
            if tp in assigned:
                self.consumer.seek(tp, offset)
        self._stop.wait(1.0)

    @staticmethod
    def _first_offsets(batches: deque[Batch] | list[Batch]) -> dict[TopicPartition, int]:
        firsts: dict[TopicPartition, int] = {}
        for batch in batches:
            for r in batch.records:
                tp = TopicPartition(r.topic, r.partition)
                firsts[tp] = min(firsts.get(tp, r.offset), r.offset)
        return firsts

    def _acknowledged(self, batch: Batch) -> None:
        """Metrics of a batch whose every send was acknowledged."""
        metrics.EVENTS_OUT.inc(batch.events)  # end-of-session markers included: they are events too
        metrics.PUBLISH_SECONDS.observe(max(0.0, batch.acked_at - batch.sent_at))
        _observe_frames("fetch", batch.fetch_s, len(batch.records))
        _observe_frames("serialize", batch.serialize_s, len(batch.frames))
        _observe_frames("produce", batch.produce_s, len(batch.frames))
        _observe_frames("ack_wait", max(0.0, batch.acked_at - batch.sent_at), len(batch.records))

    def _commit(self, batches: list[Batch]) -> None:
        """Commit the offsets after ``batches`` (acknowledged, in poll order) in one request."""
        assert self.consumer is not None
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        frames = sum(len(b.records) for b in batches)
        for batch in batches:
            for r in batch.records:
                tp = TopicPartition(r.topic, r.partition)
                if tp not in offsets or offsets[tp].offset < r.offset + 1:
                    offsets[tp] = OffsetAndMetadata(r.offset + 1, "", -1)
        assigned = self.consumer.assignment()
        offsets = {tp: om for tp, om in offsets.items() if tp in assigned}
        if not offsets:
            return
        started = time.perf_counter()
        try:
            self.consumer.commit(offsets)
        except KafkaError as exc:  # e.g. a rebalance happened: the new owner redoes these frames (duplicates only)
            log.warning("commit failed; frames may be processed again", extra={"error": repr(exc)})
        _observe_frames("commit", time.perf_counter() - started, frames)

    def _dead_letter(self, batch: Batch, record: Any, exc: ContractError) -> None:
        metrics.DLQ.labels(exc.reason).inc()
        letter = frame_dead_letter(record, self.topics, stage="worker", reason=exc.reason, detail=str(exc))
        log.warning("frame refused to the DLQ", extra={"reason": exc.reason, "detail": str(exc), "dlq": letter.topic, "partition": record.partition, "offset": record.offset})
        self._send(batch, letter.topic, letter.key, letter.value, letter.headers)

    def _send(self, batch: Batch, topic: str, key: bytes | None, value: bytes | None, headers: list | None = None) -> None:
        """Produce one record for ``batch``; its acknowledgement (or failure) is counted on the batch."""
        assert self.producer is not None
        with self._progress:
            batch.unacked += 1
        try:
            future = self.producer.send(topic, key=key, value=value, headers=headers)
        except KafkaError as exc:  # e.g. metadata not available within max_block_ms
            self._acked(batch, exc)
            return
        future.add_callback(lambda _meta: self._acked(batch, None))
        future.add_errback(lambda error: self._acked(batch, error))

    def _acked(self, batch: Batch, error: BaseException | None) -> None:
        """Runs on the producer's I/O thread: count the answer, wake the consumer thread."""
        with self._progress:
            batch.unacked -= 1
            if error is not None and batch.failed is None:
                batch.failed = error
            if batch.unacked == 0 and batch.published:
                batch.acked_at = time.perf_counter()
            self._progress.notify_all()

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

    # -- inference threads ---------------------------------------------------------------------
    def _infer_loop(self) -> None:
        assert self.detector is not None
        while True:
            item = self._infer_q.get()
            if item is _STOP:
                return
            batch, frames = item
            if batch.error is not None:
                continue
            try:
                found, times = self.detector.detect_timed([f.image for f in frames])
            except Exception as exc:  # noqa: BLE001 - the model failing is fatal: reported on the consumer thread
                log.exception("inference failed")
                with self._progress:
                    batch.error = exc
                    self._progress.notify_all()
                continue
            share = StageTimes(times.preprocess / len(frames), times.inference / len(frames), times.postprocess / len(frames))
            for frame, detections in zip(frames, found):
                frame.detections, frame.times = detections, share
                metrics.STAGE_SECONDS.labels("preprocess").observe(share.preprocess)
                metrics.STAGE_SECONDS.labels("inference").observe(share.inference)
                metrics.STAGE_SECONDS.labels("postprocess").observe(share.postprocess)
            with self._progress:
                batch.to_infer -= len(frames)
                self._progress.notify_all()

    # -- publish thread ------------------------------------------------------------------------
    def _publish_loop(self) -> None:
        while True:
            batch = self._publish_q.get()
            if batch is _STOP:
                return
            with self._progress:
                self._progress.wait_for(lambda: batch.to_infer == 0 or batch.error is not None)
            if batch.error is not None:
                continue
            try:
                self._publish(batch)
            except Exception as exc:  # noqa: BLE001 - fatal (the worker restarts, the batch is redone); never a silent stall
                log.exception("publishing a batch failed")
                batch.error = exc
            with self._progress:
                batch.published = True
                batch.sent_at = time.perf_counter()
                if batch.unacked == 0:
                    batch.acked_at = batch.sent_at
                self._progress.notify_all()

    def _publish(self, batch: Batch) -> None:
        """One event per frame, in poll order; a frame whose headers make no valid event goes to the DLQ."""
        assert self.detector is not None
        model_s = sum(f.times.total for f in batch.frames if f.times is not None)
        if model_s:
            metrics.INFERENCE_SECONDS.observe(model_s)
        for frame in batch.frames:  # input order: a camera's events keep their frames' order
            h = frame.headers
            started = time.perf_counter()
            try:
                event = detection_event(h, self.detector.model_name, frame.detections,
                                        round(frame.times.total * 1000, 2) if frame.times is not None else None)
            except ValidationError as exc:
                self._dead_letter(batch, frame.record, ContractError(f"no valid detection event: {exc.errors()[0]['msg']}", "malformed"))
                continue
            value = event.encode()
            encoded = time.perf_counter()
            self._send(batch, self.topics.detections, h.camera.encode(), value)
            batch.events += 1
            batch.serialize_s += encoded - started
            batch.produce_s += time.perf_counter() - encoded


def _observe_frames(stage: str, seconds: float, frames: int) -> None:
    """A batch-level cost shared equally by its frames (one observation per frame)."""
    if frames:
        share = seconds / frames
        child = metrics.STAGE_SECONDS.labels(stage)
        for _ in range(frames):
            child.observe(share)


def serve(settings: WorkerSettings, kafka: KafkaSettings, topics: TopicSettings) -> int:
    """Run a worker process until SIGTERM/SIGINT; returns the exit code."""
    worker = Worker(settings, kafka, topics)
    server = HealthServer(worker.health, settings.metrics_port).start()
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    try:
        worker.start()
        log.info("worker running", extra={"group": settings.group_id, "topic": topics.frames, "batch_size": settings.batch_size,
                                          "engine": worker.detector.engine if worker.detector else None})  # fmt: skip
        worker.run()
    finally:
        worker.close()
        server.stop()
    return 0

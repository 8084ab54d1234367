"""Publish encoded frames to ``traffic.frames`` with kafka-python: one producer, many cameras.

Per camera a bounded buffer sits in front of the producer. Live cameras drop the *oldest* frame
when it is full (``buffer_full``): after an outage the newest pictures matter. Files played as
fast as possible block instead, so nothing is lost and runs stay deterministic.

Sequence numbers are given when a frame is handed to the producer, never earlier, so frames
dropped from the buffer leave no gap: ``seq`` is 0, 1, 2, ... per (camera, session). The producer
is idempotent with ``acks=all`` and retries until ``delivery_timeout_ms``; if a frame still fails,
that camera's session is closed and the next frame starts a new session at seq 0 (frames of the
old session already in flight behind the failed one may then be missing too; the aggregator treats
a session as ended when a new one starts).

At most ``max_unacked_frames`` per camera wait for acknowledgement; beyond that frames stay in the
bounded buffer, so a broker outage costs bounded memory. While the broker is unreachable at start
the producer is re-created with backoff; ``/readyz`` reports ``kafka`` not ready meanwhile.

Cameras come and go at run time (the ingest group moves them between replicas): each
:meth:`FramePublisher.add_camera` opens a fresh :class:`CameraQueue`, :meth:`FramePublisher.drain`
waits until its last frame is acknowledged and :meth:`FramePublisher.close_camera` closes it, after
which nothing more of that camera is handed to the producer. ``permit`` is asked before every
hand-over: while it says no (this replica's group lease has run out) nothing is sent at all, and
:meth:`FramePublisher.abort_unsent` throws away what the producer has not sent yet.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from kafka import KafkaProducer
from kafka.errors import KafkaError

from ingest.activity import ActivityGate
from ingest.backoff import Backoff
from ingest.metrics import IngestMetrics
from ingest.settings import IngestSettings
from traffic import clients
from traffic.errors import BrokerUnavailable
from traffic.health import Health
from traffic.settings import KafkaSettings
from traffic.wire import FrameHeaders

log = logging.getLogger(__name__)

T = TypeVar("T")

PRODUCER_MAX_BLOCK_MS = 2000  # send() waits this long for metadata; the sender thread must stay responsive


class DropOldestBuffer(Generic[T]):
    """A bounded FIFO; a put on a full buffer pushes out the oldest item (or blocks). Thread-safe."""

    def __init__(self, maxlen: int) -> None:
        assert maxlen >= 1
        self.maxlen = maxlen
        self._items: deque[T] = deque()
        self._cond = threading.Condition()

    def put(self, item: T, block: bool = False, stop: threading.Event | None = None) -> int:
        """Append ``item``; return how many old items were dropped to make room (0 or 1).

        With ``block`` it waits for room instead and drops nothing; if ``stop`` is set while
        waiting, ``item`` itself is not added and 1 is returned.
        """
        with self._cond:
            if block:
                while len(self._items) >= self.maxlen:
                    if stop is not None and stop.is_set():
                        return 1
                    self._cond.wait(0.05)
            dropped = 0
            while len(self._items) >= self.maxlen:
                self._items.popleft()
                dropped += 1
            self._items.append(item)
            self._cond.notify_all()
            return dropped

    def put_front(self, item: T) -> None:
        """Put back an item that could not be sent, ahead of the others (may exceed maxlen by one)."""
        with self._cond:
            self._items.appendleft(item)
            self._cond.notify_all()

    def get_nowait(self) -> T | None:
        """The oldest item, or None when empty."""
        with self._cond:
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def clear(self) -> int:
        """Remove everything; return how many items were removed."""
        with self._cond:
            count = len(self._items)
            self._items.clear()
            self._cond.notify_all()
            return count

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


@dataclass(slots=True)
class OutgoingFrame:
    """An encoded frame waiting for its sequence number and the producer."""

    camera: str
    intersection: str
    session: str
    capture_ms: int
    width: int
    height: int
    jpeg: bytes
    end: bool = False  # the session's end-of-session marker (empty value), see traffic.wire.FrameHeaders
    handover: bool = False  # on a marker: a live camera let go of, that goes on in a new session (FrameHeaders.handover)
    thumb: Any = None  # activity thumbnail (ingest.activity), None when gating is off


@dataclass(eq=False)
class CameraQueue:
    """One camera's buffer and sequence state while this replica holds it; closed when it lets go.

    A camera that comes back later gets a new queue, so a straggling thread of the old hold can
    never put frames into the new one.
    """

    camera: str
    buffer: DropOldestBuffer[OutgoingFrame]
    gate: ActivityGate
    lossless: bool = False
    source_session: str = ""
    session: str = ""
    seq: int = 0
    restarts: int = 0
    broken: bool = False
    unacked: int = 0
    handed: int = 0
    closed: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing waiting for acknowledgement."""
        return not len(self.buffer) and self.unacked <= 0


class FramePublisher:
    """Sends frames of many cameras through one idempotent KafkaProducer on its own thread.

    Lifecycle: ``add_camera`` for each camera, ``start()``, ``submit()`` from the camera threads,
    ``close(deadline_s)`` to flush and stop (idempotent).
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        settings: IngestSettings,
        metrics: IngestMetrics,
        health: Health,
        permit: Callable[[], bool] = lambda: True,
    ) -> None:
        self._kafka = kafka
        self._topic = topic
        self._settings = settings
        self._metrics = metrics
        self._health = health
        self._permit = permit
        self._queues: dict[str, CameraQueue] = {}
        self._lock = threading.Lock()
        self._abort = threading.Event()
        self._work = threading.Event()
        self._closing = threading.Event()
        self._stopped = threading.Event()
        self._producer: KafkaProducer | None = None
        self._thread: threading.Thread | None = None
        self._warned_send = False

    # -- camera side ---------------------------------------------------------------------------
    def add_camera(self, camera: str, lossless: bool = False) -> CameraQueue:
        """Open a fresh queue for ``camera`` (any time); ``lossless``: block instead of dropping.

        The camera's previous queue, if still open, is closed first (its frames are dropped).
        """
        queue = CameraQueue(camera, DropOldestBuffer(self._settings.buffer_frames), ActivityGate(self._settings.activity_rule()), lossless=lossless)
        with self._lock:
            old = self._queues.get(camera)
            self._queues[camera] = queue
        if old is not None and not old.closed:
            self._close(old)
        return queue

    def submit(self, frame: OutgoingFrame, stop: threading.Event | None = None, queue: CameraQueue | None = None) -> None:
        """Queue a frame for sending (drop-oldest, or blocking in lossless mode until ``stop``).

        ``queue`` is the handle :meth:`add_camera` returned (default: the camera's current queue);
        frames for a closed queue are ignored.
        """
        queue = queue if queue is not None else self._queues[frame.camera]
        if queue.closed or (queue.done.is_set() and not frame.end):
            return
        dropped = queue.buffer.put(frame, block=queue.lossless, stop=stop or self._closing)
        if dropped:
            self._metrics.dropped(frame.camera, "shutdown" if queue.lossless else "buffer_full", dropped)
        self._work.set()

    def camera_done(self, camera: str) -> bool:
        """True once ``max_frames`` frames of ``camera`` were handed to the producer."""
        return self._queues[camera].done.is_set()

    def drain(self, queue: CameraQueue, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` until everything of ``queue`` was sent and acknowledged (or failed)."""
        deadline = time.monotonic() + timeout_s
        self._work.set()
        while not queue.idle:
            if time.monotonic() >= deadline or self._stopped.is_set():
                return queue.idle
            time.sleep(0.01)
        return True

    def close_camera(self, queue: CameraQueue) -> int:
        """Close ``queue``: nothing more of it is handed to the producer. Returns the frames dropped.

        Frames already handed over are not recalled (their acknowledgements still count).
        """
        with self._lock:
            if self._queues.get(queue.camera) is queue:
                del self._queues[queue.camera]
        return self._close(queue)

    def _close(self, queue: CameraQueue) -> int:
        queue.closed = True
        left = queue.buffer.clear()
        if left:
            self._metrics.dropped(queue.camera, "released", left)
        return left

    def abort_unsent(self) -> None:
        """Throw away everything the producer has not sent yet and start a new producer.

        Why: when this replica's group lease ends, frames still waiting inside the producer (or
        being retried) must not reach the topic after another replica took the camera over.
        """
        self._abort.set()
        self._work.set()

    def pending(self) -> int:
        """Frames queued or waiting for acknowledgement, all cameras."""
        with self._lock:
            return sum(len(q.buffer) + q.unacked for q in self._queues.values())

    @property
    def connected(self) -> bool:
        """True once a producer reached the broker."""
        return self._producer is not None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "FramePublisher":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
            self._thread.start()
        return self

    def close(self, deadline_s: float) -> None:
        """Send what is queued and wait for acknowledgements until ``deadline_s`` passes, then stop.

        Frames still queued after the deadline are counted as dropped (``shutdown``).
        """
        if self._thread is None or self._stopped.is_set():
            return
        deadline = time.monotonic() + deadline_s
        self._closing.set()
        self._work.set()
        while time.monotonic() < deadline and self.pending() and self._producer is not None:
            time.sleep(0.02)
        self._stopped.set()
        self._work.set()
        self._thread.join(timeout=max(0.1, deadline - time.monotonic()) + PRODUCER_MAX_BLOCK_MS / 1000)
        producer, self._producer = self._producer, None
        if producer is not None:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                producer.flush(timeout=remaining)
            except KafkaError:
                pass  # unacknowledged frames are counted below
            producer.close(timeout=max(0.5, deadline - time.monotonic()))
        with self._lock:
            queues = list(self._queues.values())
        for queue in queues:
            left = queue.buffer.clear()
            if left:
                self._metrics.dropped(queue.camera, "shutdown", left)
        log.info("publisher closed", extra={"unacked": sum(q.unacked for q in queues)})

    # -- sender thread -------------------------------------------------------------------------
    def _connect(self) -> KafkaProducer | None:
        s = self._settings
        try:
            producer = clients.producer(
                self._kafka,
                client_id="traffic-ingest",
                acks="all",
                enable_idempotence=True,
                linger_ms=s.linger_ms,
                max_request_size=s.max_request_bytes,
                delivery_timeout_ms=s.delivery_timeout_ms,
                max_block_ms=PRODUCER_MAX_BLOCK_MS,
                bootstrap_timeout_ms=s.bootstrap_timeout_ms,
            )
        except BrokerUnavailable as exc:
            self._health.set("kafka", False, str(exc))
            log.warning("kafka unreachable; retrying", extra={"servers": self._kafka.bootstrap_servers, "error": str(exc)})
            return None
        self._health.set("kafka", True)
        log.info("kafka producer connected", extra={"servers": self._kafka.bootstrap_servers, "topic": self._topic})
        return producer

    def _run(self) -> None:
        backoff = Backoff(self._settings.backoff_initial_s, self._settings.backoff_max_s)
        while not self._stopped.is_set():
            if self._producer is None:
                producer = self._connect()
                if producer is None:
                    self._stopped.wait(backoff.next_s())
                    continue
                if self._stopped.is_set():  # close() gave up on us while we were connecting
                    producer.close(timeout=0)
                    break
                self._producer = producer
                backoff.reset()
            if self._abort.is_set():
                self._abort_producer()
                continue
            self._work.clear()  # before looking at the queues: a submit from now on wakes the wait below
            sent = 0
            with self._lock:
                queues = list(self._queues.values())
            for queue in queues:
                if self._stopped.is_set():
                    break
                sent += self._send_one(queue)
            if sent == 0:
                self._work.wait(0.05)
            elif sent < 0:
                self._stopped.wait(backoff.next_s())
            else:
                backoff.reset()

    def _abort_producer(self) -> None:
        """Close the producer at once (unsent batches fail), in the sender thread that owns it."""
        self._abort.clear()
        producer, self._producer = self._producer, None
        if producer is not None:
            # KafkaProducer.close() flushes first, i.e. would *send* what is pending; the sender's
            # force_close (kafka-python 3.0) stops it without sending and fails the unsent batches.
            sender = getattr(producer, "_sender", None)
            if sender is not None and hasattr(sender, "force_close"):
                sender.force_close()
            try:
                producer.close(timeout=0)
            except KafkaError:
                pass
            log.warning("unsent frames discarded; producer restarted", extra={"topic": self._topic})

    def _send_one(self, queue: CameraQueue) -> int:
        """Hand at most one frame of ``queue`` to the producer: 1 sent, 0 nothing to do, -1 failed."""
        max_frames = self._settings.max_frames
        if queue.closed or not self._permit():
            return 0
        with self._lock:
            if queue.unacked >= self._settings.max_unacked_frames:
                return 0
        frame = queue.buffer.get_nowait()
        while queue.done.is_set() and frame is not None and not frame.end:
            frame = queue.buffer.get_nowait()  # past max_frames only the session's end marker still goes out
        if frame is None:
            return 0
        if frame.session != queue.source_session:
            queue.source_session, queue.session, queue.seq, queue.broken = frame.session, frame.session, 0, False
            queue.gate.reset()
        elif queue.broken:
            queue.restarts += 1
            queue.session, queue.seq, queue.broken = f"{frame.session}-{queue.restarts}", 0, False
            queue.gate.reset()
            log.warning("session restarted after a failed delivery", extra={"camera": queue.camera, "session": queue.session})
        if frame.end and frame.session != queue.source_session:
            return 1  # the marker of a session none of whose frames went out: nothing to end
        # Decided here, where seqs are given, in seq order: the reference is the last frame of this session sent whole.
        unchanged = None if frame.end else queue.gate.unchanged_since(frame.thumb, frame.capture_ms)
        headers = FrameHeaders(
            frame.camera, frame.intersection, queue.session, queue.seq, frame.capture_ms, frame.width, frame.height, end=frame.end,
            unchanged_since=unchanged, handover=frame.handover,
        )  # fmt: skip
        value = b"" if unchanged is not None else frame.jpeg
        assert self._producer is not None
        try:
            future = self._producer.send(
                self._topic, key=frame.camera.encode(), value=value, headers=headers.to_kafka()
            )
        except KafkaError as exc:  # metadata not available (broker down before the first send, topic missing)
            queue.buffer.put_front(frame)
            self._health.set("kafka", False, f"send failed: {exc.__class__.__name__}")
            if not self._warned_send:
                log.warning("cannot send to kafka; retrying", extra={"camera": queue.camera, "topic": self._topic, "error": str(exc)})
                self._warned_send = True
            return -1
        self._warned_send = False
        if unchanged is None and not frame.end:
            queue.gate.sent(frame.thumb, frame.capture_ms, queue.seq)
        queue.seq += 1
        queue.handed += 0 if frame.end else 1
        with self._lock:
            queue.unacked += 1
        if max_frames and queue.handed >= max_frames:
            queue.done.set()
        started = time.monotonic()
        future.add_callback(self._on_ack, queue, len(value), started, frame.end, unchanged is not None)
        future.add_errback(self._on_error, queue, headers.session, headers.seq)
        return 1

    def _on_ack(self, queue: CameraQueue, size: int, started: float, marker: bool, unchanged: bool, _metadata: Any) -> None:
        camera = queue.camera
        if not marker:  # the end-of-session marker is not a frame
            self._metrics.frames_published.labels(camera).inc()
            self._metrics.bytes_sent.labels(camera).inc(size)
            if unchanged:
                self._metrics.frames_unchanged.labels(camera).inc()
            self._metrics.publish_latency.labels(camera).observe(time.monotonic() - started)
        with self._lock:
            queue.unacked -= 1
        self._health.set("kafka", True)
        self._work.set()

    def _on_error(self, queue: CameraQueue, session: str, seq: int, exc: BaseException) -> None:
        self._metrics.dropped(queue.camera, "publish_failed")
        with self._lock:
            queue.unacked -= 1
        if session == queue.session:
            queue.broken = True
        self._health.set("kafka", False, f"delivery failed: {exc.__class__.__name__}")
        log.warning("frame not delivered", extra={"camera": queue.camera, "session": session, "seq": seq, "error": str(exc)})
        self._work.set()

"""The ingest service: one process, many cameras, one Kafka producer.

Per camera a :class:`CameraRunner` thread owns the connection state machine::

          +-----------+  open ok, first frame   +-----------+
    ----> | connecting| ----------------------> | streaming |
          +-----------+                         +-----------+
             ^     | open failed                    | stream lost (read error / timeout)
             |     v                                v
          +--------------+  <-----------------------+
          | backing_off  |   wait initial_s * 2^n (capped, jittered), then reconnect
          +--------------+

Every successful open starts a new *session* (12 hex chars) whose frames are numbered from 0 by
the publisher; a file that loops starts a new session per pass. SIGTERM (:meth:`IngestService.stop`)
stops reading at once and gives the publisher ``shutdown_deadline_s`` to flush what is queued.

Which cameras this process reads: with ``assignment=static`` every camera of the site (or
``cameras``), from start to end; with ``assignment=group`` the ones the ingest group gives it
(:mod:`ingest.membership`), which can change at any time through :meth:`IngestService.hold` and
:meth:`IngestService.release` - a released camera ends its session with an end-of-session marker
that the broker has acknowledged before the camera may start on another replica.

Readiness (``/readyz``): ``kafka`` - the producer reached the broker and the last send or
acknowledgement succeeded; ``cameras`` - at least one camera is streaming or has finished its
file (in group mode also: this replica holds no camera yet); ``assignment`` (group mode) - the
replica's membership of the group is confirmed. Liveness (``/healthz``): the supervising loop
beats every 0.5 s.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from ingest.backoff import Backoff
from ingest.encoder import JpegEncoder
from ingest.metrics import IngestMetrics
from ingest.publisher import CameraQueue, FramePublisher, OutgoingFrame
from ingest.reader import FrameReader, LatestFrame
from ingest.sampler import sample_file, sample_live
from ingest.settings import IngestSettings
from ingest.sources import SourceError, describe_source, file_path, is_live, open_source
from traffic import clients
from traffic.errors import BadInput, ConfigError
from traffic.health import Health, HealthServer
from traffic.settings import KafkaSettings, TopicSettings
from traffic.site import Site, load_site

log = logging.getLogger(__name__)


class CameraState(str, enum.Enum):
    """Connection state of one camera (logged, and exposed through ``camera_up``)."""

    CONNECTING = "connecting"
    STREAMING = "streaming"
    BACKING_OFF = "backing_off"
    FINISHED = "finished"


def new_session_id() -> str:
    """A fresh stream session id: 12 random hex characters (a valid wire identifier)."""
    return uuid.uuid4().hex[:12]


@dataclass(frozen=True)
class CameraPlan:
    """What one runner serves. ``url`` may hold secrets: log ``describe_source(url)`` only."""

    camera: str
    intersection: str
    url: str
    fps: float
    max_width: int
    jpeg_quality: int

    @property
    def live(self) -> bool:
        return is_live(self.url)


def plan_cameras(site: Site, settings: IngestSettings) -> list[CameraPlan]:
    """The cameras to serve: the chosen subset with source overrides applied; ConfigError on unknown ids."""
    known = site.cameras()
    wanted = settings.camera_ids() or list(known)
    overrides = settings.source_overrides()
    for camera_id in [*wanted, *overrides]:
        if camera_id not in known:
            raise ConfigError(f"camera {camera_id!r} is not in the site configuration (known: {', '.join(known)})")
    plans = []
    for camera_id in wanted:
        intersection, camera = known[camera_id]
        url = overrides.get(camera_id) or camera.resolved_source()
        plans.append(CameraPlan(camera_id, intersection.id, url, camera.fps, camera.max_width, camera.jpeg_quality))
    return plans


class CameraRunner(threading.Thread):
    """Connects one camera, streams it to the publisher, and reconnects with backoff until stopped."""

    def __init__(
        self,
        plan: CameraPlan,
        settings: IngestSettings,
        publisher: FramePublisher,
        metrics: IngestMetrics,
        stop: threading.Event | None = None,
    ) -> None:
        super().__init__(name=f"camera-{plan.camera}", daemon=True)
        self.plan = plan
        self._settings = settings
        self._publisher = publisher
        self._metrics = metrics
        self._stop_event = stop if stop is not None else threading.Event()
        self.end_marker = True  # end the last session with a marker (not when fenced: the camera may be elsewhere already)
        self.handover = True  # a live camera stopped goes on elsewhere: its marker says handover (FrameHeaders.handover)
        self.queue: CameraQueue = publisher.add_camera(plan.camera, lossless=self.lossless)
        rule = settings.activity_rule()
        self._encoder = JpegEncoder(plan.max_width, plan.jpeg_quality, rule.thumb_width if rule.enabled else 0)
        self._backoff = Backoff(settings.backoff_initial_s, settings.backoff_max_s)
        self.state = CameraState.CONNECTING
        self.sessions = 0
        self.opening = False
        # A live camera's stream goes on across reconnects: the session that a lost connection
        # interrupted, and its last frame (for the end marker it gets when the runner stops).
        self._carried: OutgoingFrame | None = None
        self._log = {"camera": plan.camera, "source": describe_source(plan.url)}

    @property
    def lossless(self) -> bool:
        """Files played as fast as possible lose no frame (blocking hand-over instead of dropping)."""
        return not self.plan.live and not self._settings.realtime

    def stop(self, end_marker: bool = True, handover: bool = True) -> None:
        """Stop reading soon (within one frame); ``end_marker``: end the session with its marker; ``handover``: a live camera goes on."""
        self.end_marker = self.end_marker and end_marker
        self.handover = self.handover and handover
        self._stop_event.set()

    def quiet(self) -> bool:
        """True once this runner can hand nothing more to the publisher: ended, or stuck in an open."""
        return not self.is_alive() or self.opening

    def _done(self) -> bool:
        return self.queue.done.is_set() or self.queue.closed

    def _set_state(self, state: CameraState) -> None:
        if state != self.state:
            self.state = state
            self._metrics.camera_up.labels(self.plan.camera).set(1 if state == CameraState.STREAMING else 0)
            # connecting <-> backing_off flips at every retry: debug only; camera_up shows the outage
            level = logging.INFO if state in (CameraState.STREAMING, CameraState.FINISHED) else logging.DEBUG
            log.log(level, "camera state", extra={**self._log, "state": state.value})

    def run(self) -> None:
        attempt = 0
        try:
            while not self._stop_event.is_set() and not self._done():
                self._set_state(CameraState.CONNECTING)
                if attempt:
                    self._metrics.reconnects.labels(self.plan.camera).inc()
                attempt += 1
                outcome = self._session()
                if outcome in ("stopped", "done") or (outcome == "eof" and not self._settings.loop):
                    break
                if outcome == "eof":  # looping file: the next pass is a new session, not a reconnect
                    attempt = 0
                    continue
                self._set_state(CameraState.BACKING_OFF)
                delay = self._backoff.next_s()
                # warn at failures 1, 2, 4, 8, ... of an outage: visible, but no flood from a dead camera
                level = logging.WARNING if self._backoff.attempts & (self._backoff.attempts - 1) == 0 else logging.DEBUG
                extra = {**self._log, "reason": outcome, "wait_s": round(delay, 2), "failures": self._backoff.attempts}
                log.log(level, "camera unavailable; backing off", extra=extra)
                self._stop_event.wait(delay)
        finally:
            carried, self._carried = self._carried, None
            if carried is not None and self.end_marker:  # stopped while reconnecting: this session ends here
                self._publisher.submit(self._end_marker(carried, handover=self._handed_over()), queue=self.queue)
            self._set_state(CameraState.FINISHED)

    def _session(self) -> str:
        """One connection: open, stream until it ends. Returns stopped / done / eof / a failure reason."""
        plan, settings, camera = self.plan, self._settings, self.plan.camera
        read = self._metrics.frames_read.labels(camera).inc
        self.opening = True  # an open cannot be interrupted (up to open_timeout_ms); nothing is published meanwhile
        try:
            source = open_source(plan.url, settings.open_timeout_ms, settings.read_timeout_ms)
        except SourceError as exc:
            return str(exc)
        finally:
            self.opening = False
        if self._stop_event.is_set():  # released while opening: never start the session
            source.release()
            return "stopped"
        start_ms = int(time.time() * 1000)
        start_mono = time.monotonic()
        if source.live:
            frames = sample_live(source, plan.fps, on_read=read, stop=self._stop_event)
            pace = None
        else:
            frames = sample_file(file_path(plan.url), plan.fps, start_ms, on_read=read, source=source)
            pace = (start_ms, start_mono) if settings.realtime else None
        # A reconnect of a live camera continues its session (seq goes on where it stopped): the
        # aggregator sees a gap in time, not the end of a stream, so it does not make the
        # intersection's intervals final and count the rest of them as late.
        carried, self._carried = self._carried, None
        if carried is not None and source.live:
            session = carried.session
            log.info("camera reconnected: the session goes on", extra={**self._log, "session": session})
        else:
            if carried is not None and self.end_marker:  # a file after a live source: the old stream ends
                self._publisher.submit(self._end_marker(carried), queue=self.queue)
            session = new_session_id()
            self.sessions += 1
        reader_stop = threading.Event()
        slot = LatestFrame()
        reader = FrameReader(
            frames,
            slot,
            lossless=self.lossless,
            pace_ms=pace,
            on_sampled=self._metrics.frames_sampled.labels(camera).inc,
            on_skipped=lambda: self._metrics.dropped(camera, "reader_skipped"),
            stop=reader_stop,
            name=f"reader-{camera}",
        )
        reader.start()
        log.info("camera opened", extra={**self._log, "session": session, "source_fps": source.fps, "live": source.live})
        outcome = ""
        last: OutgoingFrame | None = None
        try:
            while not outcome:
                if self._stop_event.is_set():
                    outcome = "stopped"
                elif self._done():
                    outcome = "done"
                else:
                    frame = slot.take(0.1)
                    if frame is not None:
                        self._set_state(CameraState.STREAMING)
                        self._backoff.reset()
                        last = self._publish(session, frame.capture_ms, frame.image) or last
                    elif not reader.is_alive() and slot.empty():
                        outcome = f"stream lost: {reader.error}" if reader.error else "eof"
        finally:
            reader_stop.set()
            # a reconnect must wait for the old capture to be released; a stop only needs the reader
            # to go (it releases the capture itself at its next frame, or at the read timeout)
            reader.join(timeout=0.5 if self._stop_event.is_set() else settings.read_timeout_ms / 1000 + 1)
            if source.live and outcome not in ("stopped", "done", "eof"):
                self._carried = last or carried  # a lost connection: the next one continues this session
            elif last is not None and self.end_marker:  # the session ended: say so in the stream (never blocks)
                # a live camera this runner was told to let go of goes on elsewhere: a handover, not its end
                self._publisher.submit(self._end_marker(last, handover=source.live and self._handed_over()), queue=self.queue)
        if outcome.startswith("stream lost"):
            log.warning("camera stream lost", extra={**self._log, "session": session, "error": str(reader.error)})
        return outcome

    def _handed_over(self) -> bool:
        """This live camera was let go of (told to stop) and goes on elsewhere: not the end of its stream."""
        return self._stop_event.is_set() and self.handover

    def _end_marker(self, last: OutgoingFrame, handover: bool = False) -> OutgoingFrame:
        return OutgoingFrame(last.camera, last.intersection, last.session, last.capture_ms, last.width, last.height, b"", end=True, handover=handover)

    def _publish(self, session: str, capture_ms: int, image: object) -> OutgoingFrame | None:
        """Encode and queue one frame; the frame, or None when it could not be encoded."""
        camera = self.plan.camera
        try:
            encoded = self._encoder.encode(image)  # type: ignore[arg-type]
        except BadInput as exc:
            self._metrics.dropped(camera, "encode_failed")
            log.warning("frame not encodable", extra={"camera": camera, "error": str(exc)})
            return None
        frame = OutgoingFrame(camera, self.plan.intersection, session, capture_ms, encoded.width, encoded.height, encoded.jpeg, thumb=encoded.thumb)
        self._publisher.submit(frame, stop=self._stop_event, queue=self.queue)
        return frame


class IngestService:
    """Runs the cameras this process holds and the publisher, serves metrics and health, stops cleanly.

    Args:
        settings: ingest settings.
        kafka: broker connection.
        topics: topic names (frames are published to ``topics.frames``).
        site: an already-loaded site; else loaded from ``settings.site_path()``.
        registry: metrics registry (default: a fresh one per service).
    """

    def __init__(
        self,
        settings: IngestSettings,
        kafka: KafkaSettings,
        topics: TopicSettings,
        site: Site | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        site = site if site is not None else load_site(Path(settings.site_path()))
        self.plans = plan_cameras(site, settings)
        self._plans = {p.camera: p for p in self.plans}
        clients.check(kafka)  # servers, SASL credentials, CA file: a ConfigError now, not in the sender thread later
        self.ingester = settings.ingester_name()
        self.metrics = IngestMetrics(registry, ingester=self.ingester)
        self.group = settings.assignment == "group"
        checks = ("kafka", "cameras", "assignment") if self.group else ("kafka", "cameras")
        self.health = Health(checks=checks, stall_s=60.0)
        self._stop = threading.Event()
        self._lock = threading.RLock()  # hold / release / held, from the membership and IO threads
        self.runners: dict[str, CameraRunner] = {}  # the cameras held now
        self._retired: list[CameraRunner] = []  # released, but a thread may still sit in an open
        self.sessions: dict[str, int] = {}  # sessions per camera over the life of the process (logged at the end)
        self.membership = None
        if self.group:
            from ingest.membership import CameraMembership

            self.membership = CameraMembership(settings, kafka, self._plans, self, self.metrics, self.health)
        permit = self.membership.may_publish if self.membership is not None else (lambda: True)
        self.publisher = FramePublisher(kafka, topics.frames, settings, self.metrics, self.health, permit=permit)
        for plan in self.plans:
            self.metrics.add_camera(plan.camera)
        self.server = HealthServer(self.health, settings.metrics_port, registry=self.metrics.registry)

    # -- which cameras this process reads ---------------------------------------------------------
    def held(self) -> set[str]:
        """Cameras held now (being read, or reconnecting)."""
        with self._lock:
            return set(self.runners)

    def hold(self, cameras: set[str]) -> None:
        """Start reading ``cameras`` (those not held yet), each in a new session."""
        with self._lock:
            for camera in sorted(set(cameras) - set(self.runners)):
                runner = CameraRunner(self._plans[camera], self.settings, self.publisher, self.metrics)
                self.runners[camera] = runner
                runner.start()

    def release(self, cameras: set[str], flush: bool) -> None:
        """Stop ``cameras``; with ``flush`` end each session with its marker and wait until the broker has them.

        Bounded by ``release_timeout_ms`` for all of them together. Whatever is still queued then is
        dropped (``released``), and from here on nothing more of these cameras is handed to the producer.
        """
        with self._lock:
            runners = [self.runners.pop(c) for c in sorted(cameras) if c in self.runners]
            if not runners:
                return
            deadline = time.monotonic() + self.settings.release_timeout_ms / 1000
            handover = self._hands_over()
            for runner in runners:
                runner.stop(end_marker=flush, handover=handover)
            # a streaming runner ends its session within a frame (end marker queued); one blocked in
            # an open is not waited for: it publishes nothing and exits when the open returns. Fenced
            # (no flush): nothing is waited for, closing the queues is what stops the frames.
            while flush and not all(r.quiet() for r in runners) and time.monotonic() < deadline:
                time.sleep(0.01)
            unacknowledged = []
            for runner in runners:
                camera = runner.plan.camera
                self.sessions[camera] = self.sessions.get(camera, 0) + runner.sessions
                acknowledged = flush and runner.quiet() and self.publisher.drain(runner.queue, max(0.0, deadline - time.monotonic()))
                self.publisher.close_camera(runner.queue)
                if runner.is_alive():
                    self._retired.append(runner)
                if flush and not acknowledged and runner.queue.unacked > 0:
                    unacknowledged.append(camera)
            if unacknowledged:
                # A slow broker: the frames already handed over are still on their way (aborting them would
                # break every other camera's session too); if they land after the next owner's first frame,
                # the aggregator drops them as frames of an ended session.
                log.warning("cameras released before the broker acknowledged their last frames", extra={"cameras": unacknowledged})
            if not flush:
                # fenced (lease ended, membership lost): this replica may be cut off, and retries of frames
                # inside the producer could land long after the next owner's; throw them away
                self.publisher.abort_unsent()

    def _hands_over(self) -> bool:
        """Whether cameras let go of now go on elsewhere: always when moved to another replica; at this replica's stop, as configured."""
        return self.settings.handover_on_stop or not self._stop.is_set()

    # -- lifecycle ------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the service to stop (safe from a signal handler): stop reading, then flush."""
        self._stop.set()

    def run(self) -> int:
        """Serve until stopped, or (static assignment) until every camera has finished; 0 on a clean end.

        Raises:
            ConfigError: the ingest group cannot work with these settings (e.g. the assignment
                topic has another partition count).
        """
        self.server.start()
        self.publisher.start()
        if self.membership is not None:
            self.membership.start()
        else:
            self.hold(set(self._plans))
        log.info(
            "ingest started",
            extra={"cameras": list(self._plans), "realtime": self.settings.realtime, "assignment": self.settings.assignment,
                   "ingester": self.ingester},
        )  # fmt: skip
        try:
            while not self._stop.is_set():
                self.health.beat()
                with self._lock:
                    runners = list(self.runners.values())
                if self.membership is None:
                    if not any(r.is_alive() for r in runners):
                        break
                    self.metrics.held({r.plan.camera for r in runners})
                elif self.membership.error is not None:
                    raise self.membership.error
                elif not self.membership.is_alive():
                    raise RuntimeError("the ingest group membership thread ended")
                states = {r.state for r in runners}
                if not states:
                    ok = self.group  # a replica the group has given nothing (yet) is a ready stand-by
                else:
                    ok = CameraState.STREAMING in states or all(s == CameraState.FINISHED for s in states)
                self.health.set("cameras", ok, "no camera is streaming")
                self._stop.wait(0.5)
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        """Stop the cameras (group: release them, then leave the group), flush the publisher within
        ``shutdown_deadline_s``, stop the HTTP server."""
        self._stop.set()
        deadline = time.monotonic() + self.settings.shutdown_deadline_s
        if self.membership is not None:
            self.membership.stop()
            if self.membership.is_alive():
                self.membership.join(timeout=max(0.1, deadline - time.monotonic()))
        with self._lock:
            runners = list(self.runners.values())
            retired, self._retired = [r for r in self._retired if r.is_alive()], []
        for runner in runners:
            runner.stop(handover=self._hands_over())
        for runner in runners:
            runner.join(timeout=max(0.1, min(2.0, deadline - time.monotonic())))
        self.publisher.close(max(0.5, deadline - time.monotonic()))
        # a thread still inside an OpenCV open when the interpreter exits aborts the process: let the
        # opens end (they time out by themselves after open_timeout_ms)
        for runner in [*runners, *retired]:
            runner.join(timeout=max(0.0, deadline - time.monotonic()))
        self.server.stop()
        with self._lock:
            for runner in self.runners.values():
                self.sessions[runner.plan.camera] = self.sessions.get(runner.plan.camera, 0) + runner.sessions
        log.info("ingest stopped", extra={"sessions": self.sessions, "ingester": self.ingester})

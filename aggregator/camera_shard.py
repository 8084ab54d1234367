"""The camera stage's work on one record, without faust or Kafka: checks, session gate, counter.

A :class:`CameraShard` owns the counters and session gates of the cameras whose partitions it
is given. For each input record it returns :data:`Effect` s, which the camera stage
(:mod:`aggregator.camera_stage`) applies in order: records to send, metric updates, table
writes. Nothing here awaits, sends or reads a table, so the same object runs inside the event
loop or in a counting process beside it (:mod:`aggregator.counting_pool`), and is unit-tested
without a broker.

Per detection event, in this order (a refusal is a dead letter with its reason; the next record
goes on)::

    size (oversized) -> JSON contract (malformed...) -> detections per event (too_many_detections)
    -> camera known (unknown_camera), its intersection (intersection_mismatch), on its partition
    (wrong_partition) -> capture time within the clock window (capture_time_future / _stale)
    -> session gate (holds a new session until confirmed; foreign_session) -> counter
    -> tracks limit (their tracks end early) -> crossings, progress, stream state
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from aggregator import checkpoint
from aggregator.counting import CameraCounter
from aggregator.event_time import CameraProgress
from aggregator.records import CrossingMessage, FinishMessage, StreamMessage, WatermarkMessage, decode_control, encode
from aggregator.sessions import FOREIGN, Held, SessionGate
from aggregator.settings import AggregatorSettings
from traffic.capture_time import ClockReport
from traffic.dlq import bounded_dead_letter
from traffic.errors import ContractError
from traffic.partitions import camera_partition
from traffic.settings import TopicSettings
from traffic.site import Camera, Site
from traffic.wire import CrossingEvent, DetectionEvent

log = logging.getLogger(__name__)

HELD_RAW_MAX_BYTES = 64 * 1024
"""Held events keep their input bytes up to this size (else their compact re-encoding), to bound checkpoints."""

Role = Literal["crossings", "by_intersection", "dlq"]
Effect = tuple[Any, ...]
"""What the camera stage does for a record, in order; plain tuples (they cross a process boundary):

* ``("send", role, key, value, headers, crossing_ms)`` - a record to the topic of ``role``
  (``crossings``: the public topic; ``by_intersection``; ``dlq``); ``crossing_ms`` is the
  crossing's time for the latency histogram (else None);
* ``("inc", metric, labels, n)`` / ``("set", metric, labels, value)`` - an
  :class:`~aggregator.metrics.AggregatorMetrics` attribute;
* ``("state", camera, data)`` - the camera's checkpoint, for the ``camera-state`` table;
* ``("commit",)`` - commit now (after an idle camera's tracks were ended).
"""


@dataclass(frozen=True, slots=True)
class Record:
    """An input record as read from Kafka (what a dead letter keeps of it)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class _Camera:
    """What the shard keeps for one camera."""

    counter: CameraCounter
    gate: SessionGate
    progress: CameraProgress
    partition: int
    last_wall: float
    watermark_sent: int | None = None
    stream_sent: bool | None = None
    idle_finished: bool = False


@dataclass
class CameraShard:
    """Counters and gates of some cameras (see the module docstring).

    Args:
        settings: the aggregator's settings (limits, gate, watermarks).
        topics: topic names (the DLQ's, for dead letters).
        site: the site configuration.
        partitions: partitions of the detections topic (the wrong_partition check).
        control_topic: name of the camera-control topic (finish wake-ups come from it).
    """

    settings: AggregatorSettings
    topics: TopicSettings
    site: Site
    partitions: int
    control_topic: str
    cameras: dict[str, _Camera] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.known = self.site.cameras()
        self._geometry = {camera: checkpoint.camera_geometry(cfg) for camera, (_, cfg) in self.known.items()}
        self.limits = self.settings.capture_limits()
        self.clock_report = ClockReport()
        self._partition_cache: dict[str, int] = {}

    # -- records -----------------------------------------------------------------------------
    def process(self, record: Record) -> list[Effect]:
        """The effects of one input record (a detection event, or a finish wake-up of the control topic)."""
        out: list[Effect] = []
        try:
            if record.topic == self.control_topic:
                self._on_control(record, out)
            else:
                self._on_detection(record, out)
        except ContractError as exc:  # bad input (or a counter refusing it): a dead letter, never fatal
            self._dead(record, exc.reason, str(exc), out)
        except Exception as exc:  # noqa: BLE001 - a bug must not crash-loop the service on one record
            log.exception("record could not be processed", extra={"topic": record.topic, "partition": record.partition, "offset": record.offset})
            self._dead(record, "processing_error", f"{exc.__class__.__name__}: {exc}", out)
        return out

    def _on_detection(self, record: Record, out: list[Effect]) -> None:
        s = self.settings
        value = record.value
        if value is None or len(value) > s.max_event_bytes:
            size = 0 if value is None else len(value)
            self._dead(record, "oversized" if size else "empty", f"detection event of {size} bytes (limit {s.max_event_bytes})", out)
            return
        event = DetectionEvent.decode(value)
        if len(event.detections) > s.max_detections:
            raise ContractError(f"{len(event.detections)} detections in one event (limit {s.max_detections})", "too_many_detections")
        found = self.known.get(event.camera)
        if found is None:
            raise ContractError(f"camera {event.camera!r} is not in the site configuration", "unknown_camera")
        if found[0].id != event.intersection:
            raise ContractError(f"camera {event.camera!r} belongs to {found[0].id!r}, event says {event.intersection!r}", "intersection_mismatch")
        expected = self.partition_of(event.camera)
        if record.partition != expected:
            raise ContractError(
                f"event of camera {event.camera!r} on partition {record.partition}; its events belong on {expected} (key = camera id, default partitioner)",
                "wrong_partition",
            )
        try:
            self.limits.check(event.capture_ms)
        except ContractError as exc:
            out.append(("inc", "capture_time_refused", (event.camera, exc.reason), 1))
            self.clock_report.refused(event.camera, exc, event.capture_ms, "aggregator")
            raise
        cam = self.camera(event.camera, out)
        cam.last_wall, cam.idle_finished = time.monotonic(), False
        out.append(("inc", "events", (event.camera,), 1))
        counter = cam.counter
        held = Held(event, value if len(value) <= HELD_RAW_MAX_BYTES else event.encode(), record.key, record.headers, (record.topic, record.partition, record.offset))
        gated = cam.gate.offer(held, counter.session, counter.next_seq, counter.stream_ended)
        for refused in gated.refused:
            source = Record(refused.source[0], refused.source[1], refused.source[2], refused.key, refused.value, refused.headers)
            self._dead(source, FOREIGN, f"session {refused.event.session!r} of camera {event.camera!r} is not the camera's stream (its current session went on)", out)
        duplicates = counter.duplicates
        crossings: list[CrossingEvent] = []
        for accepted in gated.feed:
            crossings += counter.update(accepted)
            cam.progress.observe(accepted.capture_ms)
        if counter.active_tracks > s.max_tracks:
            crossings += self._shed(event.camera, cam, "tracks", out)
        if counter.duplicates > duplicates:
            out.append(("inc", "duplicates", (event.camera,), counter.duplicates - duplicates))
        pure_duplicate = bool(gated.feed) and not gated.refused and counter.duplicates - duplicates == len(gated.feed)
        if not pure_duplicate or cam.gate.waiting or crossings:
            self.dirty.add(event.camera)  # a pure duplicate changes nothing worth a checkpoint
        _crossings(crossings, out)
        self._report(event.camera, cam, out)
        out.append(("set", "active_tracks", (event.camera,), counter.active_tracks))

    def _on_control(self, record: Record, out: list[Effect]) -> None:
        """A finish wake-up from the housekeeping timer: end the tracks of a camera still idle at that position."""
        command = decode_control(record.value)
        if command.camera not in self.known:
            raise ContractError(f"finish for camera {command.camera!r}, which is not in the site configuration", "unknown_camera")
        cam = self.camera(command.camera, out)
        counter = cam.counter
        idle = time.monotonic() - cam.last_wall >= self.settings.idle_close_s / 2
        if (counter.session, counter.next_seq, counter.events) != (command.session, command.next_seq, command.events) or not idle:
            return  # stale (events came since it was sent) or repeated: nothing to do
        crossings = counter.finish()
        cam.idle_finished = True
        _crossings(crossings, out)
        self._report(command.camera, cam, out, force=True)
        out.append(("set", "active_tracks", (command.camera,), counter.active_tracks))
        self.dirty.add(command.camera)
        log.info("idle camera: tracks ended", extra={"camera": command.camera, "crossings": len(crossings)})
        # commit now: the checkpoint then holds the finish, so a crash cannot replay it after newer events
        out.append(("commit",))

    def _dead(self, record: Record, reason: str, detail: str, out: list[Effect]) -> None:
        letter = bounded_dead_letter(record, self.topics, self.settings.max_request_bytes, stage="aggregator", reason=reason, detail=detail)
        out.append(("send", "dlq", letter.key, letter.value, letter.headers, None))
        out.append(("inc", "dlq", (reason,), 1))
        log.warning("event to the DLQ", extra={"reason": reason, "detail": detail[:200], "partition": record.partition, "offset": record.offset})

    # -- per-camera state --------------------------------------------------------------------
    def partition_of(self, camera: str) -> int:
        """The partition a camera's events belong on: the Kafka default partitioner on the camera id key."""
        partition = self._partition_cache.get(camera)
        if partition is None:
            partition = self._partition_cache[camera] = camera_partition(camera, self.partitions)
        return partition

    def camera(self, camera: str, out: list[Effect]) -> _Camera:
        """The camera's counter and gate: from memory (restored by :meth:`restore`), else new."""
        cam = self.cameras.get(camera)
        if cam is None:
            s = self.settings
            counter = CameraCounter(self.site, camera, s.reorder_limit)
            gate = SessionGate(confirm_events=s.session_confirm_events)
            cam = self.cameras[camera] = _Camera(counter, gate, CameraProgress(s.watermark_quorum), self.partition_of(camera), time.monotonic())
        return cam

    def restore(self, camera: str, data: bytes) -> list[Effect]:
        """Take a camera's checkpoint (from the ``camera-state`` table) before its first record; an untrusted one starts it afresh."""
        out: list[Effect] = []
        if camera not in self.known or camera in self.cameras:
            return out
        s = self.settings
        try:
            record = checkpoint.read(camera, data)
            counter = self._restore(camera, record)
            log.info("camera state restored", extra={"camera": camera, "session": counter.session, "next_seq": counter.next_seq, "bytes": len(data)})
        except Exception as exc:  # noqa: BLE001 - an untrusted changelog record: start afresh, never crash-loop
            out.append(("inc", "state_restore_failed", (camera,), 1))
            log.error("camera checkpoint refused: the camera starts afresh", extra={"camera": camera, "error": str(exc)[:200], "bytes": len(data)})
            return out
        self.cameras[camera] = _Camera(counter, record.gate, CameraProgress(s.watermark_quorum), self.partition_of(camera), time.monotonic())
        return out

    def _restore(self, camera: str, record: checkpoint.Checkpoint) -> CameraCounter:
        """The counter of a checkpoint under the running site; one of other lines and zones is reconfigured, not trusted."""
        s = self.settings
        if not record.geometry or record.geometry == self._geometry[camera]:
            return CameraCounter.restore(self.site, camera, record.snapshot, s.reorder_limit)
        _, current = self.known[camera]
        was = Camera.model_validate({**current.model_dump(by_alias=True), **json.loads(record.geometry)})
        previous = CameraCounter.restore(with_cameras(self.site, {camera: was}), camera, record.snapshot, s.reorder_limit)
        self.dirty.add(camera)  # the next checkpoint carries the new geometry
        log.info("camera checkpoint of other lines and zones: counting goes on with the site file's", extra={"camera": camera})
        return previous.reconfigured(self.site)

    def apply_site(self, site: Site, cameras: list[str]) -> None:
        """Count ``cameras`` with ``site``'s lines, zones and movements from now on (their tracks go on); see CameraStage.apply_site."""
        self.site, self.known = site, site.cameras()
        for camera in cameras:
            cfg = self.known[camera][1]
            self._geometry[camera] = checkpoint.camera_geometry(cfg)
            cam = self.cameras.get(camera)
            if cam is not None:  # else its checkpoint is restored under the new geometry (see _restore)
                cam.counter = cam.counter.reconfigured(site)
                self.dirty.add(camera)
            log.info("camera counts with new lines and zones", extra={
                "camera": camera, "lines": [line.id for line in cfg.lines], "approaches": [a.id for a in cfg.approaches],
                "tracks": cam.counter.active_tracks if cam is not None else None})  # fmt: skip

    def checkpoint(self) -> list[Effect]:
        """The checkpoint (``state`` effect) of every camera changed since the last one, and what a state limit made it send."""
        out: list[Effect] = []
        for camera in sorted(self.dirty):
            cam = self.cameras.get(camera)
            if cam is None:
                continue
            geometry = self._geometry[camera]
            data = checkpoint.encode(camera, cam.counter.snapshot(), cam.gate, geometry)
            if len(data) > self.settings.max_state_bytes:
                _crossings(self._shed(camera, cam, "bytes", out), out)
                data = checkpoint.encode(camera, cam.counter.snapshot(), cam.gate, geometry)
            out.append(("state", camera, data))
            out.append(("set", "state_bytes", (camera,), len(data)))
            out.append(("inc", "checkpoint_bytes", (), len(data)))
        self.dirty.clear()
        return out

    def reset(self) -> None:
        """Forget every camera (partitions were revoked or assigned: the table is the truth, re-read it)."""
        self.cameras.clear()
        self.dirty.clear()

    def _shed(self, camera: str, cam: _Camera, limit: str, out: list[Effect]) -> list[CrossingEvent]:
        """End every track of a camera whose state passed a limit (its movements are decided now)."""
        before = cam.counter.active_tracks
        crossings = cam.counter.finish()
        out.append(("inc", "state_shed", (camera, limit), 1))
        log.warning("camera state over its limit: tracks ended early", extra={"camera": camera, "limit": limit, "tracks": before, "crossings": len(crossings)})
        return crossings

    def idle_cameras(self, now: float) -> list[tuple[int, FinishMessage]]:
        """(partition, finish message) for cameras idle for half the idle time with tracks or buffered events."""
        out = []
        for camera, cam in self.cameras.items():
            if cam.idle_finished or now - cam.last_wall < self.settings.idle_close_s / 2:
                continue
            counter = cam.counter
            cam.idle_finished = True
            if counter.active_tracks == 0 and counter.pending == 0:
                continue
            out.append((cam.partition, FinishMessage(camera=camera, session=counter.session, next_seq=counter.next_seq, events=counter.events)))
        return out

    # -- output ------------------------------------------------------------------------------
    def _report(self, camera: str, cam: _Camera, out: list[Effect], force: bool = False) -> None:
        """Tell the intersection stage the camera's progress (every watermark_interval_ms) and stream state (on change)."""
        counter = cam.counter
        intersection = counter.intersection_id
        key = intersection.encode()
        if counter.stream_ended or force:
            if counter.last_capture_ms is not None:
                cam.progress.force(counter.last_capture_ms)  # nothing earlier will come
        wm = cam.progress.watermark
        if wm is not None and (force or counter.stream_ended or cam.watermark_sent is None or wm >= cam.watermark_sent + self.settings.watermark_interval_ms):
            if cam.watermark_sent != wm:
                cam.watermark_sent = wm
                out.append(("send", "by_intersection", key, encode(WatermarkMessage(intersection=intersection, camera=camera, time_ms=wm)), None, None))
        # A handover is no end for the intersection: the camera goes on in a new session, so its
        # intervals close by time and that session's crossings in them still count.
        ended = counter.stream_ended and not counter.handed_over
        if cam.stream_sent != ended:  # after a restart: said once again
            cam.stream_sent = ended
            out.append(("send", "by_intersection", key, encode(StreamMessage(intersection=intersection, camera=camera, ended=ended)), None, None))


def _crossings(crossings: list[CrossingEvent], out: list[Effect]) -> None:
    """Each crossing to the public topic and to the intersection stage, in order."""
    for crossing in crossings:
        key = crossing.intersection.encode()
        out.append(("send", "crossings", key, crossing.encode(), None, crossing.time_ms))
        out.append(("send", "by_intersection", key, encode(CrossingMessage(crossing=crossing)), None, None))


def with_cameras(site: Site, cameras: dict[str, Camera]) -> Site:
    """``site`` with the entries of ``cameras`` (by id) in place of its own (all validated already)."""
    intersections = [inter.model_copy(update={"cameras": [cameras.get(c.id, c) for c in inter.cameras]}) for inter in site.intersections]
    return site.model_copy(update={"intersections": intersections})

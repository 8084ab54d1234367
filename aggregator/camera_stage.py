"""The camera stage: detection events -> checks -> session gate -> CameraCounter -> crossings.

Per event, in this order (a refusal sends the input to the DLQ with the reason and goes on)::

    size (oversized) -> JSON contract (malformed...) -> detections per event (too_many_detections)
    -> camera known (unknown_camera), its intersection (intersection_mismatch), on its partition
    (wrong_partition) -> capture time within the clock window (capture_time_future / _stale)
    -> session gate (holds a new session until confirmed; foreign_session) -> counter
    -> tracks limit (their tracks end early) -> crossings, progress, stream state to the
       intersection stage

Site hot reload: :meth:`CameraStage.offer_site` (the site watcher's thread) hands over a new
valid site file; the housekeeping timer applies it with :meth:`CameraStage.apply_site`, between
two events. A camera whose lines, zones or movements changed goes on with its tracks under the
new geometry (:meth:`CameraCounter.reconfigured`: moved lines re-armed); other cameras are
untouched. Each checkpoint records the geometry its counter had, so a checkpoint restored under
another site file (a restart after the file changed, a rebalance before the reload reached
this worker) is reconfigured the same way instead of counting on with stale line sides.

State and recovery: the counter and the gate of each camera live in memory and are checkpointed
to the ``camera-state`` table when faust commits offsets (a sensor on the commit, before the
offsets are chosen), so every committed offset is covered by a checkpoint. After a crash faust
redelivers from the committed offset; the restored counter drops what the checkpoint already
holds as duplicates (by session and seq) and processes the rest exactly as the first time (the
counting is deterministic), so the state writes are one checkpoint per camera and commit
interval instead of a snapshot per event. Crossings of the replayed events are sent again; the
intersection stage counts each event id once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import faust

from aggregator import checkpoint
from aggregator.counting import CameraCounter
from aggregator.event_time import CameraProgress
from aggregator.metrics import AggregatorMetrics
from aggregator.records import CrossingMessage, FinishMessage, StreamMessage, WatermarkMessage, decode_control, encode
from aggregator.sessions import FOREIGN, Held, SessionGate
from aggregator.topology import Topology, camera_partition
from traffic.capture_time import ClockReport
from traffic.errors import ContractError
from traffic.site import Camera, Site
from traffic.site_watch import SiteChange
from traffic.wire import CrossingEvent, DetectionEvent

log = logging.getLogger(__name__)

HELD_RAW_MAX_BYTES = 64 * 1024
"""Held events keep their input bytes up to this size (else their compact re-encoding), to bound checkpoints."""


@dataclass
class _Camera:
    """What the stage keeps in memory for one camera."""

    counter: CameraCounter
    gate: SessionGate
    progress: CameraProgress
    partition: int
    last_wall: float
    events: Any = None  # this camera's metric children (a label lookup per event costs more than the increment)
    duplicates: Any = None
    tracks: Any = None
    watermark_sent: int | None = None
    stream_sent: bool | None = None
    idle_finished: bool = False


class CameraStage:
    """The per-camera agent, its checkpoints and what the housekeeping timer asks of it."""

    def __init__(self, topo: Topology, metrics: AggregatorMetrics) -> None:
        self.topo = topo
        self.metrics = metrics
        self.settings = topo.settings
        self.limits = topo.settings.capture_limits()
        self.clock_report = ClockReport()
        self.cameras: dict[str, _Camera] = {}
        self.dirty: set[str] = set()
        self._control_topic = topo.camera_control.get_topic_name()
        self._partition_cache: dict[str, int] = {}
        self.warmup: threading.Thread | None = None  # a thread importing the tracker, set by aggregator.app
        self._geometry = {camera: checkpoint.camera_geometry(cfg) for camera, (_, cfg) in topo.cameras.items()}
        self._offered: Site | None = None  # a new site file from the watcher's thread, applied by the timer
        self._offer_lock = threading.Lock()
        metrics.add_cameras(topo.cameras)

    # -- faust wiring ------------------------------------------------------------------------
    def register(self) -> None:
        """Attach the agent, the checkpoint sensor and the rebalance hooks to the app."""
        app, topo = self.topo.app, self.topo
        source = app.topic(
            topo.detections.get_topic_name(), self._control_topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )

        @app.agent(source, name=f"{self.settings.app_id}.camera-stage")
        async def camera_stage(stream: Any) -> None:
            if self.warmup is not None:  # the loop keeps heartbeating while torch finishes importing
                await asyncio.get_running_loop().run_in_executor(None, self.warmup.join)
            async for event in stream.events():
                message = event.message
                try:
                    if message.topic == self._control_topic:
                        await self.on_control(message)
                    else:
                        await self.on_detection(message)
                except ContractError as exc:  # e.g. a counter refusing an event: bad input, never fatal
                    await self.to_dlq(message, exc.reason, str(exc))

        app.sensors.add(_CheckpointOnCommit(self))

        @app.on_partitions_revoked.connect
        async def forget(*args: Any, **kwargs: Any) -> None:
            self.checkpoint()  # faust commits before revoking; this covers a revocation without events since
            self.cameras.clear()  # a partition may move: the table is the truth, re-read it

        @app.on_partitions_assigned.connect
        async def reload(*args: Any, **kwargs: Any) -> None:
            self.cameras.clear()

    async def to_dlq(self, record: Any, reason: str, detail: str) -> None:
        """The input, unchanged, to the DLQ with the reason; a metric and a log line."""
        letter = self.topo.dead_letter(record, reason, detail)
        await self.topo.dlq_out.send(key=letter.key, value=letter.value, headers=letter.headers)
        self.metrics.dlq.labels(reason).inc()
        log.warning("event to the DLQ", extra={"reason": reason, "detail": detail[:200], "partition": getattr(record, "partition", None), "offset": getattr(record, "offset", None)})

    # -- events ------------------------------------------------------------------------------
    async def on_detection(self, message: Any) -> None:
        value = message.value
        if value is None or len(value) > self.settings.max_event_bytes:
            size = 0 if value is None else len(value)
            await self.to_dlq(message, "oversized" if size else "empty", f"detection event of {size} bytes (limit {self.settings.max_event_bytes})")
            return
        event = DetectionEvent.decode(value)  # ContractError -> DLQ (in the agent)
        if len(event.detections) > self.settings.max_detections:
            raise ContractError(f"{len(event.detections)} detections in one event (limit {self.settings.max_detections})", "too_many_detections")
        found = self.topo.cameras.get(event.camera)
        if found is None:
            raise ContractError(f"camera {event.camera!r} is not in the site configuration", "unknown_camera")
        if found[0].id != event.intersection:
            raise ContractError(f"camera {event.camera!r} belongs to {found[0].id!r}, event says {event.intersection!r}", "intersection_mismatch")
        expected = self.partition_of(event.camera)
        if message.partition != expected:
            raise ContractError(
                f"event of camera {event.camera!r} on partition {message.partition}; its events belong on {expected} (key = camera id, default partitioner)",
                "wrong_partition",
            )
        try:
            self.limits.check(event.capture_ms)
        except ContractError as exc:
            self.metrics.capture_time_refused.labels(event.camera, exc.reason).inc()
            self.clock_report.refused(event.camera, exc, event.capture_ms, "aggregator")
            raise
        cam = self.camera(event.camera)
        cam.last_wall, cam.idle_finished = time.monotonic(), False
        cam.events.inc()
        counter = cam.counter
        held = Held(event, value if len(value) <= HELD_RAW_MAX_BYTES else event.encode(), message.key, _headers(message), (message.topic, message.partition, message.offset))
        gated = cam.gate.offer(held, counter.session, counter.next_seq, counter.stream_ended)
        for refused in gated.refused:
            await self.to_dlq(_HeldRecord(refused), FOREIGN, f"session {refused.event.session!r} of camera {event.camera!r} is not the camera's stream (its current session went on)")
        duplicates = counter.duplicates
        crossings: list[CrossingEvent] = []
        for accepted in gated.feed:
            crossings += counter.update(accepted)
            cam.progress.observe(accepted.capture_ms)
        if counter.active_tracks > self.settings.max_tracks:
            crossings += self._shed(event.camera, cam, "tracks")
        if counter.duplicates > duplicates:
            cam.duplicates.inc(counter.duplicates - duplicates)
        pure_duplicate = bool(gated.feed) and not gated.refused and counter.duplicates - duplicates == len(gated.feed)
        if not pure_duplicate or cam.gate.waiting or crossings:
            self.dirty.add(event.camera)  # a pure duplicate changes nothing worth a checkpoint
        await self._publish(crossings)
        await self._report(event.camera, cam)
        cam.tracks.set(counter.active_tracks)

    async def on_control(self, message: Any) -> None:
        """A finish wake-up from the housekeeping timer: end the tracks of a camera still idle at that position."""
        command = decode_control(message.value)
        if command.camera not in self.topo.cameras:
            raise ContractError(f"finish for camera {command.camera!r}, which is not in the site configuration", "unknown_camera")
        cam = self.camera(command.camera)
        counter = cam.counter
        idle = time.monotonic() - cam.last_wall >= self.settings.idle_close_s / 2
        if (counter.session, counter.next_seq, counter.events) != (command.session, command.next_seq, command.events) or not idle:
            return  # stale (events came since it was sent) or repeated: nothing to do
        crossings = counter.finish()
        cam.idle_finished = True
        await self._publish(crossings)
        await self._report(command.camera, cam, force=True)
        self.metrics.active_tracks.labels(command.camera).set(counter.active_tracks)
        self.dirty.add(command.camera)
        log.info("idle camera: tracks ended", extra={"camera": command.camera, "crossings": len(crossings)})
        # commit now: the checkpoint then holds the finish, so a crash cannot replay it after newer events
        await self.topo.app.consumer.commit()

    # -- per-camera state --------------------------------------------------------------------
    def partition_of(self, camera: str) -> int:
        """The partition a camera's events belong on: the Kafka default partitioner on the camera id key."""
        partition = self._partition_cache.get(camera)
        if partition is None:
            partition = self._partition_cache[camera] = camera_partition(camera, self.topo.partitions)
        return partition

    def camera(self, camera: str) -> _Camera:
        """The camera's counter and gate: from memory, else its checkpoint, else new."""
        cam = self.cameras.get(camera)
        if cam is not None:
            return cam
        s = self.settings
        counter, gate = None, None
        data = self.topo.tables.camera_state.get(camera.encode())
        if data is not None:
            try:
                record = checkpoint.read(camera, data)
                gate = record.gate
                counter = self._restore(camera, record)
                log.info("camera state restored", extra={"camera": camera, "session": counter.session, "next_seq": counter.next_seq, "bytes": len(data)})
            except Exception as exc:  # noqa: BLE001 - an untrusted changelog record: start afresh, never crash-loop
                self.metrics.state_restore_failed.labels(camera).inc()
                log.error("camera checkpoint refused: the camera starts afresh", extra={"camera": camera, "error": str(exc)[:200], "bytes": len(data)})
                counter, gate = None, None
        if counter is None or gate is None:
            counter = CameraCounter(self.topo.site, camera, s.reorder_limit)
            gate = SessionGate(confirm_events=s.session_confirm_events)
        m = self.metrics
        cam = self.cameras[camera] = _Camera(
            counter, gate, CameraProgress(s.watermark_quorum), self.partition_of(camera), time.monotonic(),
            m.events.labels(camera), m.duplicates.labels(camera), m.active_tracks.labels(camera),
        )  # fmt: skip
        return cam

    def _restore(self, camera: str, record: checkpoint.Checkpoint) -> CameraCounter:
        """The counter of a checkpoint under the running site; one of other lines and zones is reconfigured, not trusted."""
        s = self.settings
        if not record.geometry or record.geometry == self._geometry[camera]:
            return CameraCounter.restore(self.topo.site, camera, record.snapshot, s.reorder_limit)
        _, current = self.topo.cameras[camera]
        was = Camera.model_validate({**current.model_dump(by_alias=True), **json.loads(record.geometry)})
        previous = CameraCounter.restore(_with_cameras(self.topo.site, {camera: was}), camera, record.snapshot, s.reorder_limit)
        self.dirty.add(camera)  # the next checkpoint carries the new geometry
        log.info("camera checkpoint of other lines and zones: counting goes on with the site file's", extra={"camera": camera})
        return previous.reconfigured(self.topo.site)

    # -- site hot reload ---------------------------------------------------------------------
    def offer_site(self, change: SiteChange) -> None:
        """The site watcher's callback (its own thread): keep the new site for the next timer tick."""
        with self._offer_lock:
            self._offered = change.site

    def reload_site(self) -> list[str]:
        """Apply the site the watcher offered since the last call, if any (the timer calls this); see :meth:`apply_site`."""
        with self._offer_lock:
            site, self._offered = self._offered, None
        return [] if site is None else self.apply_site(site)

    def apply_site(self, site: Site) -> list[str]:
        """Count with ``site``'s lines, zones and movements from now on; returns what waits for a restart.

        Cameras whose geometry changed go on with their tracks, ordering and de-duplication
        state under the new geometry (:meth:`CameraCounter.reconfigured`); every other camera is
        untouched. Cameras added, removed or moved to another intersection and changes of the
        ``counting`` section change the tables' keys or the intervals: they are listed as
        needing a restart, logged, counted, and not applied.
        """
        old, new = self.topo.cameras, site.cameras()
        later = []
        if new.keys() - old.keys():
            later.append(f"cameras added: {', '.join(sorted(new.keys() - old.keys()))}")
        if old.keys() - new.keys():
            later.append(f"cameras removed: {', '.join(sorted(old.keys() - new.keys()))}")
        moved = sorted(c for c in old.keys() & new.keys() if old[c][0].id != new[c][0].id)
        if moved:
            later.append(f"cameras moved to another intersection: {', '.join(moved)}")
        if site.counting != self.topo.site.counting:
            later.append("the counting section")
        live = {c: new[c][1] for c in sorted(old.keys() & new.keys()) if c not in moved and checkpoint.camera_geometry(new[c][1]) != self._geometry[c]}
        if live:
            self.topo.site = _with_cameras(self.topo.site, live)
            self.topo.cameras = self.topo.site.cameras()
        for camera, cfg in live.items():
            self._geometry[camera] = checkpoint.camera_geometry(cfg)
            cam = self.cameras.get(camera)
            if cam is not None:  # else its checkpoint is restored under the new geometry (see _restore)
                cam.counter = cam.counter.reconfigured(self.topo.site)
                self.dirty.add(camera)
            log.info("camera counts with new lines and zones", extra={
                "camera": camera, "lines": [line.id for line in cfg.lines], "approaches": [a.id for a in cfg.approaches],
                "tracks": cam.counter.active_tracks if cam is not None else None})
        if later:
            self.metrics.site_reloads.labels("restart_needed").inc()
            log.warning("site change applied in part: the rest needs a restart of the aggregator", extra={"applied": sorted(live), "needs_restart": later})
        return later

    def checkpoint(self) -> int:
        """Write the checkpoint of every camera changed since the last one; returns bytes written.

        Synchronous (faust's table writes are), called when faust is about to commit: the writes
        are flushed with the commit, before the offsets are.
        """
        written = 0
        for camera in sorted(self.dirty):
            cam = self.cameras.get(camera)
            if cam is None:
                continue
            geometry = self._geometry[camera]
            data = checkpoint.encode(camera, cam.counter.snapshot(), cam.gate, geometry)
            if len(data) > self.settings.max_state_bytes:
                crossings = self._shed(camera, cam, "bytes")
                for crossing in crossings:  # outside a stream: buffered sends, flushed with the commit
                    self._send_crossing_soon(crossing)
                data = checkpoint.encode(camera, cam.counter.snapshot(), cam.gate, geometry)
            self.topo.tables.camera_state[camera.encode()] = data
            self.metrics.state_bytes.labels(camera).set(len(data))
            self.metrics.checkpoint_bytes.inc(len(data))
            written += len(data)
        self.dirty.clear()
        return written

    def _shed(self, camera: str, cam: _Camera, limit: str) -> list[CrossingEvent]:
        """End every track of a camera whose state passed a limit (its movements are decided now)."""
        before = cam.counter.active_tracks
        crossings = cam.counter.finish()
        self.metrics.state_shed.labels(camera, limit).inc()
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

    def load_assigned(self) -> None:
        """Bring every camera of the assigned partitions into memory (so the idle timer sees them after a restart)."""
        for raw in list(self.topo.tables.camera_state.keys()):
            camera = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            if camera in self.topo.cameras and camera not in self.cameras:
                self.camera(camera)

    # -- output ------------------------------------------------------------------------------
    async def _publish(self, crossings: list[CrossingEvent]) -> None:
        for crossing in crossings:
            key = crossing.intersection.encode()
            await self.topo.crossings_out.send(key=key, value=crossing.encode())
            await self.topo.by_intersection.send(key=key, value=encode(CrossingMessage(crossing=crossing)))
            self.metrics.count_latency.observe(max(0.0, time.time() - crossing.time_ms / 1000))

    def _send_crossing_soon(self, crossing: CrossingEvent) -> None:
        key = crossing.intersection.encode()
        self.topo.crossings_out.send_soon(key=key, value=crossing.encode())
        self.topo.by_intersection.send_soon(key=key, value=encode(CrossingMessage(crossing=crossing)))

    async def _report(self, camera: str, cam: _Camera, force: bool = False) -> None:
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
                await self.topo.by_intersection.send(key=key, value=encode(WatermarkMessage(intersection=intersection, camera=camera, time_ms=wm)))
        if cam.stream_sent != counter.stream_ended:  # after a restart: said once again
            cam.stream_sent = counter.stream_ended
            await self.topo.by_intersection.send(key=key, value=encode(StreamMessage(intersection=intersection, camera=camera, ended=counter.stream_ended)))


class _CheckpointOnCommit(faust.Sensor):
    """Checkpoints the camera stage when faust is about to commit (before it picks the offsets)."""

    def __init__(self, stage: CameraStage) -> None:
        super().__init__()
        self.stage = stage

    def on_commit_initiated(self, consumer: Any) -> Any:
        try:
            self.stage.checkpoint()
        except Exception:  # noqa: BLE001 - never break faust's commit; the next commit writes them
            log.exception("checkpoint failed; retried at the next commit")
        return None


@dataclass(frozen=True)
class _HeldRecord:
    """A held event seen as the record it came in (for the DLQ copy)."""

    held: Held

    @property
    def key(self) -> bytes | None:
        return self.held.key

    @property
    def value(self) -> bytes:
        return self.held.value

    @property
    def headers(self) -> list[tuple[str, bytes]]:
        return list(self.held.headers)

    @property
    def topic(self) -> str:
        return self.held.source[0]

    @property
    def partition(self) -> int:
        return self.held.source[1]

    @property
    def offset(self) -> int:
        return self.held.source[2]


def _with_cameras(site: Site, cameras: dict[str, Camera]) -> Site:
    """``site`` with the entries of ``cameras`` (by id) in place of its own (all validated already)."""
    intersections = [inter.model_copy(update={"cameras": [cameras.get(c.id, c) for c in inter.cameras]}) for inter in site.intersections]
    return site.model_copy(update={"intersections": intersections})


def _headers(message: Any) -> tuple[tuple[str, bytes], ...]:
    headers = message.headers
    items = headers.items() if isinstance(headers, dict) else (headers or [])
    return tuple((str(n), bytes(v or b"")) for n, v in items)

"""The camera stage: detection events -> counting (in counting processes) -> crossings, progress, checkpoints.

What happens to one detection event - the checks, the session gate, the counter - is
:class:`aggregator.camera_shard.CameraShard`'s work; it runs in counting processes beside the
event loop (or in it: ``counting_processes = 0``), see :mod:`aggregator.counting_pool`. This
module is the faust side: it forwards each record of the detections and camera-control topics,
and applies what comes back in record order - records to the public crossings topic, to the
intersection stage and to the DLQ; metrics; checkpoints into the ``camera-state`` table.

Site hot reload: :meth:`CameraStage.offer_site` (the site watcher's thread) hands over a new
valid site file; the housekeeping timer applies it with :meth:`CameraStage.apply_site`, between
two records, and passes it to the counting processes in order with the records. A camera whose
lines, zones or movements changed goes on with its tracks under the new geometry
(:meth:`CameraCounter.reconfigured`: moved lines re-armed); other cameras are untouched. Each
checkpoint records the geometry its counter had, so a checkpoint restored under another site
file (a restart after the file changed, a rebalance before the reload reached this worker) is
reconfigured the same way instead of counting on with stale line sides.

State and recovery: the counter and the gate of each camera are checkpointed to the
``camera-state`` table when faust commits offsets (a sensor on the commit, before the offsets
are chosen, waits for every record handed over to be answered), so every committed offset is
covered by a checkpoint. After a crash faust redelivers from the committed offset; the restored
counter drops what the checkpoint already holds as duplicates (by session and seq) and processes
the rest exactly as the first time (the counting is deterministic), so the state writes are one
checkpoint per camera and commit interval instead of a snapshot per event. Crossings of the
replayed events are sent again; the intersection stage counts each event id once.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import faust

from aggregator import checkpoint, continuity
from aggregator.camera_shard import Effect, Record, with_cameras
from aggregator.counting_pool import CountingPool, ShardConfig
from aggregator.metrics import AggregatorMetrics
from aggregator.records import FinishMessage
from aggregator.topology import Topology, camera_partition
from traffic.site import Site
from traffic.site_watch import SiteChange

log = logging.getLogger(__name__)


class CameraStage:
    """The per-camera agent, its checkpoints and what the housekeeping timer asks of it."""

    def __init__(self, topo: Topology, metrics: AggregatorMetrics) -> None:
        self.topo = topo
        self.metrics = metrics
        self.settings = topo.settings
        self._control_topic = topo.camera_control.get_topic_name()
        config = ShardConfig(topo.settings, topo.topic_settings, topo.site, topo.partitions, self._control_topic)
        self.pool = CountingPool(config, topo.settings.counting_processes, topo.settings.counting_in_flight, self.apply, topo.settings.counting_in_flight_bytes)
        self._roles = {"crossings": topo.crossings_out, "by_intersection": topo.by_intersection, "dlq": topo.dlq_out}
        self._metric_children: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._restored: set[str] = set()  # cameras whose checkpoint the pool has been given since the last assignment
        self._loaded = False  # every checkpoint of the assigned partitions given to the pool
        self._geometry = {camera: checkpoint.camera_geometry(cfg) for camera, (_, cfg) in topo.cameras.items()}
        self._offered: Site | None = None  # a new site file from the watcher's thread, applied by the timer
        self._offer_lock = threading.Lock()
        self.continuity = continuity.for_app(
            "camera-stage", topo.app, [topo.detections.get_topic_name(), self._control_topic], metrics.consumer_holes.labels("camera-stage").inc
        )
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
            await self.pool.ready()
            control = self._control_topic
            async for event in stream.events():
                message = event.message
                if not await self.continuity.admit_message(message):
                    continue  # faust skipped records before this one: they come again first
                if not self._loaded:  # the first record since an assignment: faust has recovered the tables
                    self.load_assigned()
                    self._loaded = True
                record = Record(message.topic, message.partition, message.offset, message.key, message.value, _headers(message))
                if message.topic == control:  # not pipelined: a finish asks for a commit right after it
                    if await self.pool.call(record):
                        await self.topo.app.consumer.commit()
                else:
                    await self.pool.submit(record)

        app.sensors.add(_CheckpointOnCommit(self))
        self.pool.start()  # now, before faust starts: returns once the counting processes are ready

        @app.on_partitions_revoked.connect
        async def forget(*args: Any, **kwargs: Any) -> None:
            self.checkpoint()  # faust commits before revoking; this covers a revocation without events since
            self._forget()  # a partition may move: the table is the truth, re-read it

        @app.on_partitions_assigned.connect
        async def reload(*args: Any, **kwargs: Any) -> None:
            self._forget()

    def _forget(self) -> None:
        self.continuity.reset()
        self.pool.reset()
        self._restored.clear()
        self._loaded = False

    # -- effects -----------------------------------------------------------------------------
    def apply(self, effects: list[Effect]) -> bool:
        """Apply a record's effects in order (buffered sends, flushed before offsets are committed); True if they ask for a commit."""
        commit = False
        for effect in effects:
            tag = effect[0]
            if tag == "send":
                _, role, key, value, headers, crossing_ms = effect
                self._roles[role].send_soon(key=key, value=value, headers=headers)
                if crossing_ms is not None:
                    self.metrics.count_latency.observe(max(0.0, time.time() - crossing_ms / 1000))
            elif tag == "inc":
                self._metric(effect[1], effect[2]).inc(effect[3])
            elif tag == "set":
                self._metric(effect[1], effect[2]).set(effect[3])
            elif tag == "state":
                self.topo.tables.camera_state[effect[1].encode()] = effect[2]
            elif tag == "commit":
                commit = True
        return commit

    def _metric(self, name: str, labels: tuple[str, ...]) -> Any:
        """The metric child (a label lookup per event costs more than the increment: cached)."""
        child = self._metric_children.get((name, labels))
        if child is None:
            metric = getattr(self.metrics, name)
            child = self._metric_children[(name, labels)] = metric.labels(*labels) if labels else metric
        return child

    # -- state -------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        """Write the checkpoint of every camera changed since the last one (see the module docstring).

        Synchronous (faust's table writes and its commit hook are), called when faust is about to
        commit: the writes are flushed with the commit, before the offsets are.
        """
        self.pool.checkpoint()

    def load_assigned(self) -> None:
        """Give the pool the checkpoint of every camera of the assigned partitions it has not had (before their records)."""
        for raw in list(self.topo.tables.camera_state.keys()):
            camera = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            if camera in self._restored or camera not in self.topo.cameras:
                continue
            self._restored.add(camera)
            data = self.topo.tables.camera_state.get(raw)
            if data is not None:
                self.pool.restore(camera_partition(camera, self.topo.partitions), camera, data)

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
        state under the new geometry (:meth:`CameraCounter.reconfigured`, in the counting
        process, after the records handed over before); every other camera is untouched.
        Cameras added, removed or moved to another intersection and changes of the ``counting``
        section change the tables' keys or the intervals: they are listed as needing a restart,
        logged, counted, and not applied.
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
            self.topo.site = with_cameras(self.topo.site, live)
            self.topo.cameras = self.topo.site.cameras()
            for camera, cfg in live.items():
                self._geometry[camera] = checkpoint.camera_geometry(cfg)
            self.pool.apply_site(self.topo.site, sorted(live))
        if later:
            self.metrics.site_reloads.labels("restart_needed").inc()
            log.warning("site change applied in part: the rest needs a restart of the aggregator", extra={"applied": sorted(live), "needs_restart": later})
        return later

    async def idle_cameras(self, now: float) -> list[tuple[int, FinishMessage]]:
        """(partition, finish message) for cameras idle for half the idle time with tracks or buffered events."""
        return await self.pool.idle_cameras(now)


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


def _headers(message: Any) -> tuple[tuple[str, bytes], ...]:
    headers = message.headers
    items = headers.items() if isinstance(headers, dict) else (headers or [])
    return tuple((str(n), bytes(v or b"")) for n, v in items)

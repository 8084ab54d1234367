"""The intersection stage: crossings and camera progress -> interval counts -> traffic.counts.

It reads the by-intersection topic (see :mod:`aggregator.records`) and keeps the
:class:`~aggregator.windows.WindowStore` of its intersections on the tables ``windows``,
``seen`` and ``watermarks``. Each message is checked before it changes anything (an internal
topic is input too): it must decode, name a known intersection, and a camera of it; progress
must lie within the clock window. A refused message goes to the DLQ and the stage goes on.

Closing: an interval becomes final when the intersection's watermark (the slowest live camera,
see :mod:`aggregator.event_time`) passes its end plus grace, when every camera of the
intersection has ended its stream, or when the intersection has been idle for ``idle_close_s``.
The final record is published first and the cell marked final after, so a crash in between
repeats a final record rather than losing it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aggregator import continuity
from aggregator.event_time import intersection_watermark
from aggregator.metrics import AggregatorMetrics
from aggregator.records import CloseMessage, CrossingMessage, StreamMessage, WatermarkMessage, decode_intersection
from aggregator.topology import Topology
from aggregator.windows import CountKey, WindowStore
from traffic.errors import ContractError
from traffic.wire import CrossingEvent

log = logging.getLogger(__name__)

CLOSE_RETRY_S = 5.0
PURGE_EVERY_S = 60.0
REFUSED = "internal_refused"


class IntersectionStage:
    """The per-intersection agent and what the housekeeping timer asks of it."""

    def __init__(self, topo: Topology, metrics: AggregatorMetrics) -> None:
        self.topo = topo
        self.metrics = metrics
        self.settings = topo.settings
        counting = topo.site.counting
        tables = topo.tables
        self.store = WindowStore(tuple(counting.intervals_s), counting.grace_s, cells=tables.windows, seen=tables.seen, watermarks=tables.watermarks)
        self.limits = topo.settings.capture_limits()
        # Final and provisional records are sent with awaits in between: without this lock a
        # provisional batch computed before a close could be sent after its final records (a
        # consumer would see an interval go back from final to provisional; seen in a KEDA run).
        self._publishing = asyncio.Lock()
        self.intersections = {inter.id: [cam.id for cam in inter.cameras] for inter in topo.site.intersections}
        self.last_wall: dict[str, float] = {}  # intersection -> last message (wall clock, monotonic)
        self.camera_last_wall: dict[str, float] = {}
        self.close_requested: dict[str, float] = {}
        self.last_purge: dict[str, float] = {}
        self.continuity = continuity.for_app(
            "intersection-stage", topo.app, [topo.by_intersection.get_topic_name()], metrics.consumer_holes.labels("intersection-stage").inc
        )

    def register(self) -> None:
        """Attach the agent and the rebalance hook to the app."""

        @self.topo.app.on_partitions_assigned.connect
        async def reindex(*args: Any, **kwargs: Any) -> None:
            self.continuity.reset()
            self.store.reindex()  # other partitions: other intersections in the tables

        @self.topo.app.agent(self.topo.by_intersection, name=f"{self.settings.app_id}.intersection-stage")
        async def intersection_stage(stream: Any) -> None:
            async for event in stream.events():
                message = event.message
                if not await self.continuity.admit_message(message):
                    continue  # faust skipped records before this one: they come again first
                try:
                    await self.on_message(message)
                except ContractError as exc:
                    letter = self.topo.dead_letter(message, exc.reason, str(exc))
                    await self.topo.dlq_out.send(key=letter.key, value=letter.value, headers=letter.headers)
                    self.metrics.dlq.labels(exc.reason).inc()
                    log.warning("internal message to the DLQ", extra={"reason": exc.reason, "detail": str(exc)[:200], "partition": message.partition, "offset": message.offset})

    # -- messages ----------------------------------------------------------------------------
    async def on_message(self, message: Any) -> None:
        msg = decode_intersection(message.value)
        intersection = msg.crossing.intersection if isinstance(msg, CrossingMessage) else msg.intersection
        cameras = self.intersections.get(intersection)
        if cameras is None:
            raise ContractError(f"intersection {intersection!r} is not in the site configuration", REFUSED)
        now = time.monotonic()
        if isinstance(msg, CloseMessage):
            await self.close_due(intersection, now)
            return
        camera = msg.crossing.camera if isinstance(msg, CrossingMessage) else msg.camera
        if camera not in cameras:
            raise ContractError(f"camera {camera!r} is not a camera of intersection {intersection!r}", REFUSED)
        self.last_wall[intersection] = self.camera_last_wall[camera] = now
        if isinstance(msg, CrossingMessage):
            self.limits.check(msg.crossing.time_ms)
            self.count(msg.crossing)
        elif isinstance(msg, WatermarkMessage):
            self.limits.check(msg.time_ms)
            if msg.time_ms > self.topo.tables.camera_watermarks.get(camera, -1):
                self.topo.tables.camera_watermarks[camera] = msg.time_ms
            self.advance(intersection, now)
        elif isinstance(msg, StreamMessage):
            self.topo.tables.streams[camera] = msg.ended
            self.advance(intersection, now)
            if msg.ended and all(self.topo.tables.streams.get(cam, False) for cam in cameras):
                keys = self.store.open_keys(intersection)
                log.info("every camera of the intersection ended its stream: closing its intervals", extra={"intersection": intersection, "intervals": len(keys)})
                await self.publish_final(keys)

    def count(self, crossing: CrossingEvent) -> None:
        added = self.store.add(crossing)
        if added.late:
            log.warning(
                "late crossing for a final interval",
                extra={"event_id": crossing.event_id, "intervals": [(k.interval_s, k.interval_start_ms) for k in added.late]},
            )
        if not added.counted:
            return
        if crossing.kind == "movement":
            self.metrics.vehicles.labels(crossing.intersection, crossing.approach, crossing.movement, crossing.vehicle_class).inc()
        else:
            self.metrics.line_crossings.labels(crossing.intersection, crossing.camera, crossing.line, crossing.direction, crossing.vehicle_class).inc()

    def watermark(self, intersection: str, now: float) -> int | None:
        """The intersection's watermark from its cameras' progress (slowest live camera), never below the stored one."""
        cameras = self.intersections[intersection]
        idle_s = self.settings.idle_close_s / 2
        streams, progress = self.topo.tables.streams, self.topo.tables.camera_watermarks
        live = [c for c in cameras if not streams.get(c, False) and now - self.camera_last_wall.setdefault(c, now) < idle_s]
        wm = intersection_watermark(cameras, {c: progress[c] for c in cameras if c in progress}, live)
        stored = self.store.watermark(intersection)
        if wm is None or (stored is not None and stored >= wm):
            return stored
        return wm

    def advance(self, intersection: str, now: float) -> None:
        """Store the recomputed watermark (inside the stream: tables are written only there)."""
        wm = self.watermark(intersection, now)
        if wm is not None:
            self.store.advance(intersection, wm)

    def idle(self, intersection: str, now: float) -> bool:
        """No message for the intersection for ``idle_close_s`` (after a restart: counted from the restart)."""
        return now - self.last_wall.setdefault(intersection, now) >= self.settings.idle_close_s

    async def close_due(self, intersection: str, now: float) -> None:
        """Publish as final what the watermark has closed, or everything open if the intersection is idle."""
        self.advance(intersection, now)
        keys = self.store.open_keys(intersection) if self.idle(intersection, now) else self.store.due(intersection)
        await self.publish_final(keys)
        self.close_requested.pop(intersection, None)
        if now - self.last_purge.get(intersection, 0.0) >= PURGE_EVERY_S:
            self.last_purge[intersection] = now
            self.store.purge(intersection)

    async def publish_final(self, keys: list[CountKey]) -> None:
        """Send the final record of each closable key, then mark the keys final (a crash in between repeats, never loses, a final)."""
        async with self._publishing:
            for key, count in self.store.closable(keys):
                await self.publish_count(key, count, final=True)
            self.store.close(keys)

    async def publish_provisional(self) -> None:
        """Send a provisional record of every open cell changed since the last call; never after that cell's final one."""
        async with self._publishing:  # computed after any close in progress: a key closed meanwhile is no longer dirty
            for key, count in self.store.provisional():
                await self.publish_count(key, count, final=False)

    async def publish_count(self, key: CountKey, count: int, final: bool) -> None:
        await self.topo.counts_out.send(key=key.intersection.encode(), value=key.record(count, final).encode())

    # -- for the housekeeping timer ------------------------------------------------------------
    def due_intersections(self, now: float) -> list[str]:
        """Intersections with open intervals that are due (watermark or idle), not asked for within CLOSE_RETRY_S."""
        out = []
        grace_ms = int(round(self.store.grace_s * 1000))
        for intersection in self.store.open_intersections():
            if now - self.close_requested.get(intersection, -1e18) < CLOSE_RETRY_S:
                continue
            wm = self.watermark(intersection, now)
            closed = wm is not None and any(wm >= k.interval_end_ms + grace_ms for k in self.store.open_keys(intersection))
            if closed or self.idle(intersection, now):
                self.close_requested[intersection] = now
                out.append(intersection)
        return out

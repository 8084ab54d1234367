"""The housekeeping timer: what happens by the wall clock rather than by the data.

Every ``tick_interval_s`` on every worker, for the partitions it owns:

* readiness and the liveness heartbeat;
* cameras idle for ``idle_close_s / 2`` with live tracks: a ``finish`` wake-up on the camera's
  control partition (their tracks end inside their stream, where the state may be written);
* intersections with intervals due (watermark past end + grace, or idle for ``idle_close_s``):
  a ``close`` wake-up on the by-intersection topic;
* provisional records of the open intervals that changed, every ``provisional_interval_s``;
* the window-lag gauge;
* a site file the watcher found changed: applied between two events (``CameraStage.apply_site``).

Nothing here writes a table: faust allows that only inside a stream, so the timer only sends
wake-ups, which the stages check again before they act (see :mod:`aggregator.records`).
"""

from __future__ import annotations

import logging
import time

from aggregator.camera_stage import CameraStage
from aggregator.intersection_stage import IntersectionStage
from aggregator.metrics import AggregatorMetrics
from aggregator.records import CloseMessage, encode
from aggregator.topology import Topology
from traffic.health import Health

log = logging.getLogger(__name__)


class Housekeeping:
    """The timer of one worker."""

    def __init__(self, topo: Topology, cameras: CameraStage, intersections: IntersectionStage, metrics: AggregatorMetrics, health: Health) -> None:
        self.topo, self.cameras, self.intersections, self.metrics, self.health = topo, cameras, intersections, metrics, health
        self.last_provisional = time.monotonic()
        self._recovering = True

    def register(self) -> None:
        """Attach the timer to the app."""

        @self.topo.app.timer(self.topo.settings.tick_interval_s, name=f"{self.topo.settings.app_id}.housekeeping")
        async def housekeeping() -> None:
            await self.tick()

    async def tick(self) -> None:
        app, settings = self.topo.app, self.topo.settings
        self.health.beat()
        if app.rebalancing or app.in_recovery:
            self._recovering = True
            return  # tables may be half-recovered: decide nothing from them now
        if self._recovering:  # the tables changed under the stores while recovering
            self._recovering = False
            self.intersections.store.reindex()
        self.health.set("kafka", True)
        await self.cameras.continuity.retry()  # holes faust left whose seek brought nothing yet
        await self.intersections.continuity.retry()
        now = time.monotonic()
        self.cameras.load_assigned()
        self.cameras.reload_site()
        for partition, finish in await self.cameras.idle_cameras(now):
            await self.topo.camera_control.send(key=finish.camera.encode(), value=encode(finish), partition=partition)
        for intersection in self.intersections.due_intersections(now):
            await self.topo.by_intersection.send(key=intersection.encode(), value=encode(CloseMessage(intersection=intersection)))
        if now - self.last_provisional >= settings.provisional_interval_s:
            self.last_provisional = now
            await self.intersections.publish_provisional()
        watermarks = [wm for _, wm in self.topo.tables.watermarks.items()]
        if watermarks:
            self.metrics.window_lag.set(max(0.0, time.time() - min(watermarks) / 1000))

"""The aggregator's Prometheus metrics (names fixed by deploy/metrics-catalog.txt: the dashboards use them).

One registry per app instance, as in the other services, so tests can run several in one process.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300)


class AggregatorMetrics:
    """Counters and gauges of one aggregator worker; per-camera series are created at 0 by :meth:`add_cameras`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.vehicles = Counter(
            "traffic_vehicles_total", "Vehicles counted by movement (entry approach -> exit approach).",
            ["intersection", "approach", "movement", "vehicle_class"], registry=r,
        )  # fmt: skip
        self.line_crossings = Counter(
            "traffic_line_crossings_total", "Vehicles counted on count lines.",
            ["intersection", "camera", "line", "direction", "vehicle_class"], registry=r,
        )  # fmt: skip
        self.active_tracks = Gauge("traffic_aggregator_active_tracks", "Live tracks per camera.", ["camera"], registry=r)
        self.events = Counter("traffic_aggregator_events_total", "Detection events consumed per camera (duplicates included).", ["camera"], registry=r)
        self.duplicates = Counter("traffic_aggregator_duplicates_total", "Detection events ignored as duplicates (redeliveries).", ["camera"], registry=r)
        self.count_latency = Histogram(
            "traffic_aggregator_count_latency_seconds", "Wall time now minus capture time when a crossing is published (s).",
            buckets=LATENCY_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.window_lag = Gauge(
            "traffic_aggregator_window_lag_seconds",
            "Wall time minus the slowest intersection's event-time watermark (s): how far behind real time counting is.", registry=r,
        )  # fmt: skip
        self.dlq = Counter("traffic_aggregator_dlq_total", "Input refused to the DLQ, by reason.", ["reason"], registry=r)
        self.consumer_holes = Counter(
            "traffic_aggregator_consumer_holes_total",
            "Times the consumer skipped records of a source partition (faust), which the agent then read again, by agent.",
            ["agent"], registry=r,
        )  # fmt: skip
        for agent in ("camera-stage", "intersection-stage"):
            self.consumer_holes.labels(agent)
        self.capture_time_refused = Counter(
            "traffic_aggregator_capture_time_refused_total",
            "Detection events of a known camera refused for a capture time outside the clock window: the camera's clock is wrong.",
            ["camera", "reason"], registry=r,
        )  # fmt: skip
        self.state_bytes = Gauge("traffic_aggregator_state_bytes", "Size of the camera's last checkpoint (compressed bytes).", ["camera"], registry=r)
        self.checkpoint_bytes = Counter(
            "traffic_aggregator_checkpoint_bytes_total", "Bytes of camera checkpoints written to the state changelog.", registry=r
        )
        self.state_shed = Counter(
            "traffic_aggregator_state_shed_total",
            "Times a camera's tracks were ended early because its state passed a limit (tracks or bytes), by limit.",
            ["camera", "limit"], registry=r,
        )  # fmt: skip
        self.state_restore_failed = Counter(
            "traffic_aggregator_state_restore_failed_total", "Checkpoints that could not be trusted at restore (the camera started afresh).",
            ["camera"], registry=r,
        )  # fmt: skip
        self.site_reloads = Counter(
            "traffic_aggregator_site_reloads_total",
            "Changes of the site file seen, by result: applied, refused (invalid: the running one kept), failed, restart_needed (a part that only a restart applies).",
            ["result"], registry=r,
        )  # fmt: skip
        for result in ("applied", "refused", "failed", "restart_needed"):
            self.site_reloads.labels(result)

    def add_cameras(self, cameras: Iterable[str]) -> None:
        """Create the per-camera series at 0, so dashboards' rate() has data before the first duplicate."""
        for camera in cameras:
            self.events.labels(camera)
            self.duplicates.labels(camera)
            self.active_tracks.labels(camera).set(0)
            self.state_restore_failed.labels(camera)
            for reason in ("capture_time_future", "capture_time_stale"):
                self.capture_time_refused.labels(camera, reason)
            for limit in ("tracks", "bytes"):
                self.state_shed.labels(camera, limit)

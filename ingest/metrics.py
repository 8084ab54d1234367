"""The ingest service's Prometheus metrics (names fixed: deploy dashboards use them).

One registry per service instance, so several ingesters can run in one test process. The
assignment gauges carry an ``ingester`` label (the replica's name, the pod name on Kubernetes),
so a dashboard can show which replica holds which camera; the per-camera counters do not (a
camera's counters live on every replica that ever held it, and ``sum by (camera)`` adds them up).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DROP_REASONS = ("reader_skipped", "buffer_full", "encode_failed", "publish_failed", "shutdown", "released")
"""Why a frame was dropped: replaced in the reader slot before encoding, pushed out of the full
publish buffer, not encodable, not acknowledged by Kafka within the delivery timeout, still queued
when the shutdown deadline passed, still queued when this replica let the camera go (it moved to
another replica, or this replica's group lease ran out)."""

ASSIGNMENT_CHANGES = ("assigned", "released", "lost", "lease_expired")
"""Why this replica took or gave up cameras: the group gave them to it; it released them to
another replica (sessions ended by their end-of-session markers); the group took them away without
a release (membership lost); its lease ran out (coordinator unreachable) and it stopped them."""

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class IngestMetrics:
    """Counters, gauges and the publish-latency histogram, labelled by camera."""

    def __init__(self, registry: CollectorRegistry | None = None, ingester: str = "ingest") -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.ingester = ingester
        self._held: set[str] = set()
        r = self.registry
        self.frames_read = Counter("traffic_ingest_frames_read_total", "Frames read from the source", ["camera"], registry=r)
        self.frames_sampled = Counter("traffic_ingest_frames_sampled_total", "Frames kept by the fps sampler", ["camera"], registry=r)
        self.frames_published = Counter(
            "traffic_ingest_frames_published_total", "Frames acknowledged by Kafka", ["camera"], registry=r
        )
        self.frames_dropped = Counter(
            "traffic_ingest_frames_dropped_total", "Sampled frames not published, by reason", ["camera", "reason"], registry=r
        )
        self.publish_latency = Histogram(
            "traffic_ingest_publish_latency_seconds",
            "Time from handing a frame to the producer to the broker's acknowledgement",
            ["camera"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.reconnects = Counter("traffic_ingest_reconnects_total", "Attempts to reconnect a camera", ["camera"], registry=r)
        self.camera_up = Gauge("traffic_ingest_camera_up", "1 while the camera delivers frames, else 0", ["camera"], registry=r)
        self.bytes_sent = Counter("traffic_ingest_bytes_sent_total", "JPEG bytes acknowledged by Kafka", ["camera"], registry=r)
        self.frames_unchanged = Counter(
            "traffic_ingest_frames_unchanged_total", "Frames acknowledged without their JPEG: unchanged since the last whole frame", ["camera"], registry=r
        )  # fmt: skip
        self.cameras_held = Gauge("traffic_ingest_cameras_held", "Cameras this ingester holds (reads) now", ["ingester"], registry=r)
        self.camera_held = Gauge(
            "traffic_ingest_camera_held", "1 for each camera this ingester holds; gone once it lets the camera go",
            ["camera", "ingester"], registry=r,
        )  # fmt: skip
        self.assignment_changes = Counter(
            "traffic_ingest_assignment_changes_total", "Cameras this ingester took or gave up, by why", ["change"], registry=r
        )
        self.cameras_held.labels(ingester).set(0)
        for change in ASSIGNMENT_CHANGES:
            self.assignment_changes.labels(change)

    def add_camera(self, camera: str) -> None:
        """Create every series of ``camera`` at 0, so dashboards and ``increase()`` see them from the start."""
        for metric in (self.frames_read, self.frames_sampled, self.frames_published, self.reconnects, self.bytes_sent, self.frames_unchanged):
            metric.labels(camera)
        for reason in DROP_REASONS:
            self.frames_dropped.labels(camera, reason)
        self.publish_latency.labels(camera)
        self.camera_up.labels(camera).set(0)

    def held(self, cameras: set[str] | frozenset[str]) -> None:
        """Publish which cameras this ingester holds now (the held gauges, ``camera_up`` of the others removed)."""
        shown = set(self._held)
        self._held = set(cameras)
        for camera in shown - set(cameras):
            self.camera_held.remove(camera, self.ingester)
            try:
                self.camera_up.remove(camera)  # not this replica's camera any more: neither up nor down here
            except KeyError:
                pass
        for camera in set(cameras) - shown:
            self.add_camera(camera)
            self.camera_held.labels(camera, self.ingester).set(1)
        self.cameras_held.labels(self.ingester).set(len(cameras))

    def assignment_changed(self, change: str, count: int) -> None:
        """Count ``count`` cameras taken or given up for ``change`` (one of ASSIGNMENT_CHANGES)."""
        assert change in ASSIGNMENT_CHANGES, change
        if count:
            self.assignment_changes.labels(change).inc(count)

    def dropped(self, camera: str, reason: str, count: int = 1) -> None:
        """Count ``count`` frames of ``camera`` dropped for ``reason`` (one of DROP_REASONS)."""
        assert reason in DROP_REASONS, reason
        self.frames_dropped.labels(camera, reason).inc(count)


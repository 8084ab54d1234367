"""The ingest service's Prometheus metrics (names fixed: deploy dashboards use them).

One registry per service instance, so several ingesters can run in one test process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DROP_REASONS = ("reader_skipped", "buffer_full", "encode_failed", "publish_failed", "shutdown")
"""Why a frame was dropped: replaced in the reader slot before encoding, pushed out of the full
publish buffer, not encodable, not acknowledged by Kafka within the delivery timeout, still queued
when the shutdown deadline passed."""

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class IngestMetrics:
    """Counters, gauges and the publish-latency histogram, labelled by camera."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
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

    def add_camera(self, camera: str) -> None:
        """Create every series of ``camera`` at 0, so dashboards and ``increase()`` see them from the start."""
        for metric in (self.frames_read, self.frames_sampled, self.frames_published, self.reconnects, self.bytes_sent, self.frames_unchanged):
            metric.labels(camera)
        for reason in DROP_REASONS:
            self.frames_dropped.labels(camera, reason)
        self.publish_latency.labels(camera)
        self.camera_up.labels(camera).set(0)

    def dropped(self, camera: str, reason: str, count: int = 1) -> None:
        """Count ``count`` frames of ``camera`` dropped for ``reason`` (one of DROP_REASONS)."""
        assert reason in DROP_REASONS, reason
        self.frames_dropped.labels(camera, reason).inc(count)

"""Prometheus metrics of the worker (names fixed by deploy/metrics-catalog.txt and the dashboards)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_SLOW = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

FRAMES_IN = Counter("traffic_worker_frames_in", "Frames polled from the frames topic")
EVENTS_OUT = Counter("traffic_worker_events_out", "Detection events acknowledged by the broker")
BATCH_SIZE = Histogram("traffic_worker_batch_size", "Frames per inference batch", buckets=(1, 2, 4, 8, 16, 32, 64))
DECODE_SECONDS = Histogram("traffic_worker_decode_seconds", "JPEG decode time per frame", buckets=_FAST)
INFERENCE_SECONDS = Histogram("traffic_worker_inference_seconds", "Model time per batch", buckets=_SLOW)
PUBLISH_SECONDS = Histogram("traffic_worker_publish_seconds", "Time to publish a batch's events until acknowledged", buckets=_SLOW)
STAGE_SECONDS = Histogram(
    "traffic_worker_stage_seconds",
    "Time per frame in each stage (fetch, decode, preprocess, inference, postprocess, serialize, produce, ack_wait, commit); batch-level stages are shared equally by the batch's frames",
    ["stage"], buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)  # fmt: skip
FRAMES_REUSED = Counter("traffic_worker_frames_reused", "Frames the ingester marked unchanged: passed on without decode or model")
DLQ = Counter("traffic_worker_dlq", "Frames refused to the DLQ", ["reason"])
FRAME_AGE = Histogram("traffic_worker_frame_age_seconds", "Age of frames at inference (now - capture time)", buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300))
MODEL_LOADED = Gauge("traffic_worker_model_loaded", "1 once the model is loaded")
SITE_RELOADS = Counter("traffic_worker_site_reloads", "Changes of the site file seen, by result: applied, refused (invalid: the running one kept), failed", ["result"])
for _result in ("applied", "refused", "failed"):
    SITE_RELOADS.labels(_result)  # at 0 from the start: the dashboard's increase() has data before the first change
CONSUMER_LAG = Gauge("traffic_worker_consumer_lag", "Frames not yet consumed, per assigned partition", ["partition"])

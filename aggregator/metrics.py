"""Prometheus metrics of the aggregator; the names are fixed by deploy/metrics-catalog.txt (dashboards use them)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

VEHICLES = Counter(
    "traffic_vehicles_total", "Vehicles counted by movement (entry approach -> exit approach).",
    ["intersection", "approach", "movement", "vehicle_class"],
)  # fmt: skip
LINE_CROSSINGS = Counter(
    "traffic_line_crossings_total", "Vehicles counted on count lines.",
    ["intersection", "camera", "line", "direction", "vehicle_class"],
)  # fmt: skip
ACTIVE_TRACKS = Gauge("traffic_aggregator_active_tracks", "Live tracks per camera.", ["camera"])
EVENTS = Counter("traffic_aggregator_events_total", "Detection events consumed per camera (duplicates included).", ["camera"])
DUPLICATES = Counter("traffic_aggregator_duplicates_total", "Detection events ignored as duplicates (redeliveries).", ["camera"])
COUNT_LATENCY = Histogram(
    "traffic_aggregator_count_latency_seconds", "Wall time now minus capture time when a crossing is published (s).",
    buckets=(0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300),
)  # fmt: skip
WINDOW_LAG = Gauge(
    "traffic_aggregator_window_lag_seconds",
    "Wall time minus the slowest intersection's event-time watermark (s): how far behind real time counting is.",
)
DLQ = Counter("traffic_aggregator_dlq_total", "Input refused to the DLQ, by reason.", ["reason"])

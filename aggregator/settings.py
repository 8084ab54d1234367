"""Settings of the aggregator service (environment prefix ``TRAFFIC_AGGREGATOR_``).

Kafka connection and topic names come from :mod:`traffic.settings` (``TRAFFIC_KAFKA_*``,
``TRAFFIC_TOPICS_*``); counting parameters (intervals, grace, hysteresis) come from the site file,
because the offline ``count`` command must use the same ones.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from traffic.capture_time import DEFAULT_FUTURE_SKEW_S, DEFAULT_MAX_AGE_S, CaptureTimeLimits


class AggregatorSettings(BaseSettings):
    """``traffic aggregate`` settings; every field can be set as ``TRAFFIC_AGGREGATOR_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="TRAFFIC_AGGREGATOR_", extra="forbid")

    site_config: str = Field(default="deploy/sites/intersection-demo.yaml", description="site YAML file (cameras, lines, zones, counting)")
    site_reload_s: float = Field(default=2.0, ge=0, description="how often the site file is checked for a change of lines, zones and movements, applied without a restart (s; 0 = never)")
    metrics_port: int = Field(default=9103, ge=0, le=65535, description="port of /metrics /healthz /readyz (0 = a free port)")
    data_dir: str = Field(default="/tmp/traffic-aggregator", description="faust data directory (table stores)")
    app_id: str = Field(default="traffic-aggregator", min_length=1, description="faust app id: consumer group and prefix of changelog topics")
    store: str = Field(default="memory://", description="faust table store; memory:// rebuilds from the changelogs at start")
    provisional_interval_s: float = Field(default=5.0, gt=0, description="how often changed open intervals are published as provisional counts (s)")
    idle_close_s: float = Field(default=300.0, gt=0, description="fallback for streams that end without an end-of-session marker (ingester killed): close an intersection's open intervals after this much wall time without events (s), end a camera's tracks after half of it. Long, so a slow or restarting worker never trips it")
    tick_interval_s: float = Field(default=1.0, gt=0, description="period of the housekeeping timer: closing, provisional records, idle cameras (s)")
    watermark_interval_ms: int = Field(default=1000, gt=0, description="a camera reports its event-time progress to its intersection every this much capture time (ms)")
    watermark_quorum: int = Field(default=3, ge=1, le=100, description="a camera's event-time progress is the smallest capture time of its last this-many events, so no single record moves it")
    reorder_limit: int = Field(default=50, ge=1, description="events held per camera while waiting for a missing seq before skipping it")
    web_port: int = Field(default=0, ge=0, le=65535, description="faust's own web server port (0 = disabled; our metrics server is metrics_port)")
    commit_interval_s: float = Field(default=2.0, gt=0, description="how often consumed offsets are committed (s); each camera's state is checkpointed once per commit")
    capture_future_skew_s: float = Field(default=DEFAULT_FUTURE_SKEW_S, ge=0, description="events whose capture time is further ahead of this service's clock go to the DLQ (s)")
    capture_max_age_s: float = Field(default=DEFAULT_MAX_AGE_S, gt=0, description="events whose capture time is older than this go to the DLQ (s); raise it to recount an archive")
    max_event_bytes: int = Field(default=1024 * 1024, gt=0, description="larger detection events go to the DLQ (reason oversized) without being parsed (bytes)")
    max_detections: int = Field(default=300, ge=1, description="events with more detections go to the DLQ (reason too_many_detections); the worker's max_det")
    max_tracks: int = Field(default=2000, ge=1, description="a camera with more live tracks has them ended early (metric traffic_aggregator_state_shed_total)")
    max_state_bytes: int = Field(default=2 * 1024 * 1024, ge=4096, description="a camera checkpoint larger than this (compressed) has its tracks ended first (bytes); below the producer's max_request_bytes")
    max_request_bytes: int = Field(default=8 * 1024 * 1024, ge=1024 * 1024, description="largest record the app's producer sends (bytes); DLQ copies are cut to fit")
    session_confirm_events: int = Field(default=3, ge=1, le=50, description="events of a new stream session that confirm it before the camera switches to it")
    changelog_segment_s: int = Field(default=600, ge=60, description="segment length of the tables' changelog topics (s): compaction only cleans closed segments, so this bounds what a restart replays")
    group_instance_id: str = Field(default="", description="Kafka static group membership id (stable per replica, e.g. the pod name): a restarted worker gets its partitions back at once. Empty = dynamic membership")
    counting_processes: int = Field(default=1, ge=0, le=64, description="processes that count cameras beside the event loop, cameras sharded by partition (one per core the pod may use, beside the loop's own); 0 = count in the event loop")
    counting_in_flight: int = Field(default=32, ge=1, le=1024, description="records handed to a counting process and not yet answered, at most; a commit waits for them. Enough that the process seldom waits for the event loop (with 8 it sat idle about a fifth of the time on sparse scenes)")
    counting_in_flight_bytes: int = Field(default=256 * 1024, ge=1024, description="bytes of records handed to a counting process and not yet answered, at most (one record always goes): dense scenes cost time per box, so this bounds the wait of a commit (bytes)")
    session_timeout_s: float = Field(default=10.0, ge=6, le=300, description="consumer group session timeout (s): how long a vanished worker holds its partitions")

    def capture_limits(self) -> CaptureTimeLimits:
        """The capture-time window around this service's clock."""
        return CaptureTimeLimits(self.capture_future_skew_s, self.capture_max_age_s)

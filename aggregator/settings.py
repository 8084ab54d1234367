"""Settings of the aggregator service (environment prefix ``TRAFFIC_AGGREGATOR_``).

Kafka connection and topic names come from :mod:`traffic.settings` (``TRAFFIC_KAFKA_*``,
``TRAFFIC_TOPICS_*``); counting parameters (intervals, grace, hysteresis) come from the site file,
because the offline ``count`` command must use the same ones.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AggregatorSettings(BaseSettings):
    """``traffic aggregate`` settings; every field can be set as ``TRAFFIC_AGGREGATOR_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="TRAFFIC_AGGREGATOR_", extra="forbid")

    site_config: str = Field(default="deploy/sites/intersection-demo.yaml", description="site YAML file (cameras, lines, zones, counting)")
    metrics_port: int = Field(default=9103, ge=0, le=65535, description="port of /metrics /healthz /readyz (0 = a free port)")
    data_dir: str = Field(default="/tmp/traffic-aggregator", description="faust data directory (table stores)")
    app_id: str = Field(default="traffic-aggregator", min_length=1, description="faust app id: consumer group and prefix of changelog topics")
    store: str = Field(default="memory://", description="faust table store; memory:// rebuilds from the changelogs at start")
    provisional_interval_s: float = Field(default=5.0, gt=0, description="how often changed open intervals are published as provisional counts (s)")
    idle_close_s: float = Field(default=300.0, gt=0, description="fallback for streams that end without an end-of-session marker (ingester killed): close an intersection's open intervals after this much wall time without events (s), end a camera's tracks after half of it. Long, so a slow or restarting worker never trips it")
    tick_interval_s: float = Field(default=1.0, gt=0, description="period of the housekeeping timer: closing, provisional records, idle cameras (s)")
    watermark_interval_ms: int = Field(default=1000, gt=0, description="a camera reports its event-time progress to its intersection every this much capture time (ms)")
    reorder_limit: int = Field(default=50, ge=1, description="events held per camera while waiting for a missing seq before skipping it")
    web_port: int = Field(default=0, ge=0, le=65535, description="faust's own web server port (0 = disabled; our metrics server is metrics_port)")
    commit_interval_s: float = Field(default=2.0, gt=0, description="how often consumed offsets are committed (s)")

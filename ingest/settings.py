"""Settings of the ingest service (environment prefix ``TRAFFIC_INGEST_``).

Which cameras exist, their sources, sampling fps and resize come from the site file
(``traffic.site``); these settings say how this process serves them. ``traffic ingest --help``
lists every field with its environment variable.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from traffic.errors import ConfigError

if TYPE_CHECKING:
    from ingest.activity import ActivityRule


class IngestSettings(BaseSettings):
    """How the ingester reads cameras and publishes frames (``TRAFFIC_INGEST_*``)."""

    model_config = SettingsConfigDict(env_prefix="TRAFFIC_INGEST_", extra="forbid")

    site_config: str = Field(default="", description="site YAML file; empty = use TRAFFIC_SITE_CONFIG")
    cameras: str = Field(default="", description="comma list of camera ids to serve; empty = every camera of the site")
    sources: str = Field(
        default="",
        description="source overrides as comma-separated camera=url pairs (e.g. for a test camera); may hold secrets, never logged",
    )
    metrics_port: int = Field(default=9101, ge=0, le=65535, description="port of /metrics /healthz /readyz (0 = any free port)")
    buffer_frames: int = Field(default=8, ge=1, le=10_000, description="encoded frames queued per camera before the oldest is dropped")
    realtime: bool = Field(default=True, description="play files at their own fps (true) or as fast as possible without dropping (false)")
    loop: bool = Field(default=False, description="restart files at their end (each pass is a new session)")
    open_timeout_ms: int = Field(default=10_000, gt=0, description="timeout to open a network source (ms)")
    read_timeout_ms: int = Field(default=5_000, gt=0, description="a network source that delivers no frame for this long is reconnected (ms)")
    backoff_initial_s: float = Field(default=0.5, gt=0, description="first wait before reconnecting a camera or the broker (s)")
    backoff_max_s: float = Field(default=30.0, gt=0, description="longest wait between reconnects (s); waits double up to it, with jitter")
    shutdown_deadline_s: float = Field(default=10.0, gt=0, description="on SIGTERM, time allowed to flush queued frames to Kafka (s)")
    handover_on_stop: bool = Field(
        default=True,
        description=(
            "on SIGTERM, a live camera is handed over, not ended: its sessions' end markers say handover, because the camera goes on "
            "(a rolling update, a scale-in), so the aggregator closes its intervals by time and the next session's crossings in them "
            "count; false: a stop is the end of the cameras' streams and their intervals are made final at once (a demo, a site "
            "taken down). A camera moved to another replica is always handed over; files always end"
        ),
    )  # fmt: skip
    max_frames: int = Field(default=0, ge=0, description="stop a camera after this many frames were published (0 = unlimited)")
    max_unacked_frames: int = Field(default=64, ge=1, description="frames per camera handed to the producer but not yet acknowledged, at most")
    linger_ms: int = Field(default=5, ge=0, description="producer linger (ms): small, frames are large")
    max_request_bytes: int = Field(default=4 * 1024 * 1024, gt=0, description="producer max_request_size (bytes); keep <= the frames topic max.message.bytes")
    delivery_timeout_ms: int = Field(default=120_000, gt=0, description="a frame not acknowledged within this time is dropped and its session closed (ms)")
    activity_gate: bool = Field(
        default=True,
        description="send a frame that hardly differs from the camera's last whole frame without its JPEG, marked unchanged-since (workers skip the model, the aggregator reuses that frame's detections); false = every frame whole",
    )
    activity_pixel_delta: int = Field(default=12, ge=1, le=255, description="grey levels a thumbnail pixel must move to count as changed")
    activity_changed_fraction: float = Field(default=0.001, ge=0, le=1, description="a frame with at most this share of changed thumbnail pixels is unchanged")
    activity_max_reuse_s: float = Field(default=3.0, gt=0, le=600, description="a frame this long (capture time) after the last whole frame always goes whole, so drift cannot accumulate (s)")
    activity_thumb_width: int = Field(default=80, ge=8, le=640, description="width of the grey thumbnail the difference is taken on (pixels)")
    bootstrap_timeout_ms: int = Field(default=5_000, gt=0, description="each attempt to reach the broker at start waits this long (ms)")

    # -- camera assignment across replicas (docs/ingest.md "Several replicas") -------------------
    assignment: Literal["static", "group"] = Field(
        default="static",
        description="static: this process reads every camera of the site (or --cameras); group: replicas sharing --group-id "
        "split the cameras between them, each camera read by exactly one of them",
    )
    group_id: str = Field(default="traffic-ingest", min_length=1, description="Kafka consumer group of the ingest replicas (assignment=group)")
    assignment_topic: str = Field(
        default="traffic.ingest-assignment", min_length=1,
        description="topic whose partitions stand for the cameras (created if missing; nothing is written to it)",
    )  # fmt: skip
    assignment_partitions: int = Field(
        default=256, ge=1, le=100_000,
        description="partitions of the assignment topic; cameras hash onto them. Fixed for the life of the group; about the "
        "number of cameras balances best",
    )  # fmt: skip
    session_timeout_ms: int = Field(
        default=10_000, ge=1_000,
        description="a replica not heard from for this long is presumed dead and its cameras move (ms); the broker allows "
        "6000..1800000 by default",
    )  # fmt: skip
    heartbeat_interval_ms: int = Field(default=1_000, ge=100, description="heartbeats to the group coordinator (ms); at most a third of session_timeout_ms")
    rebalance_timeout_ms: int = Field(
        default=30_000, ge=1_000, description="time each replica gets to rejoin during a rebalance (kafka-python max_poll_interval_ms)"
    )
    lease_margin_ms: int = Field(
        default=2_000, ge=0,
        description="a replica stops its cameras this long before the coordinator could give them away, when it cannot "
        "confirm its membership (ms)",
    )  # fmt: skip
    release_timeout_ms: int = Field(
        default=10_000, ge=100,
        description="a camera moving away: time to stop it and get its last frames and end-of-session marker acknowledged "
        "(ms); heartbeats go on meanwhile",
    )  # fmt: skip
    name: str = Field(default="", description="this replica's name in metrics (label ingester) and logs; empty = the host name (the pod name on Kubernetes)")

    @field_validator("backoff_max_s")
    @classmethod
    def _max_not_below_initial(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("backoff_initial_s")
        if initial is not None and value < initial:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        return value

    @model_validator(mode="after")
    def _group_timing(self) -> "IngestSettings":
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be at most a third of session_timeout_ms")
        if self.rebalance_timeout_ms < self.session_timeout_ms:
            raise ValueError("rebalance_timeout_ms must be >= session_timeout_ms")
        if self.lease_margin_ms + 2 * self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("lease_margin_ms + 2 * heartbeat_interval_ms must be below session_timeout_ms (the lease would never last)")
        if self.release_timeout_ms + self.lease_margin_ms >= self.rebalance_timeout_ms:
            raise ValueError("release_timeout_ms + lease_margin_ms must be below rebalance_timeout_ms (a release must end within a rebalance)")
        return self

    def ingester_name(self) -> str:
        """``name``, else ``HOSTNAME`` (the pod name on Kubernetes), else the host name."""
        return self.name or os.environ.get("HOSTNAME") or socket.gethostname()

    def activity_rule(self) -> "ActivityRule":
        """The activity-gating rule of these settings (``traffic count`` uses the same one)."""
        from ingest.activity import ActivityRule  # OpenCV stays out of ``--help``

        return ActivityRule(
            enabled=self.activity_gate, thumb_width=self.activity_thumb_width, pixel_delta=self.activity_pixel_delta,
            changed_fraction=self.activity_changed_fraction, max_reuse_ms=round(self.activity_max_reuse_s * 1000),
        )  # fmt: skip

    def site_path(self) -> str:
        """The site file: ``site_config``, else ``TRAFFIC_SITE_CONFIG``; ConfigError if neither is set."""
        path = self.site_config or os.environ.get("TRAFFIC_SITE_CONFIG", "")
        if not path:
            raise ConfigError("no site configuration: set TRAFFIC_INGEST_SITE_CONFIG, TRAFFIC_SITE_CONFIG or --site-config")
        return path

    def camera_ids(self) -> list[str]:
        """The camera subset to serve (empty list = all)."""
        return [c.strip() for c in self.cameras.split(",") if c.strip()]

    def source_overrides(self) -> dict[str, str]:
        """``camera=url`` pairs as a dict; ConfigError on a pair without ``=`` (the URL is not echoed)."""
        overrides: dict[str, str] = {}
        for number, pair in enumerate((p.strip() for p in self.sources.split(",")), start=1):
            if not pair:
                continue
            camera, sep, url = pair.partition("=")
            if not sep or not camera.strip() or not url.strip():
                raise ConfigError(f"TRAFFIC_INGEST_SOURCES: pair {number} is not camera=url")
            overrides[camera.strip()] = url.strip()
        return overrides

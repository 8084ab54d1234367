"""Settings of the detection worker (environment prefix ``TRAFFIC_WORKER_``)."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from traffic.capture_time import DEFAULT_FUTURE_SKEW_S, DEFAULT_MAX_AGE_S, CaptureTimeLimits
from traffic.site import DEFAULT_CLASSES



class WorkerSettings(BaseSettings):
    """How a worker consumes frames and runs the model (``TRAFFIC_WORKER_*``)."""

    model_config = SettingsConfigDict(env_prefix="TRAFFIC_WORKER_", extra="forbid", protected_namespaces=())

    model: str = Field(default="yolo26n.pt", description="Ultralytics model name (downloaded where online) or path (e.g. an OpenVINO export dir)")
    device: str = Field(default="cpu", description="cpu, cuda, or cuda:N")
    half: bool = Field(default=False, description="FP16 inference; honoured on CUDA only")
    classes: str = Field(default=",".join(DEFAULT_CLASSES), description="comma list of class names to keep (model vocabulary)")
    conf: float = Field(default=0.1, ge=0, le=1, description="confidence threshold: low, so the tracker's second (low-score) association has boxes to use (docs/accuracy.md)")
    iou: float = Field(default=0.7, ge=0, le=1, description="NMS IoU threshold")
    imgsz: int = Field(default=640, ge=32, le=4096, description="inference size (pixels)")
    batch_size: int = Field(default=8, ge=1, le=256, description="frames per inference batch (also max_poll_records)")
    streams: int = Field(default=0, ge=0, le=64, description="parallel OpenVINO inference requests for a batch-1 OpenVINO export on the CPU (0 = OpenVINO's THROUGHPUT choice for this CPU, 1 = Ultralytics' single-request path); other models use Ultralytics' batches")
    pipeline_batches: int = Field(default=3, ge=1, le=64, description="polled batches in flight at once (decoding, in the model, waiting for acks); at most this many x batch_size frames are redone after a crash or rebalance")
    commit_interval_ms: int = Field(default=500, ge=0, le=60_000, description="commit acknowledged offsets at most this often (ms; 0 = after every batch); always before stopping. A crash or rebalance redoes what was acknowledged since")
    max_wait_ms: int = Field(default=50, ge=0, le=10_000, description="longest wait to fill a batch once its first frame arrived (ms)")
    group_id: str = Field(default="traffic-workers", min_length=1, description="consumer group; KEDA scales on its lag")
    metrics_port: int = Field(default=9102, ge=0, le=65535, description="port of /metrics /healthz /readyz (0 = any free)")
    max_poll_interval_ms: int = Field(default=300_000, ge=10_000, description="Kafka max_poll_interval_ms; batches are sized to stay far below it")
    max_frame_bytes: int = Field(default=4 * 1024 * 1024, gt=0, description="larger frames go to the DLQ (reason oversized)")
    site_config: str = Field(default="", description="site YAML; when set, frames of unknown cameras go to the DLQ (empty = accept every camera)")
    site_reload_s: float = Field(default=2.0, ge=0, description="how often the site file is checked for added or removed cameras, applied without a restart (s; 0 = never)")
    publish_timeout_s: float = Field(default=60.0, gt=0, description="wait this long for the broker to acknowledge a batch's events before retrying it (s)")
    max_frame_pixels: int = Field(default=3840 * 2160, gt=0, description="frames with more pixels go to the DLQ (reason too_large), read from the JPEG header before decoding")
    capture_future_skew_s: float = Field(default=DEFAULT_FUTURE_SKEW_S, ge=0, description="frames whose capture time is further ahead of this service's clock go to the DLQ (s)")
    capture_max_age_s: float = Field(default=DEFAULT_MAX_AGE_S, gt=0, description="frames whose capture time is older than this go to the DLQ (s)")
    group_instance_id: str = Field(default="", description="Kafka static group membership id (stable per replica, e.g. the pod name): a restarted worker gets its partitions back at once. Empty = dynamic membership")
    session_timeout_ms: int = Field(default=10_000, ge=6_000, le=300_000, description="consumer group session timeout (ms): how long a vanished worker holds its partitions")

    def capture_limits(self) -> CaptureTimeLimits:
        """The capture-time window around this service's clock."""
        return CaptureTimeLimits(self.capture_future_skew_s, self.capture_max_age_s)

    @field_validator("device")
    @classmethod
    def _device_form(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in ("cpu", "cuda") and not (value.startswith("cuda:") and value[5:].isdigit()):
            raise ValueError("device must be cpu, cuda or cuda:N")
        return value

    def class_names(self) -> tuple[str, ...]:
        """The classes to keep as a tuple."""
        return tuple(c.strip() for c in self.classes.split(",") if c.strip())

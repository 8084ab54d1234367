"""The one adapter between Ultralytics YOLO and the project's ``Detection`` type.

Only this module imports ultralytics for detection; the worker, the offline ``count`` command and
the benchmarks all call :meth:`Detector.detect`, so the same frame gives the same detections
everywhere. Ultralytics models are not thread-safe: one ``Detector`` per thread, created in it.

Batching: Ultralytics makes a list of frames one batch of its length whatever ``batch=`` says, so
long lists are split into ``batch_size`` chunks, or into the export's own static batch (the shared
OpenVINO model is batch 1: one call per frame), so batch composition cannot change results.

Two engines, one result: Ultralytics' ``predict`` (PyTorch, CUDA, FP16, batches; every model), and
for an OpenVINO export on the CPU with a static batch of 1, :class:`workers.streams.OpenVinoStreams`
(several inference requests so frames overlap; Ultralytics' own pre/post-processing, the same
detections). ``streams`` picks: 0 = OpenVINO's choice for the CPU, 1 = Ultralytics' path only.
With streams, :meth:`Detector.detect` is thread-safe and ``parallelism`` threads may call it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from traffic.errors import ConfigError
from traffic.site import DEFAULT_CLASSES
from traffic.wire import Detection
from workers.streams import OpenVinoStreams, StageTimes, eligible

log = logging.getLogger(__name__)

_CONF_SLACK = 1e-4
"""The threshold applies to the score as published (rounded to 4 decimals), so a stricter filter of
a lower-threshold run gives exactly the same detections (offline/detection_cache.py relies on it)."""


@dataclass(frozen=True)
class DetectorSettings:
    """What model to run and how.

    Attributes:
        model: Ultralytics model name (``yolo26n.pt``; downloaded where online) or a path.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        half: FP16; only used on CUDA (CPU and OpenVINO run FP32/INT8 as exported).
        classes: class names to keep; unknown names are a ConfigError.
        conf: confidence threshold in [0, 1].
        iou: NMS IoU threshold.
        imgsz: inference size in pixels.
        batch_size: frames per model call.
        streams: parallel OpenVINO requests for a batch-1 OpenVINO export on the CPU; 0 = OpenVINO's
            THROUGHPUT choice for this CPU, 1 = Ultralytics' own single-request (LATENCY) path.
    """

    model: str
    device: str = "cpu"
    half: bool = False
    classes: tuple[str, ...] = field(default=DEFAULT_CLASSES)
    conf: float = 0.1
    iou: float = 0.7
    imgsz: int = 640
    batch_size: int = 8
    streams: int = 0


def static_batch(model: str) -> int | None:
    """The fixed batch of an exported model (OpenVINO/ONNX dir or file with ``metadata.yaml``), else None.

    Ultralytics pads a list to a static batch chunk by chunk; for a batch-1 export, one call per
    frame is faster than a list (measured: 20.4 vs 22.1 ms per frame on the shared model).
    """
    path = Path(model)
    meta = path / "metadata.yaml" if path.is_dir() else path.with_name("metadata.yaml")
    if not meta.is_file():
        return None
    import yaml

    try:
        data = yaml.safe_load(meta.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    args = data.get("args") or {}
    if args.get("dynamic"):
        return None
    batch = data.get("batch")
    return int(batch) if isinstance(batch, int) and batch > 0 else None


def resolve_device(device: str) -> str:
    """Validate the device; ConfigError when CUDA is asked for but absent."""
    if device == "cpu":
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine (use TRAFFIC_WORKER_DEVICE=cpu)")
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return f"cuda:{index}"


class Detector:
    """YOLO on BGR frames -> tuples of :class:`traffic.wire.Detection` with normalized boxes."""

    def __init__(self, settings: DetectorSettings) -> None:
        from ultralytics import YOLO

        self.settings = settings
        self.device = resolve_device(settings.device)
        self.half = settings.half and self.device.startswith("cuda")
        # Ultralytics 8.4 folded `half=True` into `quantize=16`; FP32 is the default (no argument).
        self._precision: dict[str, int] = {"quantize": 16} if self.half else {}
        started = time.monotonic()
        try:
            self.model = YOLO(settings.model, task="detect")
        except (FileNotFoundError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"cannot load model {settings.model!r}: {exc}") from None
        names: dict[int, str] = dict(self.model.names)
        by_name = {name: idx for idx, name in names.items()}
        unknown = [c for c in settings.classes if c not in by_name]
        if unknown:
            raise ConfigError(f"classes {unknown} are not in the model's vocabulary ({len(by_name)} classes, e.g. {list(by_name)[:8]})")
        self.names = names
        self.class_ids = sorted(by_name[c] for c in settings.classes)
        path = Path(settings.model)
        self.model_name = path.name if path.exists() else settings.model
        fixed = static_batch(settings.model)
        self.chunk = min(settings.batch_size, fixed) if fixed else settings.batch_size
        self._streams: OpenVinoStreams | None = None
        # One warm-up call: the first inference compiles/allocates, which must not count as a frame's latency.
        # It also sets up Ultralytics' predictor (imgsz, conf, iou, classes), whose pre/post-processing the streams reuse.
        self._predict([np.zeros((64, 64, 3), dtype=np.uint8)])
        why_not = "streams=1" if settings.streams == 1 else eligible(self.model.predictor, self.device)
        if why_not is None:
            self._streams = OpenVinoStreams(self.model.predictor, _ir_file(path), settings.streams)
            self._streams.run(np.zeros((64, 64, 3), dtype=np.uint8))
        self.parallelism = self._streams.size if self._streams is not None else 1
        engine = f"openvino-streams({self._streams.streams})" if self._streams is not None else f"ultralytics ({why_not})"
        log.info("model loaded", extra={"model": self.model_name, "device": self.device, "half": self.half, "engine": engine,
                                        "parallelism": self.parallelism, "load_s": round(time.monotonic() - started, 2)})  # fmt: skip

    @property
    def engine(self) -> str:
        """``openvino-streams`` or ``ultralytics``: which path runs the model."""
        return "openvino-streams" if self._streams is not None else "ultralytics"

    def detect(self, frames: list[np.ndarray]) -> list[tuple[Detection, ...]]:
        """Detect objects in BGR frames; output aligned with the input, boxes normalized per frame."""
        return self.detect_timed(frames)[0]

    def detect_timed(self, frames: list[np.ndarray]) -> tuple[list[tuple[Detection, ...]], StageTimes]:
        """:meth:`detect` and the time its frames spent in pre-processing, the model and post-processing."""
        times = StageTimes()
        if self._streams is not None:
            out = []
            for result, spent in self._streams.map(frames):
                started = time.perf_counter()
                out.append(self._detections(result))
                spent.postprocess += time.perf_counter() - started
                times.add(spent)
            return out, times
        out = []
        for start in range(0, len(frames), self.chunk):
            for result in self._predict(frames[start : start + self.chunk]):
                started = time.perf_counter()
                out.append(self._detections(result))
                speed = result.speed  # ms per image of this call, from Ultralytics' own profilers
                times.add(StageTimes(speed["preprocess"] / 1000, speed["inference"] / 1000,
                                     speed["postprocess"] / 1000 + time.perf_counter() - started))  # fmt: skip
        return out, times

    def _predict(self, chunk: list[np.ndarray]) -> list[Any]:
        return self.model.predict(
            chunk, imgsz=self.settings.imgsz, conf=max(0.0, self.settings.conf - _CONF_SLACK), iou=self.settings.iou, classes=self.class_ids,
            device=self.device, verbose=False, batch=len(chunk), **self._precision,
        )  # fmt: skip

    def _detections(self, result: Any) -> tuple[Detection, ...]:
        boxes = result.boxes
        xyxyn = np.clip(boxes.xyxyn.cpu().numpy().astype(float), 0.0, 1.0)
        cls = boxes.cls.cpu().numpy().astype(int)
        conf = boxes.conf.cpu().numpy().astype(float)
        return tuple(
            Detection(class_id=int(c), label=self.names[int(c)], confidence=float(round(s, 4)),
                      box=tuple(float(round(v, 5)) for v in box))  # type: ignore[arg-type]
            for box, c, s in zip(xyxyn, cls, conf) if round(float(s), 4) >= self.settings.conf
        )  # fmt: skip

    def close(self) -> None:
        """Stop the streams' thread pool (the model itself is freed with the object)."""
        if self._streams is not None:
            self._streams.close()


def _ir_file(path: Path) -> Path:
    """The ``.xml`` of an OpenVINO export given as its directory or the file."""
    return path if path.is_file() else next(path.glob("*.xml"))

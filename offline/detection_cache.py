"""Detections of every frame of a recording, computed once and kept on disk.

Why: evaluating counting settings (tracker, thresholds, sampling rate) on labelled recordings
would otherwise run the model again for every variant. The cache holds, for **every** frame of
the file (the file's own rate), what a worker finds in it after the ingester's resize and JPEG
round trip, at a low floor confidence. Any sampling rate and any detector threshold at or above
the floor is then a selection from it that gives exactly the events the pipeline would publish:

* the ingester's sampler keeps frame ``i`` of the file by its index alone
  (:meth:`ingest.sampler.Sampler.keep_index`), so a sampled stream is a subset of the frames;
* Ultralytics applies the confidence threshold before its per-class NMS, and NMS only lets a box
  suppress boxes of lower score, so the boxes >= ``conf`` of a ``floor``-threshold run are the
  boxes of a ``conf``-threshold run (``tests/integration/offline/test_eval.py`` checks it on real frames).

Entries are keyed by the file's SHA-256 and everything that changes a detection (model, image
size, NMS IoU, resize width, JPEG quality, floor); they live in ``~/.cache/traffic-pipeline/
detections`` (``TRAFFIC_CACHE_DIR``) as gzip'd JSON lines, a few MB per minute of video.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from ingest.sampler import Sampler, file_capture_ms
from traffic.wire import Detection, DetectionEvent, FrameHeaders
from traffic.site import Camera
from workers.detector import DetectorSettings
from workers.events import detection_event, end_of_session_headers

log = logging.getLogger(__name__)

FLOOR_CONF = 0.05
"""Confidence floor of cached detections: below ByteTrack's low-score stage (0.1)."""
CACHE_VERSION = 1


def cache_root() -> Path:
    """Where cached detections live (``TRAFFIC_CACHE_DIR``, default ``~/.cache/traffic-pipeline``)."""
    return Path(os.environ.get("TRAFFIC_CACHE_DIR", Path.home() / ".cache" / "traffic-pipeline")) / "detections"


def file_sha256(path: Path) -> str:
    """Content hash of a file (the cache key must change when the recording does)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheKey:
    """Everything that changes what a worker finds in a frame of the file."""

    video_sha256: str
    model: str
    imgsz: int
    iou: float
    max_width: int
    jpeg_quality: int
    floor_conf: float = FLOOR_CONF
    version: int = CACHE_VERSION

    def digest(self) -> str:
        """Short stable name of the entry."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class CachedFrame:
    """One frame of the file: its index, size after the ingester's resize, and the floor-conf detections."""

    index: int
    width: int
    height: int
    detections: tuple[Detection, ...]


@dataclass
class CachedVideo:
    """Every frame of one recording with its floor-conf detections."""

    key: CacheKey
    fps: float
    frames: list[CachedFrame]

    def events(
        self, camera: str, intersection: str, session: str, rate: float, conf: float, classes: tuple[str, ...], start_ms: int = 0
    ) -> list[DetectionEvent]:
        """The detection events the pipeline publishes for this file at ``rate`` and ``conf``, then the end-of-session event.

        Same frame selection, seq and capture times as :func:`ingest.sampler.sample_file`, same
        events as :func:`workers.events.detection_event`.
        """
        if conf < self.key.floor_conf - 1e-12:
            raise ValueError(f"conf {conf} is below the cache's floor {self.key.floor_conf}")
        wanted = set(classes)
        sampler = Sampler(rate)
        out: list[DetectionEvent] = []
        headers: FrameHeaders | None = None
        for frame in self.frames:
            if not sampler.keep_index(frame.index, self.fps):
                continue
            headers = FrameHeaders(camera, intersection, session, len(out), file_capture_ms(start_ms, frame.index, self.fps), frame.width, frame.height)
            kept = tuple(d for d in frame.detections if d.confidence >= conf and d.label in wanted)
            out.append(detection_event(headers, self.key.model, kept, None))
        if headers is not None:
            out.append(detection_event(end_of_session_headers(headers), self.key.model, (), None))
        return out


def cache_key(video: Path, detector: DetectorSettings, max_width: int, jpeg_quality: int, model_name: str) -> CacheKey:
    """The key of ``video`` processed with these settings."""
    return CacheKey(file_sha256(video), model_name, detector.imgsz, detector.iou, max_width, jpeg_quality)


def load(key: CacheKey, root: Path | None = None) -> CachedVideo | None:
    """The cached entry, or None (absent, or written by another version)."""
    path = (root or cache_root()) / f"{key.digest()}.jsonl.gz"
    if not path.is_file():
        return None
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            head = json.loads(f.readline())
            if head.get("key") != asdict(key):
                return None
            frames = [_frame(json.loads(line)) for line in f]
    except (OSError, EOFError, ValueError, KeyError) as exc:
        log.warning("detection cache entry unreadable: recomputing", extra={"path": str(path), "error": str(exc)})
        return None
    return CachedVideo(key, float(head["fps"]), frames)


def store(entry: CachedVideo, root: Path | None = None) -> Path:
    """Write an entry atomically (a crash never leaves half an entry)."""
    folder = root or cache_root()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{entry.key.digest()}.jsonl.gz"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with gzip.open(tmp, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"key": asdict(entry.key), "fps": entry.fps}) + "\n")
        for frame in entry.frames:
            f.write(json.dumps({"i": frame.index, "w": frame.width, "h": frame.height,
                                "d": [[d.class_id, d.label, d.confidence, *d.box] for d in frame.detections]}) + "\n")  # fmt: skip
    tmp.replace(path)
    return path


def _frame(row: dict) -> CachedFrame:
    return CachedFrame(
        int(row["i"]), int(row["w"]), int(row["h"]),
        tuple(Detection(class_id=c, label=label, confidence=s, box=(x1, y1, x2, y2)) for c, label, s, x1, y1, x2, y2 in row["d"]),
    )  # fmt: skip


def build(
    frames: Iterator[tuple[int, "object"]], fps: float, key: CacheKey, detect: Callable[[list], list[tuple[Detection, ...]]], batch: int = 8
) -> CachedVideo:
    """Detect every ``(index, image)`` of ``frames`` (images as a worker decodes them) into a new entry."""
    out: list[CachedFrame] = []
    pending: list[tuple[int, object]] = []

    def flush() -> None:
        found = detect([image for _, image in pending])
        for (index, image), detections in zip(pending, found):
            height, width = image.shape[:2]  # type: ignore[attr-defined]
            out.append(CachedFrame(index, width, height, detections))
        pending.clear()

    for item in frames:
        pending.append(item)
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return CachedVideo(key, fps, out)


def get_or_build(video: Path, camera: Camera, detector: DetectorSettings, progress: Callable[[int], None] | None = None) -> CachedVideo:
    """The cached detections of every frame of ``video`` as ``camera`` sends it; computed (and stored) when absent.

    The detector runs at the cache's floor confidence on every class of ``detector.classes``; the
    caller's own ``conf`` and classes are applied by :meth:`CachedVideo.events`.
    """
    from dataclasses import replace

    from offline.count import probe_video, worker_frames
    from workers.detector import Detector

    floor = replace(detector, conf=FLOOR_CONF)
    model_name = Path(detector.model).name if Path(detector.model).exists() else detector.model
    key = cache_key(video, floor, camera.max_width, camera.jpeg_quality, model_name)
    found = load(key)
    if found is not None:
        return found
    _, file_fps, _, _ = probe_video(video)
    model = Detector(floor)
    done = 0

    def frames() -> Iterator[tuple[int, object]]:
        nonlocal done
        for frame in worker_frames(video, camera, rate=max(file_fps, 1000.0)):  # every frame of the file
            done += 1
            if progress is not None:
                progress(done)
            yield frame.frame_index, frame.image

    entry = build(frames(), file_fps, key, model.detect, batch=detector.batch_size)
    store(entry)
    log.info("detections cached", extra={"video": str(video), "frames": len(entry.frames), "key": key.digest()})
    return entry

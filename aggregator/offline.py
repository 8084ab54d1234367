"""Count a recorded video in one process, with exactly the streaming pipeline's code path.

    ingest.sampler.sample_file ─> ingest.encoder.JpegEncoder (resize, JPEG) ─> workers.decode ─>
    workers.detector.Detector ─> DetectionEvent per frame ─> aggregator.counting.CameraCounter
    ─> ... and one end-of-session event, as the ingester sends at the end of a file

Each step is the function the services call (the ingester samples and encodes, a worker decodes
and detects, the aggregator counts), in the same order and with the same settings from the site
file, so ``traffic count`` and the streaming pipeline give identical counts for the same frames.
The JPEG round trip is kept on purpose: the detector must see the pixels a worker sees.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from aggregator.counting import CameraCounter, TrackedObject
from ingest.encoder import JpegEncoder
from ingest.sampler import sample_file
from ingest.sources import SourceError
from traffic.errors import BadInput
from traffic.site import Site
from traffic.wire import CrossingEvent, DetectionEvent
from workers.decode import decode_jpeg
from workers.detector import Detector, DetectorSettings

log = logging.getLogger(__name__)

OFFLINE_SESSION = "offline"


class VideoError(BadInput):
    """The video cannot be opened or decoded."""


@dataclass
class FrameResult:
    """What one processed frame gave: for the annotator and the progress display."""

    seq: int
    capture_ms: int
    image: np.ndarray
    tracked: list[TrackedObject]
    crossings: list[CrossingEvent]


@dataclass
class OfflineResult:
    """The crossings of a whole video and the run's figures."""

    crossings: list[CrossingEvent] = field(default_factory=list)
    frames: int = 0
    wall_s: float = 0.0
    start_ms: int = 0
    end_ms: int = 0
    model: str = ""


def probe_video(path: Path) -> tuple[int, float, int, int]:
    """(frame count, fps, width, height) of a video; VideoError if it cannot be opened."""
    if not path.is_file():
        raise VideoError(f"video {path} does not exist")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VideoError(f"video {path} cannot be opened (not a video, or an unsupported format)")
        frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()
    if fps <= 0 or width <= 0 or height <= 0:
        raise VideoError(f"video {path} has no usable frame rate or size (fps {fps}, {width}x{height})")
    return frames, fps, width, height


def count_video(
    video: Path,
    site: Site,
    camera_id: str,
    detector: DetectorSettings,
    start_ms: int = 0,
    fps: float | None = None,
    on_frame: Callable[[FrameResult], None] | None = None,
) -> OfflineResult:
    """Run sampling, encoding, detection and counting over ``video`` for ``camera_id``.

    Args:
        video: the recording.
        site: site configuration (the camera's lines, approaches and counting settings).
        camera_id: which camera of the site the recording is from.
        detector: model settings (the same as the workers').
        start_ms: capture time of the first frame, epoch ms (intervals follow the clock).
        fps: sampling rate; default the camera's ``fps`` in the site file.
        on_frame: called after each frame (progress, annotation).
    """
    intersection, camera = site.camera(camera_id)
    probe_video(video)
    rate = fps or camera.fps
    encoder = JpegEncoder(camera.max_width, camera.jpeg_quality)
    model = Detector(detector)
    counter = CameraCounter(site, camera_id)
    result = OfflineResult(start_ms=start_ms, model=model.model_name)
    started = time.monotonic()
    batch: list[tuple[int, np.ndarray]] = []
    last: DetectionEvent | None = None

    def flush() -> None:
        nonlocal last
        found = model.detect([image for _, image in batch])
        for (capture_ms, image), detections in zip(batch, found):
            event = DetectionEvent(
                camera=camera_id, intersection=intersection.id, session=OFFLINE_SESSION, seq=result.frames,
                capture_ms=capture_ms, model=model.model_name, width=image.shape[1], height=image.shape[0], detections=detections,
            )  # fmt: skip
            crossings = counter.update(event)
            result.crossings += crossings
            result.frames += 1
            last = event
            if on_frame is not None:
                on_frame(FrameResult(event.seq, capture_ms, image, counter.last_tracked, crossings))
        batch.clear()

    try:
        for frame in sample_file(video, rate, start_ms):
            encoded = encoder.encode(frame.image)
            batch.append((frame.capture_ms, decode_jpeg(encoded.jpeg)))
            if len(batch) >= detector.batch_size:
                flush()
    except SourceError as exc:
        raise VideoError(f"video {video}: {exc}") from None
    if batch:
        flush()
    if last is None:
        raise VideoError(f"video {video}: no frame could be decoded")
    end = last.model_copy(update={"seq": last.seq + 1, "detections": (), "end_of_session": True, "inference_ms": None})
    result.crossings += counter.update(end)  # what the ingester's end-of-session marker does in the pipeline
    result.end_ms = last.capture_ms + int(1000 / rate)
    result.wall_s = time.monotonic() - started
    return result


class Progress:
    """A one-line progress display on stderr: frames, fps, ETA (plain text, no dependency)."""

    def __init__(self, total: int, stream=sys.stderr) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.started: float | None = None  # at the first frame: model loading is not frame time
        self.tty = stream.isatty()
        self._last_print = 0.0
        self._done = -1

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.started is None:
            self.started = now
        if done == self._done or (done < self.total and now - self._last_print < (0.2 if self.tty else 5.0)):
            return
        self._last_print, self._done = now, done
        elapsed = now - self.started
        fps = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / fps if fps > 0 else 0.0
        width = 30
        filled = int(width * min(done, self.total) / self.total)
        line = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} frames  {fps:5.1f} fps  ETA {eta:4.0f} s"
        self.stream.write(("\r" + line) if self.tty else (line + "\n"))
        if self.tty and done >= self.total:
            self.stream.write("\n")
        self.stream.flush()

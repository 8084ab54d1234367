"""Count a recorded video in one process, with exactly the streaming pipeline's code path.

    ingest.sampler.sample_file ─> ingest.encoder.JpegEncoder (resize, JPEG) ─> workers.decode ─>
    workers.detector.Detector ─> DetectionEvent per frame ─> aggregator.counting.CameraCounter
    ─> ... and one end-of-session event, as the ingester sends at the end of a file

With an activity rule, ``ingest.activity.ActivityGate`` marks unchanged frames in seq order as
the ingester's publisher does; those skip the model and their events say ``reused_from_seq``.

Each step is the function the services call (the ingester samples and encodes, a worker decodes
and detects, the aggregator counts), in the same order and with the same settings from the site
file, so ``traffic count`` and the streaming pipeline give identical counts for the same frames.
The JPEG round trip is kept on purpose: the detector must see the pixels a worker sees.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from aggregator.counting import CameraCounter, TrackedObject
from ingest.activity import ActivityGate, ActivityRule
from ingest.encoder import JpegEncoder
from ingest.sampler import SampledFrame, sample_file
from ingest.sources import SourceError
from traffic.errors import BadInput, ConfigError
from traffic.site import Camera, Site
from traffic.wire import CrossingEvent, DetectionEvent
from workers.decode import decode_jpeg
from workers.detector import Detector, DetectorSettings

log = logging.getLogger(__name__)

OFFLINE_SESSION = "offline"
PREFETCH_FRAMES = 16
"""Decoded frames read ahead of the model (each 640x480 frame is 0.9 MB)."""


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
    detections: tuple = ()  # the frame's detections, all classes (the annotator blurs the persons among them)


@dataclass
class OfflineResult:
    """The crossings of a whole video and the run's figures."""

    crossings: list[CrossingEvent] = field(default_factory=list)
    frames: int = 0
    reused: int = 0  # frames the activity gate passed on unchanged (no model call)
    wall_s: float = 0.0
    start_ms: int = 0
    end_ms: int = 0
    model: str = ""


def check_geometry(camera: Camera) -> None:
    """Refuse count lines that no vehicle can cross: ConfigError naming the line.

    The site file already keeps every point inside the image ([0, 1]) and refuses zero-length
    lines and zones without area. What is left of "outside the image" is a line lying along an
    image edge: clipped to the open image it is empty, so a ground point can never be on its
    other side and the line would silently count nothing.
    """
    for line in camera.lines:
        (ax, ay), (bx, by) = line.points
        for edge in (0.0, 1.0):
            if ax == bx == edge or ay == by == edge:
                raise ConfigError(
                    f"camera {camera.id}: line {line.id!r} lies on the image border ({line.points}); "
                    "no vehicle can cross it - move it inside the picture"
                )


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
    activity: ActivityRule | None = None,
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
        activity: the ingester's activity rule (``IngestSettings.activity_rule()``); None = every frame inferred.
    """
    intersection, camera = site.camera(camera_id)
    check_geometry(camera)
    _, file_fps, _, _ = probe_video(video)
    rate = fps or camera.fps
    gate = ActivityGate(activity) if activity is not None and activity.enabled else None
    encoder = JpegEncoder(camera.max_width, camera.jpeg_quality, gate.rule.thumb_width if gate is not None else 0)
    model = Detector(detector)
    counter = CameraCounter(site, camera_id)
    result = OfflineResult(start_ms=start_ms, model=model.model_name)
    started = time.monotonic()
    batch: list[tuple[int, np.ndarray, int | None]] = []  # (capture ms, image, unchanged since seq)
    last: DetectionEvent | None = None
    reference: tuple = ()  # detections of the last inferred frame: what an unchanged frame shows (and the annotator blurs)

    def flush() -> None:
        nonlocal last, reference
        inferred = iter(model.detect([image for _, image, reused in batch if reused is None]))
        for capture_ms, image, reused in batch:
            event = DetectionEvent(
                camera=camera_id, intersection=intersection.id, session=OFFLINE_SESSION, seq=result.frames,
                capture_ms=capture_ms, model=model.model_name, width=image.shape[1], height=image.shape[0],
                detections=next(inferred) if reused is None else (), reused_from_seq=reused,
            )  # fmt: skip
            result.reused += reused is not None
            if reused is None:
                reference = event.detections
            crossings = counter.update(event)
            result.crossings += crossings
            result.frames += 1
            last = event
            if on_frame is not None:
                on_frame(FrameResult(event.seq, capture_ms, image, counter.last_tracked, crossings, event.detections if reused is None else reference))
        batch.clear()

    try:
        frames = sample_file(video, rate, start_ms)
    except SourceError as exc:
        raise VideoError(f"video {video}: {exc}") from None
    with _Prefetch(_round_trip(frames, encoder)) as decoded:
        for capture_ms, image, thumb in decoded:
            reused = None
            if gate is not None:  # in seq order, as the ingester's publisher decides
                seq = result.frames + len(batch)
                reused = gate.unchanged_since(thumb, capture_ms)
                if reused is None:
                    gate.sent(thumb, capture_ms, seq)
            batch.append((capture_ms, image, reused))
            if len(batch) >= detector.batch_size:
                flush()
    if batch:
        flush()
    if last is None:
        raise VideoError(f"video {video}: no frame could be decoded")
    end = last.model_copy(update={"seq": last.seq + 1, "detections": (), "end_of_session": True, "inference_ms": None})
    result.crossings += counter.update(end)  # what the ingester's end-of-session marker does in the pipeline
    result.end_ms = last.capture_ms + round(1000 / min(rate, file_fps))  # the last frame stands for one frame period
    result.wall_s = time.monotonic() - started
    log.info(
        "video counted",
        extra={"camera": camera_id, "frames": result.frames, "crossings": len(result.crossings), "wall_s": round(result.wall_s, 2),
               "sampling_fps": rate, "model": result.model, "reused": result.reused},
    )  # fmt: skip
    return result


def _round_trip(frames: Iterator[SampledFrame], encoder: JpegEncoder) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """(capture ms, image, activity thumbnail) as a worker sees it: the ingester's resize + JPEG, then the worker's decode."""
    try:
        for frame in frames:
            encoded = encoder.encode(frame.image)
            yield frame.capture_ms, decode_jpeg(encoded.jpeg), encoded.thumb
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()


class _Prefetch:
    """Runs an iterator in a thread, a few items ahead, keeping order.

    Why: video decoding, resize and the JPEG round trip release the GIL in OpenCV, so on a 2-core
    machine they overlap with the model's Python pre/post-processing instead of adding to it. The
    frames and their order are unchanged, so the counts are too. An exception in the thread is
    raised in the consumer at the position where it happened.
    """

    _END = object()

    def __init__(self, items: Iterator[tuple[int, np.ndarray, np.ndarray | None]], depth: int = PREFETCH_FRAMES) -> None:
        self._items = items
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="count-prefetch", daemon=True)

    def __enter__(self) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        self._thread.start()
        return self._consume()

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def _run(self) -> None:
        try:
            for item in self._items:
                if self._stop.is_set():
                    break
                self._queue.put(item)
            self._queue.put(self._END)
        except BaseException as exc:  # forwarded to the consumer, raised there
            self._queue.put(exc)
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()  # releases the video capture

    def _consume(self) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                if isinstance(item, SourceError):
                    raise VideoError(str(item)) from None
                raise item
            yield item  # type: ignore[misc]


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

"""Count a recorded video in one process, with exactly the streaming pipeline's code path.

    ingest.sampler.sample_file -> ingest.encoder.JpegEncoder (resize, JPEG)      the ingester's steps
    -> workers.decode.decode_jpeg -> workers.detector.Detector
    -> workers.events.detection_event (one per frame, then the end-of-session event)  the worker's
    -> aggregator.counting.CameraCounter                                          the aggregator's

Each step is the function the services call, in the same order and with the same settings from
the site file, so ``traffic count`` and the streaming pipeline give identical counts for the same
frames. The JPEG round trip is kept on purpose: the detector must see the pixels a worker sees.
This module is the composition layer: it imports the services, they never import it.

With an activity rule, ``ingest.activity.ActivityGate`` marks unchanged frames in seq order as
the ingester's publisher does (on the same resized image, before the JPEG); those skip the model,
their events say ``reused_from_seq`` and the counter uses their reference frame's detections.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from aggregator.counting import CameraCounter
from ingest.activity import ActivityGate, ActivityRule
from ingest.encoder import JpegEncoder
from ingest.sampler import SampledFrame, sample_file
from ingest.sources import SourceError
from traffic.detections import Detections
from traffic.errors import BadInput, ConfigError
from traffic.site import Camera, Site
from traffic.wire import CrossingEvent, DetectionEvent, FrameHeaders
from workers.decode import decode_jpeg
from workers.detector import Detector, DetectorSettings
from workers.events import detection_event, end_of_session_headers

log = logging.getLogger(__name__)

OFFLINE_SESSION = "offline"
PREFETCH_FRAMES = 16
"""Decoded frames read ahead of the model (each 640x480 frame is 0.9 MB)."""


class VideoError(BadInput):
    """The video cannot be opened or decoded."""


@dataclass(frozen=True, slots=True)
class WorkerFrame:
    """A sampled frame as a worker gets it: the image after the JPEG round trip, and the ingester's activity decision.

    Attributes:
        frame_index: index of the frame in the file (0-based).
        capture_ms: capture time, epoch milliseconds.
        image: BGR image as the worker decodes it, shape ``(height, width, 3)``.
        unchanged_since: the reference frame's seq when the activity gate found this one unchanged
            (the worker skips it, the counter reuses that frame's detections); None = inferred.
    """

    frame_index: int
    capture_ms: int
    image: np.ndarray
    unchanged_since: int | None = None


@dataclass
class FrameResult:
    """What one processed frame gave: for the annotator and the progress display.

    Attributes:
        seq: the frame's seq in the session.
        capture_ms: its capture time.
        image: the frame as the worker decoded it (BGR), or None when counting from cached detections.
        tracked: the tracker's output for the frame (pixels, with ``tracker_id``).
        crossings: what the frame let the counter decide.
    """

    seq: int
    capture_ms: int
    image: np.ndarray | None
    tracked: Detections
    crossings: list[CrossingEvent]
    detections: tuple = ()  # the frame's detections, all classes (the annotator blurs the persons among them)


@dataclass
class OfflineResult:
    """The crossings of a whole video and the run's figures."""

    crossings: list[CrossingEvent] = field(default_factory=list)
    frames: int = 0
    wall_s: float = 0.0
    start_ms: int = 0
    end_ms: int = 0
    model: str = ""
    reused: int = 0  # frames the activity gate passed on unchanged (no model call)


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


# -- the steps ------------------------------------------------------------------------------------
def worker_frames(video: Path, camera: Camera, rate: float, start_ms: int = 0, activity: ActivityRule | None = None) -> Iterator[WorkerFrame]:
    """The frames a worker decodes for this file: sampled at ``rate``, resized, JPEG round-tripped.

    ``activity`` (the ingester's rule, ``IngestSettings.activity_rule()``) marks unchanged frames
    as the ingester does; None or a disabled rule = every frame inferred. Read ahead in a thread
    (OpenCV releases the GIL), so decoding overlaps the model.
    """
    try:
        frames = sample_file(video, rate, start_ms)
    except SourceError as exc:
        raise VideoError(f"video {video}: {exc}") from None
    gate = ActivityGate(activity) if activity is not None and activity.enabled else None
    encoder = JpegEncoder(camera.max_width, camera.jpeg_quality, gate.rule.thumb_width if gate is not None else 0)
    with _Prefetch(_round_trip(frames, encoder, gate)) as decoded:
        yield from decoded


def detect_events(
    frames: Iterable[WorkerFrame | SampledFrame], detector: Detector, camera: str, intersection: str, session: str = OFFLINE_SESSION,
    batch_size: int = 8,
) -> Iterator[tuple[DetectionEvent, np.ndarray | None]]:  # fmt: skip
    """(event, image) per frame as the worker publishes it, then the end-of-session event (image None).

    Frames marked unchanged (``WorkerFrame.unchanged_since``) skip the model, as in the worker.
    """
    batch: list[tuple[FrameHeaders, np.ndarray]] = []
    last: FrameHeaders | None = None
    seq = 0
    for frame in frames:
        height, width = frame.image.shape[:2]
        unchanged = getattr(frame, "unchanged_since", None)
        batch.append((FrameHeaders(camera, intersection, session, seq, frame.capture_ms, width, height, unchanged_since=unchanged), frame.image))
        seq += 1
        if len(batch) >= batch_size:
            yield from _detect_batch(detector, batch)
            last = batch[-1][0]
            batch = []
    if batch:
        yield from _detect_batch(detector, batch)
        last = batch[-1][0]
    if last is None:
        return
    yield detection_event(end_of_session_headers(last), detector.model_name, (), None), None


def _detect_batch(detector: Detector, batch: list[tuple[FrameHeaders, np.ndarray]]) -> Iterator[tuple[DetectionEvent, np.ndarray]]:
    found = iter(detector.detect([image for headers, image in batch if headers.unchanged_since is None]))
    for headers, image in batch:
        detections = next(found) if headers.unchanged_since is None else ()
        yield detection_event(headers, detector.model_name, detections, None), image


def count_events(
    events: Iterable[tuple[DetectionEvent, np.ndarray | None]], site: Site, camera_id: str,
    on_frame: Callable[[FrameResult], None] | None = None,
) -> OfflineResult:  # fmt: skip
    """Feed the events to the aggregator's counter, in order, as the streaming app does."""
    counter = CameraCounter(site, camera_id)
    result = OfflineResult()
    images: dict[int, np.ndarray | None] = {}
    last: DetectionEvent | None = None

    def observe(event: DetectionEvent, tracked: Detections, crossings: list[CrossingEvent]) -> None:
        if on_frame is not None and not event.end_of_session:
            on_frame(FrameResult(event.seq, event.capture_ms, images.pop(event.seq, None), tracked, crossings, event.detections))

    for event, image in events:
        if not event.end_of_session:
            result.frames += 1
            result.reused += event.reused_from_seq is not None
            last = event
            if on_frame is not None:
                images[event.seq] = image
        result.crossings += counter.update(event, observe)
    if last is None:
        raise VideoError("no frame could be decoded")
    result.model = last.model
    result.end_ms = last.capture_ms
    return result


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
    model = Detector(detector)
    started = time.monotonic()
    frames = worker_frames(video, camera, rate, start_ms, activity)
    try:
        events = detect_events(frames, model, camera_id, intersection.id, batch_size=detector.batch_size)
        result = count_events(events, site, camera_id, on_frame)
    except VideoError as exc:
        raise VideoError(f"video {video}: {exc}") from None
    result.start_ms = start_ms
    result.model = model.model_name
    result.end_ms += round(1000 / min(rate, file_fps))  # the last frame stands for one frame period
    result.wall_s = time.monotonic() - started
    log.info(
        "video counted",
        extra={"camera": camera_id, "frames": result.frames, "crossings": len(result.crossings), "wall_s": round(result.wall_s, 2),
               "sampling_fps": rate, "model": result.model, "reused": result.reused},
    )  # fmt: skip
    return result


def _round_trip(frames: Iterator[SampledFrame], encoder: JpegEncoder, gate: ActivityGate | None = None) -> Iterator[WorkerFrame]:
    """The frames as a worker sees them: the ingester's resize + JPEG (and activity decision, in seq order), then the worker's decode."""
    try:
        for seq, frame in enumerate(frames):
            encoded = encoder.encode(frame.image)
            unchanged = None
            if gate is not None:  # as the ingester's publisher: on the resized image's thumbnail, before the JPEG
                unchanged = gate.unchanged_since(encoded.thumb, frame.capture_ms)
                if unchanged is None:
                    gate.sent(encoded.thumb, frame.capture_ms, seq)
            yield WorkerFrame(frame.frame_index, frame.capture_ms, decode_jpeg(encoded.jpeg), unchanged)
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

    def __init__(self, items: Iterator[WorkerFrame], depth: int = PREFETCH_FRAMES) -> None:
        self._items = items
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="count-prefetch", daemon=True)

    def __enter__(self) -> Iterator[WorkerFrame]:
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

    def _consume(self) -> Iterator[WorkerFrame]:
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

"""Which frames to keep: deterministic sampling by capture time, and the file frame iterator.

A camera sends 25-30 fps; the pipeline needs ``Camera.fps`` (e.g. 10). Time is cut into slots of
``1 / fps`` seconds from the session start; the first frame of each slot is kept::

    source  30 fps   |0 |1 |2 |3 |4 |5 |6 |7 |8 |9 |...   (frame index, 33.3 ms apart)
    slots   10 fps   |  slot 0  |  slot 1  |  slot 2  |
    kept             0          3          6          9  ...   every 3rd frame, exactly

For files the capture time of frame ``i`` is ``start_ms + i * 1000 / file_fps``, so the kept frames
depend only on ``(file, fps)``: :func:`sample_file` yields exactly the frames the streaming
ingester publishes for that file (``traffic count`` relies on this). For live cameras the capture
time is the wall clock at read, and the same slot rule keeps the long-run rate at ``fps``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest.sources import Source, SourceError, open_source

_EPS = 1e-6  # slot boundaries computed in floating point: 3 * 10 / 30 must be slot 1, not 0.999...


@dataclass(frozen=True, slots=True)
class SampledFrame:
    """One kept frame.

    Attributes:
        frame_index: index of the frame in the source since the session started (0-based).
        capture_ms: capture time, epoch milliseconds.
        image: BGR image, shape ``(height, width, 3)``, uint8.
    """

    frame_index: int
    capture_ms: int
    image: np.ndarray


class Sampler:
    """Keeps the first frame of each ``1 / fps`` time slot; stateful, one per session."""

    def __init__(self, fps: float) -> None:
        assert fps > 0, "sampling fps must be positive"
        self.fps = fps
        self._last_slot = -1

    def keep(self, elapsed_s: float) -> bool:
        """Whether the frame captured ``elapsed_s`` seconds after the session start is kept."""
        slot = math.floor(elapsed_s * self.fps + _EPS)
        if slot > self._last_slot:
            self._last_slot = slot
            return True
        return False

    def keep_index(self, frame_index: int, source_fps: float) -> bool:
        """Like :meth:`keep` for frame ``frame_index`` of a ``source_fps`` file (exact for integer ratios)."""
        slot = math.floor(frame_index * self.fps / source_fps + _EPS)
        if slot > self._last_slot:
            self._last_slot = slot
            return True
        return False


def file_capture_ms(start_ms: int, frame_index: int, file_fps: float) -> int:
    """Capture time of frame ``frame_index`` of a file played from ``start_ms`` (epoch ms)."""
    return start_ms + round(frame_index * 1000.0 / file_fps)


def sample_file(
    path: str | Path,
    fps: float,
    start_ms: int,
    *,
    on_read: Callable[[], None] | None = None,
    source: Source | None = None,
) -> Iterator[SampledFrame]:
    """Frames of a video file sampled at ``fps``, deterministically, as fast as decoding allows.

    The file is opened at once (so a missing file raises here, not at the first ``next``); the
    returned iterator releases it when exhausted or closed. Frames between kept ones are grabbed,
    not converted, which makes skipping cheap.

    Args:
        path: video file path or ``file://`` URL.
        fps: sampling rate (frames per second); at or above the file's own rate every frame is kept.
        start_ms: capture time given to frame 0 (epoch ms); frame ``i`` gets
            ``start_ms + round(i * 1000 / file_fps)``.
        on_read: called once per frame read from the file (for a ``frames_read`` metric).
        source: an already opened source of the file (the ingester passes its own); else opened here.

    Returns:
        An iterator of :class:`SampledFrame` in file order.

    Raises:
        SourceError: the file cannot be opened.
    """
    opened = source if source is not None else open_source(str(path))
    return _file_frames(opened, fps, start_ms, on_read)


def _file_frames(source: Source, fps: float, start_ms: int, on_read: Callable[[], None] | None) -> Iterator[SampledFrame]:
    sampler = Sampler(fps)
    index = 0
    try:
        while source.grab():
            if on_read is not None:
                on_read()
            if sampler.keep_index(index, source.fps):
                image = source.retrieve()
                if image is not None:  # an undecodable frame is skipped; the next ones keep their times
                    yield SampledFrame(index, file_capture_ms(start_ms, index, source.fps), image)
            index += 1
    finally:
        source.release()


def sample_live(
    source: Source,
    fps: float,
    *,
    on_read: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.time,
) -> Iterator[SampledFrame]:
    """Frames of a live camera sampled at ``fps`` by wall-clock capture time.

    Reads continuously (so the backend's buffer never holds stale frames) and converts only the
    kept frames. Ends when ``stop`` is set; raises SourceError when the camera stops delivering
    (closed connection or read timeout); always releases the source.
    """
    sampler = Sampler(fps)
    index = 0
    start_ms: int | None = None
    try:
        while stop is None or not stop.is_set():
            if not source.grab():
                raise SourceError("the camera stopped delivering frames")
            now_ms = int(clock() * 1000)
            if on_read is not None:
                on_read()
            if start_ms is None:
                start_ms = now_ms
            if sampler.keep((now_ms - start_ms) / 1000.0):
                image = source.retrieve()
                if image is not None:
                    yield SampledFrame(index, now_ms, image)
            index += 1
    finally:
        source.release()

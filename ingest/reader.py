"""A reader thread per camera session that always hands over the newest sampled frame.

Why: OpenCV backends buffer frames; a consumer that reads only when it is ready gets ever older
pictures (opencv#13145). The reader drains the camera continuously and keeps one slot: a new
frame replaces an untaken one, which is counted as skipped (``reader_skipped``). For files played
as fast as possible there is no "live" to keep up with, so the slot blocks instead
(``lossless``): every sampled frame is published, which keeps file runs deterministic.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

from ingest.sampler import SampledFrame
from ingest.sources import SourceError

log = logging.getLogger(__name__)


class LatestFrame:
    """A one-frame slot between the reader and the encoder; thread-safe."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: SampledFrame | None = None

    def put(self, item: SampledFrame, block: bool = False, stop: threading.Event | None = None) -> bool:
        """Store ``item``; return True when it replaced a frame nobody took (a skipped frame).

        With ``block`` it waits until the slot is free instead (or until ``stop`` is set, then
        the item is discarded and False returned).
        """
        with self._cond:
            if block:
                while self._item is not None:
                    if stop is not None and stop.is_set():
                        return False
                    self._cond.wait(0.05)
            replaced = self._item is not None
            self._item = item
            self._cond.notify_all()
            return replaced

    def take(self, timeout_s: float) -> SampledFrame | None:
        """The frame in the slot, waiting up to ``timeout_s``; None if there was none."""
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout_s)
            item, self._item = self._item, None
            if item is not None:
                self._cond.notify_all()
            return item

    def empty(self) -> bool:
        """True when no frame waits in the slot."""
        with self._cond:
            return self._item is None


class FrameReader(threading.Thread):
    """Drains one session's frame iterator into a :class:`LatestFrame` slot.

    Args:
        frames: sampled frames of one session (from :func:`ingest.sampler.sample_file` or
            :func:`ingest.sampler.sample_live`); closed (and so released) by this thread.
        slot: where the newest frame is kept.
        lossless: block on a full slot instead of replacing (files played as fast as possible).
        pace_ms: ``(start_ms, start_monotonic_s)`` to play a file in real time: a frame is handed
            over when the wall clock reaches its capture time. None = no pacing.
        on_sampled: called per frame taken from the iterator (metric).
        on_skipped: called per frame replaced before anyone took it (metric).
        stop: set to make the thread end at the next frame.
    """

    def __init__(
        self,
        frames: Iterator[SampledFrame],
        slot: LatestFrame,
        *,
        lossless: bool,
        pace_ms: tuple[int, float] | None,
        on_sampled: Callable[[], None],
        on_skipped: Callable[[], None],
        stop: threading.Event,
        name: str = "reader",
    ) -> None:
        super().__init__(name=name, daemon=True)
        self._frames = frames
        self._slot = slot
        self._lossless = lossless
        self._pace = pace_ms
        self._on_sampled = on_sampled
        self._on_skipped = on_skipped
        self._stop_event = stop
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            for frame in self._frames:
                if self._stop_event.is_set():
                    break
                self._on_sampled()
                if self._pace is not None:
                    start_ms, start_mono = self._pace
                    delay = start_mono + (frame.capture_ms - start_ms) / 1000.0 - time.monotonic()
                    if delay > 0 and self._stop_event.wait(delay):
                        break
                if self._slot.put(frame, block=self._lossless, stop=self._stop_event):
                    self._on_skipped()
        except SourceError as exc:
            self.error = exc
        except Exception as exc:  # noqa: BLE001 - a backend error must end this session, not the process
            log.exception("camera reader failed", extra={"thread": self.name})
            self.error = exc
        finally:
            close = getattr(self._frames, "close", None)
            if close is not None:
                close()  # releases the capture in the thread that used it

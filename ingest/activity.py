"""Activity gating: is a sampled frame (nearly) the same picture as the last one sent whole?

Why: at night or on an empty road most frames show nothing new, and running the model on them
is most of the pipeline's cost. The ingester is the single reader of a camera and hands frames to
Kafka in ``seq`` order, so it can decide per frame, deterministically, whether the frame differs
from the camera's *reference* frame (the last one of the session sent with its JPEG). An
unchanged frame goes out without a JPEG, with header ``unchanged-since: <reference seq>``;
workers skip it and the aggregator, which reads a camera's events in seq order, reuses the
reference's detections. Nothing depends on which worker handles which frame.

The test is cheap: a grey thumbnail ``thumb_width`` pixels wide (``cv2.INTER_AREA``, i.e. the
mean of each block, which also averages sensor and compression noise away), then the share of
thumbnail pixels that moved by more than ``pixel_delta`` grey levels against the reference's
thumbnail. Comparing with the reference, not the previous frame, means slow change accumulates
until it counts; and ``max_reuse_s`` forces a frame through the model at least that often.

``traffic count`` runs the same :class:`ActivityGate` over the same frames in the same order, so
its counts stay those of the streaming pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class ActivityRule:
    """When a frame counts as unchanged.

    Attributes:
        enabled: False = every frame is sent whole (the pipeline as before).
        thumb_width: thumbnail width in pixels (height keeps the aspect ratio).
        pixel_delta: grey levels (0-255) a thumbnail pixel must move to count as changed.
        changed_fraction: at most this share of thumbnail pixels may change for "unchanged".
        max_reuse_ms: a frame at least this much capture time after the reference is always sent whole.
    """

    enabled: bool = True
    thumb_width: int = 80
    pixel_delta: int = 12
    changed_fraction: float = 0.001
    max_reuse_ms: int = 3000


def thumbnail(image: np.ndarray, width: int) -> np.ndarray:
    """A grey ``int16`` thumbnail of a BGR ``(h, w, 3)`` uint8 image, ``width`` pixels wide (about 0.1 ms for 640x480)."""
    height = max(1, round(image.shape[0] * width / image.shape[1]))
    small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.int16)


def changed_share(a: np.ndarray, b: np.ndarray, pixel_delta: int) -> float:
    """Share of pixels of two same-size thumbnails that differ by more than ``pixel_delta``."""
    return float(np.count_nonzero(np.abs(a - b) > pixel_delta)) / a.size


class ActivityGate:
    """The per-session decision, in seq order. Not thread-safe: one per camera, used by one thread.

    Use: ``reference = gate.unchanged_since(thumb, capture_ms)``; if it is None, send the frame
    whole and call ``gate.sent(thumb, capture_ms, seq)`` once it was handed over; else send it
    as unchanged since ``reference``. ``reset()`` when a new session starts.
    """

    def __init__(self, rule: ActivityRule) -> None:
        self.rule = rule
        self._ref: tuple[np.ndarray, int, int] | None = None  # (thumbnail, capture ms, seq)

    def reset(self) -> None:
        """Forget the reference (a new session: seqs restart, nothing may refer across)."""
        self._ref = None

    def unchanged_since(self, thumb: np.ndarray | None, capture_ms: int) -> int | None:
        """The reference's seq when the frame is unchanged since it, else None (send it whole)."""
        if not self.rule.enabled or thumb is None or self._ref is None:
            return None
        ref_thumb, ref_ms, ref_seq = self._ref
        if capture_ms - ref_ms >= self.rule.max_reuse_ms or capture_ms < ref_ms or ref_thumb.shape != thumb.shape:
            return None
        if changed_share(ref_thumb, thumb, self.rule.pixel_delta) > self.rule.changed_fraction:
            return None
        return ref_seq

    def sent(self, thumb: np.ndarray | None, capture_ms: int, seq: int) -> None:
        """The frame ``seq`` went out whole: it is the reference from now on."""
        self._ref = (thumb, capture_ms, seq) if thumb is not None else None

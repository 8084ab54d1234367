"""Multi-object tracking of one camera's detections with an Ultralytics tracker, used standalone.

The worker is stateless, so tracking happens here, one tracker per camera and stream session, fed
with the camera's events in ``seq`` order. :meth:`CameraTracker.update` takes the frame's
:class:`traffic.detections.Detections` (pixels) and returns the tracked ones, with ``tracker_id``
and the tracker's filtered boxes, in the same type (supervision's ``update_with_detections``).

Which tracker and its thresholds come from the site file (``counting.tracker``), so the streaming
aggregator and ``traffic count`` track alike. ``buffer`` enlarges both boxes by that fraction of
their size on every side before the IoU of the association (the "buffered IoU" of C-BIoU): at 5-8
frames per second a scooter moves more than its own length between frames, its predicted and
detected boxes stop overlapping, and plain IoU association gives up and starts a new id.
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace
from typing import Any

import numpy as np

from traffic.detections import Detections, box_iou
from traffic.site import TrackerConfig

# Fields every Ultralytics 8.4 tracker reads; per-tracker extras come from its own yaml defaults below.
_EXTRA_DEFAULTS: dict[str, dict[str, Any]] = {
    "bytetrack": {},
    "ocsort": {"delta_t": 3, "inertia": 0.2, "use_byte": True},
    "botsort": {"gmc_method": "none", "proximity_thresh": 0.5, "appearance_thresh": 0.8, "with_reid": False, "model": "auto"},
}


class _Boxes:
    """The minimal numpy view Ultralytics trackers read: ``conf``, ``cls``, ``xywh``, boolean indexing."""

    def __init__(self, conf: np.ndarray, cls: np.ndarray, xywh: np.ndarray) -> None:
        self.conf, self.cls, self.xywh = conf, cls, xywh

    def __len__(self) -> int:
        return len(self.conf)

    def __getitem__(self, index: np.ndarray) -> "_Boxes":
        return _Boxes(self.conf[index], self.cls[index], self.xywh[index])


def _tracker_class(kind: str) -> type:
    from ultralytics.trackers.bot_sort import BOTSORT
    from ultralytics.trackers.byte_tracker import BYTETracker
    from ultralytics.trackers.oc_sort import OCSORT

    return {"bytetrack": BYTETracker, "ocsort": OCSORT, "botsort": BOTSORT}[kind]


def _buffered_dists(tracker: Any, buffer: float, tracks: list, detections: list) -> np.ndarray:
    """The tracker's association cost with buffered IoU (see the module docstring).

    A module-level function bound with functools.partial (not a subclass made at run time), so the
    tracker pickles with the camera's checkpoint.
    """
    from ultralytics.trackers.oc_sort import OCSORT
    from ultralytics.trackers.utils import matching

    if not tracks or not detections:
        return np.zeros((len(tracks), len(detections)), dtype=np.float32)
    a = _expand(np.array([t.xyxy for t in tracks], dtype=np.float64), buffer)
    b = _expand(np.array([d.xyxy for d in detections], dtype=np.float64), buffer)
    iou_dists = 1.0 - box_iou(a, b)
    dists = matching.fuse_score(iou_dists, detections) if tracker.args.fuse_score else iou_dists
    if isinstance(tracker, OCSORT):
        dists = dists + tracker.inertia * tracker._velocity_direction_cost(tracks, detections)
    return dists


def _expand(xyxy: np.ndarray, buffer: float) -> np.ndarray:
    w = (xyxy[:, 2] - xyxy[:, 0]) * buffer
    h = (xyxy[:, 3] - xyxy[:, 1]) * buffer
    return np.column_stack((xyxy[:, 0] - w, xyxy[:, 1] - h, xyxy[:, 2] + w, xyxy[:, 3] + h))


class CameraTracker:
    """One camera's tracker for one stream session; picklable (the aggregator checkpoints it).

    Args:
        config: tracker type and thresholds (the site file's ``counting.tracker``).
        fps: the camera's sampling rate (frames per second), to turn ``lost_timeout_s`` into frames.
        lost_timeout_s: how long a lost track may be re-found (seconds of stream time).
    """

    def __init__(self, config: TrackerConfig, fps: float = 10.0, lost_timeout_s: float = 2.0) -> None:
        args = dict(
            _EXTRA_DEFAULTS[config.type],
            tracker_type=config.type,
            track_high_thresh=config.high_thresh,
            track_low_thresh=config.low_thresh,
            new_track_thresh=config.new_track_thresh,
            match_thresh=config.match_thresh,
            fuse_score=True,
            track_buffer=max(1, math.ceil(lost_timeout_s * fps)),
        )
        self._tracker = _tracker_class(config.type)(SimpleNamespace(**args))
        if config.buffer > 0:
            self._tracker.get_dists = functools.partial(_buffered_dists, self._tracker, config.buffer)

    def update(self, detections: Detections) -> Detections:
        """Feed one frame's detections (in seq order); return the tracks updated in this frame.

        The result carries the tracker's boxes (pixels), the matched detection's class and score,
        and ``tracker_id`` (unique per camera and session: 1, 2, ...).
        """
        rows = self._tracker.update(_Boxes(detections.confidence, detections.class_id.astype(np.float64), detections.xywh()))
        # Removed tracks are only kept by Ultralytics for bookkeeping (up to 1000): drop them so the
        # camera's state stays small; lost tracks (which can still be re-found) are kept.
        self._tracker.removed_stracks = []
        if not len(rows):
            return Detections.empty().with_tracker_id(np.zeros(0, dtype=np.int64))
        rows = np.asarray(rows, dtype=np.float64)
        idx = rows[:, 7].astype(np.int64)
        return Detections(
            rows[:, 0:4].copy(), rows[:, 5].copy(), detections.class_id[idx], detections.class_name[idx], rows[:, 4].astype(np.int64)
        )

    def end_all(self) -> None:
        """Forget every live and lost track but keep the id counter (ids stay unique in the session)."""
        self._tracker.tracked_stracks = []
        self._tracker.lost_stracks = []
        self._tracker.removed_stracks = []

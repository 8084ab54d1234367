"""Multi-object tracking of one camera's detections with Ultralytics' ByteTrack, used standalone.

The worker is stateless, so tracking happens here, one tracker per camera and stream session, fed
with the camera's events in ``seq`` order. Detections are normalized on the wire; the tracker works
in pixels (its Kalman filter and IoU gating are tuned for that) and the boxes are normalized back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from traffic.wire import DetectionEvent

# The fields of ultralytics/cfg/trackers/bytetrack.yaml (8.4.x defaults); track_buffer is derived
# from the counting timeout and the camera's fps (see CameraTracker).
BYTETRACK_DEFAULTS = {
    "tracker_type": "bytetrack",
    "track_high_thresh": 0.25,
    "track_low_thresh": 0.1,
    "new_track_thresh": 0.25,
    "track_buffer": 30,
    "match_thresh": 0.8,
    "fuse_score": True,
}


@dataclass(frozen=True, slots=True)
class TrackedObject:
    """One tracked object in one frame.

    Attributes:
        track_id: id unique per camera and stream session (1, 2, ...).
        label: detector label of the matched detection in this frame.
        confidence: detector score of that detection.
        box: ``(x1, y1, x2, y2)`` normalized to [0, 1] (the tracker's filtered box).
    """

    track_id: int
    label: str
    confidence: float
    box: tuple[float, float, float, float]


class _Detections:
    """The minimal numpy view BYTETracker.update() reads: ``conf``, ``cls``, ``xywh``, boolean indexing."""

    def __init__(self, conf: np.ndarray, cls: np.ndarray, xywh: np.ndarray) -> None:
        self.conf, self.cls, self.xywh = conf, cls, xywh

    def __len__(self) -> int:
        return len(self.conf)

    def __getitem__(self, index: np.ndarray) -> "_Detections":
        return _Detections(self.conf[index], self.cls[index], self.xywh[index])


class CameraTracker:
    """ByteTrack for one camera and session; picklable (its state is snapshotted by the aggregator).

    Args:
        fps: the camera's sampling rate (frames per second), to turn ``lost_timeout_s`` into frames.
        lost_timeout_s: how long a lost track may be re-found (seconds of stream time).
        classes: labels to track; other detections (e.g. persons when only vehicles are counted)
            are dropped before tracking so they cannot steal a vehicle's id.
    """

    def __init__(self, fps: float = 10.0, lost_timeout_s: float = 2.0, classes: tuple[str, ...] | None = None) -> None:
        from ultralytics.trackers.byte_tracker import BYTETracker

        args = dict(BYTETRACK_DEFAULTS, track_buffer=max(1, math.ceil(lost_timeout_s * fps)))
        self._tracker = BYTETracker(SimpleNamespace(**args))
        self._classes = frozenset(classes) if classes is not None else None

    def update(self, event: DetectionEvent) -> list[TrackedObject]:
        """Feed one frame's detections (in seq order); return the tracks updated in this frame."""
        keep = [d for d in event.detections if self._classes is None or d.label in self._classes]
        w, h = float(event.width), float(event.height)
        if keep:
            boxes = np.array([d.box for d in keep], dtype=np.float64) * np.array([w, h, w, h])
            xywh = np.column_stack(
                ((boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2, boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
            )
            conf = np.array([d.confidence for d in keep], dtype=np.float64)
            cls = np.array([d.class_id for d in keep], dtype=np.float64)
        else:
            xywh, conf, cls = np.zeros((0, 4)), np.zeros(0), np.zeros(0)
        rows = self._tracker.update(_Detections(conf, cls, xywh))
        # removed tracks are only kept by ultralytics for bookkeeping (up to 1000): drop them so the
        # per-camera snapshot stays small; lost tracks (which can still be re-found) are kept.
        self._tracker.removed_stracks = []
        out: list[TrackedObject] = []
        for x1, y1, x2, y2, track_id, score, _cls, idx in rows.tolist() if len(rows) else []:
            det = keep[int(idx)]
            box = (
                min(max(x1 / w, 0.0), 1.0),
                min(max(y1 / h, 0.0), 1.0),
                min(max(x2 / w, 0.0), 1.0),
                min(max(y2 / h, 0.0), 1.0),
            )
            out.append(TrackedObject(int(track_id), det.label, float(score), box))
        return out

    def end_all(self) -> None:
        """Forget every live and lost track but keep the id counter (ids stay unique in the session)."""
        self._tracker.tracked_stracks = []
        self._tracker.lost_stracks = []
        self._tracker.removed_stracks = []

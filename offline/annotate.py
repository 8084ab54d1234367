"""Draw what the counter saw on the frames, for a person to check counts by eye.

Drawing only: boxes with track ids, count lines with their ``in`` side, approach zones, and the
running counts. Nothing here decides or changes a count (supervision's split: the counter counts,
the annotator draws).

Persons the detector found are blurred first (:mod:`traffic.anonymize`), unless ``blur_persons``
is off for internal debugging: the video is a picture of the public (docs/privacy.md).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from offline.count import FrameResult
from traffic.anonymize import blur_regions, person_boxes
from traffic.site import Camera

_ZONE = (0, 0, 255)
_LINE = (255, 128, 0)
_BOX = (0, 220, 0)


def draw_geometry(image: np.ndarray, camera: Camera, *, line_width: int = 2, arrow_px: int = 15, font_scale: float = 0.45) -> None:
    """Draw the camera's zones (red, with their ids) and count lines (blue, an arrow to the ``in`` side) on ``image``, in place.

    The annotated video and the labelling sheets (offline/audit.py) draw the geometry the same way.
    """
    h, w = image.shape[:2]
    for approach in camera.approaches:
        pts = np.array([[x * w, y * h] for x, y in approach.polygon], np.int32)
        cv2.polylines(image, [pts], True, _ZONE, 1)
        cv2.putText(image, approach.id, tuple(int(v) for v in pts.mean(axis=0)), cv2.FONT_HERSHEY_SIMPLEX, font_scale, _ZONE, 1)
    for line in camera.lines:
        (ax, ay), (bx, by) = line.points
        a, b = (int(ax * w), int(ay * h)), (int(bx * w), int(by * h))
        cv2.line(image, a, b, _LINE, line_width)
        mid = ((a[0] + b[0]) // 2, (a[1] + b[1]) // 2)
        normal = np.array([-(b[1] - a[1]), b[0] - a[0]], float)
        normal = normal / (np.linalg.norm(normal) or 1) * arrow_px
        cv2.arrowedLine(image, mid, (int(mid[0] + normal[0]), int(mid[1] + normal[1])), _LINE, 1)  # the "in" side
        cv2.putText(image, line.id, a, cv2.FONT_HERSHEY_SIMPLEX, font_scale, _LINE, 1)


class VideoAnnotator:
    """Writes an annotated MP4 (``mp4v``) at the sampling rate; ``close()`` when done."""

    def __init__(self, path: Path, camera: Camera, fps: float, blur_persons: bool = True) -> None:
        self.path = path
        self.camera = camera
        self.fps = fps
        self.blur_persons = blur_persons
        self.writer: cv2.VideoWriter | None = None
        self.lines: Counter[str] = Counter()
        self.movements: Counter[str] = Counter()

    def __call__(self, frame: FrameResult) -> None:
        """Add one processed frame (in order); the running counts include its crossings."""
        for c in frame.crossings:
            if c.kind == "line":
                self.lines[f"{c.line} {c.direction}"] += 1
            else:
                self.movements[f"{c.approach}>{c.exit} {c.movement}"] += 1
        image = self.draw(frame)
        if self.writer is None:
            height, width = image.shape[:2]
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (width, height))
        self.writer.write(image)

    def draw(self, frame: FrameResult) -> np.ndarray:
        """A copy of the frame, persons blurred, with zones, lines (arrow to the ``in`` side), tracked boxes and counts drawn on it."""
        assert frame.image is not None, "annotation needs the frames (not cached detections)"
        image = frame.image.copy()
        if self.blur_persons:
            blur_regions(image, person_boxes(frame.detections), inplace=True)  # the wire's normalized boxes
        draw_geometry(image, self.camera)
        tracked = frame.tracked
        ids = tracked.tracker_id if tracked.tracker_id is not None else [0] * len(tracked)
        for (x1, y1, x2, y2), track_id, label in zip(tracked.xyxy, ids, tracked.class_name):
            cv2.rectangle(image, (int(x1), int(y1)), (int(x2), int(y2)), _BOX, 1)
            cv2.putText(image, f"#{track_id} {label}", (int(x1), max(10, int(y1) - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, _BOX, 1)
        rows = [f"{k}: {v}" for k, v in sorted(self.lines.items())] + [f"{k}: {v}" for k, v in sorted(self.movements.items())]
        for i, text in enumerate(rows[:14]):
            cv2.putText(image, text, (6, 16 + 15 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1)
        return image

    def close(self) -> None:
        """Finish the file; idempotent."""
        if self.writer is not None:
            self.writer.release()
            self.writer = None

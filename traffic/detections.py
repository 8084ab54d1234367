"""One detections type for the whole data path: detector -> tracker -> counter -> annotator.

Arrays of one frame's objects, the way supervision's ``Detections`` carries them, in **pixels**
of the frame they were found in. The wire (``traffic.wire.Detection``) carries boxes normalized by
the frame size; :meth:`Detections.from_event` and :meth:`Detections.to_wire` are the one place
where one becomes the other. The tracker fills ``tracker_id`` and returns the same type, which is
what the counter counts and the annotator draws.

    xyxy        (n, 4) float64   x1, y1, x2, y2 in pixels (x right, y down)
    confidence  (n,)   float64   detector score in [0, 1]
    class_id    (n,)   int64     the model's class id
    class_name  (n,)   str       the model's class name (``car``, ``motorcycle`` ...)
    tracker_id  (n,)   int64     track id, or None before tracking
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from traffic.wire import Detection, DetectionEvent


@dataclass(frozen=True, eq=False)
class Detections:
    """The objects of one frame (see the module docstring for the arrays and their units)."""

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    class_name: np.ndarray
    tracker_id: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.xyxy)
        assert self.xyxy.shape == (n, 4), f"xyxy must be (n, 4), got {self.xyxy.shape}"
        for name in ("confidence", "class_id", "class_name"):
            assert getattr(self, name).shape == (n,), f"{name} must be ({n},), got {getattr(self, name).shape}"
        assert self.tracker_id is None or self.tracker_id.shape == (n,), f"tracker_id must be ({n},)"

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def empty(cls) -> "Detections":
        """No objects."""
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype="<U32"))

    @classmethod
    def from_arrays(
        cls, xyxy: Iterable[Iterable[float]], confidence: Iterable[float], class_id: Iterable[int], class_name: Iterable[str],
        tracker_id: Iterable[int] | None = None,
    ) -> "Detections":  # fmt: skip
        """Build from any sequences (lists, arrays); empty inputs give :meth:`empty`."""
        boxes = np.asarray(list(xyxy), dtype=np.float64).reshape(-1, 4)
        if not len(boxes):
            return cls.empty()
        return cls(
            boxes,
            np.asarray(list(confidence), dtype=np.float64),
            np.asarray(list(class_id), dtype=np.int64),
            np.asarray(list(class_name), dtype="<U32"),
            None if tracker_id is None else np.asarray(list(tracker_id), dtype=np.int64),
        )

    @classmethod
    def from_wire(cls, detections: Iterable[Detection], width: int, height: int) -> "Detections":
        """Pixels from the wire's normalized boxes (the one conversion in this direction)."""
        items = list(detections)
        scale = np.array([width, height, width, height], dtype=np.float64)
        return cls.from_arrays(
            (np.asarray(d.box, dtype=np.float64) * scale for d in items),
            (d.confidence for d in items), (d.class_id for d in items), (d.label for d in items),
        )  # fmt: skip

    @classmethod
    def from_event(cls, event: DetectionEvent) -> "Detections":
        """The detections of one event, in pixels of its frame."""
        return cls.from_wire(event.detections, event.width, event.height)

    def to_wire(self, width: int, height: int) -> tuple[Detection, ...]:
        """Normalized wire detections (the one conversion in this direction), rounded as on the wire."""
        scale = np.array([width, height, width, height], dtype=np.float64)
        boxes = np.clip(self.xyxy / scale, 0.0, 1.0)
        return tuple(
            Detection(class_id=int(c), label=str(n), confidence=float(round(float(s), 4)),
                      box=tuple(float(round(float(v), 5)) for v in box))  # type: ignore[arg-type]
            for box, c, n, s in zip(boxes, self.class_id, self.class_name, self.confidence)
        )  # fmt: skip

    # -- views ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: np.ndarray | slice | list[int]) -> "Detections":
        """A subset (boolean mask or indices), same type."""
        return Detections(
            self.xyxy[index], self.confidence[index], self.class_id[index], self.class_name[index],
            None if self.tracker_id is None else self.tracker_id[index],
        )  # fmt: skip

    def with_tracker_id(self, tracker_id: np.ndarray) -> "Detections":
        """The same objects with track ids."""
        return Detections(self.xyxy, self.confidence, self.class_id, self.class_name, np.asarray(tracker_id, dtype=np.int64))

    def bottom_centres(self) -> np.ndarray:
        """(n, 2) ground points in pixels: the middle of each box's bottom edge (where wheels touch the road)."""
        return np.column_stack(((self.xyxy[:, 0] + self.xyxy[:, 2]) / 2.0, self.xyxy[:, 3]))

    def xywh(self) -> np.ndarray:
        """(n, 4) centre x, centre y, width, height in pixels."""
        w = self.xyxy[:, 2] - self.xyxy[:, 0]
        h = self.xyxy[:, 3] - self.xyxy[:, 1]
        return np.column_stack((self.xyxy[:, 0] + w / 2.0, self.xyxy[:, 1] + h / 2.0, w, h))

    def area(self) -> np.ndarray:
        """(n,) box areas in square pixels."""
        return (self.xyxy[:, 2] - self.xyxy[:, 0]).clip(0) * (self.xyxy[:, 3] - self.xyxy[:, 1]).clip(0)


def _intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) areas of the intersections of xyxy boxes (0 where they do not meet)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    return (x2 - x1).clip(0) * (y2 - y1).clip(0)


def _areas(boxes: np.ndarray) -> np.ndarray:
    return ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clip(0)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection over union of xyxy boxes."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    inter = _intersections(a, b)
    union = _areas(a)[:, None] + _areas(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def box_ioa(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) intersection over the area of ``a``: how much of each ``a`` box lies in each ``b`` box."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    area_a = _areas(a)[:, None]
    return np.where(area_a > 0, _intersections(a, b) / np.where(area_a > 0, area_a, 1.0), 0.0)

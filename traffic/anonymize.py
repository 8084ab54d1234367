"""Blur the people in pictures the product writes for a person to look at.

Annotated videos (``traffic count --annotate``), audit crops and contact sheets show the public.
They blur every person the detector found, by default (docs/privacy.md); internal debugging may
turn it off (``--no-blur``). Two calls::

    boxes = person_boxes(event.detections)      # normalized [x1, y1, x2, y2] of the persons
    image = blur_regions(image, boxes)          # a copy, each box (plus a margin) unrecognizable

Unrecognizable, not just soft: each region is reduced to a few cells across its short side
(a mosaic: a face of any size is gone), scaled back bilinearly and smoothed, so the result has
no edges of its own that could draw attention or leak detail.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import cv2
import numpy as np

PERSON_LABELS: tuple[str, ...] = ("person",)
"""Detector labels of people (COCO); riders of bicycles and motorcycles are detected as persons too."""

Box = Sequence[float]


def person_boxes(detections: Iterable[Any], labels: Sequence[str] = PERSON_LABELS) -> list[tuple[float, float, float, float]]:
    """Normalized ``(x1, y1, x2, y2)`` of the detections labelled as a person.

    Accepts anything with ``label`` and a normalized ``box`` (``traffic.wire.Detection``, tracked
    objects) or mappings with those keys.
    """
    wanted = set(labels)
    found = []
    for d in detections:
        label = d.get("label") if isinstance(d, dict) else getattr(d, "label", None)
        box = d.get("box") if isinstance(d, dict) else getattr(d, "box", None)
        if label in wanted and box is not None:
            x1, y1, x2, y2 = (float(v) for v in box)
            found.append((x1, y1, x2, y2))
    return found


def blur_regions(
    image: np.ndarray, boxes: Iterable[Box], *, normalized: bool = True, margin: float = 0.15, cells: int = 6, inplace: bool = False
) -> np.ndarray:
    """``image`` (H x W [x C], uint8) with every box made unrecognizable; a copy unless ``inplace``.

    Args:
        boxes: ``(x1, y1, x2, y2)``, normalized to [0, 1] (``normalized``) or in pixels.
        margin: each box grows by this fraction of its size on every side (hair, shoulders, a
            box that is a little off).
        cells: mosaic cells across the region's short side; fewer is coarser.
    """
    out = image if inplace else image.copy()
    h, w = out.shape[:2]
    sx, sy = (w, h) if normalized else (1.0, 1.0)
    for box in boxes:
        x1, y1, x2, y2 = (float(v) for v in box)
        x1, x2 = sorted((x1 * sx, x2 * sx))
        y1, y2 = sorted((y1 * sy, y2 * sy))
        mx, my = (x2 - x1) * margin, (y2 - y1) * margin
        left, top = max(0, int(np.floor(x1 - mx))), max(0, int(np.floor(y1 - my)))
        right, bottom = min(w, int(np.ceil(x2 + mx))), min(h, int(np.ceil(y2 + my)))
        if right - left < 2 or bottom - top < 2:
            continue
        region = out[top:bottom, left:right]
        rh, rw = region.shape[:2]
        scale = max(1, cells) / min(rh, rw)
        small = cv2.resize(region, (max(1, round(rw * scale)), max(1, round(rh * scale))), interpolation=cv2.INTER_AREA)
        smooth = cv2.resize(small, (rw, rh), interpolation=cv2.INTER_LINEAR)
        k = max(3, (min(rh, rw) // 4) | 1)  # odd kernel, a quarter of the region: no mosaic edges left
        out[top:bottom, left:right] = cv2.GaussianBlur(smooth, (k, k), 0)
    return out

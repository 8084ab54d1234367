"""Persons are blurred in the pictures the product writes: inside their box the pixels change and are smooth; outside nothing changes.

The annotator's use of it is tested in tests/unit/offline/test_annotate.py.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from traffic.anonymize import blur_regions, person_boxes
from traffic.wire import Detection


def _textured(h: int = 480, w: int = 640, seed: int = 7) -> np.ndarray:
    """A busy picture (noise + stripes): every pixel differs from its neighbours, as a face or a shirt pattern does."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image[::4] = 255
    return image


def _roughness(image: np.ndarray) -> float:
    """Median absolute Laplacian: high for detail, near 0 for a smooth patch."""
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    return float(np.median(np.abs(cv2.Laplacian(gray.astype(np.float32), cv2.CV_32F))))


def _pixels(box: tuple[float, float, float, float], h: int = 480, w: int = 640) -> tuple[slice, slice]:
    x1, y1, x2, y2 = box
    return slice(int(y1 * h), int(y2 * h)), slice(int(x1 * w), int(x2 * w))


@pytest.mark.parametrize("box", [(0.40, 0.30, 0.50, 0.70), (0.0, 0.0, 0.05, 0.12), (0.9, 0.8, 1.0, 1.0)])  # middle, corners, tiny
def test_blur_regions_smooths_the_box_and_leaves_the_rest(box: tuple[float, float, float, float]) -> None:
    original = _textured()
    blurred = blur_regions(original, [box])
    rows, cols = _pixels(box)
    inside_before, inside_after = original[rows, cols], blurred[rows, cols]
    assert np.mean(np.any(inside_after != inside_before, axis=-1)) > 0.95, "almost every pixel in the box changed"
    assert _roughness(inside_after) < 0.1 * _roughness(inside_before), "the box is smooth: no detail left"
    mask = np.zeros(original.shape[:2], bool)
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * 0.15 * 640 + 1, (y2 - y1) * 0.15 * 480 + 1
    mask[max(0, int(y1 * 480 - my)): int(y2 * 480 + my) + 1, max(0, int(x1 * 640 - mx)): int(x2 * 640 + mx) + 1] = True
    assert np.array_equal(blurred[~mask], original[~mask]), "pixels outside the box (and its margin) are untouched"
    assert np.array_equal(original, _textured()), "the input is not modified"


def test_person_boxes_picks_persons_only() -> None:
    dets = [
        Detection(class_id=0, label="person", confidence=0.9, box=(0.1, 0.2, 0.3, 0.4)),
        Detection(class_id=2, label="car", confidence=0.9, box=(0.5, 0.5, 0.9, 0.9)),
        {"label": "person", "box": [0.6, 0.1, 0.7, 0.3]},
    ]
    assert person_boxes(dets) == [(0.1, 0.2, 0.3, 0.4), (0.6, 0.1, 0.7, 0.3)]
    assert blur_regions(_textured(), []).tobytes() == _textured().tobytes()

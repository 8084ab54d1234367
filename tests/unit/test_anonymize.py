"""Persons are blurred in the pictures the product writes: inside their box the pixels change and are smooth; outside nothing changes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from offline.annotate import VideoAnnotator
from offline.count import FrameResult
from traffic.detections import Detections
from traffic.anonymize import blur_regions, person_boxes
from traffic.site import load_site
from traffic.wire import Detection

REPO = Path(__file__).resolve().parents[2]


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


def _frame(image: np.ndarray, detections: tuple) -> FrameResult:
    return FrameResult(seq=0, capture_ms=0, image=image, tracked=Detections.empty(), crossings=[], detections=detections)


def test_the_annotator_blurs_a_persons_box_by_default_and_not_when_asked(tmp_path: Path) -> None:
    _, camera = load_site(REPO / "deploy" / "sites" / "intersection-demo.yaml").camera("cam-demo")
    box = (0.42, 0.35, 0.52, 0.75)
    person = Detection(class_id=0, label="person", confidence=0.8, box=box)
    car = Detection(class_id=2, label="car", confidence=0.8, box=(0.05, 0.6, 0.25, 0.8))
    image = _textured()
    blurred = VideoAnnotator(tmp_path / "a.mp4", camera, 10).draw(_frame(image, (person, car)))
    plain = VideoAnnotator(tmp_path / "b.mp4", camera, 10, blur_persons=False).draw(_frame(image, (person, car)))
    rows, cols = _pixels(box)
    changed = np.any(blurred[rows, cols] != image[rows, cols], axis=-1)
    assert changed.mean() > 0.95
    assert _roughness(blurred[rows, cols]) < 0.1 * _roughness(image[rows, cols])
    assert _roughness(plain[rows, cols]) > 0.5 * _roughness(image[rows, cols]), "--no-blur keeps the person as it is"
    car_rows, car_cols = _pixels((0.05, 0.6, 0.25, 0.8))
    assert _roughness(blurred[car_rows, car_cols]) > 0.5 * _roughness(image[car_rows, car_cols]), "vehicles are not blurred"

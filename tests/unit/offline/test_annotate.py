"""The annotated video blurs persons by default (``--no-blur`` keeps them) and never blurs vehicles."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from offline.annotate import VideoAnnotator
from offline.count import FrameResult
from traffic.detections import Detections
from traffic.site import load_site
from traffic.wire import Detection

from tests.unit.traffic.test_anonymize import _pixels, _roughness, _textured

REPO = Path(__file__).resolve().parents[3]


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

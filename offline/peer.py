"""The peer the product must beat: Ultralytics' ``solutions.ObjectCounter``, run as a user would.

Same model, same frames (the frames our pipeline samples and JPEG round-trips), same count lines,
one ObjectCounter per line (it counts one region). Its own settings otherwise: confidence 0.15
(what a user tuning it for traffic picks; its default is 0.25), its default tracker
(``tracktrack.yaml`` in Ultralytics 8.4), box centres, no hysteresis, one count per track id.

Its IN/OUT names follow the picture (IN = rightwards for a steep line, downwards for a flat one),
not our line's direction labels, so each counted crossing is recorded with the motion that
crossed, and that motion is named with our line's label (the side it moved to).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from aggregator.geometry import LineGeometry
from traffic.site import Camera

log = logging.getLogger(__name__)

PEER_CONF = 0.15


@dataclass(frozen=True)
class PeerCrossing:
    """One crossing the peer counted."""

    frame_index: int
    line: str
    direction: str
    vehicle_class: str
    track_id: int


def peer_settings() -> dict[str, object]:
    """What the report says about how the peer was run."""
    from ultralytics.solutions.config import SolutionConfig

    return {"solution": "ultralytics.solutions.ObjectCounter", "conf": PEER_CONF, "tracker": SolutionConfig().tracker}


def run_peer(
    frames: Iterable[tuple[int, np.ndarray]], camera: Camera, model: str, classes: Sequence[str], on_frame=None  # type: ignore[no-untyped-def]
) -> list[PeerCrossing]:
    """ObjectCounter over ``(file frame index, BGR image)`` for every line of ``camera``."""
    from ultralytics import YOLO, solutions

    logging.getLogger("ultralytics").setLevel(logging.ERROR)  # its per-frame "No tracks found" warnings
    names: dict[int, str] = dict(YOLO(model, task="detect").names)
    class_ids = [idx for idx, name in names.items() if name in set(classes)]
    found: list[PeerCrossing] = []
    frame_index = 0

    def recorder(line_id: str, in_label: str, out_label: str, geometry: LineGeometry) -> type:
        class Recording(solutions.ObjectCounter):  # type: ignore[misc, name-defined]
            """ObjectCounter that also records each crossing it counts, with the motion that crossed."""

            frame_size = (1, 1)

            def count_objects(self, current_centroid, track_id, prev_position, cls):  # type: ignore[no-untyped-def]
                before = len(self.counted_ids)
                super().count_objects(current_centroid, track_id, prev_position, cls)
                if len(self.counted_ids) > before:
                    h, w = self.frame_size
                    moved = geometry.signed_distance((current_centroid[0] / w, current_centroid[1] / h)) - geometry.signed_distance(
                        (prev_position[0] / w, prev_position[1] / h)
                    )
                    label = in_label if moved > 0 else out_label
                    found.append(PeerCrossing(frame_index, line_id, label, names[int(cls)], int(track_id)))

        return Recording

    counters: list = []
    for frame_index, image in frames:
        h, w = image.shape[:2]
        if not counters:
            for line in camera.lines:
                region = [(float(x * w), float(y * h)) for x, y in line.points]
                kind = recorder(line.id, line.in_label, line.out_label, LineGeometry(line.points[0], line.points[1]))
                counters.append(kind(model=model, region=region, conf=PEER_CONF, classes=class_ids, show=False, verbose=False))
        for counter in counters:
            counter.frame_size = (h, w)
            counter.process(image)
        if on_frame is not None:
            on_frame(frame_index)
    return found

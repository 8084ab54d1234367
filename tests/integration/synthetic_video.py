"""A short synthetic recording with known ground truth, made of real pixels.

Cars cut out of frames of the sample video (so the real detector finds them) are pasted onto an
empty stretch of the sample intersection and moved along straight paths across a known count line
and between two known approach zones, at known times.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

FPS = 10
SIZE = (640, 480)
# Real cars in frames of intersection.mp4: (frame index, x1, y1, x2, y2) in pixels.
CARS = {"silver": (299, 424, 133, 532, 196), "black": (0, 443, 128, 572, 196)}


@dataclass(frozen=True)
class Pass:
    """One car crossing the picture: ``car`` moves from ``x_from`` to ``x_to`` during ``frames``."""

    car: str
    first_frame: int
    frames: int
    x_from: int
    x_to: int
    y: int = 262


def _frames(video: Path, wanted: set[int]) -> dict[int, np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    out: dict[int, np.ndarray] = {}
    index = 0
    while len(out) < len(wanted):
        ok, frame = cap.read()
        if not ok:
            break
        if index in wanted:
            out[index] = frame
        index += 1
    cap.release()
    return out


def make_video(sample: Path, out: Path, passes: list[Pass], total_frames: int) -> Path:
    """Write an MP4 (mp4v) of ``total_frames`` at 10 fps with the given car passes."""
    frames = _frames(sample, {0} | {f for f, *_ in CARS.values()})
    background = frames[0].copy()
    # Clear the stretch of road the cars drive on: copy it from a frame where it is empty (frame 0 is).
    crops = {name: frames[f][y1:y2, x1:x2].copy() for name, (f, x1, y1, x2, y2) in CARS.items()}
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), FPS, SIZE)
    for index in range(total_frames):
        image = background.copy()
        for p in passes:
            k = index - p.first_frame
            if 0 <= k < p.frames:
                crop = crops[p.car]
                h, w = crop.shape[:2]
                x = int(round(p.x_from + (p.x_to - p.x_from) * k / (p.frames - 1)))
                image[p.y : p.y + h, x : x + w] = crop
        writer.write(image)
    writer.release()
    return out


def site_file(path: Path, video: Path) -> Path:
    """Two compass legs (west on the left, east on the right) and a vertical line in the middle."""
    site = {
        "intersections": [{
            "id": "synthetic-x",
            "cameras": [{
                "id": "cam-synth",
                "source": str(video),
                "fps": FPS,
                "max_width": 640,
                "lines": [{"id": "mid", "points": [[0.5, 0.45], [0.5, 0.75]], "in_label": "westbound", "out_label": "eastbound"}],
                "approaches": [
                    {"id": "west", "compass": "west", "polygon": [[0.0, 0.45], [0.22, 0.45], [0.22, 0.72], [0.0, 0.72]]},
                    {"id": "east", "compass": "east", "polygon": [[0.78, 0.45], [1.0, 0.45], [1.0, 0.72], [0.78, 0.72]]},
                ],
            }],
        }],
        "counting": {"classes": ["car", "bus", "truck", "motorcycle", "bicycle"], "intervals_s": [900, 60], "grace_s": 5,
                     "track_timeout_s": 2.0},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    return path

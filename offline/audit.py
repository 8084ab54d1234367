"""The labelling and audit aid: pictures that let a person confirm every counted vehicle on frames.

* **Line scan** per count line: the pixels under the line, one row per frame of the file, stacked
  downwards over time. Whatever crosses the line leaves one blob; a blob with no mark beside it is
  a vehicle nobody counted. Marks on the right edge: labelled (white), ours (green), the peer's
  (orange); a tick every second on the left::

        pixels along the line A -> B  ->
      t  ....................................   |
      |  .......####.........................   | <- mark: a counted crossing at this frame
      v  .......####..............##.........   |
         ...........................##.......

* **Contact sheet**: for each candidate event a tile of three crops around it (before, at, after),
  with the line, zones and the candidate's id, time, class and series written under it.
* **Trajectory sheet**: for each track a frame with its path drawn (green start, red end).

Images of the public: persons are blurred in every picture written here unless the caller turns
it off for internal debugging (``blur=False``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from offline.annotate import draw_geometry
from traffic.anonymize import blur_regions
from traffic.site import Camera, CountLine

TILE = 160
_GREEN, _ORANGE, _WHITE, _RED = (0, 200, 0), (0, 140, 255), (255, 255, 255), (0, 0, 255)


@dataclass(frozen=True)
class Mark:
    """One event to show: at ``frame``, near ``point`` (normalized), with a caption."""

    frame: int
    caption: str
    point: tuple[float, float] | None = None
    source: str = "ours"  # ours | peer | truth


def read_frames(video: Path, indices: Iterable[int] | None = None) -> dict[int, np.ndarray]:
    """Frames of the file by index (all of them when ``indices`` is None)."""
    wanted = None if indices is None else set(indices)
    cap = cv2.VideoCapture(str(video))
    out: dict[int, np.ndarray] = {}
    index = 0
    try:
        while True:
            if wanted is not None and (not wanted or index > max(wanted)):
                break
            ok = cap.grab()
            if not ok:
                break
            if wanted is None or index in wanted:
                ok, image = cap.retrieve()
                if ok:
                    out[index] = image
            index += 1
    finally:
        cap.release()
    return out


def line_pixels(line: CountLine, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer (x, y) pixel coordinates along the line, one per pixel of its length."""
    (ax, ay), (bx, by) = line.points
    a = np.array([ax * (width - 1), ay * (height - 1)])
    b = np.array([bx * (width - 1), by * (height - 1)])
    n = max(2, int(math.ceil(np.linalg.norm(b - a))))
    t = np.linspace(0.0, 1.0, n)
    xy = a[None, :] + t[:, None] * (b - a)[None, :]
    return xy[:, 0].round().astype(int), xy[:, 1].round().astype(int)


def line_scan(video: Path, line: CountLine, fps: float, marks: Sequence[Mark] = (), scale_x: int = 1) -> np.ndarray:
    """The line-scan image of ``line`` over the whole file (see the module docstring)."""
    cap = cv2.VideoCapture(str(video))
    rows: list[np.ndarray] = []
    try:
        xs = ys = None
        while True:
            ok, image = cap.read()
            if not ok:
                break
            if xs is None:
                xs, ys = line_pixels(line, image.shape[1], image.shape[0])
            rows.append(image[ys, xs])
    finally:
        cap.release()
    if not rows:
        return np.zeros((1, 1, 3), np.uint8)
    scan = np.stack(rows)  # (frames, pixels, 3)
    if scale_x > 1:
        scan = np.repeat(scan, scale_x, axis=1)
    margin_l, margin_r = 40, 200
    canvas = np.zeros((scan.shape[0], margin_l + scan.shape[1] + margin_r, 3), np.uint8)
    canvas[:, margin_l : margin_l + scan.shape[1]] = scan
    for second in range(int(scan.shape[0] / fps) + 1):
        y = int(second * fps)
        cv2.line(canvas, (margin_l - 8, y), (margin_l - 1, y), _WHITE, 1)
        if second % 5 == 0:
            cv2.putText(canvas, f"{second}s", (2, min(canvas.shape[0] - 2, y + 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, _WHITE, 1)
    column = {"truth": 0, "ours": 1, "peer": 2}
    colour = {"truth": _WHITE, "ours": _GREEN, "peer": _ORANGE}
    for mark in marks:
        x0 = margin_l + scan.shape[1] + 4 + 66 * column.get(mark.source, 1)
        y = min(max(mark.frame, 0), canvas.shape[0] - 1)
        cv2.line(canvas, (x0, y), (x0 + 8, y), colour.get(mark.source, _GREEN), 2)
        cv2.putText(canvas, mark.caption[:9], (x0 + 10, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.3, colour.get(mark.source, _GREEN), 1)
    return canvas


def with_geometry(image: np.ndarray, camera: Camera) -> np.ndarray:
    """A copy with the camera's zones and lines drawn thin (``offline.annotate.draw_geometry``)."""
    out = image.copy()
    draw_geometry(out, camera, line_width=1, arrow_px=12, font_scale=0.4)
    return out


def _crop(image: np.ndarray, centre: tuple[float, float] | None, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    if centre is None:
        return cv2.resize(image, (size, int(size * h / w)))
    cx, cy = int(centre[0] * w), int(centre[1] * h)
    half = max(size // 2, int(min(w, h) * 0.18))
    x1, y1 = max(0, cx - half), max(0, cy - half)
    x2, y2 = min(w, cx + half), min(h, cy + half)
    tile = image[y1:y2, x1:x2]
    return cv2.resize(tile, (size, size)) if tile.size else np.zeros((size, size, 3), np.uint8)


def contact_sheet(
    video: Path, camera: Camera, marks: Sequence[Mark], offsets_s: Sequence[float] = (-0.5, 0.0, 0.5), columns: int = 2,
    blur: bool = True, person_boxes: dict[int, np.ndarray] | None = None,
) -> np.ndarray:  # fmt: skip
    """One tile per mark: crops at ``offsets_s`` around its frame, captioned (see the module docstring)."""
    fps = cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FPS) or 10.0
    wanted = {max(0, m.frame + int(round(o * fps))) for m in marks for o in offsets_s}
    frames = read_frames(video, wanted)
    tiles: list[np.ndarray] = []
    for mark in marks:
        crops = []
        for o in offsets_s:
            index = max(0, mark.frame + int(round(o * fps)))
            image = frames.get(index)
            if image is None:
                crops.append(np.zeros((TILE, TILE, 3), np.uint8))
                continue
            if blur and person_boxes is not None and index in person_boxes:
                image = blur_regions(image, person_boxes[index], normalized=False)
            crops.append(_crop(with_geometry(image, camera), mark.point, TILE))
        row = np.hstack(crops)
        caption = np.zeros((18, row.shape[1], 3), np.uint8)
        cv2.putText(caption, mark.caption[:60], (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, _WHITE, 1)
        tiles.append(np.vstack([row, caption, np.zeros((4, row.shape[1], 3), np.uint8)]))
    if not tiles:
        return np.zeros((20, 200, 3), np.uint8)
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]
    return np.vstack(rows)


def trajectory_sheet(
    background: np.ndarray, camera: Camera, paths: Sequence[tuple[str, Sequence[tuple[float, float]]]], columns: int = 4, size: int = 240
) -> np.ndarray:
    """One small frame per path, with the zones and the path (green start, red end) and its caption."""
    base = with_geometry(background, camera)
    h, w = base.shape[:2]
    tiles = []
    for caption, points in paths:
        image = base.copy()
        pts = np.array([[x * w, y * h] for x, y in points], np.int32)
        if len(pts) > 1:
            cv2.polylines(image, [pts], False, (0, 255, 255), 2)
        if len(pts):
            cv2.circle(image, tuple(int(v) for v in pts[0]), 5, _GREEN, -1)
            cv2.circle(image, tuple(int(v) for v in pts[-1]), 5, _RED, -1)
        tile = cv2.resize(image, (size, int(size * h / w)))
        cv2.putText(tile, caption[:40], (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, _WHITE, 1)
        tiles.append(tile)
    if not tiles:
        return np.zeros((20, 200, 3), np.uint8)
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    return np.vstack([np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)])


PERSON_BLUR_CONF = 0.2
"""Persons found at or above this score are blurred (lower than the counting threshold: blur is cheap, a missed face is not)."""


def person_boxes_by_frame(cached, width: int, height: int) -> dict[int, np.ndarray]:  # type: ignore[no-untyped-def]
    """Person boxes of every frame of a cached recording (``offline.detection_cache.CachedVideo``), in pixels of the file."""
    from traffic.anonymize import person_boxes

    out: dict[int, np.ndarray] = {}
    scale = np.array([width, height, width, height], dtype=np.float64)
    for frame in cached.frames:
        boxes = person_boxes(d for d in frame.detections if d.confidence >= PERSON_BLUR_CONF)
        if boxes:
            out[frame.index] = np.asarray(boxes, dtype=np.float64) * scale
    return out

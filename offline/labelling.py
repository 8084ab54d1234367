"""``traffic label``: everything a person needs to label (or audit) one recording, in one folder.

    <out>/scan_<line>.png        line scan of each count line, candidate and labelled crossings marked
    <out>/crossings_<k>.png      contact sheets: every candidate line crossing, crops before / at / after
    <out>/tracks_<k>.png         trajectory sheets: every track that moved, path drawn on the first frame
    <out>/draft.truth.yaml       the candidates as truth records, each to be confirmed on the pictures

Candidates are what the counter finds at the file's full frame rate with low thresholds: a list to
start from, never the truth. The protocol in ``docs/accuracy.md`` says how each is confirmed,
corrected or dropped, and how the line scans are searched for vehicles no candidate covers.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml

from offline.audit import Mark, contact_sheet, line_scan, person_boxes_by_frame, read_frames, trajectory_sheet
from offline.count import count_events
from offline.detection_cache import get_or_build
from offline.truth import load_truth
from traffic.anonymize import blur_regions
from traffic.site import Site
from workers.detector import DetectorSettings

SHEET_TILES = 16


def write_labelling_aid(
    video: Path, site: Site, camera_id: str, detector: DetectorSettings, out: Path, rate: float | None = None,
    truth_path: Path | None = None, blur: bool = True,
) -> list[Path]:  # fmt: skip
    """Write the pictures and the draft truth file (see the module docstring); return the paths written."""
    intersection, camera = site.camera(camera_id)
    out.mkdir(parents=True, exist_ok=True)
    cached = get_or_build(video, camera, detector)
    fps = cached.fps
    events = cached.events(camera_id, intersection.id, "label", rate or fps, min(detector.conf, 0.1), site.counting.detected_classes())
    first = read_frames(video, [0]).get(0)
    if first is None:
        raise ValueError(f"{video}: no frame")
    height, width = first.shape[:2]
    paths: dict[int, list[tuple[float, float, int]]] = {}

    def observe(frame) -> None:  # type: ignore[no-untyped-def]
        for box, track_id in zip(frame.tracked.xyxy, frame.tracked.tracker_id):
            w, h = cached.frames[0].width, cached.frames[0].height
            paths.setdefault(int(track_id), []).append(((box[0] + box[2]) / 2 / w, box[3] / h, round(frame.capture_ms * fps / 1000)))

    result = count_events(((e, None) for e in events), site, camera_id, observe)
    persons = person_boxes_by_frame(cached, width, height) if blur else None
    truth = load_truth(truth_path).truth if truth_path else None
    written: list[Path] = []

    crossings = [c for c in result.crossings if c.kind == "line"]
    for line in camera.lines:
        marks = [Mark(round(c.time_ms * fps / 1000), f"#{c.track_id}{c.direction[:1]}", source="ours") for c in crossings if c.line == line.id]
        if truth is not None:
            marks += [Mark(r.frame, f"{r.id}{r.direction[:1]}", source="truth") for r in truth.vehicles if r.line == line.id]
        path = out / f"scan_{line.id}.png"
        cv2.imwrite(str(path), line_scan(video, line, fps, marks))
        written.append(path)

    tiles = []
    for c in crossings:
        frame = round(c.time_ms * fps / 1000)
        point = next(((x, y) for x, y, f in paths.get(c.track_id, []) if f >= frame), None)
        tiles.append(Mark(frame, f"#{c.track_id} {c.line} {c.direction} {c.vehicle_class} f{frame} {frame / fps:.1f}s", point))
    for k in range(0, len(tiles), SHEET_TILES):
        path = out / f"crossings_{k // SHEET_TILES}.png"
        cv2.imwrite(str(path), contact_sheet(video, camera, tiles[k : k + SHEET_TILES], blur=blur, person_boxes=persons))
        written.append(path)

    background = first if persons is None or 0 not in persons else _blur(first, persons[0])
    moved = [(track_id, p) for track_id, p in sorted(paths.items()) if len(p) >= 3 and _extent(p) >= 0.03]
    movements = {c.track_id: f"{c.approach}>{c.exit}" for c in result.crossings if c.kind == "movement"}
    for k in range(0, len(moved), 24):
        chunk = [(f"#{t} f{p[0][2]}-{p[-1][2]} {movements.get(t, '')}", [(x, y) for x, y, _ in p]) for t, p in moved[k : k + 24]]
        path = out / f"tracks_{k // 24}.png"
        cv2.imwrite(str(path), trajectory_sheet(background, camera, chunk, columns=4, size=320))
        written.append(path)

    draft = {
        "video": str(video), "site": "<path of the site file, relative to this file>", "camera": camera_id, "fps": round(fps, 3),
        "frames": len(cached.frames), "labelled_lines": [line.id for line in camera.lines], "labelled_movements": bool(camera.approaches),
        "labelled_by": "<name>", "checked": "<how every record was confirmed>",
        "vehicles": [
            {"id": f"c{n:03d}", "frame": round(c.time_ms * fps / 1000), "class": c.vehicle_class,
             **({"line": c.line, "direction": c.direction} if c.kind == "line" else {"entry": c.approach, "exit": c.exit}),
             "note": f"CANDIDATE track {c.track_id}: confirm on the sheets"}
            for n, c in enumerate(sorted(result.crossings, key=lambda c: c.time_ms), 1)
        ],
    }  # fmt: skip
    path = out / "draft.truth.yaml"
    path.write_text(yaml.safe_dump(draft, sort_keys=False, width=140))
    written.append(path)
    return written


def _extent(points: list[tuple[float, float, int]]) -> float:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return max(max(xs) - min(xs), max(ys) - min(ys))


def _blur(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    return blur_regions(image, boxes, normalized=False)



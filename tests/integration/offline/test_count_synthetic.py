"""``traffic count`` on synthetic recordings with known ground truth, made of real pixels.

Cars cut out of frames of the sample video (so the real detector finds them) are pasted onto the
sample intersection with its traffic removed (median of frames, the parked car painted out) and
moved along one straight lane (y = 262 px) across a known count line and through two known
approach zones, one car at a time::

      x:  0    77      192        320        422     531         640
          |    | west  |           |          | east  |           |
          |    | zone  |        line "mid"    | zone  |           |
          |  silver car, eastbound: centre 71 -> 581 px  ------>   |
          |  <------  mirrored car, westbound: centre 504 -> 59 px |

The zones do not reach the picture edges, so a car's movement is decided on the frame where its
ground point leaves its exit zone - a frame fixed by the geometry (every position of a 16-frame
pass is at least 11 px from a zone edge or the line), not by a timeout:

* eastbound (16 frames): crosses ``mid`` at frame step 8, leaves the east zone at step 14;
* westbound (16 frames): crosses ``mid`` at step 7, leaves the west zone at step 15 (its last).

Both tests run the real CLI, the real model, the real tracker and counter.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

# A real car in a frame of intersection.mp4: (frame index, x1, y1, x2, y2) in pixels.
CARS = {"silver": (299, 424, 133, 532, 196)}
LANE_Y = 262
PASS_FRAMES = 16


@dataclass(frozen=True)
class Pass:
    """One car crossing the picture: ``car`` moves from ``x_from`` to ``x_to`` during ``frames`` frames."""

    car: str
    first_frame: int
    x_from: int
    x_to: int
    frames: int = PASS_FRAMES
    y: int = LANE_Y


def eastbound(first_frame: int, frames: int = PASS_FRAMES) -> Pass:
    """Silver car (108 px wide), west -> east, box x 17 -> 527."""
    return Pass("silver", first_frame, 17, 527, frames)


def westbound(first_frame: int, frames: int = PASS_FRAMES) -> Pass:
    """The silver car mirrored, east -> west, box x 450 -> 5.

    (The black car of the sample is missed by the detector in a third of the frames over the
    crosswalk, which would test the detector instead of the count.)
    """
    return Pass("silver-mirrored", first_frame, 450, 5, frames)


def _background_and_crops(sample: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    cap = cv2.VideoCapture(str(sample))
    frames: dict[int, np.ndarray] = {}
    wanted = {f for f, *_ in CARS.values()}
    index = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if index in wanted or index % 30 == 0:
            frames[index] = frame
        index += 1
    cap.release()
    background = np.median(np.stack([f for i, f in frames.items() if i % 30 == 0]), axis=0).astype(np.uint8)
    mask = np.zeros(background.shape[:2], np.uint8)
    mask[265:352, 0:100] = 255  # the car parked in the lower left corner all video long
    background = cv2.inpaint(background, mask, 5, cv2.INPAINT_TELEA)
    crops = {name: frames[f][y1:y2, x1:x2].copy() for name, (f, x1, y1, x2, y2) in CARS.items()}
    crops["silver-mirrored"] = cv2.flip(crops["silver"], 1)  # the same car driving the other way
    return background, crops


def make_video(sample: Path, out: Path, passes: list[Pass], total_frames: int, fps: float) -> Path:
    """Write an MP4 (mp4v) of ``total_frames`` at ``fps`` with the given car passes."""
    background, crops = _background_and_crops(sample)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (background.shape[1], background.shape[0]))
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


def site_file(path: Path, video: Path, fps: float, track_timeout_s: float) -> Path:
    """Two compass legs (west on the left, east on the right) and a vertical line in the middle (see the module picture)."""
    site = {
        "intersections": [{
            "id": "synthetic-x",
            "cameras": [{
                "id": "cam-synth",
                "source": str(video),
                "fps": fps,
                "max_width": 640,
                "lines": [{"id": "mid", "points": [[0.5, 0.3], [0.5, 0.75]], "in_label": "westbound", "out_label": "eastbound"}],
                "approaches": [
                    {"id": "west", "compass": "west", "polygon": [[0.12, 0.45], [0.30, 0.45], [0.30, 0.75], [0.12, 0.75]]},
                    {"id": "east", "compass": "east", "polygon": [[0.66, 0.45], [0.83, 0.45], [0.83, 0.75], [0.66, 0.75]]},
                ],
            }],
        }],
        "counting": {"classes": ["car", "bus", "truck", "motorcycle", "bicycle"], "intervals_s": [900, 60], "grace_s": 5,
                     "track_timeout_s": track_timeout_s},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(site, sort_keys=False))
    return path


def _count(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "traffic.cli", "count", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env={**os.environ, "TRAFFIC_LOG_LEVEL": "WARNING"})  # fmt: skip


def _csv(path: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    rows = list(csv.reader(io.StringIO(path.read_text())))
    return {(r[0], r[1], r[2]): dict(zip(rows[0], r)) for r in rows[1:]}



def test_ten_fps_recording_counts_lines_movements_and_interval(shared: Path, model: Path, tmp_path: Path) -> None:
    # 10 fps, 20 s: a car eastbound in frames 0-39, a car westbound in frames 160-199.
    video = make_video(shared / "videos" / "intersection.mp4", tmp_path / "synthetic.mp4",
                       [eastbound(0, 40), westbound(160, 40)], total_frames=200, fps=10)  # fmt: skip
    site = site_file(tmp_path / "site.yaml", video, fps=10, track_timeout_s=2.0)
    # The recording starts at 07:14:45 UTC: the first car leaves the east zone at ~07:14:48.6
    # (07:00 row), the second leaves the west zone in the last frame, 07:15:04.9 (07:15 row).
    proc = _count(str(video), "--site", str(site), "--camera", "cam-synth", "--model", str(model),
                  "--start", "2024-05-14T07:14:45Z", "--out-json", "r.json", "--out-csv", "r.csv",
                  "--annotate", "r.mp4", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "200/200 frames" in proc.stderr  # the progress display reached the end
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["frames"] == 200
    assert result["lines"]["mid"] == {"westbound": {"car": 1, "bus": 0, "truck": 0, "motorcycle": 0, "bicycle": 0},
                                      "eastbound": {"car": 1, "bus": 0, "truck": 0, "motorcycle": 0, "bicycle": 0}}  # fmt: skip
    moves = {(m["approach"], m["exit"], m["movement"]): m["counts"]["car"] for m in result["movements"] if m["total"]}
    assert moves == {("west", "east", "through"): 1, ("east", "west", "through"): 1}
    table = _csv(tmp_path / "r.csv")
    first, second = table[("car", "interval", "2024-05-14 07:00:00")], table[("car", "interval", "2024-05-14 07:15:00")]
    assert (first["EB Thru"], first["WB Thru"], first["Int Total"]) == ("1", "0", "1")
    assert (second["EB Thru"], second["WB Thru"], second["Int Total"]) == ("0", "1", "1")
    total = table[("car", "total", "2024-05-14 07:14:45")]
    assert (total["EB Thru"], total["WB Thru"], total["Int Total"], total["End"]) == ("1", "1", "2", "2024-05-14 07:15:05")
    assert table[("car", "peak hour", "n/a")]["Int Total"] == ""  # 20 s of video: no complete hour, no PHF
    annotated = cv2.VideoCapture(str(tmp_path / "r.mp4"))
    assert int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == 200
    annotated.release()


def test_time_lapse_hour_gives_exact_intervals_boundary_peak_hour_and_phf(shared: Path, model: Path, tmp_path: Path) -> None:
    # One frame every 20 s (0.05 fps) for 190 frames = 63 min 20 s from 07:00:00: the 15-minute
    # bins 07:00, 07:15, 07:30, 07:45 are complete, 08:00 is partial. Frame i is at i * 20 s.
    # The tracker and counter only see positions, so the cars move as in a 16-frame pass at any
    # fps; track_timeout_s = 60 s (3 frames) keeps a track alive across one missed detection.
    #   pass                 frames    movement decided at frame -> time     bin
    #   eastbound E1         5..20     19 -> 07:06:20                        07:00
    #   westbound W1         30..45    45 -> 07:15:00.000 exactly            07:15 (boundary)
    #   eastbound E2         51..66    65 -> 07:21:40                        07:15
    #   westbound W2         72..87    87 -> 07:29:00                        07:15
    #   eastbound E3         95..110   109 -> 07:36:20                       07:30
    # Quarter volumes 1, 3, 1, 0: peak hour 07:00-08:00 = 5, PHF = 5 / (4 * 3) = 0.417;
    # EB Thru 1, 1, 1, 0 -> 3 / (4 * 1) = 0.750; WB Thru 0, 2, 0, 0 -> 2 / (4 * 2) = 0.250.
    passes = [eastbound(5), westbound(30), eastbound(51), westbound(72), eastbound(95)]
    video = make_video(shared / "videos" / "intersection.mp4", tmp_path / "lapse.mp4", passes, total_frames=190, fps=0.05)
    site = site_file(tmp_path / "site.yaml", video, fps=0.05, track_timeout_s=60.0)
    proc = _count(str(video), "--site", str(site), "--camera", "cam-synth", "--model", str(model), "--quiet",
                  "--start", "2024-05-14T07:00:00Z", "--out-json", "r.json", "--out-csv", "r.csv", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["frames"] == 190
    assert {d: c["car"] for d, c in result["lines"]["mid"].items()} == {"westbound": 2, "eastbound": 3}
    assert [i["total"] for i in result["intervals"]] == [1, 3, 1, 0, 0]
    assert [i["complete"] for i in result["intervals"]] == [True, True, True, True, False]
    assert result["peak_hour"] == {"start": "2024-05-14T07:00:00.000+00:00", "end": "2024-05-14T08:00:00.000+00:00",
                                   "volume": 5, "busiest_15min_volume": 3, "phf": round(5 / 12, 4)}  # fmt: skip
    table = _csv(tmp_path / "r.csv")
    rows = {start[11:16]: row for (cls, kind, start), row in table.items() if cls == "All" and kind == "interval"}
    assert {t: (r["EB Thru"], r["WB Thru"], r["Int Total"]) for t, r in rows.items()} == {
        "07:00": ("1", "0", "1"),  # W1 is decided at exactly 07:15:00.000: not in this row
        "07:15": ("1", "2", "3"),  # E2, W1 (on the boundary) and W2
        "07:30": ("1", "0", "1"),
        "07:45": ("0", "0", "0"),  # an empty interval keeps its row
        "08:00": ("0", "0", "0"),  # partly recorded (until 08:03:20)
    }
    peak = table[("All", "peak hour", "2024-05-14 07:00:00")]
    assert (peak["End"], peak["EB Thru"], peak["WB Thru"], peak["Int Total"]) == ("2024-05-14 08:00:00", "3", "2", "5")
    phf = table[("All", "PHF", "2024-05-14 07:00:00")]
    assert (phf["EB Thru"], phf["WB Thru"], phf["EB App Total"], phf["Int Total"]) == ("0.750", "0.250", "0.750", "0.417")
    total = table[("All", "total", "2024-05-14 07:00:00")]
    assert (total["End"], total["Int Total"]) == ("2024-05-14 08:03:20", "5")

"""``traffic count`` speed against a plain model loop, and against Ultralytics' ObjectCounter.

Why: tracking and counting must be nearly free next to the model, and the peer most people glue
together (``ultralytics.solutions.ObjectCounter``) is the obvious comparison. Same video, same
sampled frames (10 fps), same model, same run:

* baseline      - ``model(frame)`` on the sampled frames, decoded beforehand (the model alone);
* plain loop    - what one writes by hand: read the video with OpenCV, ``model(frame)`` on every
  3rd frame (the same frames) - the fair comparison, since ``traffic count`` decodes the video too;
* traffic count - ``offline.count.count_video`` (sampling, JPEG round trip, detection,
  tracking, lines, movements) over the same video;
* ObjectCounter - Ultralytics' solution (predict + track + count) on the same frames with the
  site's ``west-leg`` line in pixels.

    .venv/bin/python bench/bench_count.py
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from benchdoc import machine, publish, sampled_frames  # noqa: E402
from traffic.settings import shared_dir  # noqa: E402
from traffic.site import load_site  # noqa: E402


ROUNDS = 3


def run_peer(frames: list, model_path: str, camera, line_id: str) -> tuple[float, int | None, int | None]:  # type: ignore[no-untyped-def]
    """Ultralytics ObjectCounter over ``frames`` with the site line ``line_id``: (seconds, in, out)."""
    from ultralytics import solutions

    line = next(x for x in camera.lines if x.id == line_id)
    (ax, ay), (bx, by) = line.points
    h, w = frames[0].shape[:2]
    region = [(int(ax * w), int(ay * h)), (int(bx * w), int(by * h))]
    solutions.ObjectCounter(model=model_path, region=region, show=False, classes=[1, 2, 3, 5, 7], verbose=False)(frames[0].copy())  # warm-up
    peer = solutions.ObjectCounter(model=model_path, region=region, show=False, classes=[1, 2, 3, 5, 7], verbose=False)
    started = time.perf_counter()
    out = None
    for f in frames:
        out = peer(f.copy())
    return time.perf_counter() - started, getattr(out, "in_count", None), getattr(out, "out_count", None)


def main() -> int:
    import cv2
    from ultralytics import YOLO

    from offline.count import count_video
    from workers.detector import DetectorSettings

    video = shared_dir() / "videos" / "intersection.mp4"
    model_path = str(shared_dir() / "models" / "yolo11n_int8_openvino_model")
    site = load_site(REPO / "deploy" / "sites" / "intersection-demo.yaml")
    _, camera = site.camera("cam-demo")
    frames = sampled_frames(video, 10_000)
    n = len(frames)
    model = YOLO(model_path, task="detect")
    model(frames[0], verbose=False)

    def baseline() -> float:
        started = time.perf_counter()
        for f in frames:
            model(f, verbose=False)
        return time.perf_counter() - started

    def plain_loop() -> float:
        started = time.perf_counter()
        cap = cv2.VideoCapture(str(video))
        index = 0
        while True:
            ok = cap.grab()
            if not ok:
                break
            if index % 3 == 0:
                _, frame = cap.retrieve()
                model(frame, verbose=False)
            index += 1
        cap.release()
        return time.perf_counter() - started

    # Rounds interleave the three loops so that load from elsewhere on the machine hits them alike.
    base_s, plain_s, ours_runs, peer_runs = [], [], [], []
    for _ in range(ROUNDS):
        base_s.append(baseline())
        plain_s.append(plain_loop())
        ours_runs.append(count_video(video, site, "cam-demo", DetectorSettings(model=model_path, classes=tuple(site.counting.classes))))
        peer_runs.append(run_peer(frames, model_path, camera, "west-leg"))
    base, plain = statistics.median(base_s), statistics.median(plain_s)
    ours = statistics.median(r.wall_s for r in ours_runs)
    result = ours_runs[0]
    assert all(r.crossings == result.crossings for r in ours_runs), "counts differ between identical runs"
    lines_ours = Counter(f"{c.line} {c.direction}" for c in result.crossings if c.kind == "line" and c.line == "west-leg")

    peer_s = statistics.median(p[0] for p in peer_runs)
    _, peer_in, peer_out = peer_runs[0]

    text = "\n".join([
        f"`bench/bench_count.py`, {machine()}. intersection.mp4 sampled at 10 fps ({n} frames), shared YOLO11n INT8 OpenVINO. "
        f"Baseline: plain `model(frame)` loop on the same frames, same run (median of {ROUNDS} interleaved rounds).",
        "",
        "| | frames/s | vs baseline | west-leg line counts |",
        "|---|---|---|---|",
        f"| baseline `model(frame)` on decoded frames | {n / base:.1f} | 1.00 | - |",
        f"| plain loop: OpenCV read + `model(frame)` | {n / plain:.1f} | {base / plain:.2f} | - |",
        f"| `traffic count` (read, sample, JPEG, detect, track, lines, movements) | {n / ours:.1f} | {base / ours:.2f} "
        f"(**{plain / ours:.2f}** of the plain loop) | "
        f"{dict(lines_ours)}; {sum(c.kind == 'movement' for c in result.crossings)} movements besides |",
        f"| Ultralytics `solutions.ObjectCounter` (predict, track, count) | {n / peer_s:.1f} | {base / peer_s:.2f} | "
        f"in {peer_in}, out {peer_out} (its in/out naming; same line, same frames) |",
        "",
        "Our count includes what the peer does not do: the JPEG round trip that makes its detections identical to the "
        "streaming pipeline's, turning movements over four approach zones and per-class line directions. The peer counts "
        "a line crossing per track id with no hysteresis and uses its own tracker settings, so its totals on the same line "
        "need not match ours; compare them in the table. The baseline has the frames in memory; `traffic count` and the "
        "plain loop decode the whole 30 fps file (909 frames) to keep 303, which costs CPU the model would otherwise use "
        "on this 2-core machine. `traffic count` reads, resizes and JPEG-round-trips frames in a prefetch thread "
        "(OpenCV releases the GIL), so that work overlaps the model's Python pre/post-processing. ObjectCounter, like the "
        "baseline, gets the decoded frames from memory.",
    ])  # fmt: skip
    publish("Count", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``traffic count``: count a recorded video offline and write the turning-movement report.

Kept light: the model, OpenCV and the counting core are imported when the command runs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``count`` subcommand."""
    p = sub.add_parser(
        "count",
        help="count a recorded video (no broker) and write JSON counts and a turning-movement CSV",
        description=(
            "Runs the streaming pipeline's own code in one process - sampling, JPEG, detection, tracking, line "
            "crossings, turning movements - over a video file, as fast as the machine allows, and writes a JSON "
            "result and a turning-movement count CSV (one row per interval, one column per approach and movement, "
            "totals, peak hour and PHF). Exit code 2 for bad input or configuration."
        ),
    )
    p.add_argument("video", help="the recorded video file")
    p.add_argument("--site", required=True, help="site YAML with the camera's lines and approach zones")
    p.add_argument("--camera", required=True, help="camera id in the site file that recorded the video")
    p.add_argument("--model", default=os.environ.get("TRAFFIC_WORKER_MODEL", "yolo26n.pt"), help="Ultralytics model name or path [env TRAFFIC_WORKER_MODEL; default yolo26n.pt]")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--half", action="store_true", help="FP16 on CUDA")
    p.add_argument("--fps", type=float, default=None, help="sampling rate (default: the camera's fps in the site file)")
    p.add_argument("--conf", type=float, default=0.25, help="detector confidence threshold (default 0.25)")
    p.add_argument("--batch-size", type=int, default=8, help="frames per model call (default 8)")
    p.add_argument("--start", default=None, help="wall-clock time of the first frame, ISO 8601 (e.g. 2024-05-14T07:00:00+02:00); default 1970-01-01T00:00Z")
    p.add_argument("--interval-min", type=float, default=15.0, help="report interval in minutes (default 15; the peak hour always uses 15-minute bins)")
    p.add_argument("--out-json", default=None, help="JSON result path (default <video>.counts.json in the current directory)")
    p.add_argument("--out-csv", default=None, help="turning-movement CSV path (default <video>.tmc.csv in the current directory)")
    p.add_argument("--annotate", default=None, metavar="OUT.mp4", help="also write an annotated video (boxes, track ids, lines, zones, running counts; persons blurred)")
    p.add_argument("--no-blur", action="store_true", help="do not blur persons in the annotated video (internal debugging only: it then shows the public)")
    p.add_argument("--no-activity", action="store_true", help="run the model on every frame; by default frames the ingester would pass on unchanged reuse the detections of the last inferred frame, as in the pipeline (rule: TRAFFIC_INGEST_ACTIVITY_* settings)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import json
    import math
    import sys

    from aggregator.offline import Progress, check_geometry, count_video, probe_video
    from aggregator.report import build_report, parse_start
    from ingest.settings import IngestSettings
    from traffic.errors import ConfigError
    from traffic.settings import load_settings
    from traffic.site import load_site
    from workers.detector import DetectorSettings

    video = Path(args.video)
    site = load_site(args.site)
    intersection, camera = site.camera(args.camera)
    check_geometry(camera)
    if args.interval_min <= 0 or (args.interval_min * 60) % 1:
        raise ConfigError(f"--interval-min must be a positive whole number of seconds, got {args.interval_min}")
    if not 0 <= args.conf <= 1 or args.batch_size < 1 or (args.fps is not None and args.fps <= 0):
        raise ConfigError("--conf must be in [0, 1], --batch-size >= 1 and --fps > 0")
    try:
        start_ms, tz = parse_start(args.start)
    except ValueError:
        raise ConfigError(f"--start {args.start!r} is not an ISO 8601 date-time (e.g. 2024-05-14T07:00:00+02:00)") from None
    total, file_fps, _, _ = probe_video(video)
    rate = args.fps or camera.fps
    expected = math.ceil(total * min(1.0, rate / file_fps) - 1e-9) if total > 0 else 0  # frames the sampler keeps
    progress = None if args.quiet else Progress(expected)
    annotator = None
    if args.annotate:
        from aggregator.annotate import VideoAnnotator

        annotator = VideoAnnotator(Path(args.annotate), camera, rate, blur_persons=not args.no_blur)

    def on_frame(frame) -> None:  # type: ignore[no-untyped-def]
        if progress is not None:
            progress.update(frame.seq + 1)
        if annotator is not None:
            annotator(frame)

    classes = tuple(site.counting.classes)
    if annotator is not None and annotator.blur_persons and "person" not in classes:
        classes += ("person",)  # to blur them; the counter tracks only the counted classes, NMS is per class: counts unchanged
    detector = DetectorSettings(model=args.model, device=args.device, half=args.half, classes=classes,
                                conf=args.conf, batch_size=args.batch_size)  # fmt: skip
    try:
        activity = None if args.no_activity else load_settings(IngestSettings).activity_rule()  # the ingester's rule
        result = count_video(video, site, args.camera, detector, start_ms=start_ms, fps=args.fps, on_frame=on_frame, activity=activity)
    finally:
        if annotator is not None:
            annotator.close()
    if progress is not None:
        progress.update(progress.total)
    report = build_report(
        result.crossings, intersection=intersection.id, camera=camera, classes=site.counting.classes,
        period_ms=(result.start_ms, result.end_ms), interval_s=int(args.interval_min * 60), tz=tz,
        run={"video": str(video), "frames": result.frames, "wall_s": round(result.wall_s, 2),
             "fps": round(result.frames / result.wall_s, 2) if result.wall_s else None, "model": result.model,
             "sampling_fps": rate, "model_calls_saved": result.reused},
    )  # fmt: skip
    out_json = Path(args.out_json or f"{video.stem}.counts.json")
    out_csv = Path(args.out_csv or f"{video.stem}.tmc.csv")
    out_json.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    out_csv.write_text(report.csv_text())
    print(f"{result.frames} frames ({result.reused} unchanged, no model call) in {result.wall_s:.1f} s; {sum(c.kind == 'movement' for c in result.crossings)} movements, "
          f"{sum(c.kind == 'line' for c in result.crossings)} line crossings -> {out_json}, {out_csv}", file=sys.stderr)  # fmt: skip
    return 0

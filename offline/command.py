"""``traffic count``, ``traffic eval`` and ``traffic label``: recorded video, counted and checked.

* ``count``: count a recorded video offline and write the turning-movement report;
* ``eval``: count labelled recordings (ours and the peer's) and score both against the truth;
* ``label``: the labelling and audit aid (line scans, contact sheets, trajectories, a draft truth file).

Kept light: the model, OpenCV and the counting core are imported when a command runs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def _detector_default(name: str) -> object:
    from dataclasses import fields

    from workers.detector import DetectorSettings

    return next(f.default for f in fields(DetectorSettings) if f.name == name)


def _add_model_arguments(p: argparse.ArgumentParser, *, conf: bool = True) -> None:
    """--model (and --conf) with the workers' defaults, so every offline command detects as a worker does."""
    from workers.settings import WorkerSettings

    model = WorkerSettings.model_fields["model"].default
    p.add_argument("--model", default=os.environ.get("TRAFFIC_WORKER_MODEL", model), help=f"Ultralytics model name or path [env TRAFFIC_WORKER_MODEL; default {model}]")
    if conf:
        p.add_argument("--conf", type=float, default=_detector_default("conf"), help=f"detector confidence threshold (default {_detector_default('conf')}, the workers' default)")


def _add_recording_arguments(p: argparse.ArgumentParser) -> None:
    """The recording, and the site file and camera that say where its lines and zones are."""
    p.add_argument("video", help="the recorded video file")
    p.add_argument("--site", required=True, help="site YAML with the camera's lines and approach zones")
    p.add_argument("--camera", required=True, help="camera id in the site file that recorded the video")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``count``, ``eval`` and ``label`` subcommands."""
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
    _add_recording_arguments(p)
    _add_model_arguments(p)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--half", action="store_true", help="FP16 on CUDA")
    p.add_argument("--fps", type=float, default=None, help="sampling rate (default: the camera's fps in the site file)")
    p.add_argument("--batch-size", type=int, default=_detector_default("batch_size"), help=f"frames per model call (default {_detector_default('batch_size')})")
    p.add_argument("--start", default=None, help="wall-clock time of the first frame, ISO 8601 (e.g. 2024-05-14T07:00:00+02:00); default 1970-01-01T00:00Z")
    p.add_argument("--interval-min", type=float, default=15.0, help="report interval in minutes (default 15; the peak hour always uses 15-minute bins)")
    p.add_argument("--out-json", default=None, help="JSON result path (default <video>.counts.json in the current directory)")
    p.add_argument("--out-csv", default=None, help="turning-movement CSV path (default <video>.tmc.csv in the current directory)")
    p.add_argument("--annotate", default=None, metavar="OUT.mp4", help="also write an annotated video (boxes, track ids, lines, zones, running counts; persons blurred)")
    p.add_argument("--no-blur", action="store_true", help="do not blur persons in the annotated video (internal debugging only: it then shows the public)")
    p.add_argument("--no-activity", action="store_true", help="run the model on every frame; by default frames the ingester would pass on unchanged reuse the detections of the last inferred frame, as in the pipeline (rule: TRAFFIC_INGEST_ACTIVITY_* settings)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run)

    p = sub.add_parser(
        "eval",
        help="score counts against labelled recordings (ours and Ultralytics' ObjectCounter, same model and frames)",
        description=(
            "For each truth file (or every *.truth.yaml in a folder): counts the recording with the pipeline's own code at "
            "the camera's sampling rate, runs Ultralytics' ObjectCounter on the same frames with the same model and lines, "
            "and scores both: total and cell error per recording and pooled, per-movement error, the AI City Challenge "
            "Track 1 effectiveness, and the list of missed, invented and mis-classed vehicles. Detections are cached in "
            "~/.cache/traffic-pipeline/detections (TRAFFIC_CACHE_DIR). See docs/accuracy.md."
        ),
    )
    p.add_argument("truth", nargs="+", help="truth files (*.truth.yaml) or folders holding them")
    _add_model_arguments(p)
    p.add_argument("--fps", type=float, default=None, help="sampling rate for every recording (default: each camera's fps in its site file)")
    p.add_argument("--no-peer", action="store_true", help="do not run the peer (faster)")
    p.add_argument("--out", default=None, help="output folder for eval.json, eval.md and the findings sheets (default runs/eval-<time>)")
    p.add_argument("--sheets", action="store_true", help="also write a contact sheet of each recording's findings (crops; persons blurred)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=_eval)

    p = sub.add_parser(
        "label",
        help="labelling / audit aid: line scans, contact sheets and trajectories of a recording, and a draft truth file",
        description=(
            "Writes, for one recording and camera: a line-scan image per count line (the pixels under the line stacked over "
            "time: one blob per vehicle, marked where a count happened), contact sheets of every candidate crossing (crops "
            "before, at and after), trajectory sheets of every track, and draft.truth.yaml listing the candidates for a "
            "person to confirm, correct or extend on those pictures (docs/accuracy.md has the protocol). Persons are "
            "blurred unless --no-blur."
        ),
    )
    _add_recording_arguments(p)
    _add_model_arguments(p, conf=False)
    p.add_argument("--fps", type=float, default=None, help="sampling rate of the candidate count (default: every frame of the file)")
    p.add_argument("--truth", default=None, help="an existing truth file: its records are marked on the pictures too")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-blur", action="store_true", help="do not blur persons (internal debugging only)")
    p.set_defaults(handler=_label)


def _run(args: argparse.Namespace) -> int:
    import json
    import math
    import sys

    from offline.count import Progress, check_geometry, count_video, probe_video
    from ingest.settings import IngestSettings
    from offline.report import build_report, parse_start
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
        from offline.annotate import VideoAnnotator

        annotator = VideoAnnotator(Path(args.annotate), camera, rate, blur_persons=not args.no_blur)

    def on_frame(frame) -> None:  # type: ignore[no-untyped-def]
        if progress is not None:
            progress.update(frame.seq + 1)
        if annotator is not None:
            annotator(frame)

    classes = site.counting.detected_classes()
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


def _truth_files(items: list[str]) -> list[Path]:
    from traffic.errors import ConfigError

    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(path.glob("*.truth.yaml"))
            if not found:
                raise ConfigError(f"{path} holds no *.truth.yaml file")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"truth file {path} does not exist")
    return files


def _eval(args: argparse.Namespace) -> int:
    import sys
    import time

    from offline.evaluate import evaluate, markdown_table, write_outputs
    from offline.truth import load_truth
    from traffic.errors import ConfigError
    from workers.detector import DetectorSettings

    if not 0 < args.conf <= 1 or (args.fps is not None and args.fps <= 0):
        raise ConfigError("--conf must be in (0, 1] and --fps > 0")
    recordings = [load_truth(path) for path in _truth_files(args.truth)]
    for recording in recordings:
        if not recording.video.is_file():
            raise ConfigError(f"{recording.path}: the recording {recording.video} is missing (set TRAFFIC_SHARED_DIR)")
    out_dir = Path(args.out or Path("runs") / time.strftime("eval-%Y%m%d-%H%M%S"))
    results = []
    for n, recording in enumerate(recordings, 1):
        classes = tuple(sorted(set(recording.site.counting.classes) | {"person"}))
        detector = DetectorSettings(model=args.model, classes=classes, conf=args.conf)
        if not args.quiet:
            print(f"[{n}/{len(recordings)}] {recording.name}: counting{'' if args.no_peer else ' (ours and the peer)'} ...", file=sys.stderr, flush=True)
        result = evaluate(recording, detector, rate=args.fps, with_peer=not args.no_peer)
        results.append(result)
        if args.sheets:
            _findings_sheet(result, out_dir, args.model, classes)
    write_outputs(results, out_dir, detector)
    print(markdown_table(results))
    print(f"-> {out_dir / 'eval.json'}", file=sys.stderr)
    return 0


def _findings_sheet(result, out_dir: Path, model: str, classes: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    """A contact sheet of what the count got wrong (persons blurred)."""
    import cv2

    from offline.audit import Mark, contact_sheet

    truth = result.recording.truth
    _, camera = result.recording.site.camera(truth.camera)
    marks = []
    for f in result.ours.findings:
        series = " > ".join((f.truth or f.predicted).series)
        who = f"#{f.predicted.track_id} {f.predicted.vehicle_class}" if f.predicted else f"{f.truth.id} {f.truth.vehicle_class}"
        marks.append(Mark(f.frame, f"{f.what} {f.kind} {series} {who} @{f.frame / truth.fps:.1f}s"))
    from offline.audit import person_boxes_by_frame, read_frames
    from offline.detection_cache import get_or_build
    from workers.detector import DetectorSettings

    cached = get_or_build(result.recording.video, camera, DetectorSettings(model=model, classes=classes))
    first = read_frames(result.recording.video, [0])[0]
    persons = person_boxes_by_frame(cached, first.shape[1], first.shape[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    sheet = contact_sheet(result.recording.video, camera, marks, person_boxes=persons)
    cv2.imwrite(str(out_dir / f"{result.recording.name}.findings.png"), sheet)


def _label(args: argparse.Namespace) -> int:
    from offline.labelling import write_labelling_aid
    from traffic.site import load_site
    from workers.detector import DetectorSettings

    site = load_site(args.site)
    classes = tuple(sorted(set(site.counting.classes) | {"person"}))
    written = write_labelling_aid(
        Path(args.video), site, args.camera, DetectorSettings(model=args.model, classes=classes), Path(args.out),
        rate=args.fps, truth_path=Path(args.truth) if args.truth else None, blur=not args.no_blur,
    )  # fmt: skip
    for path in written:
        print(path)
    return 0

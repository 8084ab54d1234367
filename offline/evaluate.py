"""``traffic eval``: count labelled recordings with our pipeline and with the peer, and score both.

For each truth file (``offline/truth.py``): the recording's detections come from the detection
cache (``offline/detection_cache.py``; the model runs once per recording and settings), the
events the pipeline would publish at the camera's sampling rate are counted by the aggregator's
own counter, and the peer (``offline/peer.py``) runs on the same sampled frames with the same
model and lines. Both are scored with ``offline/scoring.py``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offline.count import count_events, worker_frames
from offline.detection_cache import get_or_build
from offline.peer import PeerCrossing, peer_settings, run_peer
from offline.scoring import KindScore, Predicted, Score, score
from offline.truth import LabelledRecording
from traffic.wire import CrossingEvent
from workers.detector import DetectorSettings

log = logging.getLogger(__name__)

EVAL_SESSION = "eval"


@dataclass
class RecordingResult:
    """One recording's evaluation."""

    recording: LabelledRecording
    rate: float
    ours: Score
    predicted: list[Predicted]
    crossings: list[CrossingEvent]
    peer: Score | None = None
    peer_predicted: list[Predicted] = field(default_factory=list)
    wall_s: float = 0.0


def to_predicted(crossings: list[CrossingEvent], fps: float, labelled_lines: tuple[str, ...], movements: bool) -> list[Predicted]:
    """Our crossings on the file's frame clock, restricted to what the truth labels."""
    out: list[Predicted] = []
    for c in crossings:
        frame = round(c.time_ms * fps / 1000)
        if c.kind == "line" and c.line in labelled_lines:
            out.append(Predicted("line", (str(c.line), str(c.direction)), c.vehicle_class, frame, c.track_id))
        elif c.kind == "movement" and movements:
            out.append(Predicted("movement", (str(c.approach), str(c.exit)), c.vehicle_class, frame, c.track_id))
    return out


def peer_predicted(crossings: list[PeerCrossing], labelled_lines: tuple[str, ...]) -> list[Predicted]:
    """The peer's crossings as predictions (lines only: it has no movements)."""
    return [Predicted("line", (c.line, c.direction), c.vehicle_class, c.frame_index, c.track_id) for c in crossings if c.line in labelled_lines]


def evaluate(
    recording: LabelledRecording, detector: DetectorSettings, rate: float | None = None, with_peer: bool = True, progress=None,  # type: ignore[no-untyped-def]
    peer_rate: float | None = None, with_ours: bool = True,
) -> RecordingResult:
    """Count one labelled recording (ours, and the peer's unless ``with_peer`` is False) and score it.

    ``peer_rate``: the peer's sampling rate (default: the same frames as ours).
    """
    started = time.monotonic()
    truth = recording.truth
    intersection, camera = recording.site.camera(truth.camera)
    video = recording.video
    cached = get_or_build(video, camera, detector)
    fps = rate or camera.fps
    events = cached.events(truth.camera, intersection.id, EVAL_SESSION, fps, detector.conf, recording.site.counting.detected_classes())
    result = count_events(((e, None) for e in events), recording.site, truth.camera)
    predicted = to_predicted(result.crossings, cached.fps, truth.labelled_lines, truth.labelled_movements)
    ours = score(truth.vehicles, predicted, truth.frames, truth.fps)
    out = RecordingResult(recording, fps, ours, predicted, result.crossings)
    if with_peer and truth.labelled_lines:
        frames = ((f.frame_index, f.image) for f in worker_frames(video, camera, peer_rate or fps))
        crossings = run_peer(frames, camera, detector.model, [c for c in recording.site.counting.classes], on_frame=progress)
        out.peer_predicted = peer_predicted(crossings, truth.labelled_lines)
        line_truth = [r for r in truth.vehicles if r.kind == "line"]
        out.peer = score(line_truth, out.peer_predicted, truth.frames, truth.fps)
    out.wall_s = time.monotonic() - started
    return out


def pooled(results: list[RecordingResult], peer: bool = False) -> Score:
    """All recordings' figures added up (see ``offline/scoring.py``)."""
    total = Score()
    for r in results:
        s = r.peer if peer else r.ours
        if s is None:
            continue
        total.lines.add(s.lines)
        total.movements.add(s.movements)
    return total


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown_table(results: list[RecordingResult]) -> str:
    """The accuracy table of ``docs/accuracy.md``: ours beside the peer, per recording and pooled."""
    rows = [
        "| recording | events | truth | ours: total | ours: cells | peer: total | peer: cells | ours: AI City | ",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for kind, label in (("line", "lines"), ("movement", "movements")):
            ks: KindScore = r.ours.kind(kind)  # type: ignore[arg-type]
            if not ks.truth and not ks.predicted:
                continue
            peer = r.peer.kind(kind) if (r.peer is not None and kind == "line") else None  # type: ignore[arg-type]
            rows.append(
                f"| {r.recording.name} | {label} | {ks.truth} | {_pct(ks.total_error)} ({ks.predicted}) | {_pct(ks.cell_error)} | "
                f"{_pct(peer.total_error) + f' ({peer.predicted})' if peer else '-'} | {_pct(peer.cell_error) if peer else '-'} | "
                f"{_num(ks.effectiveness)} |"
            )
    ours, theirs = pooled(results).overall, pooled(results, peer=True).lines
    ours_lines = pooled(results).lines
    rows.append(f"| **pooled** | all | {ours.truth} | **{_pct(ours.total_error)}** | **{_pct(ours.cell_error)}** | - | - | {_num(ours.effectiveness)} |")
    rows.append(
        f"| **pooled** | lines | {ours_lines.truth} | {_pct(ours_lines.total_error)} | {_pct(ours_lines.cell_error)} | "
        f"{_pct(theirs.total_error)} | {_pct(theirs.cell_error)} | {_num(ours_lines.effectiveness)} |"
    )
    return "\n".join(rows)


def findings_json(result: RecordingResult) -> list[dict[str, Any]]:
    """The per-vehicle list of one recording: what was missed, invented, mis-classed, given the wrong direction or exit."""
    fps = result.recording.truth.fps
    out = []
    for f in result.ours.findings:
        item: dict[str, Any] = {"what": f.what, "kind": f.kind, "frame": f.frame, "time_s": round(f.frame / fps, 2)}
        if f.truth is not None:
            item["truth"] = {"id": f.truth.id, "series": list(f.truth.series), "class": f.truth.vehicle_class, "frame": f.truth.frame}
        if f.predicted is not None:
            item["predicted"] = {"series": list(f.predicted.series), "class": f.predicted.vehicle_class, "frame": f.predicted.frame,
                                 "track_id": f.predicted.track_id}  # fmt: skip
        out.append(item)
    return out


def write_outputs(results: list[RecordingResult], out_dir: Path, detector: DetectorSettings) -> Path:
    """``eval.json`` (every figure and finding) and ``eval.md`` (the table) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)

    def figures(ks: KindScore) -> dict[str, Any]:
        return {"truth": ks.truth, "predicted": ks.predicted, "total_error": ks.total_error, "cell_error": ks.cell_error,
                "ai_city_effectiveness": ks.effectiveness,
                "series_abs_error": {" > ".join(k): v for k, v in ks.series_error.items()}}  # fmt: skip

    doc = {
        "model": detector.model, "conf": detector.conf, "peer": peer_settings(),
        "recordings": [
            {"name": r.recording.name, "video": r.recording.truth.video, "sampling_fps": r.rate, "wall_s": round(r.wall_s, 1),
             "ours": {"lines": figures(r.ours.lines), "movements": figures(r.ours.movements)},
             "peer": None if r.peer is None else {"lines": figures(r.peer.lines)},
             "findings": findings_json(r)}
            for r in results
        ],
        "pooled": {"ours": {"all": figures(pooled(results).overall), "lines": figures(pooled(results).lines),
                            "movements": figures(pooled(results).movements)},
                   "peer": {"lines": figures(pooled(results, peer=True).lines)}},
    }  # fmt: skip
    path = out_dir / "eval.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    (out_dir / "eval.md").write_text(markdown_table(results) + "\n")
    return path

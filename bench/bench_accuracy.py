"""Accuracy on the labelled evaluation set: ours beside the peer, same model, same frames, same run.

Why a benchmark and not a test: it runs the peer (Ultralytics' ObjectCounter) and several
sampling rates over every labelled recording, which takes minutes; the default test suite keeps
one regression test on the labelled sample (tests/integration/offline/test_eval.py).

* table 1 - ``traffic eval`` at the defaults a user gets (each camera's sampling rate from its
  site file, the workers' detector threshold): ours and the peer on the same sampled frames;
* table 2 - ours at 5, 10 and 15 fps and at each file's own rate (the sampling-rate choice);
* the per-vehicle findings of table 1 go to runs/bench-accuracy/eval.json.

    .venv/bin/python bench/bench_accuracy.py [--no-peer]

Writes the "Results" section of docs/accuracy.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.benchdoc import machine, publish  # noqa: E402
from offline.evaluate import evaluate, markdown_table, pooled, write_outputs  # noqa: E402
from offline.truth import load_truth  # noqa: E402
from traffic.settings import shared_dir  # noqa: E402
from workers.detector import DetectorSettings  # noqa: E402

TRUTH = REPO / "bench" / "accuracy" / "truth"
RATES = (5.0, 10.0, 15.0, None)  # None: the file's own rate


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-peer", action="store_true", help="skip the peer (table 1 without its columns)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    model = str(shared_dir() / "models" / "yolo11n_int8_openvino_model")
    files = sorted(TRUTH.glob("*.truth.yaml"))
    started = time.monotonic()
    results = []
    for path in files:
        recording = load_truth(path)
        detector = DetectorSettings(model=model, classes=recording.site.counting.detected_classes())
        print(f"{recording.name}: defaults{'' if args.no_peer else ' + peer'} ...", file=sys.stderr, flush=True)
        results.append(evaluate(recording, detector, with_peer=not args.no_peer))
    write_outputs(results, REPO / "runs" / "bench-accuracy", detector)
    rows = ["| sampling | " + " | ".join(f"{r.recording.name} lines / movements (cells)" for r in results) + " | pooled total | pooled cells |",
            "|---|" + "---|" * (len(results) + 2)]  # fmt: skip
    for rate in RATES:
        sweep = []
        for path in files:
            recording = load_truth(path)
            detector = DetectorSettings(model=model, classes=recording.site.counting.detected_classes())
            fps = rate or recording.truth.fps
            sweep.append(evaluate(recording, detector, rate=fps, with_peer=False))
            print(f"{recording.name}: {fps:g} fps", file=sys.stderr, flush=True)
        cells = []
        for r in sweep:
            parts = [f"{_pct(k.cell_error)}" for k in (r.ours.lines, r.ours.movements) if k.truth]
            cells.append(" / ".join(parts))
        p = pooled(sweep).overall
        rows.append(f"| {'native' if rate is None else f'{rate:g} fps'} | " + " | ".join(cells) + f" | {_pct(p.total_error)} | {_pct(p.cell_error)} |")
    peer_native = []
    if not args.no_peer:
        for path in files:
            recording = load_truth(path)
            detector = DetectorSettings(model=model, classes=recording.site.counting.detected_classes())
            print(f"{recording.name}: peer at {recording.truth.fps:g} fps", file=sys.stderr, flush=True)
            peer_native.append(evaluate(recording, detector, with_peer=True, peer_rate=recording.truth.fps))
    native_rows = ["| recording | labelled line crossings | ours (defaults): total / cells | peer at the file's rate: total / cells |", "|---|---|---|---|"]
    for ours, theirs in zip(results, peer_native):
        if theirs.peer is None:
            continue
        native_rows.append(
            f"| {ours.recording.name} | {ours.ours.lines.truth} | {_pct(ours.ours.lines.total_error)} / {_pct(ours.ours.lines.cell_error)} | "
            f"{_pct(theirs.peer.lines.total_error)} / {_pct(theirs.peer.lines.cell_error)} ({theirs.peer.lines.predicted}) |"
        )
    if peer_native:
        p = pooled(peer_native, peer=True).lines
        native_rows.append(f"| **pooled** | {p.truth} | {_pct(pooled(results).lines.total_error)} / {_pct(pooled(results).lines.cell_error)} | {_pct(p.total_error)} / {_pct(p.cell_error)} |")
    text = "\n".join([
        f"`bench/bench_accuracy.py`, {machine()}, {time.monotonic() - started:.0f} s. Shared YOLO11n INT8 OpenVINO model, "
        "the defaults a user gets (site files in `bench/accuracy/sites/`, `counting` defaults of `traffic/site.py`, the workers' "
        "detector threshold). The peer is Ultralytics' `solutions.ObjectCounter` (confidence 0.15, its default tracker) on the "
        "same sampled frames with the same model and lines; it has no turning movements. *total* = |counted - labelled| / labelled, "
        "*cells* = sum of |counted - labelled| per direction (or movement) and class / labelled; in brackets the number counted.",
        "",
        markdown_table(results),
        "",
        "Sampling rate (ours only; cell error of lines / movements per recording):",
        "",
        *rows,
        "",
        "The peer as its users usually run it, on every frame of the file (ours stays at the defaults, 10 fps):",
        "",
        *(native_rows if peer_native else ["(not run: --no-peer)"]),
    ])  # fmt: skip
    publish("Results", text, doc="accuracy.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

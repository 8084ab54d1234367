"""Frames per second through one worker (Kafka in, Kafka out, commits) against a plain model loop.

Why: the worker is the expensive, scaled part; KEDA's lag threshold comes from its per-replica
throughput. Same frames, same model, same run:

* baseline - ``model(frame)`` (Ultralytics predict on decoded BGR frames) in a plain loop;
* detector - ``workers.detector.Detector.detect`` on the same frames (our adapter's cost);
* decode   - ``workers.decode.decode_jpeg`` of the JPEGs the ingester would send;
* worker   - the real :class:`workers.service.Worker` consuming the JPEG frames from a local Kafka
  broker, publishing detection events and committing, for batch sizes 1, 8 and 16.

The 2 cores of this machine are shared with other work, so one timing can be off by 50 %.
Baseline and worker runs are therefore interleaved (round i = baseline, adapter, worker batch 8),
and the ratio is the median of the per-round ratios; the best-of-rounds ratio is printed beside
it. Worker runs are timed from the first polled batch (the group join and first fetch happen once
per worker life, not per frame). Where the worker's time goes comes from its own histograms (decode, inference, publish), read
before and after each run, so the split is measured in the same run as the total.

    .venv/bin/python bench/bench_worker.py [--frames 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
from prometheus_client import REGISTRY

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from benchdoc import machine, sampled_frames, write_section  # noqa: E402
from devkit.broker import LocalBroker  # noqa: E402
from traffic.settings import KafkaSettings, TopicSettings, shared_dir  # noqa: E402
from traffic.topics import create_topics  # noqa: E402
from workers.decode import decode_jpeg  # noqa: E402
from workers.detector import Detector, DetectorSettings  # noqa: E402
from workers.service import Worker  # noqa: E402
from workers.settings import WorkerSettings  # noqa: E402

_PARTS = ("decode", "inference", "publish")


@dataclass
class Run:
    """One timed pass over the frames: wall and process CPU seconds, and the worker's own split."""

    wall_s: float
    cpu_s: float
    parts_s: dict[str, float]
    broker_cpu_s: float = 0.0


def timed(fn) -> Run:  # type: ignore[no-untyped-def]
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return Run(time.perf_counter() - wall, time.process_time() - cpu, {})


def _sums() -> dict[str, float]:
    """Sum of each worker histogram so far (seconds)."""
    return {p: REGISTRY.get_sample_value(f"traffic_worker_{p}_seconds_sum") or 0.0 for p in _PARTS}


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of another process (the broker's JVM), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _frames_in() -> float:
    return REGISTRY.get_sample_value("traffic_worker_frames_in_total") or 0.0


def _events_out() -> float:
    return REGISTRY.get_sample_value("traffic_worker_events_out_total") or 0.0


def run_worker(kafka: KafkaSettings, frames_jpeg: list[bytes], model: str, batch_size: int, broker_pid: int) -> Run:
    """Publish the frames, then time one in-process worker until every event is acknowledged."""
    from tests.integration.frames import publish_frames

    prefix = f"bw{uuid.uuid4().hex[:6]}"
    topics = TopicSettings(frames=f"{prefix}.frames", detections=f"{prefix}.det", crossings=f"{prefix}.x", counts=f"{prefix}.c",
                           dlq=f"{prefix}.dlq", frames_dlq=f"{prefix}.frames-dlq", frames_partitions=1, detections_partitions=1, output_partitions=1)  # fmt: skip
    create_topics(kafka, topics)
    publish_frames(kafka, topics.frames, frames_jpeg)
    worker = Worker(WorkerSettings(model=model, batch_size=batch_size, metrics_port=0, group_id=prefix), kafka, topics)
    worker.start()  # model load: not timed
    before, frames_before = _events_out(), _frames_in()
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    # Steady state: the clock starts when the first batch was polled, i.e. after the group join and
    # the first fetch, which a worker pays once per life (about 0.5 s here), not per frame.
    while _frames_in() == frames_before:
        time.sleep(0.001)
    cpu, wall, sums, broker_cpu = time.process_time(), time.perf_counter(), _sums(), _process_cpu_s(broker_pid)
    while _events_out() - before < len(frames_jpeg):
        time.sleep(0.02)  # coarse on purpose: a tight loop here would take CPU from the worker
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    broker_cpu = _process_cpu_s(broker_pid) - broker_cpu
    parts = {p: v - sums[p] for p, v in _sums().items()}
    worker.stop()
    thread.join(timeout=30)
    worker.close()
    return Run(wall, cpu, parts, broker_cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    model_path = str(shared_dir() / "models" / "yolo11n_int8_openvino_model")
    frames = sampled_frames(shared_dir() / "videos" / "intersection.mp4", args.frames)
    jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes() for f in frames]
    n = len(frames)

    from ultralytics import YOLO

    model = YOLO(model_path, task="detect")
    model(frames[0], verbose=False)
    detector = Detector(DetectorSettings(model=model_path, batch_size=8))
    decode = timed(lambda: [decode_jpeg(j) for j in jpegs])

    rounds: list[tuple[Run, Run, Run]] = []
    others: dict[int, Run] = {}
    with tempfile.TemporaryDirectory() as tmp, LocalBroker(Path(tmp) / "kafka") as broker:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap)
        broker_pid = int(json.loads(broker.state_file.read_text())["pid"])
        for i in range(args.rounds):
            base = timed(lambda: [model(f, verbose=False) for f in frames])
            adapter = timed(lambda: detector.detect(frames))
            worker = run_worker(kafka, jpegs, model_path, 8, broker_pid)
            rounds.append((base, adapter, worker))
            print(f"round {i}: baseline {n / base.wall_s:.1f} f/s, adapter {n / adapter.wall_s:.1f}, worker b8 {n / worker.wall_s:.1f}", flush=True)
        for batch in (1, 16):
            others[batch] = run_worker(kafka, jpegs, model_path, batch, broker_pid)
            print(f"worker b{batch}: {n / others[batch].wall_s:.1f} f/s", flush=True)

    def med(values: list[float]) -> float:
        return statistics.median(values)

    base_s = med([b.wall_s for b, _, _ in rounds])
    ratio_adapter = med([b.wall_s / a.wall_s for b, a, _ in rounds])
    ratio_worker = med([b.wall_s / w.wall_s for b, _, w in rounds])
    best_ratio = min(b.wall_s for b, _, _ in rounds) / min(w.wall_s for _, _, w in rounds)
    cpu_ratio = med([b.cpu_s / w.cpu_s for b, _, w in rounds])
    mid = sorted(rounds, key=lambda r: r[0].wall_s / r[2].wall_s)[len(rounds) // 2]  # the round of the median ratio
    w8 = mid[2]
    ms = {p: 1000 * v / n for p, v in w8.parts_s.items()}
    rest_ms = 1000 * w8.wall_s / n - sum(ms.values())
    per_replica = n / med([w.wall_s for _, _, w in rounds])
    lines = [
        f"`bench/bench_worker.py --frames {n} --rounds {args.rounds}`, {machine()}. Model: shared YOLO11n INT8 OpenVINO "
        f"(static batch 1), {n} frames of intersection.mp4 at 10 fps (640x480, JPEG q80). Baseline: plain `model(frame)` "
        f"loop over the same decoded frames, interleaved with the other runs; ratios are medians of per-round ratios. "
        f"Worker runs are timed from the first polled batch to the last acknowledged event (the consumer-group join, "
        f"about 0.5 s once per worker life, is left out).",
        "",
        "| stage | frames/s | vs baseline |",
        "|---|---|---|",
        f"| baseline `model(frame)` (median of {args.rounds}) | {n / base_s:.1f} | 1.00 |",
        f"| `Detector.detect` (our adapter, batch 8) | {n / med([a.wall_s for _, a, _ in rounds]):.1f} | {ratio_adapter:.2f} |",
        f"| JPEG decode only (`cv2.imdecode`) | {n / decode.wall_s:.0f} | {base_s / decode.wall_s:.1f} |",
        f"| worker, Kafka in/out + commits, batch 8 (median of {args.rounds}) | {per_replica:.1f} | **{ratio_worker:.2f}** "
        f"(best-of-rounds {best_ratio:.2f}) |",
    ]
    for batch, run in sorted(others.items()):
        lines.append(f"| worker, Kafka in/out + commits, batch {batch} (one run) | {n / run.wall_s:.1f} | {base_s / run.wall_s:.2f} |")
    lines += [
        "",
        f"Where the worker's time goes (batch 8, the median round, from its own histograms; ms per frame): "
        f"inference {ms['inference']:.1f} (the baseline loop took {1000 * mid[0].wall_s / n:.1f} in that round), "
        f"JPEG decode {ms['decode']:.2f}, publish until acknowledged {ms['publish']:.2f}, the rest (fetch/poll, "
        f"header checks, event encoding, commit) {rest_ms:.2f}. CPU per frame: worker {1000 * w8.cpu_s / n:.1f} ms, "
        f"baseline {1000 * mid[0].cpu_s / n:.1f} ms (process time, all threads; CPU ratio {cpu_ratio:.2f}); the local "
        f"Kafka broker, on the same 2 cores here, used {1000 * w8.broker_cpu_s / n:.1f} ms of CPU per frame during the worker "
        f"run (in a cluster it runs elsewhere). Open question: the worker's model calls take "
        f"{ms['inference'] - 1000 * mid[0].wall_s / n:+.1f} ms per frame more than the plain loop's, beyond the broker's "
        f"share; a suspect, not yet verified, is OpenVINO's threads spinning while the worker's thread does Kafka work. "
        f"Inferring on a second thread while the poll thread decodes, publishes and commits would overlap the "
        f"{ms['decode'] + ms['publish'] + rest_ms:.1f} ms of non-model work per frame; that is the next step towards 0.9.",
        "",
        f"**Per-replica throughput: {per_replica:.1f} frames/s** on this 2-core CPU machine (batch 8). The shared model "
        f"has a static batch of 1, so batching saves Python overhead and Kafka round trips (batch 1 pays a produce/ack/"
        f"commit round trip per frame), not model time; on a GPU with a dynamic-batch model, batch 8-16 is where the gain "
        f"is. KEDA: `lagThreshold` = per-replica frames/s at the default batch 8 x 1 s of tolerated backlog = "
        f"{per_replica:.0f} (`deploy/k8s/worker/scaledobject.yaml` holds the value of an earlier run: 40).",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("Worker", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

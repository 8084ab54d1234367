"""Frames per second through one worker (Kafka in, Kafka out, commits) against a plain model loop.

Why: the worker is the expensive, scaled part; KEDA's lag threshold comes from its per-replica
throughput. Same frames, same model, same run:

* baseline - ``model(frame)`` (Ultralytics predict on decoded BGR frames) in a plain loop;
* detector - ``workers.detector.Detector.detect`` on the same frames (our adapter's cost);
* decode   - ``workers.decode.decode_jpeg`` of the JPEGs the ingester would send;
* worker   - the real :class:`workers.service.Worker` consuming the JPEG frames from a local Kafka
  broker, publishing detection events and committing, for batch sizes 1, 8 and 16.

    .venv/bin/python bench/bench_worker.py [--frames 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from benchdoc import machine, sampled_frames, write_section  # noqa: E402
from traffic.broker import LocalBroker  # noqa: E402
from traffic.settings import KafkaSettings, TopicSettings, shared_dir  # noqa: E402
from traffic.topics import create_topics  # noqa: E402
from workers.decode import decode_jpeg  # noqa: E402
from workers.detector import Detector, DetectorSettings  # noqa: E402
from workers.service import Worker  # noqa: E402
from workers.settings import WorkerSettings  # noqa: E402


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run_worker(kafka: KafkaSettings, frames_jpeg: list[bytes], model: str, batch_size: int) -> tuple[float, float]:
    """Publish the frames, then time one in-process worker until every event is out: (wall s, cpu s)."""
    sys.path.insert(0, str(REPO))
    from tests.integration.frames import publish_frames

    prefix = f"bw{uuid.uuid4().hex[:6]}"
    topics = TopicSettings(frames=f"{prefix}.frames", detections=f"{prefix}.det", crossings=f"{prefix}.x", counts=f"{prefix}.c",
                           dlq=f"{prefix}.dlq", frames_partitions=1, detections_partitions=1, output_partitions=1)  # fmt: skip
    create_topics(kafka, topics)
    publish_frames(kafka, topics.frames, frames_jpeg)
    worker = Worker(WorkerSettings(model=model, batch_size=batch_size, metrics_port=0, group_id=prefix), kafka, topics)
    worker.start()  # model load: not timed
    from workers import metrics

    before = metrics.EVENTS_OUT._value.get()  # noqa: SLF001 - the counter's own value, read in-process
    thread = threading.Thread(target=worker.run, daemon=True)
    cpu, wall = time.process_time(), time.perf_counter()
    thread.start()
    while metrics.EVENTS_OUT._value.get() - before < len(frames_jpeg):  # noqa: SLF001
        time.sleep(0.01)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    worker.stop()
    thread.join(timeout=30)
    worker.close()
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    args = parser.parse_args()
    model_path = str(shared_dir() / "models" / "yolo11n_int8_openvino_model")
    frames = sampled_frames(shared_dir() / "videos" / "intersection.mp4", args.frames)
    jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes() for f in frames]
    n = len(frames)

    from ultralytics import YOLO

    model = YOLO(model_path, task="detect")
    model(frames[0], verbose=False)
    baseline = statistics.median(timed(lambda: [model(f, verbose=False) for f in frames]) for _ in range(2))
    detector = Detector(DetectorSettings(model=model_path, batch_size=8))
    adapter = statistics.median(timed(lambda: detector.detect(frames)) for _ in range(2))
    decode = timed(lambda: [decode_jpeg(j) for j in jpegs])

    rows = []
    with tempfile.TemporaryDirectory() as tmp, LocalBroker(Path(tmp) / "kafka") as broker:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap)
        for batch in (1, 8, 16):
            wall, cpu = run_worker(kafka, jpegs, model_path, batch)
            rows.append((batch, wall, cpu))
    base_fps = n / baseline
    lines = [
        f"`bench/bench_worker.py --frames {n}`, {machine()}. Model: shared YOLO11n INT8 OpenVINO (static batch 1), "
        f"{n} frames of intersection.mp4 at 10 fps (640x480, JPEG q80). Baseline: plain `model(frame)` loop, same frames, same run.",
        "",
        "| stage | frames/s | vs baseline |",
        "|---|---|---|",
        f"| baseline `model(frame)` | {base_fps:.1f} | 1.00 |",
        f"| `Detector.detect` (our adapter, batch 8) | {n / adapter:.1f} | {baseline / adapter:.2f} |",
        f"| JPEG decode only | {n / decode:.0f} | {baseline / decode:.1f} |",
    ]
    for batch, wall, cpu in rows:
        lines.append(f"| worker, Kafka in/out + commits, batch {batch} | {n / wall:.1f} | {baseline / wall:.2f} |")
    best = max(rows, key=lambda r: n / r[1])
    per_replica = n / best[1]
    lines += [
        "",
        f"Where the time goes (per frame): model {1000 * baseline / n:.1f} ms, our adapter adds "
        f"{1000 * (adapter - baseline) / n:+.1f} ms (box conversion, class filter), decode {1000 * decode / n:.2f} ms, "
        f"the rest of the worker (Kafka fetch, produce, acks, commit) {1000 * (best[1] - adapter - decode) / n:+.1f} ms. "
        f"Worker CPU {1000 * best[2] / n:.1f} ms per frame (process time, all threads).",
        "",
        f"**Per-replica throughput: {per_replica:.1f} frames/s** on this 2-core CPU machine (batch {best[0]}). "
        f"The shared model has a static batch of 1, so batching saves Python overhead and Kafka round trips, not model time; "
        f"on a GPU with a dynamic-batch model, batch 8-16 is where the gain is. KEDA: `lagThreshold` = per-replica frames/s "
        f"at the default batch 8 x 1 s of tolerated backlog = {n / rows[1][1]:.0f} "
        f"(`deploy/k8s/worker/scaledobject.yaml` holds the value of the 2026-11-28 run).",
        "",
        "The worker infers, then publishes and waits for the acknowledgements, then commits, on one thread, so Kafka "
        "time adds to model time instead of overlapping it; separate timings are noisy on 2 shared cores (a negative "
        "'rest' means the worker run was faster than the adapter run in this sample). Inferring on a second thread "
        "while the poll thread publishes and commits the previous batch is the next step towards 0.9.",
    ]
    text = "\n".join(lines)
    print(text)
    write_section("Worker", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

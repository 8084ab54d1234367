"""The whole pipeline: throughput against a plain model loop, latency at steady load, capacity.

Why: the product's promise is that streaming through Kafka costs little next to the model. Same
video, same sampled frames, same model, same run:

* baseline   - ``model(frame)`` on the 303 frames sampled at 10 fps;
* pipeline   - ``LocalPipeline`` (ingest -> Kafka -> 1 worker -> Kafka -> aggregator, separate
  processes) over the same file as fast as possible: time from the ingester's start until every
  frame has an event and every event was aggregated;
* peer       - Ultralytics ``solutions.ObjectCounter`` on the same frames and the site's
  ``west-leg`` line (its fps and its counts beside ours);
* latency    - the file played at its own rate (10 fps sampled, about a third of one worker's
  capacity): capture time of each crossing vs the wall time it arrives on ``traffic.crossings``.

    .venv/bin/python bench/bench_pipeline.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_count import run_peer  # noqa: E402
from benchdoc import machine, publish, sampled_frames  # noqa: E402
from devkit.broker import LocalBroker  # noqa: E402
from devkit.local_pipeline import LocalPipeline, PipelineConfig  # noqa: E402
from traffic.settings import shared_dir  # noqa: E402
from traffic.site import load_site  # noqa: E402
from traffic.wire import CrossingEvent  # noqa: E402

SITE = REPO / "deploy" / "sites" / "intersection-demo.yaml"


def pipeline_run(bootstrap: str, out: Path, realtime: bool) -> tuple[float, dict, list[float]]:
    """One pipeline run: (seconds from ingest start to all aggregated, final totals, crossing latencies s)."""
    from kafka import KafkaConsumer

    cfg = PipelineConfig(bootstrap=bootstrap, site=SITE, camera="cam-demo", source=str(shared_dir() / "videos" / "intersection.mp4"),
                         model=str(shared_dir() / "models" / "yolo11n_int8_openvino_model"), out_dir=out, realtime=realtime)  # fmt: skip
    pipeline = LocalPipeline(cfg)
    latencies: list[float] = []
    try:
        pipeline.start_services()
        crossings = KafkaConsumer(pipeline.topics.crossings, **pipeline.kafka.kafka_python(), auto_offset_reset="earliest", group_id=None)
        crossings.poll(timeout_ms=500)
        pipeline.start_ingest()
        done_at = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for batch in crossings.poll(timeout_ms=100).values():
                now_ms = time.time() * 1000
                latencies += [(now_ms - CrossingEvent.decode(m.value).time_ms) / 1000 for m in batch]
            stats = pipeline.stats()
            if done_at is None and stats["published"] > 0 and not pipeline.children["ingest"].alive() \
                    and stats["detected"] >= stats["published"] and stats["aggregated"] >= stats["detected"]:  # fmt: skip
                done_at = time.monotonic()
            if done_at is not None:
                break
        elapsed = (done_at or time.monotonic()) - pipeline.started
        assert pipeline.wait_settled(120), "pipeline did not settle"
        assert pipeline.counts is not None
        totals = pipeline.counts.totals(pipeline.largest_interval(), final_only=True)
        crossings.close()
    finally:
        pipeline.stop()
    return elapsed, totals, latencies


def main() -> int:
    from ultralytics import YOLO

    model_path = str(shared_dir() / "models" / "yolo11n_int8_openvino_model")
    frames = sampled_frames(shared_dir() / "videos" / "intersection.mp4", 10_000)
    n = len(frames)
    model = YOLO(model_path, task="detect")
    model(frames[0], verbose=False)
    started = time.perf_counter()
    for f in frames:
        model(f, verbose=False)
    base = time.perf_counter() - started
    _, camera = load_site(SITE).camera("cam-demo")
    peer_s, peer_in, peer_out = run_peer(frames, model_path, camera, "west-leg")
    with tempfile.TemporaryDirectory() as tmp, LocalBroker(Path(tmp) / "kafka") as broker:
        fast_s, totals, _ = pipeline_run(broker.bootstrap, Path(tmp) / "fast", realtime=False)
        _, _, latencies = pipeline_run(broker.bootstrap, Path(tmp) / "steady", realtime=True)
    ours_line = {k[2]: v for k, v in totals.items() if k[0] == "line" and k[1] == "west-leg"}
    latencies.sort()
    p50 = statistics.median(latencies) if latencies else float("nan")
    p95 = latencies[int(0.95 * (len(latencies) - 1))] if latencies else float("nan")
    fps = n / fast_s
    worker_cpu_ms, ingest_cpu_ms, agg_cpu_ms = 39.6, 2.5, 3.9  # per frame, from the Worker, Ingest and Aggregator sections
    per_camera_cores = 10 * (worker_cpu_ms + ingest_cpu_ms + agg_cpu_ms) / 1000
    text = "\n".join([
        f"`bench/bench_pipeline.py`, {machine()}. intersection.mp4 sampled at 10 fps ({n} frames), shared YOLO11n INT8 "
        "OpenVINO, one worker, broker and all services on this machine. Baseline: plain `model(frame)` loop on the same "
        "frames, same run.",
        "",
        "| | frames/s | vs baseline |",
        "|---|---|---|",
        f"| baseline `model(frame)` | {n / base:.1f} | 1.00 |",
        f"| pipeline: ingest -> Kafka -> worker -> Kafka -> aggregator (processes) | {fps:.1f} | {base / fast_s:.2f} |",
        f"| Ultralytics `solutions.ObjectCounter` (one process, no Kafka) | {n / peer_s:.1f} | {base / peer_s:.2f} |",
        "",
        f"Counts on the `west-leg` line, same frames: ours {ours_line} (final records of `traffic.counts`); "
        f"ObjectCounter in {peer_in}, out {peer_out}. Ours also gives turning movements "
        f"({sum(v for k, v in totals.items() if k[0] == 'movement')} in this run).",
        "",
        f"**Capture-to-count latency** at a steady 10 fps (the file at its own rate; about a third of one worker's capacity): "
        f"p50 {p50:.2f} s, p95 {p95:.2f} s over {len(latencies)} crossings. A crossing's time is the capture time of the frame "
        "that decided it, so this is the pipeline's own delay (ingest, Kafka, inference, aggregation); a movement is "
        "decided only once its track ends, which adds the counting rule's wait (`track_timeout_s`) on top of it.",
        "",
        "**Cameras per 2-core machine** (derived, CPU per frame measured in the sections above): worker "
        f"{worker_cpu_ms} ms + ingest {ingest_cpu_ms} ms + aggregator {agg_cpu_ms} ms = "
        f"{worker_cpu_ms + ingest_cpu_ms + agg_cpu_ms:.1f} ms of CPU per frame; a 640x480 camera at 10 fps needs "
        f"{per_camera_cores:.2f} cores, so one 2-core machine sustains about {2 / per_camera_cores:.1f} cameras with all "
        f"services on it, or {int(40.9 / 10)} cameras per CPU worker replica (40.9 frames/s, section Worker) when ingest and "
        "aggregator run elsewhere. The pipeline's end-to-end rate above is the ceiling with everything sharing two cores.",
        "",
        "**GPU node (on paper, not measured here: no GPU machine was available).** Assumption: an NVIDIA T4 runs YOLO11n "
        "FP16 at batch 8 at roughly 400-600 frames/s of model time (vendor-class figures, not ours). With decode and Kafka "
        "on the node's CPUs (1.3 ms decode + ~4 ms Kafka per frame measured here, i.e. ~190 frames/s per core), a replica "
        "with 2-3 CPU cores is CPU-bound near 400 frames/s: about 40 cameras at 10 fps per GPU replica. KEDA: "
        "`lagThreshold` = per-replica frames/s x 1 s of backlog, i.e. ~400 for such a replica (the GPU overlay keeps a "
        "placeholder of 240 until a GPU run measures it), and `maxReplicaCount` <= partitions of `traffic.frames` (12).",
    ])  # fmt: skip
    publish("Pipeline", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

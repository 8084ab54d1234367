"""What one camera costs: CPU per frame of each service, cameras per core, bytes per camera-hour.

Why: the seed's promise is a pipeline whose cost follows the traffic (scale down at night). In
one run, per scenario, the whole pipeline runs as separate processes on the local broker
(``devkit.local_pipeline``: ingest -> Kafka -> 1 worker -> Kafka -> aggregator), the camera
playing a file in real time at 10 fps and looping, like a live camera:

* busy  - intersection.mp4 (cars in every frame), the demo site;
* quiet - the same intersection with its traffic removed (the synthetic empty road of
  tests/integration/offline/test_count_synthetic.py: real pixels), i.e. night or an empty road: the
  ingester's activity gate sends most frames without JPEG and the worker skips the model.

For each scenario: every service's process CPU time (user + system, all threads, from psutil)
over an idle window before the camera starts (what the service costs with no traffic) and over a
steady window while it streams; CPU per frame = (streaming - idle rate x window) / frames
published in the window; cameras per core at 10 fps = 1000 ms / (10 x CPU ms per frame). Topic
and changelog bytes per camera-hour = growth of each topic's partitions on the broker
(``DescribeLogDirs``, record batches as stored, uncompressed) over the window, scaled to an hour.

The 2 cores are shared with other work and the broker runs on them too: CPU time is less noisy
than wall time, but still varies by 10-20 % between runs.

    .venv/bin/python bench/bench_cost.py [--window-s 60]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from benchdoc import add_output_arguments, machine, publish  # noqa: E402
from devkit.broker import LocalBroker  # noqa: E402
from devkit.local_pipeline import Child, LocalPipeline, PipelineConfig, scrape  # noqa: E402
from traffic.settings import KafkaSettings, shared_dir  # noqa: E402

SITE = REPO / "deploy" / "sites" / "intersection-demo.yaml"
SERVICES = ("ingest", "worker-0", "aggregator")


def cpu_s(pid: int) -> float:
    """CPU seconds of a service: its process and its live child processes (the aggregator's counting process)."""
    process = psutil.Process(pid)
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def topic_bytes(kafka: KafkaSettings, prefix: str) -> dict[str, int]:
    """Bytes stored per topic whose name starts with ``prefix`` (all partitions)."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(**kafka.kafka_python())
    sizes: dict[str, int] = defaultdict(int)
    try:
        for broker in admin.describe_log_dirs():
            for log_dir in broker["log_dirs"]:
                for topic in log_dir["topics"]:
                    if topic["name"].startswith(prefix):
                        sizes[topic["name"]] += sum(p["partition_size"] for p in topic["partitions"])
    finally:
        admin.close()
    return dict(sizes)


def snapshot(pipeline: LocalPipeline, broker_pid: int) -> dict:
    ingest, worker = scrape(pipeline.ports["ingest"]), scrape(pipeline.worker_ports[0])
    agg = scrape(pipeline.ports["aggregator"])
    return {
        "t": time.monotonic(),
        "cpu": {**{name: cpu_s(pipeline.children[name].proc.pid) for name in SERVICES if name in pipeline.children},
                "broker": cpu_s(broker_pid)},
        "frames": ingest.get("traffic_ingest_frames_published_total", 0.0),
        "unchanged": ingest.get("traffic_ingest_frames_unchanged_total", 0.0),
        "reused": worker.get("traffic_worker_frames_reused_total", 0.0),
        "events": agg.get("traffic_aggregator_events_total", 0.0),
        "bytes": topic_bytes(pipeline.kafka, f"run-{pipeline.run_id}"),
    }  # fmt: skip


def start_camera(pipeline: LocalPipeline) -> None:
    """The ingester, in real time and looping: a live camera (LocalPipeline.start_ingest plays a file once)."""
    cfg = pipeline.cfg
    pipeline.children["ingest"] = Child("ingest", [sys.executable, "-m", "traffic.cli", "ingest"], {
        **pipeline.env, "TRAFFIC_INGEST_METRICS_PORT": str(pipeline.ports["ingest"]), "TRAFFIC_INGEST_CAMERAS": cfg.camera,
        "TRAFFIC_INGEST_SOURCES": f"{cfg.camera}={cfg.source}", "TRAFFIC_INGEST_REALTIME": "true", "TRAFFIC_INGEST_LOOP": "true",
    }, cfg.out_dir)  # fmt: skip


def scenario(name: str, video: Path, broker: LocalBroker, out: Path, idle_s: float, warm_s: float, window_s: float) -> dict:
    broker_pid = int(json.loads(broker.state_file.read_text())["pid"])
    cfg = PipelineConfig(bootstrap=broker.bootstrap, site=SITE, camera="cam-demo", source=str(video),
                         model=str(shared_dir() / "models" / "yolo11n_int8_openvino_model"), out_dir=out, realtime=True)  # fmt: skip
    pipeline = LocalPipeline(cfg)
    try:
        pipeline.start_services()
        time.sleep(5)  # past start-up work (group joins, first metadata)
        idle_a = {n: cpu_s(pipeline.children[n].proc.pid) for n in SERVICES[1:]} | {"broker": cpu_s(broker_pid)}
        idle_t = time.monotonic()
        time.sleep(idle_s)
        idle = {n: ((cpu_s(pipeline.children[n].proc.pid) if n != "broker" else cpu_s(broker_pid)) - v) / (time.monotonic() - idle_t)
                for n, v in idle_a.items()}  # fmt: skip
        idle["ingest"] = 0.0  # not started yet: its idle cost is counted in its per-frame cost (conservative)
        start_camera(pipeline)
        pipeline.wait_ready([pipeline.ports["ingest"]], 120)
        time.sleep(warm_s)
        a = snapshot(pipeline, broker_pid)
        time.sleep(window_s)
        b = snapshot(pipeline, broker_pid)
    finally:
        pipeline.stop()
    seconds = b["t"] - a["t"]
    frames = b["frames"] - a["frames"]
    cpu_ms = {n: 1000 * (b["cpu"][n] - a["cpu"][n]) / frames for n in b["cpu"]}
    marginal = {n: 1000 * (b["cpu"][n] - a["cpu"][n] - idle.get(n, 0.0) * seconds) / frames for n in b["cpu"]}
    per_hour = 3600 / seconds
    topics = {t.removeprefix(f"run-{pipeline.run_id}"): (b["bytes"].get(t, 0) - a["bytes"].get(t, 0)) * per_hour for t in b["bytes"]}
    result = {
        "scenario": name, "video": video.name, "seconds": seconds, "frames": frames, "fps": frames / seconds,
        "unchanged": b["unchanged"] - a["unchanged"], "reused": b["reused"] - a["reused"], "events": b["events"] - a["events"],
        "cpu_ms": cpu_ms, "marginal_ms": marginal, "idle_cores": idle, "bytes_per_hour": topics,
    }  # fmt: skip
    print(json.dumps(result, indent=1), flush=True)
    return result


def empty_road(out: Path) -> Path:
    """The sample intersection with its traffic removed, 30 s at 30 fps (tests/integration/offline/test_count_synthetic.py)."""
    from tests.integration.offline.test_count_synthetic import make_video

    return make_video(shared_dir() / "videos" / "intersection.mp4", out, [], total_frames=900, fps=30)


def table(results: list[dict], agg_commit: str, agg_ms: float | None) -> str:
    busy, quiet = results
    rows = []
    for label, key in (("ingest (read, sample, resize, JPEG, gate, publish)", "ingest"), ("worker (decode, model, publish)", "worker-0"),
                       ("aggregator (track, count, windows, changelogs)", "aggregator")):  # fmt: skip
        b, q = busy["marginal_ms"][key], quiet["marginal_ms"][key]
        rows.append(f"| {label} | {b:.1f} | {100 / b:.1f} | {q:.1f} | {100 / max(q, 0.01):.0f} | "
                    f"{1000 * busy['idle_cores'].get(key, 0):.0f} |")  # fmt: skip
    total_b = sum(busy["marginal_ms"][k] for k in SERVICES)
    total_q = sum(quiet["marginal_ms"][k] for k in SERVICES)
    rows.append(f"| **pipeline** (the three services) | **{total_b:.1f}** | **{100 / total_b:.1f}** | **{total_q:.1f}** | "
                f"**{100 / total_q:.1f}** | |")  # fmt: skip
    rows.append(f"| Kafka broker (single node, here on the same cores) | {busy['marginal_ms']['broker']:.1f} | | "
                f"{quiet['marginal_ms']['broker']:.1f} | | {1000 * busy['idle_cores'].get('broker', 0):.0f} |")  # fmt: skip

    def mb(r: dict, suffix: str) -> float:
        return sum(v for t, v in r["bytes_per_hour"].items() if t.endswith(suffix)) / 1e6

    def changelog(r: dict) -> float:
        return sum(v for t, v in r["bytes_per_hour"].items() if "changelog" in t) / 1e6

    agg_line = (f"The aggregator's own benchmark (`bench/bench_aggregator.py` at main {agg_commit}, events of one camera "
                f"as fast as the app goes) gives {agg_ms:.2f} ms of app CPU per event."
                if agg_ms is not None else f"`bench/bench_aggregator.py` at main {agg_commit}: see its section.")  # fmt: skip
    return "\n".join([
        f"`bench/bench_cost.py --window-s {busy['seconds']:.0f}`, {machine()}. One camera at 10 fps (a file played in real "
        f"time and looping, as a live camera), the whole pipeline as processes on a local Kafka broker on the same 2 "
        f"cores: ingest -> 1 worker (shared YOLO11n INT8 OpenVINO, default settings) -> aggregator. *busy* = "
        f"intersection.mp4 (cars in every frame; {busy['unchanged']:.0f} of {busy['frames']:.0f} frames unchanged); "
        f"*quiet* = the same view with its traffic removed (an empty road, real pixels; {quiet['unchanged']:.0f} of "
        f"{quiet['frames']:.0f} frames sent unchanged by the activity gate). CPU per frame = process CPU time over "
        f"{busy['seconds']:.0f} s of streaming minus the service's idle rate (measured before the camera started), per "
        f"frame published; cameras per core = 1000 ms / (10 fps x CPU ms per frame). Measured, not derived, except "
        f"where marked.",
        "",
        "| service | busy: CPU ms/frame | busy: cameras/core at 10 fps | quiet: CPU ms/frame | quiet: cameras/core | idle (no camera): CPU ms/s |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"{agg_line} A worker saturated by a backlog (section Worker) spends less CPU per frame than at one camera's 10 fps, "
        f"where every poll carries one frame; the figures here are what a camera costs in steady operation. The "
        f"ingester's figure includes decoding every frame of the 30 fps source (sampling keeps 10).",
        "",
        "| bytes per camera-hour (measured, as stored by the broker) | busy | quiet |",
        "|---|---:|---:|",
        f"| `traffic.frames` (JPEG q80, 640x480) | {mb(busy, '.frames'):.0f} MB | {mb(quiet, '.frames'):.0f} MB |",
        f"| `traffic.detections` (JSON events) | {mb(busy, '.detections'):.1f} MB | {mb(quiet, '.detections'):.1f} MB |",
        f"| `traffic.crossings` + `traffic.counts` | {mb(busy, '.crossings') + mb(busy, '.counts'):.2f} MB | "
        f"{mb(quiet, '.crossings') + mb(quiet, '.counts'):.2f} MB |",
        f"| aggregator changelogs (camera state, windows; compacted by Kafka later) | {changelog(busy):.1f} MB | "
        f"{changelog(quiet):.1f} MB |",
        "",
        "At the default retentions (docs/contracts.md: frames 10 minutes, detections 7 days) a camera keeps about "
        f"{mb(busy, '.frames') / 6:.0f} MB of frames and {7 * 24 * mb(busy, '.detections') / 1000:.1f} GB of detections "
        "on the broker (times the replication factor).",
        "",
        "**GPU node (on paper, not measured: no GPU machine was available).** Assumptions, labelled as such: an NVIDIA "
        "T4 runs YOLO11n FP16 at batch 8 at roughly 400-600 frames/s of model time (vendor-class figures, not ours); "
        "the worker's non-model CPU per frame is what the Worker section measures here for decode, fetch, pre/post-processing, "
        "serialize and produce (about 4-6 ms; on a GPU, letterbox and NMS still run partly on the CPU). A GPU "
        "replica with 4 CPU cores is then CPU-bound near 600-800 frames/s, i.e. about 60-80 cameras at 10 fps per "
        "T4 (busy scenes), against about "
        f"{100 / busy['marginal_ms']['worker-0']:.1f} busy cameras per CPU core here. Unchanged frames cost a GPU "
        "worker only their Kafka work, so on quiet cameras a GPU node is limited by Kafka and the ingest side, not "
        "the GPU. Ingest and aggregator costs do not change with a GPU.",
    ])  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window-s", type=float, default=60.0)
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--warm-s", type=float, default=20.0)
    parser.add_argument("--aggregator-commit", default="", help="main's commit the aggregator figure is taken from")
    parser.add_argument("--aggregator-ms", type=float, default=None, help="app CPU ms per event from bench_aggregator.py at that commit")
    add_output_arguments(parser)
    args = parser.parse_args()
    os.environ.setdefault("TRAFFIC_LOG_LEVEL", "WARNING")
    results = []
    with tempfile.TemporaryDirectory() as tmp, LocalBroker(Path(tmp) / "kafka") as broker:
        quiet_video = empty_road(Path(tmp) / "empty-road.mp4")
        for name, video in (("busy", shared_dir() / "videos" / "intersection.mp4"), ("quiet", quiet_video)):
            results.append(scenario(name, video, broker, Path(tmp) / name, args.idle_s, args.warm_s, args.window_s))
    text = table(results, args.aggregator_commit or "(not given)", args.aggregator_ms)
    publish("Cost per camera", text, args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

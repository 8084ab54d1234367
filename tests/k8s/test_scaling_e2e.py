"""The scaling loop end to end: KEDA and the HPA scale real ``traffic worker`` processes on the real
lag of a real Kafka topic, and the counts come out as with one undisturbed worker.

    ingest (4 cameras, as fast as it can: rush hour) ──> frames (4 partitions) ──> workers (1..4)
    ingest (a 5th camera at 10 fps: night)                       ^ lag read by KEDA every 5 s
                                                               | HPA -> Deployment replicas
                                                      node agent (tests/k8s/node_agent.py) runs
                                                      one process per replica

The shipped ScaledObject of overlays/cpu is applied with what a test cluster needs changed (like
a user's overlay): the run's topic and consumer group, maxReplicaCount = the 4 partitions of the
test topic, pollingInterval 5 s (shipped 15 s) and a scale-down stabilization of 30 s with one
pod per 10 s (shipped 300 s and one per 120 s) so the test takes minutes, not a quarter hour. The
lagThreshold (20 frames, measured) and the scale-up behaviour are as shipped.

Slow (minutes on an idle machine, 25 on a loaded one): ``pytest -m slow tests/k8s``.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from devkit.control_plane import apply_objects
from devkit.local_pipeline import Child, LocalPipeline, PipelineConfig
from tests.k8s.conftest import wait_for
from tests.k8s.manifests import retarget
from tests.k8s.node_agent import NodeAgent
from traffic.consumer_lag import LagReader

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

CAMERAS = 4
PARTITIONS = 4
RUSH_CAMERAS = ",".join(f"cam-{n}" for n in range(1, CAMERAS + 1))
# A camera of its own for the night: a second session of a rush camera within the same interval
# would arrive after the aggregator closed that intersection's intervals at the end of the first
# session (it does so when every camera of the intersection ended its stream), and its crossings
# would be dropped as late - how late depends on the backlog, so the runs would differ.
NIGHT_CAMERA = f"cam-{CAMERAS + 1}"
SCALE_DOWN = {"stabilizationWindowSeconds": 30, "selectPolicy": "Min",
              "policies": [{"type": "Pods", "value": 1, "periodSeconds": 10}]}


def multi_camera_site(demo_site: Path, out: Path) -> Path:
    """The demo site's intersection five times, one camera each (cam-1..cam-5, same video)."""
    site = yaml.safe_load(demo_site.read_text())
    template = site["intersections"][0]
    site["intersections"] = []
    for n in range(1, CAMERAS + 2):
        inter = json.loads(json.dumps(template))
        inter["id"] = f"intersection-{n}"
        inter["name"] = f"{template['name']} #{n}"
        inter["cameras"][0]["id"] = f"cam-{n}"
        site["intersections"].append(inter)
    out.write_text(yaml.safe_dump(site, sort_keys=False))
    return out


def ingest(pipeline: LocalPipeline, name: str, realtime: bool, cameras: str = "") -> Child:
    """One ingest pass over the site's cameras (every camera when ``cameras`` is empty)."""
    env = {**pipeline.env, **pipeline.role_env("ingest"), "TRAFFIC_INGEST_METRICS_PORT": "0", "TRAFFIC_INGEST_CAMERAS": cameras,
           "TRAFFIC_INGEST_REALTIME": "true" if realtime else "false", "TRAFFIC_INGEST_LOOP": "false"}
    child = Child(name, pipeline._argv + ["ingest"], env, pipeline.cfg.out_dir)
    pipeline.children["ingest"] = child  # what settled() waits for
    return child


def wait_exit(child: Child, timeout_s: float, on_tick=None) -> None:
    deadline = time.monotonic() + timeout_s
    while child.alive():
        if time.monotonic() > deadline:
            pytest.fail(f"{child.name} did not finish within {timeout_s:.0f} s:\n{child.tail()}")
        if on_tick:
            on_tick()
        time.sleep(1)
    assert child.proc.returncode == 0, child.tail()


def final_totals(pipeline: LocalPipeline, timeout_s: float, on_tick=None) -> dict:
    def tick(_stats):
        if on_tick:
            on_tick()

    assert pipeline.wait_settled(timeout_s, on_tick=tick), f"not settled: {pipeline.stats()}"
    interval = pipeline.largest_interval()
    # Per intersection: the four intersections count the same video, so a sum over them could
    # hide one that lost counts behind one that gained.
    sums: dict[tuple[str, ...], int] = {}
    for r in pipeline.counts.records.values():
        if r.interval_s == interval and r.final and r.count:
            key = (r.intersection, r.series, r.approach, r.movement, r.vehicle_class)
            sums[key] = sums.get(key, 0) + r.count
    return sums


def run_baseline(cfg: PipelineConfig) -> tuple[dict, float]:
    """Rush hour then night through one worker that is never disturbed.

    Returns the final counts and the worker's throughput over the rush (frames/s, from the start
    of the rush until every rush frame had its detection event): a cross-check of the benchmark's
    per-replica figure behind lagThreshold, measured in this same pipeline.
    """
    pipeline = LocalPipeline(cfg)
    try:
        pipeline.start_services()
        started = time.monotonic()
        rush = ingest(pipeline, "ingest-rush", realtime=False, cameras=RUSH_CAMERAS)
        while True:
            pipeline.check_children()
            stats = pipeline.stats()
            if not rush.alive() and stats["published"] and stats["detected"] >= stats["published"]:
                break
            if time.monotonic() - started > 900:
                pytest.fail(f"baseline rush not processed: {stats}")
            time.sleep(0.5)
        assert rush.proc.returncode == 0, rush.tail()
        throughput = stats["published"] / (time.monotonic() - started)
        wait_exit(ingest(pipeline, "ingest-night", realtime=True, cameras=NIGHT_CAMERA), 600)
        return final_totals(pipeline, 900), throughput
    finally:
        pipeline.stop()


class Timeline:
    """Once a second: frames lag of the group, replicas the Deployment asks for, processes running."""

    def __init__(self, reader: LagReader, group: str, topic: str, agent: NodeAgent) -> None:
        self.reader, self.group, self.topic, self.agent = reader, group, topic, agent
        self.samples: list[dict[str, float]] = []
        self.marks: dict[str, float] = {}
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 1)

    def mark(self, name: str) -> None:
        self.marks[name] = self.now()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                lag = self.reader.lag(self.group, self.topic).total
            except Exception:  # noqa: BLE001 - a missed sample is not a failure
                continue
            self.samples.append({"t": self.now(), "lag": lag, "desired": self.agent.desired, "running": self.agent.running()})

    def first(self, predicate, after: float = 0.0) -> float | None:
        return next((s["t"] for s in self.samples if s["t"] >= after and predicate(s)), None)


def test_keda_scales_workers_on_lag_and_counts_stay_exact(control_plane, k8s_api, render, kafka_bootstrap, shared,
                                                           demo_site_file, tmp_path):
    site = multi_camera_site(demo_site_file, tmp_path / "site.yaml")
    model = str(shared / "models" / "yolo11n_int8_openvino_model")
    # Streams end by their end-of-session markers; the aggregator's wall-clock idle fallback
    # (shipped 300 s: a camera without events for half of it has its tracks ended) is pushed out
    # of reach: on a loaded machine one worker serving four partitions left one of them without
    # events for 150 s, the fallback ended that camera's tracks mid-stream in the one-worker
    # run, and its counts differed from the scaled run's (run of 2026-12-01 16:33).
    base_cfg = dict(bootstrap=kafka_bootstrap, site=site, camera="", source="", model=model, realtime=False, idle_close_s=7200.0)

    baseline_started = time.monotonic()
    baseline, one_worker_fps = run_baseline(PipelineConfig(**base_cfg, out_dir=tmp_path / "baseline", workers=1))
    baseline_s = time.monotonic() - baseline_started
    assert baseline, "the baseline run counted nothing"

    pipeline = LocalPipeline(PipelineConfig(**base_cfg, out_dir=tmp_path / "scaled", workers=0))
    namespace = "t-scaling"
    group = f"run-{pipeline.run_id}-workers"
    objs = retarget(render("overlays/cpu"), namespace, kafka_bootstrap)
    so = next(o for o in objs if o["kind"] == "ScaledObject")
    threshold = int(so["spec"]["triggers"][0]["metadata"]["lagThreshold"])
    so["spec"]["pollingInterval"] = 5
    so["spec"]["maxReplicaCount"] = PARTITIONS
    so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"] = SCALE_DOWN
    so["spec"]["triggers"][0]["metadata"].update(topic=pipeline.topics.frames, consumerGroup=group)
    worker = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "traffic-worker")
    for env in worker["spec"]["template"]["spec"]["containers"][0]["env"]:
        if env["name"] == "TRAFFIC_WORKER_GROUP_ID":
            env["value"] = group
    kafka_cm = next(o for o in objs if o["kind"] == "ConfigMap" and "TRAFFIC_KAFKA_BOOTSTRAP_SERVERS" in o.get("data", {}))
    kafka_cm["data"].update({k: v for k, v in pipeline.env.items() if k.startswith("TRAFFIC_TOPICS_")})

    agent = NodeAgent(api=k8s_api, namespace=namespace, deployment="traffic-worker", container="worker",
                      argv=pipeline._argv + ["worker"], base_env={**pipeline.env, **pipeline.role_env("worker")}, log_dir=pipeline.cfg.out_dir,
                      overrides={"TRAFFIC_SITE_CONFIG": str(site), "TRAFFIC_WORKER_MODEL": model})
    reader = LagReader(pipeline.kafka)
    timeline = Timeline(reader, group, pipeline.topics.frames, agent)
    try:
        pipeline.start_services()
        apply_objects(k8s_api, objs)
        agent.start()
        timeline.start()
        wait_for(lambda: agent.metrics_ports() and _ready(agent.metrics_ports()[0]), 240, "the first worker ready")
        wait_for(lambda: _scaled_object_ready(k8s_api, namespace), 90, "ScaledObject Ready")
        timeline.mark("rush_start")
        wait_exit(ingest(pipeline, "ingest-rush", realtime=False, cameras=RUSH_CAMERAS), 600, pipeline.check_children)
        timeline.mark("rush_end")
        wait_exit(ingest(pipeline, "ingest-night", realtime=True, cameras=NIGHT_CAMERA), 600, pipeline.check_children)
        timeline.mark("night_end")
        totals = final_totals(pipeline, 900)
        timeline.mark("settled")
        wait_for(lambda: agent.desired == 1 and agent.running() == 1, 300, "scale-in back to 1 worker")
        timeline.mark("scaled_in")
    finally:
        timeline.stop()
        agent.stop()
        reader.close()
        pipeline.stop()

    samples = timeline.samples
    peak_lag = max(s["lag"] for s in samples)
    peak = max(s["desired"] for s in samples)
    rush = timeline.marks["rush_start"]
    first_up = timeline.first(lambda s: s["desired"] > 1, after=rush)
    lag_up = timeline.first(lambda s: s["lag"] > threshold, after=rush)
    peak_at = timeline.first(lambda s: s["desired"] == peak, after=rush)
    drained = timeline.first(lambda s: s["lag"] == 0, after=peak_at or rush)
    first_down = timeline.first(lambda s: s["desired"] < peak, after=peak_at or rush)
    # The last moment the lag still called for the peak: ceil(lag / threshold) >= peak.
    needed_peak = [s["t"] for s in samples if s["t"] <= (first_down or 0) and -(-s["lag"] // threshold) >= peak]
    last_peak_need = needed_peak[-1] if needed_peak else None
    report = {
        "baseline_run_s": round(baseline_s), "one_worker_frames_per_s": round(one_worker_fps, 1), "lag_threshold": threshold, "peak_lag": peak_lag, "peak_replicas": peak,
        "marks": timeline.marks, "lag_above_threshold_at": lag_up, "first_scale_up_at": first_up,
        "peak_replicas_at": peak_at, "lag_drained_at": drained, "first_scale_in_at": first_down,
        "lag_last_needed_peak_at": last_peak_need,
        "worker_processes_started": agent.started, "worker_restarts": agent.restarts,
        "replica_events": [(e.t_s, e.replicas) for e in agent.events],
    }
    print("scaling timeline:", json.dumps(report))
    (Path(pipeline.cfg.out_dir) / "timeline.json").write_text(json.dumps({**report, "samples": samples}, indent=1))

    assert peak_lag > threshold, "rush hour did not build a backlog"
    assert 2 <= peak <= PARTITIONS, f"replicas peaked at {peak}"
    assert all(e.replicas <= PARTITIONS for e in agent.events)
    assert first_up is not None and lag_up is not None and first_up >= lag_up
    assert drained is not None and first_down is not None
    # Scale-in waits for the stabilization window after the lag stopped needing the peak
    # (less the HPA's 5 s sync and KEDA's 5 s poll, which may see the lag later than we did).
    window = SCALE_DOWN["stabilizationWindowSeconds"]
    assert last_peak_need is not None and first_down >= last_peak_need + window - 10, report
    assert agent.restarts == 0, "a worker crashed"
    assert totals == baseline


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _scaled_object_ready(api: Any, namespace: str) -> bool:
    so = client.CustomObjectsApi(api).get_namespaced_custom_object("keda.sh", "v1alpha1", namespace,
                                                                   "scaledobjects", "traffic-worker")
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (so.get("status") or {}).get("conditions", []))

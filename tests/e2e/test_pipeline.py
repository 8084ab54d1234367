"""The whole chain through a real broker: ingest -> workers -> aggregator, as separate processes.

One undisturbed run with one worker is the reference. The same frames through two workers, and
through a worker killed with ``kill -9`` half-way and restarted, must give exactly the same final
counts: the aggregator de-duplicates redelivered frames by (camera, session, seq).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from kafka import KafkaConsumer

from devkit.local_pipeline import LocalPipeline, PipelineConfig, scrape
from traffic.settings import KafkaSettings
from traffic.wire import DetectionEvent, FrameHeaders

from .prometheus_server import PrometheusServer

REPO = Path(__file__).resolve().parents[2]
SETTLE_S = 300


def _config(kafka_bootstrap: str, shared: Path, out_dir: Path, workers: int, realtime: bool = False) -> PipelineConfig:
    return PipelineConfig(
        bootstrap=kafka_bootstrap, site=REPO / "deploy" / "sites" / "intersection-demo.yaml", camera="cam-demo",
        source=str(shared / "videos" / "intersection.mp4"), model=str(shared / "models" / "yolo11n_int8_openvino_model"),
        out_dir=out_dir, workers=workers, realtime=realtime,
    )  # fmt: skip


def _read_all(kafka: KafkaSettings, topic: str) -> list[bytes]:
    consumer = KafkaConsumer(topic, **kafka.kafka_python(), auto_offset_reset="earliest", group_id=None, consumer_timeout_ms=3000)
    try:
        return [m.value for m in consumer]
    finally:
        consumer.close()


def _count_frames(kafka: KafkaSettings, topic: str) -> int:
    """Frame records of ``topic``: whole and unchanged frames, not end-of-session markers (both have empty values)."""
    consumer = KafkaConsumer(topic, **kafka.kafka_python(), auto_offset_reset="earliest", group_id=None, consumer_timeout_ms=3000)
    try:
        return sum(1 for m in consumer if not FrameHeaders.from_kafka(m.headers).end)
    finally:
        consumer.close()


def _no_process_left(pipeline: LocalPipeline) -> None:
    for name, child in pipeline.children.items():
        assert child.proc.poll() is not None, f"{name} still running"
        leftovers = [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) == child.proc.pid]
        assert not leftovers, f"{name} left processes behind: {leftovers}"


def _pgid(pid: int) -> int | None:
    import os

    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def _run(cfg: PipelineConfig, disturb=None) -> dict:
    """Run the pipeline over the whole video; return final movement and line totals and details."""
    pipeline = LocalPipeline(cfg)
    try:
        pipeline.start_services()
        pipeline.start_ingest()
        if disturb:
            disturb(pipeline)
        assert pipeline.wait_settled(SETTLE_S), f"pipeline did not settle: {pipeline.stats()}"
        counts = pipeline.counts
        assert counts is not None
        largest = pipeline.largest_interval()
        result = {
            "final": counts.totals(largest, final_only=True),
            "stats": pipeline.stats(),
            "metrics": scrape(pipeline.ports["aggregator"]),
            "metrics_text": _metrics_text(pipeline.ports["aggregator"]),
            "events": [DetectionEvent.decode(v) for v in _read_all(pipeline.kafka, pipeline.topics.detections)],
            "frames": _count_frames(pipeline.kafka, pipeline.topics.frames),
            "kafka": pipeline.kafka,
            "topics": pipeline.topics,
        }
    finally:
        pipeline.stop()
    _no_process_left(pipeline)
    return result


def _metrics_text(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


@pytest.fixture(scope="module")
def reference(kafka_bootstrap: str, shared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One undisturbed run with one worker."""
    return _run(_config(kafka_bootstrap, shared, tmp_path_factory.mktemp("reference"), workers=1))


def test_every_sampled_frame_becomes_a_detection_event(reference: dict) -> None:
    events = reference["events"]
    assert reference["frames"] >= 250  # 909 frames at 30 fps sampled at 10 fps: about 303
    keys = {(e.camera, e.session, e.seq) for e in events if not e.end_of_session}
    assert len(keys) == reference["frames"]
    assert sum(e.end_of_session for e in {e.frame_key: e for e in events}.values()) == 1  # the file's one session ended
    sessions = {e.session for e in events}
    for session in sessions:
        seqs = sorted(e.seq for e in events if e.session == session)
        assert seqs == list(range(len(seqs))), "seq must be gap-free per session"
    assert sum(1 for e in events for d in e.detections if d.label == "car") > 100  # the video is full of cars


def test_counts_appear_and_prometheus_counters_agree(reference: dict) -> None:
    final = reference["final"]
    movements = {k: v for k, v in final.items() if k[0] == "movement"}
    assert sum(movements.values()) >= 3, f"expected some turning movements, got {final}"
    text = reference["metrics_text"]
    from_metrics: Counter[tuple[str, str, str]] = Counter()
    for match in re.finditer(r'^traffic_vehicles_total\{([^}]*)\} ([0-9.e+]+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        from_metrics[(labels["approach"], labels["movement"], labels["vehicle_class"])] += int(float(match.group(2)))
    from_records = Counter({(a, m, c): n for (s, a, m, c), n in movements.items()})
    assert +from_metrics == +from_records


@pytest.mark.slow  # a second full pipeline run (~95 s): .ci/run runs it after the default suite
def test_two_workers_give_the_same_counts(reference: dict, kafka_bootstrap: str, shared: Path, tmp_path: Path) -> None:
    result = _run(_config(kafka_bootstrap, shared, tmp_path, workers=2))
    assert result["final"] == reference["final"]


def kill_worker_after(detected: int) -> Callable[[LocalPipeline], None]:
    """``kill -9`` of worker-0 once ``detected`` detection events are out (or after 120 s), then a new worker-0."""

    def disturb(pipeline: LocalPipeline) -> None:
        deadline = time.monotonic() + 120
        while pipeline.stats()["detected"] < detected and time.monotonic() < deadline:
            time.sleep(0.1)
        pipeline.children["worker-0"].kill9()
        pipeline.start_worker(0)

    return disturb


@pytest.mark.slow  # a third full run with a worker restart (~80 s): .ci/run runs it after the default suite
def test_worker_killed_half_way_and_restarted_gives_the_same_counts(
    reference: dict, kafka_bootstrap: str, shared: Path, tmp_path: Path
) -> None:
    result = _run(_config(kafka_bootstrap, shared, tmp_path, workers=1), disturb=kill_worker_after(120))
    assert result["final"] == reference["final"]
    keys = {(e.session, e.seq) for e in result["events"] if not e.end_of_session}
    assert len(keys) == result["frames"], "a frame has no detection event after the crash"


EVENT_DRIVEN = ("traffic_ingest_frames_dropped_total", "dlq_total", "reconnects_total", "kube_")
"""Dashboard series that only exist after something went wrong (or only on Kubernetes)."""


def _dashboard_queries() -> list[str]:
    queries = []
    for path in sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            queries += [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
    return queries


def _concrete(expr: str) -> str:
    return (
        expr.replace("$intersection", "demo-intersection").replace("$__rate_interval", "10s").replace("$__range", "5m")
        .replace('"$approach"', '".*"').replace('"$vehicle_class"', '".*"').replace('"$camera"', '".*"').replace('"$namespace"', '".*"')
    )  # fmt: skip


def test_prometheus_scrapes_the_services_and_dashboard_queries_return_data(
    kafka_bootstrap: str, shared: Path, tmp_path: Path
) -> None:
    if PrometheusServer.binary() is None:
        pytest.skip("Debian's prometheus is not installed (deploy/local/setup.sh installs it)")
    pipeline = LocalPipeline(_config(kafka_bootstrap, shared, tmp_path / "run", workers=1, realtime=True))
    prometheus = None
    try:
        pipeline.start_services()
        pipeline.start_ingest()
        prometheus = PrometheusServer(tmp_path / "prometheus", {
            "ingest": [f"127.0.0.1:{pipeline.ports['ingest']}"], "worker": [f"127.0.0.1:{pipeline.worker_ports[0]}"],
            "aggregator": [f"127.0.0.1:{pipeline.ports['aggregator']}"],
        }).start()  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until a few vehicles were counted, while the ingester still runs
            # increase() needs two samples of a series: a vehicle series scraped once has none yet
            if prometheus.query("sum(increase(traffic_vehicles_total[5m]))") and time.monotonic() - pipeline.started > 15:
                break
            time.sleep(1)
        assert set(prometheus.targets_up().values()) == {"up"}
        missing = []
        for expr in _dashboard_queries():
            result = prometheus.query(_concrete(expr))  # raises on a query Prometheus refuses
            if not result and not any(marker in expr for marker in EVENT_DRIVEN):
                missing.append(expr)
        assert not missing, "dashboard queries without data:\n" + "\n".join(missing)
    finally:
        if prometheus is not None:
            prometheus.stop()
        pipeline.stop()
    _no_process_left(pipeline)


def offline_count(shared: Path, cwd: Path, camera: str = "cam-demo") -> tuple[dict, Counter[tuple[str, str, str, str]]]:
    """``traffic count`` on the sample video: its JSON result, and its totals per (series, id, direction or movement, class)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "traffic.cli", "count", str(shared / "videos" / "intersection.mp4"),
         "--site", str(REPO / "deploy" / "sites" / "intersection-demo.yaml"), "--camera", camera,
         "--model", str(shared / "models" / "yolo11n_int8_openvino_model"), "--out-json", "c.json", "--out-csv", "c.csv", "--quiet"],
        capture_output=True, text=True, cwd=cwd, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads((cwd / "c.json").read_text())
    totals: Counter[tuple[str, str, str, str]] = Counter()
    for line, directions in result["lines"].items():
        for direction, classes in directions.items():
            for cls, n in classes.items():
                totals[("line", line, direction, cls)] += n
    for m in result["movements"]:
        for cls, n in m["counts"].items():
            totals[("movement", m["approach"], m["movement"], cls)] += n
    return result, totals


def test_offline_count_equals_the_streaming_pipeline(reference: dict, shared: Path, tmp_path: Path) -> None:
    """`traffic count` on the file gives exactly the streaming pipeline's final counts (one code path)."""
    result, offline = offline_count(shared, tmp_path)
    assert result["frames"] == reference["frames"]
    assert +offline == +Counter(reference["final"])
    assert sum(offline.values()) > 5

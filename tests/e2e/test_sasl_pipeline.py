"""The whole pipeline through SASL_SSL (SCRAM-SHA-512) with each service as its own least-privilege principal.

ingest -> worker -> aggregator run as processes against the session's secured broker, each with
the ACLs of its Strimzi KafkaUser (deploy/k8s/components/strimzi/kafkauser.yaml) and nothing
more; the run must end with final counts and every frame counted, and no password may appear in
any log, ``/metrics`` page or the broker's own log. ``traffic demo --secure`` runs the same
through the demo's options (slow-marked: ``pytest -m slow tests/e2e/test_sasl_pipeline.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from devkit.broker import LocalBroker
from devkit.local_pipeline import LocalPipeline, PipelineConfig
from traffic import clients

REPO = Path(__file__).resolve().parents[2]
CLIP_S = 12.0  # the first seconds of the sample video: a few crossings, a fraction of the full run's cost


@pytest.fixture(scope="module")
def clip(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first CLIP_S seconds of the sample intersection video, as a file the ingester reads."""
    import cv2

    source = cv2.VideoCapture(str(shared / "videos" / "intersection.mp4"))
    fps = source.get(cv2.CAP_PROP_FPS)
    size = (int(source.get(cv2.CAP_PROP_FRAME_WIDTH)), int(source.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    path = tmp_path_factory.mktemp("clip") / "intersection-clip.mp4"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    try:
        for _ in range(int(fps * CLIP_S)):
            ok, frame = source.read()
            if not ok:
                break
            out.write(frame)
    finally:
        out.release()
        source.release()
    return path


def _metrics(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return resp.read().decode()
    except OSError:
        return ""


def test_pipeline_runs_through_sasl_ssl_with_least_privilege(sasl_broker: LocalBroker, shared: Path, clip: Path, tmp_path: Path) -> None:
    cfg = PipelineConfig(
        bootstrap=sasl_broker.bootstrap, site=REPO / "deploy" / "sites" / "intersection-demo.yaml", camera="cam-demo",
        source=str(clip), model=str(shared / "models" / "yolo11n_int8_openvino_model"),
        out_dir=tmp_path, workers=1, kafka=sasl_broker.admin_settings(), least_privilege=True,
    )  # fmt: skip
    pipeline = LocalPipeline(cfg)
    pages: list[str] = []
    try:
        pipeline.start_services()
        assert cfg.principals is not None and {p.sasl_username for p in cfg.principals.values()} >= {"traffic-ingest", "traffic-worker", "traffic-aggregator"}
        pipeline.start_ingest()
        settled = pipeline.wait_settled(300, on_tick=lambda _: None)
        pages = [_metrics(port) for port in (pipeline.ports["ingest"], pipeline.ports["aggregator"], *pipeline.worker_ports)]
        stats = pipeline.stats()
        assert settled, f"the pipeline did not settle through SASL_SSL: {stats}"
        assert pipeline.counts is not None
        final = pipeline.counts.totals(pipeline.largest_interval(), final_only=True)
    finally:
        pipeline.stop()
    assert stats["published"] >= CLIP_S * 10 - 2 and stats["dlq"] == 0, stats  # sampled at 10 fps; every frame became an event
    assert sum(final.values()) >= 1, final
    secrets = [p.sasl_password.get_secret_value() for p in cfg.principals.values()] + [sasl_broker.users["admin"]]
    texts = {path.name: path.read_text(errors="replace") for path in tmp_path.glob("*.log")}
    texts |= {"broker.log": sasl_broker.log_file.read_text(errors="replace")}
    texts |= {f"/metrics {i}": page for i, page in enumerate(pages)}
    assert all(pages[1:]), "every service served /metrics"
    for name, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a password is in {name}"
    assert 'traffic_aggregator_events_total' in pages[1]


@pytest.mark.slow  # a second full run (~90 s on a loaded 2-core machine); run with: pytest -m slow tests/e2e/test_sasl_pipeline.py
def test_demo_runs_through_sasl_ssl(sasl_broker: LocalBroker, shared: Path, clip: Path, tmp_path: Path) -> None:
    """``traffic demo --secure --bootstrap-servers ... --workers 2 --source <clip> --fast``, the operator's credentials in the environment."""
    env = {**os.environ, **clients.environment(sasl_broker.admin_settings()), "TRAFFIC_SHARED_DIR": str(shared)}
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "traffic.cli", "demo", "--secure", "--bootstrap-servers", sasl_broker.bootstrap, "--workers", "2",
         "--source", str(clip), "--fast", "--no-live", "--out-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, f"demo failed after {time.monotonic() - started:.0f} s:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "final" in proc.stdout and "movement" in proc.stdout
    admin_password = sasl_broker.users["admin"]
    for path in tmp_path.glob("*.log"):
        assert admin_password not in path.read_text(errors="replace"), path.name
    assert admin_password not in proc.stdout + proc.stderr

"""Cameras that move between ingest replicas keep every session's counts intact, end to end.

Slow (the real detector runs on every frame): ``pytest -m slow tests/e2e/test_ingest_moves.py``.

Two simulated RTSP cameras of the sample intersection, an ingest group, the real worker and the
aggregator, as processes. Camera moves: one replica is killed with ``kill -9`` (its camera moves
without an end-of-session marker; the aggregator ends that session when the next one starts), then
a new replica joins (a camera moves gracefully: its session ends with a marker). Afterwards, for
every (camera, session):

* every frame the ingesters published has its detection event (nothing lost in the move);
* the crossings the aggregator published are exactly those of that session's events counted on
  their own (a fresh :class:`aggregator.counting.CameraCounter`, ended like the stream ended):
  sessions of a camera never mixed, none cut short, none counted twice.
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from pathlib import Path

import pytest
import yaml
from kafka import KafkaConsumer

from aggregator.counting import CameraCounter
from devkit.ingest_group import exactly_once
from devkit.local_pipeline import LocalPipeline, PipelineConfig
from traffic.settings import KafkaSettings
from traffic.site import load_site
from traffic.wire import CrossingEvent, DetectionEvent, FrameHeaders

REPO = Path(__file__).resolve().parents[2]
CAMERAS = {"cam-a": "it-a", "cam-b": "it-b"}
STREAM_S = 12  # between moves: a few vehicles per camera and session


def _site(tmp_path: Path) -> Path:
    """The demo intersection twice (one camera each), sampled at 5 fps."""
    demo = yaml.safe_load((REPO / "deploy" / "sites" / "intersection-demo.yaml").read_text())
    template = demo["intersections"][0]
    demo["intersections"] = []
    for camera, intersection in CAMERAS.items():
        it = copy.deepcopy(template)
        it["id"], it["name"] = intersection, f"copy of {template['id']}"
        it["cameras"][0].update(id=camera, fps=5, source="rtsp://127.0.0.1:9/set-by-override")
        demo["intersections"].append(it)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(demo))
    return path


def _read(kafka: KafkaSettings, topic: str) -> list:
    consumer = KafkaConsumer(topic, **kafka.kafka_python(), auto_offset_reset="earliest", group_id=None,
                             consumer_timeout_ms=4000, max_partition_fetch_bytes=8 * 1024 * 1024)  # fmt: skip
    try:
        return list(consumer)
    finally:
        consumer.close()


@pytest.mark.slow  # the detector on every frame of ~1 minute of two cameras: 2 min on an idle 2-core machine, 5 when loaded
def test_moved_cameras_keep_each_sessions_counts(kafka_bootstrap: str, shared: Path, tmp_path: Path) -> None:
    from devkit.simulated_camera import SimulatedCamera, available

    ok, reason = available()
    if not ok:
        pytest.skip(f"simulated RTSP camera unavailable: {reason}")
    site_file = _site(tmp_path)
    server = SimulatedCamera(shared / "videos" / "intersection.mp4", mounts=[f"/{c}" for c in CAMERAS]).start()
    cfg = PipelineConfig(
        bootstrap=kafka_bootstrap, site=site_file, camera="cam-a", source=server.urls[0],
        model=str(shared / "models" / "yolo11n_int8_openvino_model"), out_dir=tmp_path / "run", workers=1, realtime=True,
        ingesters=2, sources=dict(zip(CAMERAS, server.urls)),
        ingest_env={"TRAFFIC_INGEST_SESSION_TIMEOUT_MS": "6000", "TRAFFIC_INGEST_HEARTBEAT_INTERVAL_MS": "500",
                    "TRAFFIC_INGEST_LEASE_MARGIN_MS": "1500"},
    )  # fmt: skip
    pipeline = LocalPipeline(cfg)
    cameras = set(CAMERAS)
    try:
        pipeline.start_services()
        pipeline.start_ingest()
        group = pipeline.ingest_group
        assert group is not None
        held = group.wait(lambda h: exactly_once(cameras, 2)(h) and all(len(v) == 1 for v in h.values()), timeout_s=120)
        time.sleep(STREAM_S)
        # a crash: cam-a's replica dies, the other one takes cam-a over
        victim = next(name for name, cams in held.items() if "cam-a" in cams)
        group.kill9(victim)
        group.wait(exactly_once(cameras, 1), timeout_s=60)
        time.sleep(STREAM_S)
        # a graceful move: a new replica joins and gets one of the two cameras
        newcomer = group.start()
        pipeline.children[newcomer.name] = newcomer.child
        group.wait(lambda h: exactly_once(cameras, 2)(h) and len(h.get(newcomer.name, ())) == 1, timeout_s=60)
        time.sleep(STREAM_S)
        pipeline.stop_ingest()  # every remaining session ends with its marker
        stopped = time.monotonic()
        settled = pipeline.wait_settled(400, on_tick=lambda st: print(f"{time.monotonic() - stopped:5.0f} s {st}"))
        assert settled, f"pipeline did not settle: {pipeline.stats()}"
        kafka, topics = pipeline.kafka, pipeline.topics
        frames = [FrameHeaders.from_kafka(m.headers) for m in _read(kafka, topics.frames)]
        events = [DetectionEvent.decode(m.value) for m in _read(kafka, topics.detections)]
        crossings = [CrossingEvent.decode(m.value) for m in _read(kafka, topics.crossings)]
    finally:
        pipeline.stop()
        server.stop()

    site = load_site(site_file)
    published: dict[tuple[str, str], set[int]] = defaultdict(set)
    markers: set[tuple[str, str]] = set()
    for h in frames:
        (markers.add((h.camera, h.session)) if h.end else published[(h.camera, h.session)].add(h.seq))
    by_session: dict[tuple[str, str], dict[int, DetectionEvent]] = defaultdict(dict)
    for e in events:
        by_session[(e.camera, e.session)].setdefault(e.seq, e)  # redeliveries are the same event
    sessions_of = {c: [s for (cam, s) in published if cam == c] for c in cameras}
    assert len(sessions_of["cam-a"]) >= 2, f"cam-a never moved: {sessions_of}"
    assert sum(len(v) for v in sessions_of.values()) >= 4, f"expected a crash move and a graceful move: {sessions_of}"

    counted = 0
    for key, seqs in published.items():
        camera, session = key
        got = by_session[key]
        assert {s for s, e in got.items() if not e.end_of_session} == seqs, f"{key}: frames without a detection event"
        counter = CameraCounter(site, camera)
        expected: list[CrossingEvent] = []
        for seq in sorted(got):
            expected += counter.update(got[seq])
        if key not in markers:  # a killed replica's session: ended by the next session of the camera
            expected += counter.finish()
        actual = {c.event_id for c in crossings if (c.camera, c.session) == key}
        assert actual == {c.event_id for c in expected}, f"{key}: counts differ from the session counted on its own"
        counted += len(actual)
    assert counted >= 3, "too few vehicles counted for the comparison to mean anything"

"""Ingest replicas share the cameras through the ingest group (real broker, real RTSP server).

One run, as an operator would see it: 3 replicas and 12 simulated RTSP cameras - every camera held by
exactly one replica; ``kill -9`` of one replica - its cameras resume on the others within the bound;
a fourth replica - cameras rebalance, the others keep streaming without reconnecting; one replica
frozen (``SIGSTOP``, as if cut off) past its session - it stops by itself, its cameras move, and once
thawed it publishes nothing more under its old sessions. The frames topic then shows that no camera
was ever read by two replicas at once: per camera, sessions follow each other and never interleave.

The cameras serve a 320x240, 10 fps copy of the sample, sampled at 5 fps: twelve of them cost
little on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kafka import KafkaConsumer

from devkit.ingest_group import IngestGroup, exactly_once
from ingest.assignment import cameras_by_partition
from traffic.settings import KafkaSettings, TopicSettings
from traffic.wire import FrameHeaders

CAMERAS = [f"cam-{i:02d}" for i in range(12)]
SESSION_TIMEOUT_S = 6.0  # the broker's group.min.session.timeout.ms
HEARTBEAT_S = 0.5
OPEN_S = 10.0  # a camera open on this loaded machine; about 1 s when idle
# kill -9 -> the coordinator notices after the session timeout, the others hear of the rebalance at
# their next heartbeat, join + sync, then the camera opens and sends its first frame
TAKEOVER_BOUND_S = SESSION_TIMEOUT_S + HEARTBEAT_S + 3.0 + OPEN_S
GROUP = {
    "TRAFFIC_INGEST_SESSION_TIMEOUT_MS": str(int(SESSION_TIMEOUT_S * 1000)),
    "TRAFFIC_INGEST_HEARTBEAT_INTERVAL_MS": str(int(HEARTBEAT_S * 1000)),
    "TRAFFIC_INGEST_REBALANCE_TIMEOUT_MS": "15000",
    "TRAFFIC_INGEST_LEASE_MARGIN_MS": "1500",
    "TRAFFIC_INGEST_RELEASE_TIMEOUT_MS": "10000",  # the default: a loaded broker can take seconds to acknowledge
    "TRAFFIC_INGEST_ASSIGNMENT_PARTITIONS": "48",
}


@dataclass(frozen=True)
class Rec:
    offset: int
    partition: int
    h: FrameHeaders
    seen_at: float  # monotonic time the test consumer got it


class FramesTap(threading.Thread):
    """Reads the frames topic from the start while the test runs (headers only matter)."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        super().__init__(daemon=True)
        self.records: list[Rec] = []
        self._halt = threading.Event()
        self._consumer = KafkaConsumer(
            topic, **kafka.kafka_python(), auto_offset_reset="earliest", enable_auto_commit=False,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )  # fmt: skip
        self._lock = threading.Lock()

    def run(self) -> None:
        while not self._halt.is_set():
            for batch in self._consumer.poll(timeout_ms=200).values():
                now = time.monotonic()
                with self._lock:
                    self.records += [Rec(m.offset, m.partition, FrameHeaders.from_kafka(m.headers), now) for m in batch]
        self._consumer.close()

    def snapshot(self) -> list[Rec]:
        with self._lock:
            return list(self.records)

    def sessions(self, camera: str) -> list[str]:
        """Sessions of ``camera`` in topic order."""
        return list(dict.fromkeys(r.h.session for r in self.snapshot() if r.h.camera == camera))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def _opened_sessions(log: Path) -> dict[str, str]:
    """session -> camera for every session a replica opened (its "camera opened" log lines)."""
    out = {}
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("msg") == "camera opened":
            out[event["session"]] = event["camera"]
    return out


def _wait_for(condition, timeout_s: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def test_replicas_share_cameras_and_never_read_one_twice(
    tmp_path: Path, shared: Path, kafka_settings: KafkaSettings, topic_settings: TopicSettings
) -> None:
    from devkit.simulated_camera import SimulatedCamera, SimulatedCameraError, available, small_video

    ok, reason = available()
    if not ok:
        pytest.skip(f"simulated RTSP camera unavailable: {reason}")
    try:
        video = small_video(shared / "videos" / "intersection.mp4", Path.home() / ".cache" / "traffic-pipeline" / "videos")
    except SimulatedCameraError as exc:
        pytest.skip(str(exc))
    server = SimulatedCamera(video, mounts=[f"/{c}" for c in CAMERAS]).start()
    site = {"intersections": [{"id": "it-group", "cameras": [
        {"id": c, "source": url, "fps": 5, "max_width": 320} for c, url in zip(CAMERAS, server.urls)]}]}  # fmt: skip
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(site))
    prefix = topic_settings.frames.split(".")[0]
    env = {
        **os.environ,
        "TRAFFIC_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "TRAFFIC_TOPICS_FRAMES": topic_settings.frames,
        "TRAFFIC_INGEST_SITE_CONFIG": str(site_file),
        "TRAFFIC_INGEST_GROUP_ID": f"{prefix}-ingest",
        "TRAFFIC_INGEST_ASSIGNMENT_TOPIC": f"{prefix}.ingest-assignment",
    }
    group = IngestGroup(env, tmp_path / "logs", GROUP)
    tap = FramesTap(kafka_settings, topic_settings.frames)
    tap.start()
    cameras = set(CAMERAS)
    try:
        # -- 1. three replicas: every camera held exactly once, all of them streaming ----------
        for _ in range(3):
            group.start()
        held = group.wait(exactly_once(cameras, replicas=3), timeout_s=90)
        _wait_for(lambda: all(tap.sessions(c) for c in cameras), 60, "frames of every camera")
        time.sleep(2)
        held = group.wait(exactly_once(cameras, replicas=3), timeout_s=10)
        assert all(held.values()), f"a replica holds nothing: {held}"
        before_kill = {c: tap.sessions(c)[-1] for c in cameras}

        # -- 2. kill -9 the busiest replica: its cameras resume on the other two ----------------
        victim = max(held, key=lambda name: (len(held[name]), name))
        moved = held[victim]
        group.kill9(victim)
        killed_at = time.monotonic()
        group.wait(exactly_once(cameras, replicas=2), timeout_s=TAKEOVER_BOUND_S + 10)
        _wait_for(lambda: all(len(tap.sessions(c)) >= 2 and tap.sessions(c)[-1] != before_kill[c] for c in moved),
                  TAKEOVER_BOUND_S + 10, "frames of the moved cameras from their new owners")  # fmt: skip
        records = tap.snapshot()
        for camera in moved:
            new = tap.sessions(camera)[-1]
            first_new = min(r.seen_at for r in records if r.h.session == new)
            assert first_new - killed_at < TAKEOVER_BOUND_S, f"{camera} dark for {first_new - killed_at:.1f} s"
        for camera in cameras - moved:  # the survivors' own cameras never reconnected
            assert tap.sessions(camera)[-1] == before_kill[camera], f"{camera} restarted although it did not move"
        takeover_s = max(min(r.seen_at for r in records if r.h.session == tap.sessions(c)[-1]) - killed_at for c in moved)

        # -- 3. a fourth replica: cameras rebalance, only the moved ones reconnect ------------------
        before_join = {c: tap.sessions(c)[-1] for c in cameras}
        newcomer = group.start().name
        held = group.wait(lambda h: exactly_once(cameras, replicas=3)(h) and bool(h.get(newcomer)), timeout_s=60)
        time.sleep(2)
        held = group.wait(exactly_once(cameras, replicas=3), timeout_s=10)
        joined = held[newcomer]
        loads = sorted(len(v) for v in held.values())
        heaviest = max(len(c) for c in cameras_by_partition(CAMERAS, int(GROUP["TRAFFIC_INGEST_ASSIGNMENT_PARTITIONS"])).values())
        assert loads[-1] - loads[0] <= heaviest, f"unbalanced after the join: {held}"  # cameras sharing a partition move together
        _wait_for(lambda: all(tap.sessions(c)[-1] != before_join[c] for c in joined), 30, "frames of the cameras the newcomer took")
        for camera in cameras - joined:
            assert tap.sessions(camera)[-1] == before_join[camera], f"{camera} restarted although it did not move"

        # -- 4. freeze one replica past its session: it stops by itself, others take over ----------
        held = group.held()
        frozen = max((n for n in held if n != newcomer), key=lambda n: (len(held[n]), n))
        frozen_cameras = held[frozen]
        before_freeze = {c: tap.sessions(c)[-1] for c in frozen_cameras}
        group.freeze(frozen)
        frozen_at = time.monotonic()
        _wait_for(lambda: all(tap.sessions(c)[-1] != before_freeze[c] for c in frozen_cameras),
                  TAKEOVER_BOUND_S + 10, "the frozen replica's cameras on other replicas")  # fmt: skip
        time.sleep(1)
        group.thaw(frozen)
        thawed_at, thawed_wall_ms = time.monotonic(), time.time() * 1000
        group.wait(exactly_once(cameras, replicas=3), timeout_s=60)
        time.sleep(3)
        stopped_itself = sum(group.replicas[frozen].sample("traffic_ingest_assignment_changes_total", change=c)
                             for c in ("lease_expired", "lost"))  # fmt: skip
        held = group.wait(exactly_once(cameras, replicas=3), timeout_s=10)
    finally:
        codes = group.stop()
        time.sleep(2)
        tap.stop()
        server.stop()

    assert all(code == 0 for name, code in codes.items() if name != victim), codes
    # thawed, it stops them because its lease ran out (or, if the coordinator's answer comes first,
    # because it learns it lost them); either way without end markers, and it publishes nothing more
    assert stopped_itself >= len(frozen_cameras), "the frozen replica did not stop its cameras"

    # -- the frames topic: per camera, sessions follow each other, never interleaved ----------------
    records = tap.snapshot()
    zombie = set(_opened_sessions(tmp_path / "logs" / f"{frozen}.log"))
    late: list[Rec] = []
    by_camera: dict[str, list[Rec]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        by_camera[r.h.camera].append(r)
    assert set(by_camera) == cameras
    for camera, recs in by_camera.items():
        assert len({r.partition for r in recs}) == 1  # key = camera
        order: list[str] = []
        for r in recs:
            if order and r.h.session == order[-1]:
                continue
            if r.h.session in order:  # an earlier session came back after a newer one started
                late.append(r)
                continue
            order.append(r.h.session)
        sessions = {s: [r for r in recs if r.h.session == s and r not in late] for s in order}
        for previous, current in zip(order, order[1:]):
            # in time too: the next session's first frame was captured after the last of the previous one
            assert sessions[current][0].h.capture_ms > sessions[previous][-1].h.capture_ms, camera
        for session, recs_s in sessions.items():
            frames = [r.h for r in recs_s if not r.h.end]
            assert [h.seq for h in frames] == list(range(len(frames))), f"{camera} {session}: seq gaps"
    # A frozen process can hold a frame inside the Kafka client when it stops; thawed, the client may
    # still send it (docs/ingest.md, "Never two readers"). Such a straggler was captured before the
    # freeze, comes from the frozen replica, and is dropped by the aggregator (its session has ended).
    for r in late:
        assert r.h.session in zombie, f"{r.h.camera}: session {r.h.session} came back, not from the frozen replica"
        assert r.seen_at < thawed_at + 5
    assert len(late) <= 3, f"{len(late)} late frames from the frozen replica"
    # the lease fence: nothing the frozen replica read after it was thawed went out under its old sessions
    read_after_thaw = [r for r in records if r.h.session == before_freeze.get(r.h.camera) and r.h.capture_ms >= thawed_wall_ms]
    assert not read_after_thaw, "the frozen replica went on publishing its old sessions after it was thawed"
    # graceful moves (the join) ended their sessions with an end-of-session marker; the kill did not
    markers = {r.h.session for r in records if r.h.end}
    assert all(before_join[c] in markers for c in joined), "a released camera's session has no end marker"
    released = [r.h for r in records if r.h.end and r.h.session in {before_join[c] for c in joined}]
    assert all(h.handover for h in released), "a live camera moved to another replica goes on: its marker must say handover"
    assert not any(before_kill[c] in markers for c in moved), "a killed replica cannot have sent end markers"
    print(f"\ntake-over after kill -9: {takeover_s:.1f} s (bound {TAKEOVER_BOUND_S:.0f} s); frozen replica's cameras moved "
          f"{len(frozen_cameras)}, late frames {len(late)}; frozen for {thawed_at - frozen_at:.1f} s")


def test_group_mode_works_with_the_ingest_principals_acls(sasl_broker, tmp_path: Path, shared: Path) -> None:  # noqa: ANN001
    """On a SASL_SSL broker with the KafkaUser ACLs (deploy/k8s/components/strimzi/kafkauser.yaml), the
    ingest principal alone creates the assignment topic, joins its group and publishes its cameras; in
    a group its ACLs do not cover, it stops with a configuration error that says what is missing."""
    import uuid

    from devkit.acls import provision
    from ingest.service import IngestService
    from ingest.settings import IngestSettings
    from traffic import clients
    from traffic.topics import create_topics

    prefix = f"g{uuid.uuid4().hex[:8]}"
    topics = TopicSettings(frames=f"{prefix}.frames", frames_partitions=1)
    admin = sasl_broker.admin_settings()
    create_topics(admin, topics)
    principals = provision(admin, {"traffic.frames": topics.frames, "traffic-ingest": f"{prefix}-ingest",
                                   "traffic.ingest-assignment": f"{prefix}.ingest-assignment"}, roles=("ingest",))  # fmt: skip
    site_file = tmp_path / "site.yaml"
    video = str(shared / "videos" / "intersection.mp4")
    site_file.write_text(yaml.safe_dump({"intersections": [{"id": "it", "cameras": [
        {"id": "cam-1", "source": video, "fps": 5}, {"id": "cam-2", "source": video, "fps": 5}]}]}))  # fmt: skip
    settings = IngestSettings(
        site_config=str(site_file), metrics_port=0, loop=True, assignment="group", group_id=f"{prefix}-ingest",
        assignment_topic=f"{prefix}.ingest-assignment", assignment_partitions=8, session_timeout_ms=6000,
        heartbeat_interval_ms=500, rebalance_timeout_ms=15000, lease_margin_ms=1500, release_timeout_ms=2000, name="acl-test",
    )  # fmt: skip
    service = IngestService(settings, principals["ingest"], topics)
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    registry = service.metrics.registry
    try:
        _wait_for(lambda: all((registry.get_sample_value("traffic_ingest_frames_published_total", {"camera": c}) or 0) >= 3
                              for c in ("cam-1", "cam-2")), 90, "frames of both cameras")  # fmt: skip
        assert registry.get_sample_value("traffic_ingest_cameras_held", {"ingester": "acl-test"}) == 2
        described = clients.admin(admin).describe_topics([settings.assignment_topic])
        assert len(described[0]["partitions"]) == 8  # created by the ingest principal
    finally:
        service.stop()
        thread.join(timeout=30)
    assert not thread.is_alive()

    from traffic.errors import ConfigError

    other = settings.model_copy(update={"group_id": f"{prefix}-not-allowed", "metrics_port": 0})
    started = time.monotonic()
    with pytest.raises(ConfigError, match=f"{prefix}-not-allowed"):
        IngestService(other, principals["ingest"], topics).run()
    assert time.monotonic() - started < 60

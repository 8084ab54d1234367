"""What the ingester costs and how fast the ingest group moves cameras.

Why: the ingester's CPU request and HPA target in Kubernetes, how many cameras one core serves,
and the bound on how long a camera is dark when its replica dies follow from this. Three parts,
each against a baseline measured in the same run:

1. **Per frame** (files): for each sample video (640x480 and 1080p), with process CPU time (all
   threads, so libjpeg/resize threads and the producer's I/O thread count too):
   *baseline* ``cv2.VideoCapture.read()`` of every frame; *encode* read + resize to 640 wide +
   ``cv2.imencode`` quality 80; *service* the real :class:`ingest.service.IngestService`
   publishing every frame (lossless) to a local broker, acks=all.
2. **Cameras per core** (live): one ingest replica (the real service, in this process) reading
   K simulated RTSP cameras (30 fps sources) sampled at 10 fps for a fixed time; its CPU per
   camera-second, against plain OpenCV reading the same streams (K threads of ``read()``).
3. **Reassignment**: three replicas in an ingest group (default timing: 10 s session, 1 s
   heartbeat) share six 640x480 cameras; ``kill -9`` of the replica with the most cameras, then a
   new replica in its place, ten times; for every moved camera the gap in its stream (last frame
   of the old session to the first of the new one, capture times). Also ten graceful moves
   (SIGTERM: the replica hands its cameras over).

Prints the tables and writes them to ``docs/benchmarks.md`` under ``## Ingest``.

    .venv/bin/python bench/bench_ingest.py [--trials 10] [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import yaml
from kafka import KafkaConsumer

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from benchdoc import machine, publish  # noqa: E402

from devkit.ingest_group import IngestGroup, exactly_once  # noqa: E402
from devkit.simulated_camera import SimulatedCamera, available  # noqa: E402
from traffic.wire import FrameHeaders  # noqa: E402

from ingest.encoder import JpegEncoder  # noqa: E402
from ingest.service import IngestService  # noqa: E402
from ingest.settings import IngestSettings  # noqa: E402
from devkit.broker import LocalBroker  # noqa: E402
from traffic.settings import KafkaSettings, TopicSettings, shared_dir  # noqa: E402
from traffic.topics import create_topics  # noqa: E402

MAX_WIDTH = 640
QUALITY = 80


@dataclass
class Row:
    video: str
    stage: str
    frames: int
    cpu_s: float
    wall_s: float
    bytes_per_frame: float | None = None


def baseline(video: Path) -> Row:
    """Decode every frame with plain VideoCapture.read()."""
    cap = cv2.VideoCapture(str(video))
    cpu, wall, frames = time.process_time(), time.perf_counter(), 0
    while True:
        ok, _ = cap.read()
        if not ok:
            break
        frames += 1
    row = Row(video.name, "baseline: read()", frames, time.process_time() - cpu, time.perf_counter() - wall)
    cap.release()
    return row


def encode_only(video: Path) -> Row:
    """Read + resize + JPEG encode every frame, no Kafka."""
    encoder = JpegEncoder(MAX_WIDTH, QUALITY)
    cap = cv2.VideoCapture(str(video))
    cpu, wall, frames, size = time.process_time(), time.perf_counter(), 0, 0
    while True:
        ok, image = cap.read()
        if not ok:
            break
        size += len(encoder.encode(image).jpeg)
        frames += 1
    row = Row(video.name, "read+resize+encode", frames, time.process_time() - cpu, time.perf_counter() - wall, size / frames)
    cap.release()
    return row


def service(video: Path, frames: int, kafka: KafkaSettings, work: Path) -> Row:
    """The real service publishing every frame of the file as fast as possible."""
    fps = cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FPS)
    topics = TopicSettings(frames=f"bench.{video.stem}.{int(time.time())}", frames_partitions=1)
    create_topics(kafka, topics)
    site = {"intersections": [{"id": "bench", "cameras": [{"id": "cam", "source": str(video), "fps": fps, "max_width": MAX_WIDTH, "jpeg_quality": QUALITY}]}]}
    site_file = work / f"{video.stem}.yaml"
    site_file.write_text(yaml.safe_dump(site))
    settings = IngestSettings(site_config=str(site_file), realtime=False, max_frames=frames, metrics_port=0)
    svc = IngestService(settings, kafka, topics)
    cpu, wall = time.process_time(), time.perf_counter()
    svc.run()
    cpu_s, wall_s = time.process_time() - cpu, time.perf_counter() - wall
    registry = svc.metrics.registry
    published = int(registry.get_sample_value("traffic_ingest_frames_published_total", {"camera": "cam"}) or 0)
    sent = registry.get_sample_value("traffic_ingest_bytes_sent_total", {"camera": "cam"}) or 0
    assert published == frames, f"published {published} of {frames}"
    return Row(video.name, "service: read+resize+encode+publish", published, cpu_s, wall_s, sent / published)


def table(rows: list[Row]) -> str:
    lines = [
        "| video | stage | frames | CPU ms/frame | fps per core | wall fps | CPU vs baseline | JPEG bytes/frame |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    base: dict[str, float] = {}
    for row in rows:
        per_frame = row.cpu_s / row.frames
        base.setdefault(row.video, per_frame)
        lines.append(
            f"| {row.video} | {row.stage} | {row.frames} | {per_frame * 1000:.2f} | {1 / per_frame:.0f} | "
            f"{row.frames / row.wall_s:.0f} | {per_frame / base[row.video]:.2f}x | "
            f"{'' if row.bytes_per_frame is None else f'{row.bytes_per_frame / 1024:.1f} KiB'} |"
        )
    return "\n".join(lines)


# -- 2. cameras per core ---------------------------------------------------------------------------


@dataclass
class LiveRow:
    video: str
    stage: str
    cameras: int
    seconds: float
    cpu_s: float
    published: int = 0
    read: int = 0

    @property
    def core_per_camera(self) -> float:
        return self.cpu_s / (self.seconds * self.cameras)


def live_baseline(urls: list[str], seconds: float) -> LiveRow | None:
    """K threads of plain ``cv2.VideoCapture.read()`` on the RTSP streams: decoding every frame."""
    stop = threading.Event()
    measuring = threading.Event()
    opened = threading.Barrier(len(urls) + 1)
    failures: list[str] = []
    counts = [0] * len(urls)

    def read(index: int, url: str) -> None:
        cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
        try:
            ok = cap.isOpened() and cap.read()[0]
            if not ok:
                failures.append(url)
            opened.wait()
            while not stop.is_set() and cap.read()[0]:
                if measuring.is_set():
                    counts[index] += 1
        finally:
            cap.release()

    threads = [threading.Thread(target=read, args=(i, u), daemon=True) for i, u in enumerate(urls)]
    for t in threads:
        t.start()
    opened.wait()
    time.sleep(1.0)  # past the first, buffered frames
    measuring.set()
    cpu, wall = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    cpu_s, wall_s = time.process_time() - cpu, time.perf_counter() - wall
    measuring.clear()
    stop.set()
    for t in threads:
        t.join(timeout=10)
    if failures:
        print(f"baseline could not read {failures}", file=sys.stderr)
        return None
    return LiveRow("", "baseline: read() every frame", len(urls), wall_s, cpu_s, read=sum(counts))


def live_service(urls: list[str], seconds: float, kafka: KafkaSettings, work: Path, max_width: int) -> LiveRow:
    """The real service reading the RTSP cameras, sampling at 10 fps, publishing to Kafka."""
    topics = TopicSettings(frames=f"bench.live.{int(time.time() * 1000)}", frames_partitions=1)
    create_topics(kafka, topics)
    cams = [{"id": f"cam-{i}", "source": url, "fps": 10, "max_width": max_width, "jpeg_quality": QUALITY} for i, url in enumerate(urls)]
    site_file = work / f"live-{len(urls)}-{max_width}.yaml"
    site_file.write_text(yaml.safe_dump({"intersections": [{"id": "bench", "cameras": cams}]}))
    svc = IngestService(IngestSettings(site_config=str(site_file), metrics_port=0), kafka, topics)
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    registry = svc.metrics.registry

    def total(metric: str) -> int:
        return int(sum(registry.get_sample_value(metric, {"camera": c["id"]}) or 0 for c in cams))

    def published() -> int:
        return total("traffic_ingest_frames_published_total")

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(
        (registry.get_sample_value("traffic_ingest_frames_published_total", {"camera": c["id"]}) or 0) > 5 for c in cams
    ):
        time.sleep(0.2)
    cpu, wall, before, read_before = time.process_time(), time.perf_counter(), published(), total("traffic_ingest_frames_read_total")
    time.sleep(seconds)
    cpu_s, wall_s, after = time.process_time() - cpu, time.perf_counter() - wall, published()
    read = total("traffic_ingest_frames_read_total") - read_before
    svc.stop()
    thread.join(timeout=30)
    return LiveRow("", "service: read + sample 10 fps + resize + encode + publish", len(urls), wall_s, cpu_s, after - before, read)


def cameras_per_core(kafka: KafkaSettings, work: Path, seconds: float) -> list[LiveRow]:
    rows: list[LiveRow] = []
    for video, cameras, max_width in ((shared_dir() / "videos" / "intersection.mp4", 4, MAX_WIDTH),
                                      (shared_dir() / "videos" / "pedestrians_1080p.mp4", 2, MAX_WIDTH)):  # fmt: skip
        with SimulatedCamera(video, mounts=[f"/cam{i}" for i in range(cameras)]) as server:
            base = live_baseline(server.urls, seconds)
            svc = live_service(server.urls, seconds, kafka, work, max_width)
        for row in (base, svc):
            if row is not None:
                row.video = video.name
                rows.append(row)
    return rows


def live_table(rows: list[LiveRow]) -> str:
    lines = [
        "| source | stage | cameras | CPU per camera (cores) | cameras per core | vs baseline | read fps per camera | published fps per camera |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    base: dict[str, float] = {}
    for row in rows:
        base.setdefault(row.video, row.core_per_camera)
        fps = f"{row.published / row.seconds / row.cameras:.1f}" if row.published else ""
        lines.append(
            f"| {row.video} | {row.stage} | {row.cameras} | {row.core_per_camera:.3f} | {1 / row.core_per_camera:.1f} | "
            f"{row.core_per_camera / base[row.video]:.2f}x | {row.read / row.seconds / row.cameras:.1f} | {fps} |"
        )
    return "\n".join(lines)


# -- 3. reassignment --------------------------------------------------------------------------------


class Tap(threading.Thread):
    """Frames-topic headers as they arrive: (camera, session) -> first and last capture_ms."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        super().__init__(daemon=True)
        self.first: dict[tuple[str, str], int] = {}
        self.last: dict[tuple[str, str], int] = {}
        self.current: dict[str, str] = {}
        self.halt = threading.Event()
        self._consumer = KafkaConsumer(topic, **kafka.kafka_python(), auto_offset_reset="earliest",
                                       max_partition_fetch_bytes=8 * 1024 * 1024)  # fmt: skip

    def run(self) -> None:
        while not self.halt.is_set():
            for batch in self._consumer.poll(timeout_ms=100).values():
                for m in batch:
                    h = FrameHeaders.from_kafka(m.headers)
                    if h.end:
                        continue
                    key = (h.camera, h.session)
                    self.first.setdefault(key, h.capture_ms)
                    self.last[key] = h.capture_ms
                    self.current[h.camera] = h.session
        self._consumer.close()


def reassignment(kafka: KafkaSettings, work: Path, trials: int) -> dict[str, list[float]]:
    """Gaps (s) of moved cameras: after kill -9 (worst camera per trial, all cameras) and after SIGTERM."""
    video = shared_dir() / "videos" / "intersection.mp4"
    names = [f"cam-{i}" for i in range(6)]
    out: dict[str, list[float]] = {"kill": [], "kill_all": [], "term": [], "term_all": []}
    with SimulatedCamera(video, mounts=[f"/{c}" for c in names]) as server:
        topics = TopicSettings(frames=f"bench.move.{int(time.time())}", frames_partitions=3)
        create_topics(kafka, topics)
        site = {"intersections": [{"id": "bench", "cameras": [{"id": c, "source": u, "fps": 10, "max_width": MAX_WIDTH}
                                                             for c, u in zip(names, server.urls)]}]}  # fmt: skip
        site_file = work / "move.yaml"
        site_file.write_text(yaml.safe_dump(site))
        env = {**os.environ, "TRAFFIC_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "TRAFFIC_TOPICS_FRAMES": topics.frames,
               "TRAFFIC_INGEST_SITE_CONFIG": str(site_file), "TRAFFIC_INGEST_GROUP_ID": f"bench-{int(time.time())}",
               "TRAFFIC_INGEST_ASSIGNMENT_TOPIC": f"bench.assign.{int(time.time())}", "TRAFFIC_INGEST_ASSIGNMENT_PARTITIONS": "64"}
        group = IngestGroup(env, work / "group-logs")
        tap = Tap(kafka, topics.frames)
        tap.start()
        cameras = set(names)
        try:
            for _ in range(3):
                group.start()
            for trial in range(2 * trials):
                held = group.wait(lambda h: exactly_once(cameras, 3)(h) and all(h.values()), timeout_s=180)
                time.sleep(4)  # every camera streaming from its holder
                held = group.wait(exactly_once(cameras, 3), timeout_s=30)
                victim = max(held, key=lambda n: (len(held[n]), n))
                moved = held[victim]
                before = {c: tap.current.get(c) for c in moved}
                kind = "kill" if trial < trials else "term"
                if kind == "kill":
                    group.kill9(victim)
                else:
                    group.replicas[victim].child.terminate()
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and not all(tap.current.get(c) not in (None, before[c]) for c in moved):
                    time.sleep(0.1)
                gaps = [(tap.first[(c, tap.current[c])] - tap.last[(c, before[c])]) / 1000 for c in moved
                        if tap.current.get(c) not in (None, before[c])]  # fmt: skip
                if len(gaps) < len(moved):
                    print(f"trial {trial}: {len(moved) - len(gaps)} cameras did not resume within 120 s", file=sys.stderr)
                    gaps.append(float("inf"))
                out[kind].append(max(gaps))
                out[f"{kind}_all"] += gaps
                print(f"{kind} trial {trial % trials + 1}: {len(moved)} cameras moved, dark for {min(gaps):.1f}..{max(gaps):.1f} s", flush=True)
                group.start()  # back to three replicas (the newcomer takes a share, gracefully)
        finally:
            group.stop()
            tap.halt.set()
            tap.join(timeout=10)
    return out


def reassignment_table(gaps: dict[str, list[float]]) -> str:
    lines = [
        "| event | trials | cameras moved | median of worst camera (s) | worst (s) | median over cameras (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, label in (("kill", "replica killed (`kill -9`)"), ("term", "replica stopped (SIGTERM, as in a drain)")):
        if gaps[kind]:
            lines.append(
                f"| {label} | {len(gaps[kind])} | {len(gaps[f'{kind}_all'])} | {statistics.median(gaps[kind]):.1f} | "
                f"{max(gaps[kind]):.1f} | {statistics.median(gaps[f'{kind}_all']):.1f} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="kill -9 trials (and as many SIGTERM trials)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measuring window of the cameras-per-core runs (s)")
    parser.add_argument("--parts", default="frame,live,move", help="which parts to run (comma list of frame, live, move)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    videos = [shared_dir() / "videos" / "intersection.mp4", shared_dir() / "videos" / "pedestrians_1080p.mp4"]
    missing = [v for v in videos if not v.exists()]
    if missing:
        print(f"sample videos not found: {missing}; set TRAFFIC_SHARED_DIR", file=sys.stderr)
        return 2
    ok, reason = available()
    if not ok and parts & {"live", "move"}:
        print(f"the simulated RTSP camera is needed: {reason}", file=sys.stderr)
        return 2
    rows: list[Row] = []
    live: list[LiveRow] = []
    gaps: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp, LocalBroker(Path(tmp) / "kafka") as broker:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap)
        if "frame" in parts:
            for video in videos:
                base = baseline(video)
                rows += [base, encode_only(video), service(video, base.frames, kafka, Path(tmp))]
            print(table(rows), flush=True)
        if "live" in parts:
            live = cameras_per_core(kafka, Path(tmp), args.seconds)
            print(live_table(live), flush=True)
        if "move" in parts:
            gaps = reassignment(kafka, Path(tmp), args.trials)
            print(reassignment_table(gaps), flush=True)
    if parts != {"frame", "live", "move"}:
        print("(not written to docs/benchmarks.md: run all parts for that)")
        return 0
    note = (
        f"`bench/bench_ingest.py`, {machine()}, OpenCV {cv2.__version__}; the Kafka broker and the simulated RTSP "
        "cameras run on the same machine (their CPU not counted), other work was running on it too.\n\n"
        f"**Per frame** (files): every frame of each file, resized to {MAX_WIDTH} px wide, JPEG quality {QUALITY}. "
        "CPU = process CPU time (all threads) / frames; *fps per core* = frames per CPU-second; *CPU vs baseline* = cost "
        "per frame relative to plain `cv2.VideoCapture.read()` of the same frames in the same run. The service row is the "
        "real `IngestService` (lossless file mode, acks=all, idempotent producer)."
    )
    live_note = (
        f"**Cameras per core** (live): one ingest replica reading simulated RTSP cameras (30 fps H.264 sources) for "
        f"{args.seconds:.0f} s, sampling 10 fps, resizing to {MAX_WIDTH} px, JPEG {QUALITY}, publishing (acks=all); "
        "*CPU per camera* = process CPU seconds / (seconds x cameras); baseline = plain `read()` of every frame of the "
        "same streams in the same run. A camera decodes every frame it sends whatever the sampling rate, so the "
        "baseline is most of the cost; budget cameras per replica from the service row. *read fps* below the source's 30 "
        "or *published fps* below 10 mean the replica did not get enough CPU on this machine during the run, and its cost "
        "per camera is then understated by about that share."
    )
    move_note = (
        "**Reassignment**: three replicas of an ingest group (default settings: `session_timeout_ms` 10000, "
        "`heartbeat_interval_ms` 1000) sharing six 640x480, 30 fps RTSP cameras sampled at 10 fps. Per trial the replica "
        "holding the most cameras is killed (`kill -9`) or stopped (SIGTERM), then a new replica is started in its place. "
        "*Dark* = capture time of a moved camera's first frame in its new session minus that of its last frame in the old "
        "one. The bound after a crash is `session_timeout_ms` + `heartbeat_interval_ms` + a rebalance + the camera's "
        "open (docs/ingest.md); a SIGTERM hands cameras over without waiting for the session timeout."
    )
    body = "\n\n".join([note, table(rows), live_note, live_table(live), move_note, reassignment_table(gaps)])
    publish("Ingest", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())

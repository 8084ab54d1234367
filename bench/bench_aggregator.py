"""Throughput, state writes and capture-to-count latency of the aggregator, against its own counting loop.

Why: one aggregator worker must keep up with all cameras of the partitions it owns; the ratio
says what faust, Kafka and the state it keeps cost on top of the counting itself. In the same
run, on the same synthetic events (``tests/synthetic.py``, one camera), for two scenes:

* sparse - 6 vehicles per movement, 2 sessions, 3-6 boxes per frame;
* dense  - the same traffic with 294 parked cars in view (at most 300 boxes per frame, the limit: a car park
  or a queue; every parked car is a live track);

and for each scene:

* baseline - ``CameraCounter.update()`` in a plain Python loop over the decoded events
  (tracking + counting only), timed right before the app run of the same scene;
* faust    - the real app (``traffic aggregate`` subprocess, a fresh app id per run) consuming
  the same events from a local Kafka 4 broker, twice: counting in the event loop
  (``counting_processes=0``, the design before the counting process) and in one counting process
  beside it (the default). Events/s from the first produced event to the last processed one (the
  app's ``traffic_aggregator_events_total``, read from its /metrics; offsets are committed up to
  ``commit_interval_s`` later), the CPU time per event of the app and its counting process, and
  the bytes it wrote to its changelog topics (table state) per event;
* latency  - (sparse only) one camera sending in real time (10 fps, capture time = now): publish
  time of each crossing (its Kafka timestamp) minus its time, p50 / p95, for line crossings and
  movements apart. Movements are decided ``track_timeout_s`` (1 s here) after the vehicle was
  last seen and carry the time it was last seen, so that wait is in their latency.

Prints a table and writes it to ``docs/benchmarks.md`` under ``## Aggregator``.

    .venv/bin/python bench/bench_aggregator.py [--bootstrap host:port] [--rounds 1] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from benchdoc import machine, write_section  # noqa: E402

from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.admin import KafkaAdminClient  # noqa: E402
from kafka.errors import KafkaError  # noqa: E402

from aggregator.counting import CameraCounter  # noqa: E402
from devkit.broker import LocalBroker, free_port  # noqa: E402
from tests.synthetic import CAMERA, SITE, synthetic_site, synthetic_stream  # noqa: E402
from traffic.settings import KafkaSettings, TopicSettings  # noqa: E402
from traffic.topics import create_topics  # noqa: E402
from traffic.wire import CrossingEvent, DetectionEvent  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
DENSE_CROWD = 294
"""Parked cars added to every frame of the dense scene (with the moving vehicles: about 300 boxes)."""


@dataclass(frozen=True)
class Scene:
    name: str
    events: list[DetectionEvent]
    boxes: str


def scenes() -> list[Scene]:
    """The two scenes; sessions differ so the events are never duplicates of each other."""
    sparse = synthetic_stream(per_movement=6, session="sparse-1").events + synthetic_stream(per_movement=6, session="sparse-2", start_ms=1_767_225_745_000).events
    dense = synthetic_stream(per_movement=2, session="dense-1", crowd=DENSE_CROWD, start_ms=1_767_225_845_000).events
    return [
        Scene("sparse", sparse, f"{min(len(e.detections) for e in sparse)}-{max(len(e.detections) for e in sparse)}"),
        Scene("dense", dense, f"{min(len(e.detections) for e in dense)}-{max(len(e.detections) for e in dense)}"),
    ]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all threads) and of its child processes (the counting processes)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / CLK_TCK
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        total += sum(cpu_s(int(child)) for child in children)
    return total


def committed(bootstrap: str, group: str, topic: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    except KafkaError:
        return 0
    finally:
        admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


def processed(port: int) -> int:
    """Detection events the app has processed (its events counter, all cameras)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return 0
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("traffic_aggregator_events_total{")))


POLL_S = 0.25
"""How often the app's /metrics is read while it works: rendering it costs the app CPU (every 50 ms
cost it about 5 % of its samples), so the finish time is interpolated between two reads instead."""


def wait_processed(port: int, n: int, proc: subprocess.Popen[bytes], timeout_s: float = 900) -> float:
    """The monotonic time the app's events counter reached ``n`` (linear between the two reads around it)."""
    deadline = time.monotonic() + timeout_s
    before_t, before = time.monotonic(), processed(port)
    while before < n:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"aggregator did not process {n} events within {timeout_s} s (exit {proc.poll()})")
        time.sleep(POLL_S)
        now_t, now = time.monotonic(), processed(port)
        if now >= n:
            return before_t + (now_t - before_t) * (n - before) / max(1, now - before)
        before_t, before = now_t, now
    return before_t


def wait_committed(bootstrap: str, group: str, topic: str, n: int, proc: subprocess.Popen[bytes], timeout_s: float = 900) -> float:
    deadline = time.monotonic() + timeout_s
    while committed(bootstrap, group, topic) < n:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"aggregator did not consume {n} events within {timeout_s} s (exit {proc.poll()})")
        time.sleep(0.1)
    return time.monotonic()


def changelog_bytes(bootstrap: str, app_id: str) -> dict[str, int]:
    """Bytes (key + value) of every record in the app's changelog topics, per table."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        names = [t for t in consumer.topics() if t.startswith(f"{app_id}-") and t.endswith("-changelog")]
        out: dict[str, int] = {}
        for name in names:
            tps = [TopicPartition(name, p) for p in consumer.partitions_for_topic(name) or ()]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            ends = consumer.end_offsets(tps)
            total, done = 0, {tp for tp in tps if ends[tp] == 0}
            while len(done) < len(tps):
                for tp, records in consumer.poll(timeout_ms=1000).items():
                    for r in records:
                        total += len(r.key or b"") + len(r.value or b"")
                        if r.offset + 1 >= ends[tp]:
                            done.add(tp)
            out[name[len(app_id) + 1 : -len("-changelog")]] = total
        return out
    finally:
        consumer.close()


def send(producer: KafkaProducer, topic: str, events: list[DetectionEvent]) -> None:
    for e in events:
        producer.send(topic, key=e.camera.encode(), value=e.encode())
    producer.flush()


def baseline(events: list[DetectionEvent]) -> tuple[float, float]:
    """(events/s, CPU ms/event) of the plain counting loop (after one warm-up event: the tracker import)."""
    counter = CameraCounter(synthetic_site(), CAMERA)
    counter.update(synthetic_stream(per_movement=1, session="warm").events[0])
    start, cpu = time.perf_counter(), time.process_time()
    for e in events:
        counter.update(e)
    counter.finish()
    return len(events) / (time.perf_counter() - start), (time.process_time() - cpu) * 1000 / len(events)


class App:
    """One ``traffic aggregate`` process with its own topics and app id."""

    def __init__(self, bootstrap: str, tmp: Path, name: str, counting_processes: int) -> None:
        prefix = f"bench{uuid.uuid4().hex[:6]}"
        self.topics = TopicSettings(
            frames=f"{prefix}.frames", detections=f"{prefix}.detections", crossings=f"{prefix}.crossings",
            counts=f"{prefix}.counts", dlq=f"{prefix}.dlq", frames_dlq=f"{prefix}.frames-dlq", detections_partitions=2, output_partitions=1,
        )  # fmt: skip
        create_topics(KafkaSettings(bootstrap_servers=bootstrap), self.topics)
        site_file = tmp / "site.yaml"
        site_file.write_text(yaml.safe_dump(SITE))
        self.bootstrap = bootstrap
        self.app_id = f"agg-{prefix}-{name}"
        self.port = free_port()
        env = {
            **os.environ, "TRAFFIC_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "TRAFFIC_AGGREGATOR_SITE_CONFIG": str(site_file),
            "TRAFFIC_AGGREGATOR_APP_ID": self.app_id, "TRAFFIC_AGGREGATOR_DATA_DIR": str(tmp / f"faust-{name}"),
            "TRAFFIC_AGGREGATOR_METRICS_PORT": str(self.port), "TRAFFIC_AGGREGATOR_COMMIT_INTERVAL_S": "2",
            "TRAFFIC_AGGREGATOR_COUNTING_PROCESSES": str(counting_processes),
            "TRAFFIC_AGGREGATOR_IDLE_CLOSE_S": "600", "TRAFFIC_AGGREGATOR_CAPTURE_MAX_AGE_S": str(10 * 365 * 86400),
            "TRAFFIC_LOG_LEVEL": "WARNING",
            **{f"TRAFFIC_TOPICS_{k.upper()}": str(v) for k, v in self.topics.model_dump().items()},
        }  # fmt: skip
        self.log = open(tmp / f"aggregator-{name}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "traffic.cli", "aggregate"], env=env, stderr=self.log, cwd=REPO)
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=8 * 1024 * 1024)
        self.sent = 0

    def feed(self, events: list[DetectionEvent]) -> float:
        """Send and wait until all are processed; seconds from the first send."""
        t0 = time.monotonic()
        send(self.producer, self.topics.detections, events)
        self.sent += len(events)
        return wait_processed(self.port, self.sent, self.proc) - t0

    def stop(self) -> None:
        self.producer.close()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)
        self.log.close()


MODES = {"loop": 0, "process": 1}
"""App runs per scene: counting in the event loop (before), in one counting process (after, the default)."""


def run_scene(bootstrap: str, tmp: Path, scene: Scene, with_latency: bool) -> dict[str, float]:
    r: dict[str, float] = {"events": len(scene.events)}
    r["baseline_eps"], r["baseline_cpu_ms_per_event"] = baseline(scene.events)
    for mode, processes in MODES.items():
        warmup = synthetic_stream(per_movement=1, session=f"warmup-{scene.name}").events[:100]
        app = App(bootstrap, tmp, f"{scene.name}-{mode}", processes)
        try:
            app.feed(warmup)
            wait_committed(bootstrap, app.app_id, app.topics.detections, app.sent, app.proc)
            before = changelog_bytes(bootstrap, app.app_id)
            cpu0 = cpu_s(app.proc.pid)
            elapsed = app.feed(scene.events)
            r[f"{mode}_eps"] = len(scene.events) / elapsed
            r[f"{mode}_cpu_ms_per_event"] = (cpu_s(app.proc.pid) - cpu0) * 1000 / len(scene.events)
            wait_committed(bootstrap, app.app_id, app.topics.detections, app.sent, app.proc)
            time.sleep(3)  # the checkpoint of the last commit interval
            after = changelog_bytes(bootstrap, app.app_id)
            r[f"{mode}_state_bytes_per_event"] = (sum(after.values()) - sum(before.values())) / len(scene.events)
            r[f"{mode}_camera_state_bytes_per_event"] = (after.get("camera-state", 0) - before.get("camera-state", 0)) / len(scene.events)
            if with_latency and mode == "process":
                r.update(latency(app))
        finally:
            app.stop()
    return r


def latency(app: App) -> dict[str, float]:
    """Steady real-time load: one camera at 10 fps, capture time = now."""
    live = synthetic_stream(per_movement=1, session="live", start_ms=int(time.time() * 1000) + 1000).events
    for e in live:
        delay = e.capture_ms / 1000 - time.time()
        if delay > 0:
            time.sleep(delay)
        app.producer.send(app.topics.detections, key=e.camera.encode(), value=e.encode())
    app.producer.flush()
    app.sent += len(live)
    wait_committed(app.bootstrap, app.app_id, app.topics.detections, app.sent, app.proc)
    time.sleep(1.0)
    consumer = KafkaConsumer(app.topics.crossings, bootstrap_servers=app.bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=3000)
    crossings = [(m.timestamp, c) for m in consumer if (c := CrossingEvent.decode(m.value)).session == "live"]
    consumer.close()
    out: dict[str, float] = {"live_events": len(live)}
    for kind in ("line", "movement"):
        latencies = sorted((ts - c.time_ms) / 1000 for ts, c in crossings if c.kind == kind)
        out[f"latency_{kind}_n"] = len(latencies)
        out[f"latency_{kind}_p50_s"] = latencies[len(latencies) // 2]
        out[f"latency_{kind}_p95_s"] = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
    return out


def warm_up(bootstrap: str, tmp: Path, scene: Scene) -> None:
    """One untimed app run of ``scene``: the broker's JVM compiles its hot paths first.

    Why: the first rounds on a fresh broker ran up to a fifth slower than later ones (its
    just-in-time compiler shares the 2 cores with the app); a broker in service is warm.
    """
    app = App(bootstrap, tmp, "warmup", 1)
    try:
        app.feed(scene.events)
    finally:
        app.stop()


def run(bootstrap: str, tmp: Path, rounds: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    all_scenes = scenes()
    warm_up(bootstrap, tmp, all_scenes[0])
    rounds_of: dict[str, list[dict[str, float]]] = {scene.name: [] for scene in all_scenes}
    for n in range(rounds):  # interleaved, so a burst of load from elsewhere hits every scene alike
        for scene in all_scenes:
            rounds_of[scene.name].append(run_scene(bootstrap, tmp, scene, with_latency=n == 0 and scene.name == "sparse"))
    for scene in all_scenes:
        per_round = rounds_of[scene.name]
        merged = {k: statistics.median(r[k] for r in per_round) for k in per_round[0] if all(k in r for r in per_round)}
        merged.update({k: v for k, v in per_round[0].items() if k.startswith(("latency", "live"))})
        for mode in MODES:
            merged[f"{mode}_ratio"] = statistics.median(r[f"{mode}_eps"] / r["baseline_eps"] for r in per_round)
            merged[f"{mode}_cpu_ratio"] = statistics.median(r["baseline_cpu_ms_per_event"] / r[f"{mode}_cpu_ms_per_event"] for r in per_round)
        merged["boxes"] = scene.boxes  # type: ignore[assignment]
        results[scene.name] = merged
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=os.environ.get("TRAFFIC_TEST_BOOTSTRAP"), help="use this broker instead of starting one")
    parser.add_argument("--rounds", type=int, default=3, help="app runs per scene; the ratio is the median of per-round ratios")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-agg-") as tmp:
        if args.bootstrap:
            r = run(args.bootstrap, Path(tmp), args.rounds)
        else:
            with LocalBroker(Path(tmp) / "kafka") as broker:
                r = run(broker.bootstrap, Path(tmp), args.rounds)
    labels = {"loop": "app, counting in the event loop (before)", "process": "app, one counting process (after, default)"}
    rows = []
    for name, r_ in r.items():
        rows.append(f"| {name} | {r_['boxes']} | {int(r_['events'])} | baseline: `CameraCounter` loop | {r_['baseline_eps']:.0f} | 1.00x | {r_['baseline_cpu_ms_per_event']:.2f} | | | |")
        for mode in MODES:
            rows.append(
                f"| {name} | {r_['boxes']} | {int(r_['events'])} | {labels[mode]} | {r_[mode + '_eps']:.0f} | **{r_[mode + '_ratio']:.2f}x** | "
                f"{r_[mode + '_cpu_ms_per_event']:.2f} | {r_[mode + '_cpu_ratio']:.2f}x | {r_[mode + '_state_bytes_per_event'] / 1024:.2f} | {r_[mode + '_camera_state_bytes_per_event'] / 1024:.2f} |"
            )
    table = "\n".join(rows)
    sparse = r["sparse"]
    markdown = f"""
`bench/bench_aggregator.py --rounds {args.rounds}`, {machine()}, faust-streaming 0.15.3 + aiokafka 0.14.0, Kafka 4.1.1 broker on the same machine. Synthetic events of one camera (`tests/synthetic.py`): *sparse* = 6 vehicles per movement, 2 sessions; *dense* = 2 vehicles per movement with {DENSE_CROWD} parked cars in view (each a live track). *baseline* = `CameraCounter.update()` in a plain loop over the same decoded events, timed in the same run right before the app runs of the scene. The app runs twice per scene: counting in the event loop (`TRAFFIC_AGGREGATOR_COUNTING_PROCESSES=0`, the design before the counting process) and in one counting process beside the loop (the default). *ratio* = app events/s (first event sent to last event processed, from the app's `/metrics`, read every {POLL_S} s and interpolated) / baseline events/s; one untimed app run of the sparse scene first warms the broker up; *CPU ratio* = baseline CPU ms/event / app CPU ms/event (the app process with its counting process, all threads; the broker not included); medians of {args.rounds} rounds. The machine is shared: wall-clock rates move with the load of other processes, the CPU figures less so. State = bytes written to the app's changelog topics (key + value) per event.

| scene | boxes/frame | events | run | events/s | ratio | CPU ms/event | CPU ratio | state KiB/event (all tables) | of it camera-state KiB/event |
|---|---:|---:|---|---:|---:|---:|---:|---:|---:|
{table}

Capture-to-count latency under a steady real-time load (sparse, counting process, one camera at 10 fps, {int(sparse['live_events'])} events; publish time of the crossing record minus the crossing's time): line crossings ({int(sparse['latency_line_n'])}) **p50 {sparse['latency_line_p50_s'] * 1000:.0f} ms, p95 {sparse['latency_line_p95_s'] * 1000:.0f} ms**; movements ({int(sparse['latency_movement_n'])}) p50 {sparse['latency_movement_p50_s'] * 1000:.0f} ms, p95 {sparse['latency_movement_p95_s'] * 1000:.0f} ms (a movement is decided when its track ends, `track_timeout_s` after the vehicle was last seen, and carries the time it was last seen).

At 10 fps per camera, one aggregator worker with one counting process keeps up with about {sparse['process_eps'] / 10:.0f} sparse or {r['dense']['process_eps'] / 10:.1f} dense cameras on this machine (the counting loop itself - ByteTrack on 300 boxes - is most of the dense cost); `counting_processes` > 1 shards the cameras of a worker's partitions over more cores.
"""
    print(markdown)
    if not args.no_write:
        print(f"written to {write_section('Aggregator', markdown)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

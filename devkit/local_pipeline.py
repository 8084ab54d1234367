"""The whole pipeline as local processes: what ``traffic demo`` and the end-to-end tests run.

    traffic ingest ──> frames ──> traffic worker (xN) ──> detections ──> traffic aggregate
                                                                          ──> counts, crossings

Every child runs in its own process group (``kill -9`` of a worker in tests is real) and is
configured only through the environment, exactly as in Kubernetes. Progress is read from the
topics' end offsets and the services' ``/metrics``. With ``ingesters > 1`` (or ``group``) the
cameras are read by an ingest group (:class:`devkit.ingest_group.IngestGroup`) instead of one
ingester.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from prometheus_client.parser import text_string_to_metric_families

from devkit.broker import free_port
from traffic import clients
from traffic.errors import TrafficError
from traffic.settings import KafkaSettings, TopicSettings, shared_dir
from traffic.wire import CountRecord


class Child:
    """One child process in its own process group, its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL the whole process group at once (a crash, for tests)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def wait(self, timeout_s: float = 30.0) -> None:
        """Wait for the process to end by itself (SIGKILL it after ``timeout_s``); idempotent.

        Why not :meth:`terminate` after a SIGTERM already sent: a second SIGTERM can arrive after
        Python restored the default handler at exit and kill a process that was ending cleanly.
        """
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill9()
        if not self._log.closed:
            self._log.close()

    def terminate(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the group, SIGKILL it after ``timeout_s``; idempotent."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill9()
            except ProcessLookupError:
                pass
        if not self._log.closed:
            self._log.close()

    def tail(self, lines: int = 8) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def scrape(port: int) -> dict[str, float]:
    """Sum of every sample of a service's /metrics by sample name (labels summed away)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    totals: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] += sample.value
    return totals


class CountsReader:
    """Latest CountRecord per (interval, series key), read from the counts topic; also end offsets."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        from traffic import clients

        self.records: dict[tuple[object, ...], CountRecord] = {}
        self._consumer = clients.consumer(
            kafka, topic, client_id="traffic-counts-reader", auto_offset_reset="earliest", enable_auto_commit=False, group_id=None,
        )  # fmt: skip

    def poll(self) -> None:
        for batch in self._consumer.poll(timeout_ms=300, max_records=10000).values():
            for message in batch:
                try:
                    rec = CountRecord.decode(message.value)
                except TrafficError:
                    continue
                self.records[(rec.intersection, rec.interval_s, rec.interval_start_ms, rec.series, rec.approach, rec.movement, rec.vehicle_class)] = rec

    def end_offset(self, topic: str) -> int:
        """Messages ever written to ``topic`` (sum of the partitions' end offsets)."""
        from kafka import TopicPartition

        partitions = self._consumer.partitions_for_topic(topic) or set()
        return int(sum(self._consumer.end_offsets([TopicPartition(topic, p) for p in partitions]).values()))

    def totals(self, interval_s: int, final_only: bool = False) -> dict[tuple[str, str, str, str], int]:
        """(series, approach-or-line, movement-or-direction, class) -> count summed over intervals."""
        sums: dict[tuple[str, str, str, str], int] = defaultdict(int)
        for r in self.records.values():
            if r.interval_s == interval_s and (r.final or not final_only):
                sums[(r.series, r.approach, r.movement, r.vehicle_class)] += r.count
        return {k: v for k, v in sums.items() if v}

    def all_final(self, interval_s: int) -> bool:
        recs = [r for r in self.records.values() if r.interval_s == interval_s]
        return bool(recs) and all(r.final for r in recs)

    def close(self) -> None:
        self._consumer.close()


@dataclass
class PipelineConfig:
    """What to run. ``source`` is a file path or URL for ``camera``."""

    bootstrap: str
    site: Path
    camera: str
    source: str
    model: str
    out_dir: Path
    workers: int = 1
    realtime: bool = False
    idle_close_s: float = 300.0  # fallback only: streams end by their end-of-session markers
    kafka: KafkaSettings | None = None  # the operator's connection (topics, progress); default: bootstrap + TRAFFIC_KAFKA_* env
    principals: dict[str, KafkaSettings] | None = None  # "ingest" / "worker" / "aggregator" -> that service's own connection
    least_privilege: bool = False  # SASL broker: each service its own SCRAM user with the KafkaUser ACLs (devkit.acls)
    ingesters: int = 1
    group: bool = False  # read the cameras through an ingest group even with one ingester
    sources: dict[str, str] | None = None  # camera -> source for several cameras (default: camera -> source)
    ingest_env: dict[str, str] | None = None  # more TRAFFIC_INGEST_* settings (e.g. a short session timeout)

    def camera_sources(self) -> dict[str, str]:
        return dict(self.sources) if self.sources else {self.camera: self.source}


class LocalPipeline:
    """Topics + aggregator + workers + ingester as processes; ``stop()`` ends them all."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        run_id = uuid.uuid4().hex[:6]
        self.kafka = cfg.kafka or KafkaSettings(bootstrap_servers=cfg.bootstrap)
        self.topics = TopicSettings(
            frames=f"run-{run_id}.frames", detections=f"run-{run_id}.detections", crossings=f"run-{run_id}.crossings",
            counts=f"run-{run_id}.counts", dlq=f"run-{run_id}.dlq", frames_dlq=f"run-{run_id}.frames-dlq", frames_partitions=max(4, cfg.workers),
            detections_partitions=2, output_partitions=1,
        )  # fmt: skip
        self.run_id = run_id
        self.ports = {"ingest": free_port(), "aggregator": free_port()}
        self.worker_ports = [free_port() for _ in range(cfg.workers)]
        self.children: dict[str, Child] = {}
        self.ingest_group = None  # devkit.ingest_group.IngestGroup when cfg.ingesters > 1 or cfg.group
        self.counts: CountsReader | None = None
        self.started = time.monotonic()
        self._argv = [sys.executable, "-m", "traffic.cli"]
        self.env = {
            **os.environ,
            **clients.environment(self.kafka),
            "TRAFFIC_SITE_CONFIG": str(cfg.site),
            "TRAFFIC_AGGREGATOR_SITE_CONFIG": str(cfg.site),  # the aggregator's own setting
            **{f"TRAFFIC_TOPICS_{name.upper()}": str(value) for name, value in self.topics.model_dump().items()},
            "TRAFFIC_SHARED_DIR": str(shared_dir()),
        }

    def resource_names(self) -> dict[str, str]:
        """Default topic, group and app names -> this run's (to rename the KafkaUser ACLs, devkit.acls)."""
        defaults = TopicSettings.model_construct().model_dump()  # no environment: the documented defaults
        names = {str(defaults[f]): str(getattr(self.topics, f)) for f in ("frames", "detections", "crossings", "counts", "dlq", "frames_dlq")}
        return {**names, "traffic-workers": f"run-{self.run_id}-workers", "traffic-aggregator": f"run-{self.run_id}-aggregator",
                "traffic-ingest": f"run-{self.run_id}-ingest", "traffic.ingest-assignment": f"run-{self.run_id}.ingest-assignment"}

    def role_env(self, role: str) -> dict[str, str]:
        """``TRAFFIC_KAFKA_*`` of the service ``role`` when it has its own principal."""
        principal = (self.cfg.principals or {}).get(role)
        return clients.environment(principal) if principal is not None else {}

    # -- processes ---------------------------------------------------------------------------
    def start_services(self, ready_timeout_s: float = 180) -> None:
        """Create topics, start the aggregator and the workers, wait until they are ready."""
        from traffic.topics import create_topics

        create_topics(self.kafka, self.topics)
        if self.cfg.least_privilege and self.cfg.principals is None:
            from devkit.acls import provision

            self.cfg.principals = provision(self.kafka, self.resource_names())
        self.children["aggregator"] = Child("aggregator", self._argv + ["aggregate"], {
            **self.env, **self.role_env("aggregator"), "TRAFFIC_AGGREGATOR_METRICS_PORT": str(self.ports["aggregator"]),
            "TRAFFIC_AGGREGATOR_DATA_DIR": str(self.cfg.out_dir / "aggregator-data"),
            "TRAFFIC_AGGREGATOR_APP_ID": f"run-{self.run_id}-aggregator",
            "TRAFFIC_AGGREGATOR_IDLE_CLOSE_S": str(self.cfg.idle_close_s),
            "TRAFFIC_AGGREGATOR_SITE_CONFIG": str(self.cfg.site),  # it does not read TRAFFIC_SITE_CONFIG
        }, self.cfg.out_dir)  # fmt: skip
        for n in range(self.cfg.workers):
            self.start_worker(n)
        self.wait_ready([self.ports["aggregator"], *self.worker_ports], ready_timeout_s)
        self.counts = CountsReader(self.kafka, self.topics.counts)

    def worker_env(self, n: int) -> dict[str, str]:
        return {
            **self.env, **self.role_env("worker"), "TRAFFIC_WORKER_METRICS_PORT": str(self.worker_ports[n]), "TRAFFIC_WORKER_MODEL": self.cfg.model,
            "TRAFFIC_WORKER_GROUP_ID": f"run-{self.run_id}-workers",
        }  # fmt: skip

    def start_worker(self, n: int) -> Child:
        """(Re)start worker ``n`` on its metrics port."""
        child = Child(f"worker-{n}", self._argv + ["worker"], self.worker_env(n), self.cfg.out_dir)
        self.children[f"worker-{n}"] = child
        return child

    def start_ingest(self) -> Child:
        """Start the ingester(s) on the configured sources; an ingester exits at the end of a file.

        Several ingesters (``cfg.ingesters``) form an ingest group that shares the cameras; the
        first replica is returned.
        """
        sources = self.cfg.camera_sources()
        env = {
            **self.env, **self.role_env("ingest"), "TRAFFIC_INGEST_CAMERAS": ",".join(sources),
            "TRAFFIC_INGEST_SOURCES": ",".join(f"{camera}={url}" for camera, url in sources.items()),
            "TRAFFIC_INGEST_REALTIME": "true" if self.cfg.realtime else "false", "TRAFFIC_INGEST_LOOP": "false",
            # the demo's stop is the end of its recording, not a rolling update: intervals final at once
            "TRAFFIC_INGEST_HANDOVER_ON_STOP": "false",
            **(self.cfg.ingest_env or {}),
        }  # fmt: skip
        self.started = time.monotonic()
        if self.cfg.ingesters > 1 or self.cfg.group:
            from devkit.ingest_group import IngestGroup

            env.update({"TRAFFIC_INGEST_GROUP_ID": f"run-{self.run_id}-ingest",
                        "TRAFFIC_INGEST_ASSIGNMENT_TOPIC": f"run-{self.run_id}.ingest-assignment",
                        "TRAFFIC_INGEST_ASSIGNMENT_PARTITIONS": str(max(16, 4 * len(sources)))})  # fmt: skip
            self.ingest_group = IngestGroup(env, self.cfg.out_dir)
            for _ in range(self.cfg.ingesters):
                replica = self.ingest_group.start()
                self.children[replica.name] = replica.child
            return next(iter(self.ingest_group.replicas.values())).child
        child = Child("ingest", self._argv + ["ingest"], {**env, "TRAFFIC_INGEST_METRICS_PORT": str(self.ports["ingest"])}, self.cfg.out_dir)
        self.children["ingest"] = child
        return child

    def ingest_children(self) -> list[Child]:
        """Every ingester started (one, or the replicas of the ingest group)."""
        if self.ingest_group is not None:
            return [r.child for r in self.ingest_group.replicas.values()]
        return [self.children["ingest"]] if "ingest" in self.children else []

    def ingest_alive(self) -> bool:
        return any(child.alive() for child in self.ingest_children())

    def stop_ingest(self) -> None:
        """End the cameras' streams (SIGTERM: every session ends with its end-of-session marker)."""
        if self.ingest_group is not None:
            self.ingest_group.stop()
        else:
            for child in self.ingest_children():
                child.terminate()

    def wait_ready(self, ports: list[int], timeout_s: float) -> None:
        """Wait for ``/readyz`` of each port; fail early when a child exits."""
        deadline = time.monotonic() + timeout_s
        pending = list(ports)
        while pending:
            self.check_children()
            if time.monotonic() > deadline:
                raise TrafficError(f"services on ports {pending} were not ready within {timeout_s:.0f} s")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{pending[0]}/readyz", timeout=2):
                    pending.pop(0)
            except OSError:
                time.sleep(0.5)

    def check_children(self) -> None:
        """Raise when a long-running service died (the ingester may end on its own)."""
        ingesters = set(map(id, self.ingest_children()))
        for name, child in self.children.items():
            if id(child) not in ingesters and not child.alive():
                raise TrafficError(f"{name} exited with code {child.proc.returncode}:\n{child.tail()}")

    # -- progress ----------------------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        """Progress per stage: frames/events from the topics, the rest from /metrics."""
        assert self.counts is not None, "start_services() first"
        agg = scrape(self.ports["aggregator"])
        workers = [scrape(p) for p in self.worker_ports]
        lat_n = agg.get("traffic_aggregator_count_latency_seconds_count", 0.0)
        detected = self.counts.end_offset(self.topics.detections)
        return {
            "published": float(self.counts.end_offset(self.topics.frames)),
            "detected": float(detected),
            "dlq": float(self.counts.end_offset(self.topics.dlq)),
            "fps": detected / max(1.0, time.monotonic() - self.started),
            "lag": sum(w.get("traffic_worker_consumer_lag", 0.0) for w in workers),
            "aggregated": agg.get("traffic_aggregator_events_total", 0.0),
            "duplicates": agg.get("traffic_aggregator_duplicates_total", 0.0),
            "latency_s": agg.get("traffic_aggregator_count_latency_seconds_sum", 0.0) / lat_n if lat_n else 0.0,
            "tracks": agg.get("traffic_aggregator_active_tracks", 0.0),
        }

    def settled(self, stats: dict[str, float]) -> bool:
        """True once the ingester ended, every frame has an event, all were aggregated and windows closed."""
        assert self.counts is not None
        if not self.ingest_children() or self.ingest_alive() or stats["published"] == 0:
            return False
        every_frame = stats["detected"] >= stats["published"]
        aggregated = stats["aggregated"] + stats["duplicates"] >= stats["detected"]
        return every_frame and aggregated and self.counts.all_final(self.largest_interval())

    def largest_interval(self) -> int:
        from traffic.site import load_site

        return max(load_site(self.cfg.site).counting.intervals_s)

    def wait_settled(self, timeout_s: float, on_tick=None) -> bool:
        """Poll until :meth:`settled` (True) or the timeout (False)."""
        assert self.counts is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            time.sleep(1.0)
            self.counts.poll()
            self.check_children()
            stats = self.stats()
            if on_tick:
                on_tick(stats)
            if self.settled(stats):
                time.sleep(1.0)
                self.counts.poll()
                return True
        return False

    def stop(self) -> None:
        """Stop every child (ingester first, aggregator last)."""
        self.stop_ingest()
        order = [n for n in self.children if n.startswith("worker")] + ["aggregator"]
        for name in order:
            if name in self.children:
                self.children[name].terminate()
        if self.counts is not None:
            self.counts.close()
            self.counts = None

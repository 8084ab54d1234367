"""``traffic status``: where each camera and intersection stands, from Kafka and Kubernetes.

Per camera: the ingest replica serving it, the partition of ``traffic.frames`` its frames go to
(key = camera id, Kafka's murmur2 partitioner) and that partition's frames lag per consumer group.
For the workers: the Deployment's replicas, the ScaledObject's conditions (Ready / Active /
Fallback / Paused) and its HPA. Per intersection: the time of the last count record on
``traffic.counts`` and the interval it covered.

Kubernetes is read with the ``kubernetes`` client (a kubeconfig, or the in-cluster service
account); where no cluster is reachable those columns say why and the Kafka columns still show.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from traffic.errors import TrafficError
from traffic.settings import KafkaSettings, TopicSettings

KEDA_GROUP, KEDA_VERSION = "keda.sh", "v1alpha1"


@dataclass
class WorkerStatus:
    deployment: str
    desired: int | None = None
    ready: int | None = None
    scaled_object: str = ""
    conditions: dict[str, str] = field(default_factory=dict)  # type -> "True"/"False" (+ reason)
    hpa: str = ""
    hpa_current: int | None = None
    hpa_desired: int | None = None
    min_replicas: int | None = None
    max_replicas: int | None = None
    lag_threshold: str = ""
    group: str = ""
    error: str = ""


@dataclass
class CameraStatus:
    intersection: str
    camera: str
    partition: int
    lag: dict[str, int]  # consumer group -> frames lag of the camera's partition
    ingest_replica: str


@dataclass
class IntersectionStatus:
    intersection: str
    last_count_at: str  # ISO 8601 UTC of the newest counts record, "" if none
    last_interval: str  # "[start, end) UTC, s" of that record


@dataclass
class Status:
    namespace: str
    frames_topic: str
    groups: dict[str, int]  # group -> total frames lag
    worker: WorkerStatus
    cameras: list[CameraStatus]
    intersections: list[IntersectionStatus]
    ingest: str  # what is known of the ingest Deployment
    kubernetes_error: str = ""


def camera_partition(camera: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives key ``camera`` (what the ingester uses)."""
    from kafka.partitioner.default import murmur2

    return (murmur2(camera.encode()) & 0x7FFFFFFF) % partitions


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def kube_api(kubeconfig: str | None, context: str | None = None) -> Any:
    """An ApiClient from a kubeconfig (``--kubeconfig``, ``KUBECONFIG``, ~/.kube/config) or in-cluster."""
    from kubernetes import config

    try:
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    except (config.ConfigException, FileNotFoundError, TypeError):
        if kubeconfig:
            raise
        config.load_incluster_config()
        from kubernetes import client

        return client.ApiClient()


def worker_status(api: Any, namespace: str, deployment: str, scaled_object: str) -> WorkerStatus:
    from kubernetes import client

    ws = WorkerStatus(deployment=deployment, scaled_object=scaled_object)
    dep = client.AppsV1Api(api).read_namespaced_deployment(deployment, namespace)
    ws.desired, ws.ready = dep.spec.replicas, dep.status.ready_replicas or 0
    try:
        so = client.CustomObjectsApi(api).get_namespaced_custom_object(KEDA_GROUP, KEDA_VERSION, namespace,
                                                                       "scaledobjects", scaled_object)
    except client.ApiException as err:
        if err.status != 404:
            raise
        ws.scaled_object = ""
        return ws
    spec, st = so.get("spec", {}), so.get("status") or {}
    for cond in st.get("conditions") or []:
        ws.conditions[cond["type"]] = cond.get("status", "Unknown") + (f" ({cond['reason']})" if cond.get("reason") else "")
    trigger = (spec.get("triggers") or [{}])[0].get("metadata", {})
    ws.group, ws.lag_threshold = trigger.get("consumerGroup", ""), str(trigger.get("lagThreshold", ""))
    ws.min_replicas, ws.max_replicas = spec.get("minReplicaCount"), spec.get("maxReplicaCount")
    ws.hpa = st.get("hpaName", "")
    if ws.hpa:
        hpa = client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler(ws.hpa, namespace)
        ws.hpa_current, ws.hpa_desired = hpa.status.current_replicas, hpa.status.desired_replicas
    return ws


def ingest_status(api: Any, namespace: str, deployment: str) -> tuple[str, list[str]]:
    """(summary, names of the ingest pods)."""
    from kubernetes import client

    dep = client.AppsV1Api(api).read_namespaced_deployment(deployment, namespace)
    selector = ",".join(f"{k}={v}" for k, v in (dep.spec.selector.match_labels or {}).items())
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items
    names = sorted(p.metadata.name for p in pods)
    return f"{deployment}: {dep.status.ready_replicas or 0}/{dep.spec.replicas} ready", names


def last_counts(kafka: KafkaSettings, topic: str, tail: int = 500) -> dict[str, tuple[int, int, int, int]]:
    """intersection -> (record timestamp ms, interval start ms, interval end ms, interval s) of its newest
    count record, from the last ``tail`` records of each partition."""
    from kafka import TopicPartition

    from traffic import clients
    from traffic.wire import CountRecord

    consumer = clients.consumer(kafka, client_id="traffic-status", group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return {}
        consumer.assign(tps)
        ends, starts = consumer.end_offsets(tps), consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(starts[tp], ends[tp] - tail))
        newest: dict[str, tuple[int, int, int, int]] = {}
        remaining = {tp for tp in tps if ends[tp] > starts[tp]}
        while remaining:
            batches = consumer.poll(timeout_ms=1000, max_records=5000)
            if not batches:
                break
            for tp, messages in batches.items():
                for msg in messages:
                    try:
                        rec = CountRecord.decode(msg.value)
                    except TrafficError:
                        continue
                    if msg.timestamp > newest.get(rec.intersection, (-1,))[0]:
                        newest[rec.intersection] = (msg.timestamp, rec.interval_start_ms, rec.interval_end_ms, rec.interval_s)
                if consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        return newest
    finally:
        consumer.close()


def gather(kafka: KafkaSettings, topics: TopicSettings, site_path: str, namespace: str, api: Any | None,
           kube_error: str = "", worker_deployment: str = "traffic-worker", scaled_object: str = "traffic-worker",
           ingest_deployment: str = "traffic-ingest", groups: list[str] | None = None) -> Status:
    from traffic.consumer_lag import LagReader
    from traffic.site import load_site

    site = load_site(site_path)
    worker = WorkerStatus(deployment=worker_deployment)
    ingest, ingest_pods = "", []
    if api is not None:
        try:
            worker = worker_status(api, namespace, worker_deployment, scaled_object)
            ingest, ingest_pods = ingest_status(api, namespace, ingest_deployment)
        except Exception as err:  # noqa: BLE001 - show what Kafka knows even when the cluster answers badly
            kube_error = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    with LagReader(kafka, client_id="traffic-status") as reader:
        wanted = list(groups or [])
        if worker.group and worker.group not in wanted:
            wanted.insert(0, worker.group)
        if not wanted:
            wanted = [g for g in reader.groups() if reader.lag(g, topics.frames).committed]
        lags = {g: reader.lag(g, topics.frames) for g in wanted}
        partitions = len(next(iter(lags.values())).partitions) if lags else topics.frames_partitions
    newest = last_counts(kafka, topics.counts)
    cameras, intersections = [], []
    if len(ingest_pods) == 1:
        replica = ingest_pods[0]
    elif ingest_pods:
        replica = f"one of {len(ingest_pods)} pods"
    else:
        replica = "-" if api is None or kube_error else "no pod"
    for inter in site.intersections:
        for cam in inter.cameras:
            p = camera_partition(cam.id, partitions)
            cameras.append(CameraStatus(intersection=inter.id, camera=cam.id, partition=p,
                                        lag={g: lag.partitions.get(p, 0) for g, lag in lags.items()},
                                        ingest_replica=replica))
        rec = newest.get(inter.id)
        intersections.append(IntersectionStatus(
            intersection=inter.id, last_count_at=_iso(rec[0]) if rec else "",
            last_interval=f"[{_iso(rec[1])}, {_iso(rec[2])}) {rec[3]} s" if rec else ""))
    return Status(namespace=namespace, frames_topic=topics.frames, groups={g: lag.total for g, lag in lags.items()},
                  worker=worker, cameras=cameras, intersections=intersections, ingest=ingest,
                  kubernetes_error=kube_error)


def render(status: Status) -> str:
    """A plain-text report, one table per subject."""
    w = status.worker
    lines = [f"namespace {status.namespace}   frames topic {status.frames_topic}"]
    if status.kubernetes_error:
        lines.append(f"kubernetes: unavailable - {status.kubernetes_error}")
    else:
        conds = ", ".join(f"{k}={v}" for k, v in w.conditions.items()) or "no ScaledObject"
        lines.append(f"workers    {w.deployment}: {w.desired} desired, {w.ready} ready")
        if w.scaled_object:
            lines.append(f"scaling    ScaledObject {w.scaled_object}: {conds}")
            lines.append(f"           HPA {w.hpa}: {w.hpa_current} current -> {w.hpa_desired} desired "
                         f"(min {w.min_replicas}, max {w.max_replicas}, lagThreshold {w.lag_threshold})")
        lines.append(f"ingest     {status.ingest}")
    lines.append("lag        " + (", ".join(f"{g}: {n} frames" for g, n in status.groups.items()) or "no consumer group"))
    groups = list(status.groups)
    header = ["intersection", "camera", "ingest replica", "partition", *[f"lag {g}" for g in groups]]
    rows = [[c.intersection, c.camera, c.ingest_replica, str(c.partition), *[str(c.lag[g]) for g in groups]]
            for c in status.cameras]
    lines += ["", *_table(header, rows), ""]
    rows = [[i.intersection, i.last_count_at or "never", i.last_interval] for i in status.intersections]
    lines += _table(["intersection", "last count (UTC)", "interval"], rows)
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{n}}}" for n in widths)
    return [fmt.format(*header).rstrip(), *[fmt.format(*r).rstrip() for r in rows]]


def run(args: argparse.Namespace) -> int:
    """The ``traffic status`` handler."""
    from traffic.settings import connection_from_args

    api, kube_error = None, ""
    try:
        api = kube_api(args.kubeconfig, args.context)
    except Exception as err:  # noqa: BLE001 - no cluster: say so, show Kafka
        kube_error = f"no Kubernetes configuration ({type(err).__name__}: {err})"
    site = args.site or _site_from_env()
    try:
        status = gather(*connection_from_args(args), site,
                        args.namespace, api, kube_error, args.worker_deployment, args.scaled_object,
                        args.ingest_deployment, args.group or None)
    finally:
        if api is not None:
            api.close()
    if args.json:
        json.dump(asdict(status), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(status))
    return 0


def _site_from_env() -> str:
    import os

    from traffic.errors import ConfigError

    path = os.environ.get("TRAFFIC_SITE_CONFIG", "")
    if not path:
        raise ConfigError("no site file: pass --site or set TRAFFIC_SITE_CONFIG")
    return path


def register(sub: argparse._SubParsersAction) -> None:
    from traffic.settings import add_connection_arguments

    p = sub.add_parser("status", help="per camera and intersection: ingest replica, frames lag, workers and "
                                      "their ScaledObject, last count")
    p.add_argument("--site", default="", help="site YAML (default: TRAFFIC_SITE_CONFIG)")
    p.add_argument("--namespace", default="traffic", help="namespace of the pipeline (default: traffic)")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: KUBECONFIG, ~/.kube/config, in-cluster)")
    p.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")
    p.add_argument("--worker-deployment", default="traffic-worker")
    p.add_argument("--scaled-object", default="traffic-worker")
    p.add_argument("--ingest-deployment", default="traffic-ingest")
    p.add_argument("--group", action="append", default=[],
                   help="consumer group of traffic.frames to show (repeatable; default: the ScaledObject's, "
                        "else every group that committed on the topic)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_connection_arguments(p)
    p.set_defaults(handler=run)

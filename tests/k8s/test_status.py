"""`traffic status` against the real API server (KEDA included) and the real broker.

The test knows the truth it compares with: it produces frames keyed by camera (so it knows each
camera's partition from the broker's answer), commits a known offset for the worker group (so
it knows the lag), publishes a count record at a known time, and applies overlays/cpu so the
ScaledObject, its HPA and the ingest Pod exist.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from kafka import OffsetAndMetadata, TopicPartition
from kubernetes import client

from devkit.control_plane import apply_objects
from tests.k8s.conftest import wait_for
from tests.k8s.manifests import retarget
from traffic import clients
from traffic.site import load_site
from traffic.status import camera_partition
from traffic.wire import CountRecord


def test_status_reports_cameras_lag_workers_and_last_count(control_plane, k8s_api, render, kafka_bootstrap,
                                                           kafka_settings, topic_settings, demo_site_file, tmp_path):
    namespace, group = "t-status", f"{topic_settings.frames}-workers"
    objs = retarget(render("overlays/cpu"), namespace, kafka_bootstrap)
    so = next(o for o in objs if o["kind"] == "ScaledObject")
    so["spec"]["triggers"][0]["metadata"].update(topic=topic_settings.frames, consumerGroup=group)
    apply_objects(k8s_api, objs)

    site = load_site(demo_site_file)
    cameras = [(i.id, c.id) for i in site.intersections for c in i.cameras]
    producer = clients.producer(kafka_settings, client_id="test-status")
    partitions = {}
    for _, cam in cameras:
        for n in range(7):
            meta = producer.send(topic_settings.frames, key=cam.encode(), value=b"x").get(timeout=30)
            partitions[cam] = meta.partition
    count_meta = producer.send(topic_settings.counts, key=cameras[0][0].encode(), value=CountRecord(
        intersection=cameras[0][0], interval_s=60, interval_start_ms=1_700_000_040_000,
        interval_end_ms=1_700_000_100_000, series="movement", approach="north", movement="left",
        vehicle_class="car", count=3, final=True).encode()).get(timeout=30)
    producer.close()
    # The group has taken 2 frames of each camera's partition: 5 per camera left.
    consumer = clients.consumer(kafka_settings, client_id="test-status", group_id=group, enable_auto_commit=False)
    tps = [TopicPartition(topic_settings.frames, p) for p in sorted(set(partitions.values()))]
    consumer.assign(tps)
    consumer.commit({tp: OffsetAndMetadata(2, "", -1) for tp in tps})
    consumer.close()

    custom = client.CustomObjectsApi(k8s_api)
    wait_for(lambda: any(c["type"] == "Ready" and c["status"] == "True" for c in (custom.get_namespaced_custom_object(
        "keda.sh", "v1alpha1", namespace, "scaledobjects", "traffic-worker").get("status") or {}).get("conditions", [])),
        90, "ScaledObject Ready")
    core = client.CoreV1Api(k8s_api)
    # The ingest HPA (minReplicas 2) raises the Deployment to 2 pods: wait for them, so the
    # status below does not race the HPA's first sync.
    hpa = next(o for o in objs if o["kind"] == "HorizontalPodAutoscaler" and o["metadata"]["name"] == "traffic-ingest")
    ingest_min = hpa["spec"]["minReplicas"]
    wait_for(lambda: len(core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=traffic-ingest").items) == ingest_min,
             90, f"{ingest_min} ingest pods")

    env = {**os.environ, "TRAFFIC_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           **{f"TRAFFIC_TOPICS_{k.upper()}": str(v) for k, v in topic_settings.model_dump().items()}}
    argv = [sys.executable, "-m", "traffic.cli", "status", "--site", str(demo_site_file), "--namespace", namespace,
            "--kubeconfig", str(control_plane.kubeconfig)]

    def status_when_ready() -> dict | None:
        # KEDA puts the conditions back to Unknown while it re-reconciles (e.g. when the
        # Deployment's status changes); status shows what the API says at that moment.
        proc = subprocess.run([*argv, "--json"], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        got = json.loads(proc.stdout)
        return got if got["worker"]["conditions"].get("Ready", "").startswith("True") else None

    status = wait_for(status_when_ready, 120, "traffic status showing the ScaledObject Ready", interval_s=3)

    assert status["kubernetes_error"] == ""
    worker = status["worker"]
    assert worker["desired"] == 1 and worker["min_replicas"] == 1 and worker["max_replicas"] == 12
    assert worker["hpa"] == "keda-hpa-traffic-worker" and worker["group"] == group and worker["lag_threshold"] == "20"
    per_partition = [list(partitions.values()).count(p) for p in set(partitions.values())]
    assert status["groups"] == {group: sum(7 * n - 2 for n in per_partition)}
    for cam in status["cameras"]:
        assert cam["partition"] == partitions[cam["camera"]] == camera_partition(cam["camera"], 4)
        same_partition = sum(1 for c in partitions.values() if c == cam["partition"])
        assert cam["lag"] == {group: 7 * same_partition - 2}
        assert cam["ingest_replica"] == f"one of {ingest_min} pods"  # group assignment: any replica may read it
    last = {i["intersection"]: i for i in status["intersections"]}
    from traffic.status import _iso

    assert last[cameras[0][0]]["last_count_at"] == _iso(count_meta.timestamp)
    assert last[cameras[0][0]]["last_interval"].endswith("60 s")

    text = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert text.returncode == 0, text.stderr
    assert "ScaledObject traffic-worker: Ready=" in text.stdout and "cam-demo" in text.stdout


def test_status_without_a_cluster_still_shows_kafka(kafka_bootstrap, topic_settings, demo_site_file, tmp_path):
    env = {**os.environ, "TRAFFIC_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "KUBECONFIG": str(tmp_path / "none"),
           **{f"TRAFFIC_TOPICS_{k.upper()}": str(v) for k, v in topic_settings.model_dump().items()}}
    proc = subprocess.run([sys.executable, "-m", "traffic.cli", "status", "--site", str(demo_site_file), "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["kubernetes_error"]
    assert [c["camera"] for c in status["cameras"]] == ["cam-demo"]
    assert status["intersections"][0]["last_count_at"] == ""

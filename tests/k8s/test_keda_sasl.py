"""KEDA reads the workers' lag through SASL_SSL, with the shipped TriggerAuthentication (issue 11, item 6).

The Strimzi overlay (``overlays/cpu-strimzi``) is what runs against a secured broker: KEDA's Kafka
scaler authenticates with SCRAM-SHA-512 over TLS as ``traffic-keda`` (``kafkauser.yaml``: Describe
on the frames topic and the workers' group, nothing else), its password from the Secret
``traffic-kafka-auth`` and the CA from Strimzi's ``traffic-kafka-cluster-ca-cert``. Here the session's
SASL_SSL broker (``sasl_broker``: a CA made by the fixture, ACLs enforced) plays Strimzi's Kafka: the
test creates the Secrets the User and Cluster Operators would (the users' passwords from
``devkit.acls.provision``, which also writes the KafkaUser ACLs; the fixture's CA), applies the
overlay's scaler objects (ConfigMap, Secret, worker Deployment, TriggerAuthentication,
ScaledObject; topic and group renamed for the test) server-side, writes frames nobody has read,
and asks KEDA's external metrics API what the lag is. With a wrong password KEDA must not read it.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kubernetes import client

from devkit.acls import provision
from devkit.broker import LocalBroker
from devkit.control_plane import apply_objects
from tests.k8s.conftest import wait_for
from tests.k8s.manifests import condition, retarget
from traffic import clients
from traffic.settings import TopicSettings
from traffic.topics import create_topics

FRAMES = 57
"""Frames written to the topic, none read: the lag KEDA must report."""
SCALER_KINDS = {"Namespace", "ConfigMap", "Secret", "TriggerAuthentication", "ScaledObject"}


def _scaled_object(api: Any, namespace: str) -> dict[str, Any]:
    """The live ScaledObject of the workers in ``namespace``."""
    return client.CustomObjectsApi(api).get_namespaced_custom_object("keda.sh", "v1alpha1", namespace, "scaledobjects", "traffic-worker")


def _scaler_objects(render: Any, namespace: str, bootstrap: str, topic: str, group: str, password: str, ca: str, worker_password: str) -> list[dict[str, Any]]:
    """The overlay's scaler and what it reads, moved to ``namespace``; the Secrets as Strimzi's operators would write them."""
    keep = [o for o in render("overlays/cpu-strimzi")
            if (o["kind"] in SCALER_KINDS and not o["metadata"]["name"].startswith("traffic-dashboard"))
            or (o["kind"] == "Deployment" and o["metadata"]["name"] == "traffic-worker")]  # fmt: skip
    objs = retarget(keep, namespace, bootstrap)
    for obj in objs:
        if obj["kind"] == "ScaledObject":
            meta = obj["spec"]["triggers"][0]["metadata"]
            assert meta["topic"] == "traffic.frames" and meta["consumerGroup"] == "traffic-workers", meta
            meta["topic"], meta["consumerGroup"] = topic, group
        if obj["kind"] == "Secret" and obj["metadata"]["name"] == "traffic-kafka-auth":
            assert obj["stringData"]["sasl"] == "scram_sha512" and obj["stringData"]["username"] == "traffic-keda", obj["stringData"]
            obj["stringData"]["password"] = password
    objs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "traffic-kafka-cluster-ca-cert", "namespace": namespace},
                 "stringData": {"ca.crt": ca}})  # fmt: skip
    # The worker's own KafkaUser Secret: KEDA resolves the scale target's environment (bootstrapServersFromEnv) and with it this reference.
    objs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "traffic-worker", "namespace": namespace},
                 "stringData": {"password": worker_password}})  # fmt: skip
    return objs


def _lag(plane: Any, api: Any, namespace: str) -> int | str:
    """What KEDA's metrics adapter says the lag is (frames), or why it says nothing."""
    hpa_name = (_scaled_object(api, namespace).get("status") or {}).get("hpaName")
    if not hpa_name:
        return "no HPA yet"
    hpa = api.sanitize_for_serialization(client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler(hpa_name, namespace))
    metric = hpa["spec"]["metrics"][0]["external"]["metric"]
    selector = ",".join(f"{k}={v}" for k, v in sorted(metric["selector"]["matchLabels"].items()))
    status, got = plane.request(f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric['name']}?labelSelector={quote(selector)}")
    if status != 200:
        return f"{status}: {str(got)[:300]}"
    items = got.get("items") or []
    return int(float(items[0]["value"])) if items else "no value"


def test_keda_reads_the_lag_through_sasl_ssl_as_its_least_privilege_user(control_plane, k8s_api, render, sasl_broker: LocalBroker) -> None:
    prefix = f"k{uuid.uuid4().hex[:8]}"
    topics = TopicSettings(frames=f"{prefix}.frames", frames_partitions=2)
    admin = sasl_broker.admin_settings()
    create_topics(admin, topics)
    group = f"{prefix}-workers"
    who = provision(admin, {"traffic.frames": topics.frames, "traffic-workers": group}, roles=("ingest", "worker", "keda"))
    keda_password = who["keda"].sasl_password.get_secret_value()
    worker_password = who["worker"].sasl_password.get_secret_value()
    producer = clients.producer(who["ingest"], client_id="keda-sasl-test", acks="all")
    try:
        for i in range(FRAMES):
            producer.send(topics.frames, key=f"cam-{i % 4}".encode(), value=b"\xff\xd8 not read by anyone")
        producer.flush()
    finally:
        producer.close()
    ca = Path(sasl_broker.ca_file).read_text()
    good, wrong = f"t-keda-sasl-{prefix}", f"t-keda-wrong-{prefix}"
    apply_objects(k8s_api, _scaler_objects(render, good, sasl_broker.bootstrap, topics.frames, group, keda_password, ca, worker_password))
    apply_objects(k8s_api, _scaler_objects(render, wrong, sasl_broker.bootstrap, topics.frames, group, "not-the-password", ca, worker_password))

    seen: list[object] = []

    def lag_read() -> int | None:
        value = _lag(control_plane, k8s_api, good)
        seen.append(value)
        return value if value == FRAMES else None

    try:
        wait_for(lag_read, 120, f"KEDA reporting a lag of {FRAMES} through SASL_SSL")
    finally:
        print("KEDA's last answers:", seen[-3:], "ScaledObject status:", _scaled_object(k8s_api, good).get("status"))

    def ready_and_active() -> bool:  # Active: the scale loop (every pollingInterval) found the lag above activationLagThreshold (0)
        so = _scaled_object(k8s_api, good)
        return all((condition(so, kind) or {}).get("status") == "True" for kind in ("Ready", "Active"))

    wait_for(ready_and_active, 90, "the ScaledObject Ready and Active")

    # A wrong password: KEDA says so and reads no lag; the password is in no condition it reports.
    def refused() -> dict[str, Any] | None:
        so = _scaled_object(k8s_api, wrong)
        cond = condition(so, "Ready")
        return so if cond and cond["status"] == "False" else None

    so = wait_for(refused, 90, "KEDA refusing the ScaledObject with a wrong password")
    assert _lag(control_plane, k8s_api, wrong) != FRAMES
    assert keda_password not in str(so.get("status")) and "not-the-password" not in str(so.get("status"))
    print("KEDA with a wrong password:", condition(so, "Ready"))

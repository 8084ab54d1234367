"""Every kustomize overlay meets a real kube-apiserver with Pod Security admission and a real KEDA.

Each overlay is rendered with kustomize, moved into its own namespace (the shipped Namespace
object, so its ``pod-security.kubernetes.io/enforce: restricted`` label is what is tested), pointed
at the session's Kafka broker, and applied server-side. Then: every workload's controller
created its Pods (a Pod that breaks the restricted profile is refused at creation), every
ScaledObject is Ready (KEDA built its Kafka scaler against the broker), and the HPA KEDA made
carries the ScaledObject's scaling behaviour and bounds.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from devkit.control_plane import apply_objects
from tests.k8s.conftest import wait_for
from tests.k8s.manifests import condition, pod_selector, retarget, workloads

OVERLAYS = ["overlays/cpu", "overlays/gpu", "overlays/cpu-strimzi"]


def _pod_security_refusals(core: client.CoreV1Api, namespace: str) -> list[str]:
    events = core.list_namespaced_event(namespace).items
    return [f"{e.involved_object.kind}/{e.involved_object.name}: {e.message}" for e in events
            if e.reason == "FailedCreate" and "PodSecurity" in (e.message or "")]


@pytest.fixture(scope="module")
def applied(control_plane, k8s_api, render, kafka_bootstrap, tools) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """overlay -> (namespace, objects as rendered and retargeted), applied once per module."""
    out = {}
    for target in OVERLAYS:
        if target.endswith("strimzi") and tools.strimzi_unavailable_reason is not None:
            continue
        namespace = "t-" + target.split("/")[-1]
        objs = retarget(render(target), namespace, kafka_bootstrap)
        apply_objects(k8s_api, objs)
        out[target] = (namespace, objs)
    return out


def _target(applied, target):
    if target not in applied:
        pytest.skip("Strimzi CRDs were not generated (deploy/tools/install.sh needs Java >= 21)")
    return applied[target]


@pytest.mark.parametrize("target", OVERLAYS)
def test_namespace_enforces_restricted(applied, k8s_api, target):
    namespace, _ = _target(applied, target)
    labels = client.CoreV1Api(k8s_api).read_namespace(namespace).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_workload_admitted(applied, k8s_api, target):
    """Each Deployment, StatefulSet and Job got its Pods past Pod Security admission."""
    namespace, objs = _target(applied, target)
    core = client.CoreV1Api(k8s_api)
    for workload in workloads(objs):
        selector = pod_selector(workload)
        wait_for(lambda: core.list_namespaced_pod(namespace, label_selector=selector).items
                 or _pod_security_refusals(core, namespace),
                 60, f"pods of {workload['kind']}/{workload['metadata']['name']} in {namespace}")
        assert not _pod_security_refusals(core, namespace)
        pods = core.list_namespaced_pod(namespace, label_selector=selector).items
        assert pods, f"{workload['kind']}/{workload['metadata']['name']}: no pod created"


def test_restricted_namespace_refuses_an_unconfined_pod(applied, k8s_api):
    """The admission under test is real: the same namespace refuses a pod that breaks the profile."""
    namespace, _ = applied["overlays/cpu"]
    # Valid for the API, but root-capable: no runAsNonRoot, seccomp, capability drop.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unconfined"},
           "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"allowPrivilegeEscalation": True}}]}}
    with pytest.raises(client.ApiException) as err:
        client.CoreV1Api(k8s_api).create_namespaced_pod(namespace, pod)
    assert err.value.status == 403 and "violates PodSecurity" in err.value.body, err.value.body


@pytest.mark.parametrize("target", ["overlays/cpu", "overlays/gpu"])
def test_scaledobject_ready_and_hpa_carries_behaviour(applied, k8s_api, target):
    namespace, objs = _target(applied, target)
    custom = client.CustomObjectsApi(k8s_api)
    for so in [o for o in objs if o["kind"] == "ScaledObject"]:
        name = so["metadata"]["name"]

        def ready() -> dict[str, Any] | None:
            live = custom.get_namespaced_custom_object("keda.sh", "v1alpha1", namespace, "scaledobjects", name)
            cond = condition(live, "Ready")
            return live if cond and cond["status"] == "True" else None

        live = wait_for(ready, 90, f"ScaledObject {namespace}/{name} Ready")
        hpa_name = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["name"]
        assert live["status"]["hpaName"] == hpa_name
        hpa = client.AutoscalingV2Api(k8s_api).read_namespaced_horizontal_pod_autoscaler(hpa_name, namespace)
        hpa_dict = k8s_api.sanitize_for_serialization(hpa)
        assert hpa_dict["spec"]["behavior"] == so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert hpa_dict["spec"]["minReplicas"] == so["spec"]["minReplicaCount"]
        assert hpa_dict["spec"]["maxReplicas"] == so["spec"]["maxReplicaCount"]
        assert hpa_dict["spec"]["scaleTargetRef"]["name"] == so["spec"]["scaleTargetRef"]["name"]
        metric = hpa_dict["spec"]["metrics"][0]
        assert metric["type"] == "External"
        assert metric["external"]["target"] == {
            "type": "AverageValue", "averageValue": so["spec"]["triggers"][0]["metadata"]["lagThreshold"]}


def test_strimzi_scaledobject_accepted(applied, k8s_api):
    """cpu-strimzi: the Strimzi objects pass their CRDs, and KEDA takes the ScaledObject and says
    why it cannot scale yet: its TLS trigger needs Strimzi's cluster CA Secret and Kafka, which
    only the Strimzi operator makes (no operator here)."""
    namespace, objs = _target(applied, "overlays/cpu-strimzi")
    custom = client.CustomObjectsApi(k8s_api)
    strimzi = [o for o in objs if o["apiVersion"].startswith("kafka.strimzi.io/")]
    assert {o["kind"] for o in strimzi} >= {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"}
    for kind in {o["kind"] for o in strimzi}:
        names = sorted(o["metadata"]["name"] for o in strimzi if o["kind"] == kind)
        found = custom.list_namespaced_custom_object("kafka.strimzi.io", "v1", namespace, kind.lower() + "s")["items"]
        assert sorted(k["metadata"]["name"] for k in found) == names, kind

    def reported():
        so = custom.get_namespaced_custom_object("keda.sh", "v1alpha1", namespace, "scaledobjects", "traffic-worker")
        cond = condition(so, "Ready")
        return cond if cond and cond["status"] == "False" else None

    cond = wait_for(reported, 60, "KEDA's verdict on the Strimzi ScaledObject")
    assert cond["message"], cond
    print("KEDA on cpu-strimzi:", cond)

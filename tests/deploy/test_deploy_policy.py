"""The checkers themselves (deploy/tools/k8s_policy.py, k8s_references.py):
each rule must fail on a manifest that breaks it, or passing on the real
manifests would prove nothing. No tools needed."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any, Callable

import pytest

import k8s_policy
import k8s_references


def good_deployment() -> dict[str, Any]:
    """A workload that meets every rule."""
    labels = {
        "app.kubernetes.io/name": "demo",
        "app.kubernetes.io/component": "demo",
        "app.kubernetes.io/part-of": "traffic-pipeline",
        "app.kubernetes.io/version": "0.1.0",
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "demo", "namespace": "traffic", "labels": dict(labels)},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "demo"}},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "app",
                        "image": "traffic-pipeline:0.1.0",
                        "ports": [{"name": "metrics", "containerPort": 9101}],
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                      "limits": {"cpu": "1", "memory": "256Mi"}},
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}},
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}},
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}},
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    }],
                    "volumes": [{"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def pod(d: dict[str, Any]) -> dict[str, Any]:
    return d["spec"]["template"]["spec"]


def ctr(d: dict[str, Any]) -> dict[str, Any]:
    return pod(d)["containers"][0]


def test_good_workload_passes():
    assert k8s_policy.check_object(good_deployment()) == []


def test_non_workloads_are_not_judged():
    assert k8s_policy.check_object({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}}) == []


BAD: list[tuple[str, str, Callable[[dict[str, Any]], None]]] = [
    # rule, case, how to break the good workload
    ("limits", "no limits at all", lambda d: ctr(d)["resources"].pop("limits")),
    ("limits", "memory limit missing", lambda d: ctr(d)["resources"]["limits"].pop("memory")),
    ("limits", "request above its limit", lambda d: ctr(d)["resources"]["requests"].update(cpu="2")),
    ("limits", "limit that is no quantity", lambda d: ctr(d)["resources"]["limits"].update(cpu="two")),
    ("requests", "no requests", lambda d: ctr(d)["resources"].pop("requests")),
    ("non-root", "runAsNonRoot missing everywhere", lambda d: pod(d)["securityContext"].pop("runAsNonRoot")),
    ("non-root", "container overrides runAsNonRoot to false",
     lambda d: ctr(d)["securityContext"].update(runAsNonRoot=False)),
    ("non-root", "runs as uid 0", lambda d: ctr(d)["securityContext"].update(runAsUser=0)),
    ("read-only-root", "writable root filesystem", lambda d: ctr(d)["securityContext"].pop("readOnlyRootFilesystem")),
    ("read-only-root", "read-only root but no writable /tmp", lambda d: ctr(d).pop("volumeMounts")),
    ("privilege-escalation", "allowPrivilegeEscalation unset",
     lambda d: ctr(d)["securityContext"].pop("allowPrivilegeEscalation")),
    ("capabilities", "capabilities not dropped", lambda d: ctr(d)["securityContext"].pop("capabilities")),
    ("capabilities", "adds NET_ADMIN",
     lambda d: ctr(d)["securityContext"]["capabilities"].update(add=["NET_ADMIN"])),
    ("privileged", "privileged container", lambda d: ctr(d)["securityContext"].update(privileged=True)),
    ("seccomp", "no seccomp profile", lambda d: pod(d)["securityContext"].pop("seccompProfile")),
    ("seccomp", "seccomp Unconfined",
     lambda d: ctr(d)["securityContext"].update(seccompProfile={"type": "Unconfined"})),
    ("host-namespaces", "host network", lambda d: pod(d).update(hostNetwork=True)),
    ("host-path", "hostPath volume", lambda d: pod(d)["volumes"].append({"name": "h", "hostPath": {"path": "/"}})),
    ("image-tag", "image without tag", lambda d: ctr(d).update(image="traffic-pipeline")),
    ("image-tag", "image :latest", lambda d: ctr(d).update(image="registry:5000/traffic-pipeline:latest")),
    ("image-tag", "registry port is not a tag", lambda d: ctr(d).update(image="registry:5000/traffic-pipeline")),
    ("probes", "no liveness probe", lambda d: ctr(d).pop("livenessProbe")),
    ("probes", "no readiness probe", lambda d: ctr(d).pop("readinessProbe")),
    ("labels", "pod template without version label",
     lambda d: d["spec"]["template"]["metadata"]["labels"].pop("app.kubernetes.io/version")),
    ("labels", "workload without part-of label", lambda d: d["metadata"]["labels"].pop("app.kubernetes.io/part-of")),
    # Init containers are held to the same rules.
    ("limits", "init container without limits",
     lambda d: pod(d).update(initContainers=[{**copy.deepcopy(ctr(d)), "name": "init",
                                              "resources": {"requests": {"cpu": "1m", "memory": "1Mi"}}}])),
]


@pytest.mark.parametrize("rule,case,breaks", BAD, ids=[case for _, case, _ in BAD])
def test_policy_catches(rule, case, breaks):
    d = good_deployment()
    breaks(d)
    violations = k8s_policy.check_object(d)
    assert rule in {v.rule for v in violations}, f"{case}: got {[str(v) for v in violations]}"


def test_jobs_need_no_probes_but_everything_else():
    job = good_deployment()
    job["kind"], job["apiVersion"] = "Job", "batch/v1"
    for probe in ("livenessProbe", "readinessProbe"):
        ctr(job).pop(probe)
    assert k8s_policy.check_object(job) == []
    ctr(job)["securityContext"]["readOnlyRootFilesystem"] = False
    assert {v.rule for v in k8s_policy.check_object(job)} == {"read-only-root"}


@pytest.mark.parametrize("text,value", [
    ("500m", "0.5"),  # millicores
    ("2", "2"),
    ("1Gi", str(2**30)),  # binary suffix
    ("128M", "128000000"),  # decimal suffix
    ("1e3", "1000"),  # exponent
    ("two", None),  # not a quantity
    ("1GB", None),  # not a Kubernetes suffix
])
def test_parse_quantity(text, value):
    parsed = k8s_policy.parse_quantity(text)
    assert (parsed is None and value is None) or parsed == Decimal(value)


# ------------------------------------------------------------- references

def service(selector: dict[str, str], target_port: Any = "metrics") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "namespace": "traffic"},
            "spec": {"selector": selector, "ports": [{"name": "m", "port": 9101, "targetPort": target_port}]}}


def test_references_of_a_consistent_set_resolve():
    objs = [good_deployment(), service({"app.kubernetes.io/name": "demo"})]
    assert k8s_references.check_references(objs) == []


REF_CASES: list[tuple[str, str, Callable[[list[dict[str, Any]]], None]]] = [
    # expected words in the message, case, how to break [deployment, service]
    ("matches no pod", "service selector matches nothing", lambda o: o[1]["spec"].update(selector={"app": "other"})),
    ("no container port name", "service targets an unknown port name",
     lambda o: o[1]["spec"]["ports"][0].update(targetPort="http")),
    ("is not rendered", "envFrom of a ConfigMap nobody creates",
     lambda o: ctr(o[0]).update(envFrom=[{"configMapRef": {"name": "missing"}}])),
    ("mounts undeclared volume", "mount without volume",
     lambda o: ctr(o[0])["volumeMounts"].append({"name": "nope", "mountPath": "/x"})),
    ("unknown port", "probe on an unknown port name",
     lambda o: ctr(o[0])["livenessProbe"]["httpGet"].update(port="health")),
    ("scaleTargetRef", "ScaledObject aimed at a missing Deployment",
     lambda o: o.append({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
                         "metadata": {"name": "so", "namespace": "traffic"},
                         "spec": {"scaleTargetRef": {"name": "absent"}, "triggers": []}})),
    ("port 'web'", "PodMonitor on a port name no container has",
     lambda o: o.append({"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
                         "metadata": {"name": "pm", "namespace": "traffic"},
                         "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "demo"}},
                                  "podMetricsEndpoints": [{"port": "web"}]}})),
    ("names no rendered Kafka", "KafkaTopic for a Kafka that is not there",
     lambda o: o.append({"apiVersion": "kafka.strimzi.io/v1", "kind": "KafkaTopic",
                         "metadata": {"name": "t", "namespace": "traffic", "labels": {"strimzi.io/cluster": "x"}},
                         "spec": {}})),
]


@pytest.mark.parametrize("words,case,breaks", REF_CASES, ids=[case for _, case, _ in REF_CASES])
def test_reference_checker_catches(words, case, breaks):
    objs = [good_deployment(), service({"app.kubernetes.io/name": "demo"})]
    breaks(objs)
    problems = k8s_references.check_references(objs)
    assert any(words in p for p in problems), f"{case}: got {problems}"


def test_optional_references_may_be_absent():
    d = good_deployment()
    ctr(d)["envFrom"] = [{"secretRef": {"name": "maybe", "optional": True}}]
    assert k8s_references.check_references([d]) == []


@pytest.mark.parametrize("selector,labels,matches", [
    ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),  # subset of the labels
    ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),  # wrong value
    ({}, {"a": "1"}, True),  # empty selector selects all
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"}, True),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"b": "1"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"b": "1"}, True),
])
def test_selector_matches(selector, labels, matches):
    assert k8s_references.selector_matches(selector, labels) is matches

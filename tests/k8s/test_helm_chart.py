"""The Helm chart deploy/helm/traffic-pipeline: generated from deploy/k8s, agrees with it object for
object, lints, renders its values (GPU, MIG, affinity, KEDA off, site), and installs into the
real API server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

import helm_chart
import k8s_objects
from tests.k8s.conftest import wait_for

CHART = helm_chart.CHART_DIR
GPU_VALUES = CHART / "values-gpu.yaml"


def helm(helm_bin: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(helm_bin), *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def template(helm_bin: Path, *args: str, namespace: str = "traffic") -> dict[tuple[str, str], dict[str, Any]]:
    out = helm(helm_bin, "template", "traffic", str(CHART), "--namespace", namespace, *args).stdout
    return helm_chart.normalize([d for d in yaml.safe_load_all(out) if d])


def test_chart_is_generated_from_kustomize(tools):
    """The committed chart is exactly what deploy/tools/helm_chart.py makes of deploy/k8s now."""
    assert helm_chart.stale_files(tools.kustomize) == [], "run python deploy/tools/helm_chart.py"


@pytest.mark.parametrize("args", [
    [],                                                   # defaults = overlays/cpu
    ["-f", str(GPU_VALUES)],                              # GPU workers
    ["--set", "strimzi.enabled=true"],                    # in-cluster Kafka by Strimzi
    ["--set", "keda.enabled=false", "--set", "namespace.create=true"],
], ids=["cpu", "gpu", "strimzi", "keda-off"])
def test_helm_lint(helm_bin, args):
    proc = helm(helm_bin, "lint", "--strict", str(CHART), *args)
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize(("target", "args"), [
    ("overlays/cpu", []),
    ("overlays/gpu", ["-f", str(GPU_VALUES)]),
    ("overlays/cpu-strimzi", ["--set", "strimzi.enabled=true"]),
], ids=["cpu", "gpu", "strimzi"])
def test_template_equals_kustomize(helm_bin, render, target, args):
    """Same objects, field for field (kustomize's hash suffixes aside; the chart leaves the
    Namespace to the installer unless namespace.create)."""
    expected = helm_chart.normalize(render(target))
    expected.pop(("Namespace", "traffic"))
    got = template(helm_bin, *args)
    assert sorted(got) == sorted(expected)
    for key, obj in expected.items():
        assert got[key] == obj, key


def test_namespace_create_enforces_restricted(helm_bin):
    got = template(helm_bin, "--set", "namespace.create=true", namespace="city")
    ns = got[("Namespace", "city")]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {o["metadata"].get("namespace") for k, o in got.items() if k[0] != "Namespace"} == {"city"}


def test_keda_off_gives_fixed_replicas(helm_bin):
    got = template(helm_bin, "--set", "keda.enabled=false", "--set", "worker.replicas=3")
    assert ("ScaledObject", "traffic-worker") not in got and ("TriggerAuthentication", "traffic-kafka") not in got
    assert got[("Deployment", "traffic-worker")]["spec"]["replicas"] == 3
    # With KEDA on, the Deployment has no replicas field (the HPA owns it).
    assert "replicas" not in template(helm_bin)[("Deployment", "traffic-worker")]["spec"]


def test_fractional_gpu_by_mig_name_affinity_and_tolerations(helm_bin):
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "nvidia.com/mig.config", "operator": "In", "values": ["all-1g.10gb"]}]}]}}}
    got = template(helm_bin, "-f", str(GPU_VALUES), "--set", "worker.gpu.resourceName=nvidia.com/mig-1g.10gb",
                   "--set", "worker.gpu.count=2", "--set-json", f"worker.affinity={json.dumps(affinity)}",
                   "--set-json", 'worker.tolerations=[{"key":"dedicated","operator":"Equal","value":"gpu","effect":"NoSchedule"}]')
    pod = got[("Deployment", "traffic-worker")]["spec"]["template"]["spec"]
    resources = k8s_objects.container(got[("Deployment", "traffic-worker")], "worker")["resources"]
    for section in ("requests", "limits"):
        assert resources[section]["nvidia.com/mig-1g.10gb"] == "2"
        assert "nvidia.com/gpu" not in resources[section]
    assert pod["affinity"] == affinity
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]
    # The CPU defaults carry no GPU resource, selector or toleration.
    cpu_pod = template(helm_bin)[("Deployment", "traffic-worker")]["spec"]["template"]["spec"]
    assert not {"nodeSelector", "affinity", "tolerations"} & set(cpu_pod)


def test_site_and_kafka_values(helm_bin, tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text("intersections: []\n# my city\n")
    got = template(helm_bin, "--set-file", f"site={site}",
                   "--set", "kafka.env.TRAFFIC_KAFKA_BOOTSTRAP_SERVERS=kafka.example.svc:9092")
    assert got[("ConfigMap", "traffic-site")]["data"]["site.yaml"] == site.read_text()
    assert got[("ConfigMap", "traffic-kafka")]["data"]["TRAFFIC_KAFKA_BOOTSTRAP_SERVERS"] == "kafka.example.svc:9092"


def test_chart_installs_into_apiserver(helm_bin, control_plane, k8s_api, kafka_bootstrap):
    """`helm install` into a namespace enforcing Pod Security restricted: workloads admitted, the
    ScaledObject Ready, its HPA with the chart's behaviour; then `helm upgrade` to KEDA off."""
    namespace = "t-helm"
    core = client.CoreV1Api(k8s_api)
    core.create_namespace({"metadata": {"name": namespace, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    base = [str(helm_bin), "--kubeconfig", str(control_plane.kubeconfig), "--namespace", namespace]
    install = subprocess.run([*base, "install", "traffic", str(CHART),
                              "--set", f"kafka.env.TRAFFIC_KAFKA_BOOTSTRAP_SERVERS={kafka_bootstrap}"],
                             capture_output=True, text=True, timeout=180)
    assert install.returncode == 0, install.stderr
    for selector in ("app.kubernetes.io/name=traffic-worker", "app.kubernetes.io/name=traffic-ingest",
                     "app.kubernetes.io/name=traffic-aggregator", "app.kubernetes.io/name=traffic-topics"):
        wait_for(lambda: core.list_namespaced_pod(namespace, label_selector=selector).items, 60, f"pods {selector}")
    custom = client.CustomObjectsApi(k8s_api)

    def ready():
        so = custom.get_namespaced_custom_object("keda.sh", "v1alpha1", namespace, "scaledobjects", "traffic-worker")
        conds = {c["type"]: c["status"] for c in (so.get("status") or {}).get("conditions", [])}
        return so if conds.get("Ready") == "True" else None

    wait_for(ready, 90, "the chart's ScaledObject Ready")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    hpa = client.AutoscalingV2Api(k8s_api).read_namespaced_horizontal_pod_autoscaler("keda-hpa-traffic-worker", namespace)
    assert k8s_api.sanitize_for_serialization(hpa)["spec"]["behavior"] == values["keda"]["behavior"]

    upgrade = subprocess.run([*base, "upgrade", "traffic", str(CHART), "--reuse-values",
                              "--set", "keda.enabled=false", "--set", "worker.replicas=2"],
                             capture_output=True, text=True, timeout=180)
    assert upgrade.returncode == 0, upgrade.stderr
    apps = client.AppsV1Api(k8s_api)
    wait_for(lambda: apps.read_namespaced_deployment("traffic-worker", namespace).spec.replicas == 2, 60,
             "worker replicas 2 after KEDA off")
    with pytest.raises(client.ApiException) as err:
        custom.get_namespaced_custom_object("keda.sh", "v1alpha1", namespace, "scaledobjects", "traffic-worker")
    assert err.value.status == 404

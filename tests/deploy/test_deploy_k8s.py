"""deploy/k8s: every target renders with kustomize, every object validates
against the Kubernetes / KEDA / Prometheus Operator / Strimzi schemas offline,
passes the workload policy, and its references resolve; the scaling setup
keeps the contract of docs/deploy.md ("Scaling behaviour")."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import k8s_objects
import k8s_policy
import k8s_references
import k8s_schemas
from k8s_objects import container, env_value, find, one

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy" / "k8s"
TARGETS = k8s_objects.render_targets()
OVERLAYS = [t for t in TARGETS if t.startswith("overlays/")]
STRIMZI_GROUP = "kafka.strimzi.io"
SCALING_FIELDS = ("pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount")
TRIGGER_FIELDS = ("consumerGroup", "topic", "lagThreshold", "activationLagThreshold", "offsetResetPolicy",
                  "allowIdleConsumers", "excludePersistentLag", "limitToPartitionsWithLag",
                  "scaleToZeroOnInvalidOffset")


def test_targets_found():
    # cpu and gpu overlays at least, plus the Strimzi example.
    assert {"overlays/cpu", "overlays/gpu", "overlays/cpu-strimzi"} <= set(TARGETS)


@pytest.mark.parametrize("target", TARGETS)
def test_target_renders(objects_of, target):
    objs = objects_of(target)
    kinds = {o["kind"] for o in objs}
    assert {"Namespace", "Deployment", "StatefulSet", "ScaledObject", "PodMonitor"} <= kinds, kinds
    # The pipeline lives in one namespace.
    namespaced = [o for o in objs if o["kind"] != "Namespace"]
    assert {o["metadata"].get("namespace") for o in namespaced} == {"traffic"}


@pytest.mark.parametrize("target", TARGETS)
def test_objects_validate_against_schemas(objects_of, schemas, tools, target):
    """Built-in kinds against the Kubernetes OpenAPI (strict), custom resources
    against their CRDs' openAPIV3Schema (unknown fields rejected)."""
    objs = objects_of(target)
    skip_strimzi = tools.strimzi_unavailable_reason is not None
    errors, unknown = [], []
    for version, (kubernetes, crds) in schemas.items():
        for obj in objs:
            if skip_strimzi and obj["apiVersion"].startswith(STRIMZI_GROUP + "/"):
                continue  # test_strimzi_objects_structurally covers them
            used, errs = k8s_schemas.validate_object(obj, kubernetes, crds)
            if not used:
                unknown.append(f"{obj['apiVersion']} {obj['kind']}")
            errors += [f"[k8s {version}] {e}" for e in errs]
    assert not unknown, f"no schema for: {sorted(set(unknown))}"
    assert not errors, "\n".join(errors)


def test_crd_schemas_are_strict(schemas, objects_of):
    """The CRD validation catches what the API server would silently prune:
    a misspelt ScaledObject field and a number where KEDA wants a string."""
    kubernetes, crds = next(iter(schemas.values()))
    so = one(objects_of("overlays/cpu"), "ScaledObject", "traffic-worker")
    typo = {**so, "spec": {**so["spec"], "maxReplicas": 3}}
    assert any("maxReplicas" in e for e in k8s_schemas.validate_object(typo, kubernetes, crds)[1])
    trigger = {**so["spec"]["triggers"][0], "metadata": {**so["spec"]["triggers"][0]["metadata"], "lagThreshold": 30}}
    as_int = {**so, "spec": {**so["spec"], "triggers": [trigger]}}
    assert any("lagThreshold" in e for e in k8s_schemas.validate_object(as_int, kubernetes, crds)[1])


def test_strimzi_objects_structurally(objects_of, tools):
    """The Strimzi example uses the v1 API (Strimzi >= 1.0, KRaft with node
    pools). Full schema validation needs install.sh's generated Strimzi CRDs;
    this structural check always runs."""
    objs = [o for o in objects_of("overlays/cpu-strimzi") if o["apiVersion"].startswith(STRIMZI_GROUP)]
    kinds = sorted(o["kind"] for o in objs)
    topics = len(pytest.importorskip("traffic.topics").topic_specs(pytest.importorskip("traffic.settings").TopicSettings()))
    assert kinds == ["Kafka", "KafkaNodePool"] + ["KafkaTopic"] * topics + ["KafkaUser"] * 4  # ingest, worker, aggregator, keda
    assert all(o["apiVersion"] == f"{STRIMZI_GROUP}/v1" for o in objs)
    pool = find(objs, "KafkaNodePool")[0]
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}
    kafka = find(objs, "Kafka")[0]
    assert "replicas" not in kafka["spec"]["kafka"], "v1 Kafka: replicas belong to KafkaNodePool"
    if tools.strimzi_unavailable_reason is not None:
        pytest.skip(f"Strimzi CRD schemas not installed ({tools.strimzi_unavailable_reason}); structural checks only")


@pytest.mark.parametrize("target", TARGETS)
def test_workloads_pass_policy(objects_of, target):
    violations = k8s_policy.check_objects(objects_of(target))
    assert not violations, "\n".join(map(str, violations))


@pytest.mark.parametrize("target", TARGETS)
def test_references_resolve(objects_of, target):
    problems = k8s_references.check_references(objects_of(target))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("target", TARGETS)
def test_every_object_is_labelled(objects_of, target):
    problems = []
    for o in objects_of(target):
        labels = o["metadata"].get("labels") or {}
        for label in ("app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of"):
            if not labels.get(label):
                problems.append(f"{o['kind']}/{o['metadata']['name']} lacks {label}")
        if labels.get("app.kubernetes.io/part-of") not in (None, "traffic-pipeline"):
            problems.append(f"{o['kind']}/{o['metadata']['name']} is part-of {labels['app.kubernetes.io/part-of']}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("target", TARGETS)
def test_image_tags_are_the_release(objects_of, target):
    """Every container runs the image tag equal to app.kubernetes.io/version."""
    for o in objects_of(target):
        template = k8s_policy.pod_template(o)
        if template is None:
            continue
        version = o["metadata"]["labels"]["app.kubernetes.io/version"]
        for c in template["spec"]["containers"]:
            assert c["image"].rsplit(":", 1)[1] == version, f"{o['metadata']['name']}: {c['image']} vs {version}"


def test_namespace_enforces_restricted_pod_security(objects_of):
    ns = one(objects_of("default"), "Namespace", "traffic")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def _frames_partitions(objs: list[dict[str, Any]]) -> int:
    """Partitions of traffic.frames in a render: the KafkaTopic where Strimzi
    owns the topics, else the topics Job's TRAFFIC_TOPICS_FRAMES_PARTITIONS."""
    topics = [t for t in find(objs, "KafkaTopic") if t["spec"].get("topicName") == "traffic.frames"]
    if topics:
        return int(topics[0]["spec"]["partitions"])
    cm = [c for c in find(objs, "ConfigMap") if k8s_objects.base_name(c) == "traffic-topics"]
    assert cm, "neither a KafkaTopic for traffic.frames nor the traffic-topics ConfigMap is rendered"
    return int(cm[0]["data"]["TRAFFIC_TOPICS_FRAMES_PARTITIONS"])


@pytest.mark.parametrize("target", TARGETS)
def test_scaledobject_scales_workers_on_frames_lag(objects_of, target):
    objs = objects_of(target)
    so = one(objs, "ScaledObject", "traffic-worker")
    spec = so["spec"]
    worker = one(objs, "Deployment", spec["scaleTargetRef"]["name"])
    assert "replicas" not in worker["spec"], "KEDA owns the worker replica count"
    # Every scaling field explicit, none left to KEDA's defaults.
    for field in SCALING_FIELDS:
        assert field in spec, f"ScaledObject lacks {field}"
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] > 0
    assert spec["fallback"]["replicas"] >= spec["minReplicaCount"] >= 1
    # Replicas never exceed the partitions of traffic.frames.
    assert spec["maxReplicaCount"] <= _frames_partitions(objs)
    [trigger] = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    for field in TRIGGER_FIELDS:
        assert field in meta, f"kafka trigger lacks {field}"
    assert meta["topic"] == "traffic.frames"
    assert meta["offsetResetPolicy"] == "earliest"
    assert meta["allowIdleConsumers"] == "false"
    assert int(meta["lagThreshold"]) > 0 and int(meta["activationLagThreshold"]) >= 0
    # The group KEDA watches is the group the workers join.
    assert meta["consumerGroup"] == env_value(container(worker, "worker"), "TRAFFIC_WORKER_GROUP_ID") == "traffic-workers"


def _comment_above(lines: list[str], pattern: str) -> tuple[int, str]:
    """Index of the line matching pattern and the comment block right above it."""
    for i, line in enumerate(lines):
        if re.match(pattern, line):
            j = i
            while j > 0 and lines[j - 1].strip().startswith("#"):
                j -= 1
            return i, "\n".join(lines[j:i])
    raise AssertionError(f"no line matches {pattern!r}")


@pytest.mark.parametrize("field", SCALING_FIELDS + ("lagThreshold", "activationLagThreshold", "offsetResetPolicy"))
def test_scaling_fields_say_where_their_number_comes_from(field):
    lines = (K8S / "worker" / "scaledobject.yaml").read_text().splitlines()
    _, comment = _comment_above(lines, rf"^\s*{field}:")
    assert len(comment) > 20, f"{field} needs a comment saying where its value comes from"


@pytest.mark.parametrize("path", ["worker/scaledobject.yaml", "overlays/gpu/scaledobject-gpu.yaml"])
def test_lag_threshold_marked_for_the_measured_number(path):
    """lagThreshold derives from measured per-replica throughput
    (docs/benchmarks.md); until that number is in, the value says so."""
    lines = (K8S / path).read_text().splitlines()
    _, comment = _comment_above(lines, r"^\s*(lagThreshold:|value: \"\d+\"$)" if "gpu" in path else r"^\s*lagThreshold:")
    assert "# measured:" in comment and "docs/benchmarks.md" in comment


def test_gpu_overlay_puts_workers_on_gpus(objects_of):
    worker = one(objects_of("overlays/gpu"), "Deployment", "traffic-worker")
    pod = worker["spec"]["template"]["spec"]
    c = container(worker, "worker")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["nodeSelector"]
    assert env_value(c, "TRAFFIC_WORKER_DEVICE").startswith("cuda")
    assert env_value(c, "TRAFFIC_WORKER_HALF") == "true"
    assert c["image"].startswith("traffic-pipeline-cuda:")
    so = one(objects_of("overlays/gpu"), "ScaledObject", "traffic-worker")
    assert so["spec"]["maxReplicaCount"] <= 12


@pytest.mark.parametrize("target", ["overlays/cpu", "overlays/cpu-strimzi"])
def test_cpu_overlays_need_no_gpu(objects_of, target):
    for o in objects_of(target):
        template = k8s_policy.pod_template(o)
        if template is None:
            continue
        assert "nvidia.com/gpu" not in str(template), f"{o['metadata']['name']} asks for a GPU"
    worker = one(objects_of(target), "Deployment", "traffic-worker")
    assert env_value(container(worker, "worker"), "TRAFFIC_WORKER_DEVICE") == "cpu"


def test_ingest_scales_out_through_the_group_and_the_aggregator_never_runs_twice(objects_of):
    """Ingest replicas share the cameras through the ingest group (each camera
    read by one replica), so they may scale and roll; two faust aggregators
    would rebalance their tables."""
    objs = objects_of("overlays/cpu")
    ingest = one(objs, "Deployment", "traffic-ingest")
    assert env_value(container(ingest, "ingest"), "TRAFFIC_INGEST_ASSIGNMENT") == "group"
    assert "replicas" not in ingest["spec"], "the HorizontalPodAutoscaler owns the ingest replicas"
    assert ingest["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    hpa = one(objs, "HorizontalPodAutoscaler", "traffic-ingest")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "traffic-ingest" and hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    pdb = one(objs, "PodDisruptionBudget", "traffic-ingest")
    assert pdb["spec"]["maxUnavailable"] == 1 and pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    aggregator = one(objs, "StatefulSet", "traffic-aggregator")
    assert aggregator["spec"]["replicas"] == 1


def test_services_mount_the_site_config(objects_of):
    objs = objects_of("overlays/cpu")
    site = [c for c in find(objs, "ConfigMap") if k8s_objects.base_name(c) == "traffic-site"]
    assert len(site) == 1 and "site.yaml" in site[0]["data"]
    for kind, name, cname in (("Deployment", "traffic-ingest", "ingest"), ("Deployment", "traffic-worker", "worker"),
                              ("StatefulSet", "traffic-aggregator", "aggregator")):
        workload = one(objs, kind, name)
        c = container(workload, cname)
        assert env_value(c, "TRAFFIC_SITE_CONFIG") == "/etc/traffic/site/site.yaml"
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        assert "subPath" not in mounts["/etc/traffic/site"]  # a subPath mount never sees a ConfigMap update
        volume = next(v for v in workload["spec"]["template"]["spec"]["volumes"]
                      if v["name"] == mounts["/etc/traffic/site"]["name"])
        assert volume["configMap"]["name"] == site[0]["metadata"]["name"]
    # Updated in place (no hash suffix), so the running services see a change of the file.
    assert site[0]["metadata"]["name"] == "traffic-site"
    assert env_value(container(one(objs, "StatefulSet", "traffic-aggregator"), "aggregator"), "TRAFFIC_AGGREGATOR_SITE_CONFIG") == "/etc/traffic/site/site.yaml"


def test_strimzi_overlay_switches_everything_to_sasl_ssl(objects_of):
    objs = objects_of("overlays/cpu-strimzi")
    kafka_cm = [c for c in find(objs, "ConfigMap") if k8s_objects.base_name(c) == "traffic-kafka"][0]
    assert kafka_cm["data"]["TRAFFIC_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    bootstrap = kafka_cm["data"]["TRAFFIC_KAFKA_BOOTSTRAP_SERVERS"]
    kafka = find(objs, "Kafka")[0]
    listener_ports = {listener["port"] for listener in kafka["spec"]["kafka"]["listeners"]}
    host, port = bootstrap.rsplit(":", 1)
    # KEDA runs in another namespace: the address must carry the namespace.
    assert host == f"{kafka['metadata']['name']}-kafka-bootstrap.{kafka['metadata']['namespace']}.svc"
    assert int(port) in listener_ports
    auth = one(objs, "Secret", "traffic-kafka-auth")["stringData"]
    assert auth["sasl"] == "scram_sha512" and auth["tls"] == "enable"
    users = {u["metadata"]["name"]: u for u in find(objs, "KafkaUser")}
    keda = users[auth["username"]]
    assert keda["spec"]["authentication"]["password"]["valueFrom"]["secretKeyRef"] == {"name": "traffic-kafka-auth", "key": "password"}
    for kind, name, cname in (("Deployment", "traffic-ingest", "ingest"), ("Deployment", "traffic-worker", "worker"),
                              ("StatefulSet", "traffic-aggregator", "aggregator")):
        # each service is its own principal, with the password the User Operator generated for it
        env = {e["name"]: e for e in container(one(objs, kind, name), cname)["env"]}
        assert env["TRAFFIC_KAFKA_SASL_USERNAME"].get("value") == name and "valueFrom" not in env["TRAFFIC_KAFKA_SASL_USERNAME"]
        assert name in users and users[name]["spec"]["authorization"]["type"] == "simple"
        ref = env["TRAFFIC_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"], ref.get("optional", False)) == (name, "password", False)
    assert find(objs, "Kafka")[0]["spec"]["kafka"]["authorization"] == {"type": "simple"}
    ta = one(objs, "TriggerAuthentication", "traffic-kafka")
    assert {"sasl", "tls", "username", "password", "ca"} <= {r["parameter"] for r in ta["spec"]["secretTargetRef"]}
    assert not find(objs, "Job"), "KafkaTopic objects own the topics; the topics Job must go"


@pytest.mark.parametrize("target", TARGETS)
def test_dashboards_ship_as_sidecar_configmaps(objects_of, target):
    dashboards = sorted((REPO_ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
    cms = [c for c in find(objects_of(target), "ConfigMap")
           if (c["metadata"].get("labels") or {}).get("grafana_dashboard") == "1"]
    shipped = {key: value for c in cms for key, value in c["data"].items()}
    assert set(shipped) == {p.name for p in dashboards}
    for p in dashboards:
        assert shipped[p.name] == p.read_text()


def test_site_config_copy_matches_deploy_sites():
    """kustomize reads only files below a kustomization, so deploy/k8s/site-config
    keeps a copy of the demo site file; it must not drift."""
    source = REPO_ROOT / "deploy" / "sites" / "intersection-demo.yaml"
    copy = K8S / "site-config" / "intersection-demo.yaml"
    assert source.is_file(), f"{source.relative_to(REPO_ROOT)} is missing (it is the site configuration the demo runs)"
    assert yaml.safe_load(copy.read_text()) == yaml.safe_load(source.read_text()), (
        "deploy/k8s/site-config/intersection-demo.yaml differs from deploy/sites/intersection-demo.yaml; "
        "run: cp deploy/sites/intersection-demo.yaml deploy/k8s/site-config/")


def test_strimzi_topics_agree_with_the_code(objects_of, monkeypatch):
    """The KafkaTopics carry what `traffic topics create` would create:
    partitions, retention and size limits from TopicSettings' defaults."""
    topics_module = pytest.importorskip("traffic.topics", reason="the traffic package is not importable here")
    settings_module = pytest.importorskip("traffic.settings", reason="the traffic package is not importable here")
    for name in [n for n in os.environ if n.startswith("TRAFFIC_TOPICS_")]:
        monkeypatch.delenv(name)
    specs = {s.name: s for s in topics_module.topic_specs(settings_module.TopicSettings())}
    rendered = {t["spec"]["topicName"]: t["spec"] for t in find(objects_of("overlays/cpu-strimzi"), "KafkaTopic")}
    assert set(rendered) == set(specs)
    for name, spec in specs.items():
        assert rendered[name]["partitions"] == spec.partitions, name
        for key, value in spec.config.items():
            assert str(rendered[name]["config"].get(key)) == value, f"{name} {key}"


def test_retention_defaults_of_the_manifests_are_the_codes(objects_of, monkeypatch):
    """docs/privacy.md's defaults are what Kubernetes runs: the topics Job's retention settings and the
    worker's DLQ image setting equal TopicSettings' defaults (Strimzi's KafkaTopics: the test above)."""
    settings_module = pytest.importorskip("traffic.settings", reason="the traffic package is not importable here")
    for name in [n for n in os.environ if n.startswith("TRAFFIC_TOPICS_")]:
        monkeypatch.delenv(name)
    defaults = settings_module.TopicSettings()
    objs = objects_of("overlays/cpu")
    topics_cm = [c for c in find(objs, "ConfigMap") if k8s_objects.base_name(c) == "traffic-topics"][0]["data"]
    for field in ("frames_retention_ms", "detections_retention_ms", "output_retention_ms", "dlq_retention_ms"):
        assert topics_cm[f"TRAFFIC_TOPICS_{field.upper()}"] == str(getattr(defaults, field)), field
    worker = container(one(objs, "Deployment", "traffic-worker"), "worker")
    assert env_value(worker, "TRAFFIC_TOPICS_DLQ_KEEP_FRAME_IMAGES") == str(defaults.dlq_keep_frame_images).lower() == "false"

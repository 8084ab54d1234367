"""Cross-references between rendered objects: what a schema cannot see.

A Service whose selector matches no pod, a PodMonitor on a port name no
container has, a ScaledObject aimed at a Deployment that is not there, an
envFrom of a ConfigMap nobody creates: each is valid YAML and valid schema,
and each fails only on a cluster. ``check_references(objs)`` finds them in one
rendered overlay.

Objects other controllers create are allowed as references: Strimzi creates
the Secret ``<kafka>-cluster-ca-cert`` for every Kafka it runs.
"""

from __future__ import annotations

from typing import Any, Iterator

from k8s_objects import base_name
from k8s_policy import pod_template

_NAMESPACED_EXEMPT = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Kubernetes label selector semantics (matchLabels and matchExpressions).
    An empty selector matches everything."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


class _Index:
    def __init__(self, objs: list[dict[str, Any]]):
        self.objs = objs
        self.by_kind_name: dict[tuple[str, str, str], dict[str, Any]] = {}
        for o in objs:
            meta = o.get("metadata") or {}
            ns = meta.get("namespace", "")
            self.by_kind_name[(o["kind"], ns, meta.get("name", ""))] = o
            # Generated ConfigMaps/Secrets are referred to by their hashed name
            # after kustomize; accept the unhashed one too (it is what you write).
            self.by_kind_name.setdefault((o["kind"], ns, base_name(o)), o)
        # Secrets that operators create at run time.
        self.external: set[tuple[str, str, str]] = set()
        for kafka in (o for o in objs if o.get("kind") == "Kafka"):
            meta = kafka["metadata"]
            self.external.add(("Secret", meta.get("namespace", ""), f"{meta['name']}-cluster-ca-cert"))
        # Strimzi's User Operator keeps a SCRAM user's generated password in a Secret named like the user.
        for user in (o for o in objs if o.get("kind") == "KafkaUser"):
            meta = user["metadata"]
            self.external.add(("Secret", meta.get("namespace", ""), meta["name"]))
        self.pods = [(o, pod_template(o)) for o in objs if pod_template(o) is not None]

    def get(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        return self.by_kind_name.get((kind, ns, name))

    def exists(self, kind: str, ns: str, name: str) -> bool:
        return (kind, ns, name) in self.by_kind_name or (kind, ns, name) in self.external

    def pods_matching(self, ns: str, selector: dict[str, Any] | None) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        return [(o, t) for o, t in self.pods
                if (o["metadata"].get("namespace", "")) == ns
                and selector_matches(selector, (t.get("metadata") or {}).get("labels") or {})]


def _keys(obj: dict[str, Any]) -> set[str]:
    return set(obj.get("data") or {}) | set(obj.get("stringData") or {}) | set(obj.get("binaryData") or {})


def _port_names(template: dict[str, Any]) -> set[str]:
    return {p["name"] for c in template["spec"].get("containers") or [] for p in c.get("ports") or [] if p.get("name")}


def _port_numbers(template: dict[str, Any]) -> set[int]:
    return {p["containerPort"] for c in template["spec"].get("containers") or [] for p in c.get("ports") or []}


def _name(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _pod_refs(template: dict[str, Any]) -> Iterator[tuple[str, str, str | None, bool, str]]:
    """(kind, name, key or None, optional, where) for every ConfigMap/Secret a pod uses."""
    spec = template["spec"]
    for vol in spec.get("volumes") or []:
        if "configMap" in vol:
            yield "ConfigMap", vol["configMap"]["name"], None, bool(vol["configMap"].get("optional")), f"volume {vol['name']}"
        if "secret" in vol:
            yield "Secret", vol["secret"]["secretName"], None, bool(vol["secret"].get("optional")), f"volume {vol['name']}"
        for src in (vol.get("projected") or {}).get("sources") or []:
            for kind, field in (("ConfigMap", "configMap"), ("Secret", "secret")):
                if field in src:
                    yield kind, src[field]["name"], None, bool(src[field].get("optional")), f"volume {vol['name']}"
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        for src in c.get("envFrom") or []:
            if "configMapRef" in src:
                yield "ConfigMap", src["configMapRef"]["name"], None, bool(src["configMapRef"].get("optional")), f"container {c['name']} envFrom"
            if "secretRef" in src:
                yield "Secret", src["secretRef"]["name"], None, bool(src["secretRef"].get("optional")), f"container {c['name']} envFrom"
        for e in c.get("env") or []:
            vf = e.get("valueFrom") or {}
            for kind, field in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                if field in vf:
                    ref = vf[field]
                    yield kind, ref["name"], ref["key"], bool(ref.get("optional")), f"container {c['name']} env {e['name']}"


def check_references(objs: list[dict[str, Any]]) -> list[str]:
    """Every dangling reference in one rendered overlay, as messages."""
    idx = _Index(objs)
    problems: list[str] = []
    namespaces = {o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"}

    for o in objs:
        meta = o["metadata"]
        ns = meta.get("namespace", "")
        kind = o["kind"]
        if namespaces and kind not in _NAMESPACED_EXEMPT and ns not in namespaces:
            problems.append(f"{_name(o)}: namespace {ns!r} is not one of the rendered Namespaces {sorted(namespaces)}")

        template = pod_template(o)
        if template is not None:
            for ref_kind, ref_name, key, optional, where in _pod_refs(template):
                target = idx.get(ref_kind, ns, ref_name)
                if target is None:
                    if not optional and not idx.exists(ref_kind, ns, ref_name):
                        problems.append(f"{_name(o)}: {where}: {ref_kind} {ref_name!r} is not rendered")
                elif key is not None and key not in _keys(target) and not optional:
                    problems.append(f"{_name(o)}: {where}: {ref_kind} {ref_name!r} has no key {key!r}")
            volumes = {v["name"] for v in template["spec"].get("volumes") or []}
            names = _port_names(template)
            for c in template["spec"].get("containers") or []:
                for m in c.get("volumeMounts") or []:
                    if m["name"] not in volumes:
                        problems.append(f"{_name(o)}: container {c['name']} mounts undeclared volume {m['name']!r}")
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                    if isinstance(port, str) and port not in names:
                        problems.append(f"{_name(o)}: container {c['name']} {probe} uses unknown port {port!r}")
            if kind == "StatefulSet" and not idx.get("Service", ns, o["spec"].get("serviceName", "")):
                problems.append(f"{_name(o)}: serviceName {o['spec'].get('serviceName')!r} is not a rendered Service")

        if kind == "Service" and o["spec"].get("selector"):
            pods = idx.pods_matching(ns, {"matchLabels": o["spec"]["selector"]})
            if not pods:
                problems.append(f"{_name(o)}: selector {o['spec']['selector']} matches no pod template")
            for port in o["spec"].get("ports") or []:
                target = port.get("targetPort", port["port"])
                if pods and isinstance(target, str) and not any(target in _port_names(t) for _, t in pods):
                    problems.append(f"{_name(o)}: targetPort {target!r} is no container port name of its pods")
                if pods and isinstance(target, int) and not any(target in _port_numbers(t) for _, t in pods):
                    problems.append(f"{_name(o)}: targetPort {target} is no containerPort of its pods")

        if kind in ("PodMonitor", "PodDisruptionBudget"):
            selector = o["spec"].get("selector")
            pods = idx.pods_matching(ns, selector)
            if not pods:
                problems.append(f"{_name(o)}: selector {selector} matches no pod template")
            if kind == "PodMonitor":
                for ep in o["spec"].get("podMetricsEndpoints") or []:
                    if pods and ep.get("port") and not any(ep["port"] in _port_names(t) for _, t in pods):
                        problems.append(f"{_name(o)}: port {ep['port']!r} is no container port name of its pods")

        if kind == "NetworkPolicy":
            pods = idx.pods_matching(ns, o["spec"].get("podSelector"))
            if not pods:
                problems.append(f"{_name(o)}: podSelector matches no pod template")
            for rule in o["spec"].get("ingress") or []:
                for port in rule.get("ports") or []:
                    p = port.get("port")
                    if pods and isinstance(p, str) and not any(p in _port_names(t) for _, t in pods):
                        problems.append(f"{_name(o)}: ingress port {p!r} is no container port name of its pods")

        if kind == "ScaledObject":
            ref = o["spec"]["scaleTargetRef"]
            target = idx.get(ref.get("kind", "Deployment"), ns, ref["name"])
            if target is None:
                problems.append(f"{_name(o)}: scaleTargetRef {ref.get('kind', 'Deployment')}/{ref['name']} is not rendered")
            for trig in o["spec"].get("triggers") or []:
                auth = (trig.get("authenticationRef") or {}).get("name")
                if auth and not idx.get(trig["authenticationRef"].get("kind", "TriggerAuthentication"), ns, auth):
                    problems.append(f"{_name(o)}: authenticationRef {auth!r} is not rendered")
                for key, value in (trig.get("metadata") or {}).items():
                    if key.endswith("FromEnv") and target is not None and value not in _env_names(idx, target, ns):
                        problems.append(f"{_name(o)}: {key} {value!r} is not in the environment of {_name(target)}")

        if kind == "TriggerAuthentication":
            for ref in o["spec"].get("secretTargetRef") or []:
                secret = idx.get("Secret", ns, ref["name"])
                if secret is None and not idx.exists("Secret", ns, ref["name"]):
                    problems.append(f"{_name(o)}: secretTargetRef Secret {ref['name']!r} is not rendered")
                elif secret is not None and ref["key"] not in _keys(secret):
                    problems.append(f"{_name(o)}: Secret {ref['name']!r} has no key {ref['key']!r}")

        if o["apiVersion"].startswith("kafka.strimzi.io/") and kind != "Kafka":
            cluster = (meta.get("labels") or {}).get("strimzi.io/cluster")
            if not cluster or not idx.get("Kafka", ns, cluster):
                problems.append(f"{_name(o)}: label strimzi.io/cluster={cluster!r} names no rendered Kafka")
            if kind == "KafkaUser":
                ref = ((((o["spec"].get("authentication") or {}).get("password") or {}).get("valueFrom") or {})
                       .get("secretKeyRef"))
                if ref:
                    secret = idx.get("Secret", ns, ref["name"])
                    if secret is None or ref["key"] not in _keys(secret):
                        problems.append(f"{_name(o)}: password Secret {ref['name']!r} key {ref['key']!r} is not rendered")
    return problems


def _env_names(idx: _Index, workload: dict[str, Any], ns: str) -> set[str]:
    """Environment variable names of a workload's first container, including envFrom ConfigMaps/Secrets."""
    template = pod_template(workload) or {}
    containers = template.get("spec", {}).get("containers") or []
    if not containers:
        return set()
    c = containers[0]
    names = {e["name"] for e in c.get("env") or []}
    for src in c.get("envFrom") or []:
        for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if field in src:
                target = idx.get(kind, ns, src[field]["name"])
                if target is not None:
                    names |= {src.get("prefix", "") + k for k in _keys(target)}
    return names

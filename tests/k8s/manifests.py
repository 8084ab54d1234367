"""Rendered manifests made ready for the test cluster, as a user's overlay would: another
namespace (so each target gets its own), and the test broker as the Kafka bootstrap address."""

from __future__ import annotations

from typing import Any

SHIPPED_NAMESPACE = "traffic"


def retarget(objs: list[dict[str, Any]], namespace: str, bootstrap: str) -> list[dict[str, Any]]:
    """Moves every object from ``traffic`` to ``namespace`` and points the clients at ``bootstrap``."""
    out = []
    for obj in objs:
        meta = obj["metadata"]
        if obj["kind"] == "Namespace":
            assert meta["name"] == SHIPPED_NAMESPACE, meta["name"]
            meta["name"] = namespace
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = namespace
        elif meta.get("namespace") == SHIPPED_NAMESPACE:
            meta["namespace"] = namespace
        if obj["kind"] == "ConfigMap" and "TRAFFIC_KAFKA_BOOTSTRAP_SERVERS" in (obj.get("data") or {}):
            obj["data"]["TRAFFIC_KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
        out.append(obj)
    return out


def workloads(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet")]


def pod_selector(workload: dict[str, Any]) -> str:
    """A label selector for the pods of a workload (its template labels)."""
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The status condition ``kind`` (Ready, Active, ...) of a live object, if it has one yet."""
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), None)

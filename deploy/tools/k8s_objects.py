"""Rendering deploy/k8s with kustomize, and looking things up in the result."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = REPO_ROOT / "deploy" / "k8s"


def render_targets(k8s_dir: Path = K8S_DIR) -> list[str]:
    """What `kubectl apply` gets: the composed default and every overlay."""
    overlays = sorted(p.name for p in (k8s_dir / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
    return ["default"] + [f"overlays/{name}" for name in overlays]


def kustomize_build(kustomize: Path, target: str, k8s_dir: Path = K8S_DIR) -> list[dict[str, Any]]:
    """Renders one deploy/k8s target; raises RuntimeError with kustomize's message on failure."""
    proc = subprocess.run([str(kustomize), "build", str(k8s_dir / target)],
                          capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"kustomize build deploy/k8s/{target} failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(objs, kind, name)
    if len(found) != 1:
        raise LookupError(f"expected one {kind}/{name}, found {len(found)}")
    return found[0]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    for c in workload["spec"]["template"]["spec"]["containers"]:
        if c["name"] == name:
            return c
    raise LookupError(f"{workload['kind']}/{workload['metadata']['name']} has no container {name}")


def env_value(c: dict[str, Any], name: str) -> str | None:
    """A container's literal env value (not valueFrom), or None."""
    for e in c.get("env") or []:
        if e["name"] == name:
            return e.get("value")
    return None


def base_name(obj: dict[str, Any]) -> str:
    """The name before kustomize's content-hash suffix (traffic-site-8m8dthbck9 -> traffic-site)."""
    name = obj["metadata"]["name"]
    head, _, tail = name.rpartition("-")
    if obj.get("kind") in ("ConfigMap", "Secret") and head and len(tail) == 10 and tail.isalnum():
        return head
    return name

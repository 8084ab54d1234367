"""Fixtures for the deployment tests (tests/deploy).

The tests need the offline tools that deploy/tools/install.sh puts into a
cache outside the repository (kustomize, Kubernetes and CRD schemas, the
Compose schema, promcheck). Where they are not installed, the tests that need
them skip and say so; the others run. The checking code lives in deploy/tools
(usable without pytest); these tests run it on the repository's manifests and
on deliberately broken ones.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "deploy" / "tools"))

import k8s_objects  # noqa: E402
import k8s_schemas  # noqa: E402
import tools_cache  # noqa: E402


@pytest.fixture(scope="session")
def rendered(tools: tools_cache.ToolsCache) -> dict[str, list[dict[str, Any]]]:
    """deploy/k8s target (default, overlays/...) -> its rendered objects, built
    once per session. A target that fails to build maps to its error text."""
    out: dict[str, Any] = {}
    for target in k8s_objects.render_targets():
        try:
            out[target] = k8s_objects.kustomize_build(tools.kustomize, target)
        except RuntimeError as err:
            out[target] = str(err)
    return out


@pytest.fixture(scope="session")
def schemas(tools: tools_cache.ToolsCache) -> dict[str, tuple[k8s_schemas.KubernetesSchemas, k8s_schemas.CrdSchemas]]:
    """Kubernetes version -> (built-in schemas, CRD schemas of KEDA, Prometheus
    Operator and, when install.sh generated them, Strimzi)."""
    crd_files = sorted(tools.crd_dir("keda").glob("*.yaml")) + sorted(tools.crd_dir("prometheus-operator").glob("*.yaml"))
    if tools.strimzi_unavailable_reason is None:
        crd_files += sorted(tools.crd_dir("strimzi").glob("*.yaml"))
    crds = k8s_schemas.load_crds(crd_files)
    out = {}
    for version, schema_dir in tools.kubernetes_schema_dirs.items():
        kubernetes = k8s_schemas.KubernetesSchemas(schema_dir)
        out[version] = (kubernetes, k8s_schemas.CrdSchemas(crds, kubernetes))
    return out


@pytest.fixture(scope="session")
def objects_of(rendered: dict[str, Any]) -> Callable[[str], list[dict[str, Any]]]:
    """objects_of(target) -> the rendered objects of a target; fails the calling
    test with kustomize's message if the target did not build."""

    def get(target: str) -> list[dict[str, Any]]:
        objs = rendered[target]
        if isinstance(objs, str):
            pytest.fail(objs)
        return objs

    return get

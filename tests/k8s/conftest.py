"""Fixtures for tests/k8s: a real Kubernetes control plane with KEDA, once per test session.

The binaries come from ``python deploy/tools/k8s_stack.py build`` (deploy/local/setup.sh runs it)
in ``~/.cache/traffic-pipeline/k8s``; kustomize and the Prometheus Operator / Strimzi CRDs from
deploy/tools/install.sh. Where either is missing the tests skip and say which command to run.
The control plane starts on loopback (devkit/control_plane.py) and stops, in reverse order,
when the session ends.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "deploy" / "tools"))

import k8s_objects  # noqa: E402
import k8s_stack  # noqa: E402
import tools_cache  # noqa: E402

from devkit.control_plane import ControlPlane  # noqa: E402


@pytest.fixture(scope="session")
def k8s_bins() -> k8s_stack.Stack:
    stack, reason = k8s_stack.locate(need=["etcd", "kubernetes", "keda"])
    if stack is None:
        pytest.skip(reason)
    return stack


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    stack, reason = k8s_stack.locate(need=["helm"])
    if stack is None:
        pytest.skip(reason)
    return stack.bin("helm")


@pytest.fixture(scope="session")
def control_plane(k8s_bins: k8s_stack.Stack, tools: tools_cache.ToolsCache,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager + KEDA on loopback, with the CRDs the
    manifests use (KEDA's from the build, the Prometheus Operator's PodMonitor, Strimzi's when
    install.sh generated them). The HPA controller syncs every 5 s (default 15 s) so scaling
    tests take less time; KEDA and the HPA behaviour are as shipped otherwise."""
    crds = [tools.crd_dir("prometheus-operator") / "monitoring.coreos.com_podmonitors.yaml"]
    if tools.strimzi_unavailable_reason is None:
        crds += sorted(tools.crd_dir("strimzi").glob("*.yaml"))
    plane = ControlPlane(bin_dir=k8s_bins.root / "bin", keda_crds=k8s_bins.keda_crds,
                         run_dir=tmp_path_factory.mktemp("k8s"), hpa_sync_period_s=5, extra_crds=crds)
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def k8s_api(control_plane: ControlPlane) -> Iterator[Any]:
    """A ``kubernetes.client.ApiClient`` (admin) for the session's control plane."""
    api = control_plane.api_client()
    try:
        yield api
    finally:
        api.close()


@pytest.fixture(scope="session")
def render(tools: tools_cache.ToolsCache) -> Callable[[str], list[dict[str, Any]]]:
    """render("overlays/cpu") -> the kustomize-built objects of a deploy/k8s target."""
    cache: dict[str, list[dict[str, Any]]] = {}

    def get(target: str) -> list[dict[str, Any]]:
        if target not in cache:
            cache[target] = k8s_objects.kustomize_build(tools.kustomize, target)
        return [_deepcopy(o) for o in cache[target]]

    return get


def _deepcopy(obj: Any) -> Any:
    import copy

    return copy.deepcopy(obj)


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.5) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)

"""A tiny kubelet for one Deployment: keeps ``spec.replicas`` real ``traffic worker`` processes running.

The control plane of tests/k8s has no kubelet, so Pods stay Pending. This agent watches the
worker Deployment with the ``kubernetes`` client (a watch, re-listed on expiry), and reconciles:
starts a worker process per missing replica and stops the newest ones (SIGTERM: finish the
batch, commit, leave the group) when the Deployment shrinks; a worker that dies is started
again, as a kubelet restarts a crashed container. Each process gets the pod template's literal
environment and its ``envFrom`` ConfigMaps read from the API server, like a container would,
plus host-local overrides (a metrics port per process, the model and site file paths here).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devkit.broker import free_port
from devkit.local_pipeline import Child


@dataclass
class ReplicaEvent:
    """The agent saw the Deployment ask for ``replicas`` at ``t_s`` (seconds since the agent started)."""

    t_s: float
    replicas: int


@dataclass
class NodeAgent:
    api: Any
    namespace: str
    deployment: str
    container: str
    argv: list[str]
    base_env: dict[str, str]
    overrides: dict[str, str]
    log_dir: Path
    children: list[tuple[Child, int]] = field(default_factory=list)  # (process, metrics port)
    events: list[ReplicaEvent] = field(default_factory=list)
    restarts: int = 0
    started: int = 0
    _desired: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _t0: float = field(default_factory=time.monotonic)
    _serial: int = 0
    on_change: Callable[[int], None] | None = None

    def start(self) -> None:
        for target in (self._watch, self._reconcile_loop):
            thread = threading.Thread(target=target, daemon=True, name=f"node-agent-{target.__name__}")
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=40)
        with self._lock:
            for child, _ in self.children:
                child.terminate()
            self.children.clear()

    @property
    def desired(self) -> int:
        return self._desired

    def running(self) -> int:
        with self._lock:
            return sum(1 for child, _ in self.children if child.alive())

    def metrics_ports(self) -> list[int]:
        with self._lock:
            return [port for child, port in self.children if child.alive()]

    # -- the watch -----------------------------------------------------------------------------
    def _watch(self) -> None:
        from kubernetes import client, watch

        apps = client.AppsV1Api(self.api)
        while not self._stop.is_set():
            try:
                stream = watch.Watch().stream(apps.list_namespaced_deployment, self.namespace,
                                              field_selector=f"metadata.name={self.deployment}", timeout_seconds=5)
                for event in stream:
                    replicas = event["object"].spec.replicas or 0
                    if replicas != self._desired:
                        self._desired = replicas
                        self.events.append(ReplicaEvent(round(time.monotonic() - self._t0, 1), replicas))
                        if self.on_change:
                            self.on_change(replicas)
                    if self._stop.is_set():
                        break
            except Exception:  # noqa: BLE001 - the API server may restart a watch; list again
                time.sleep(0.5)

    # -- reconcile -------------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        """The pod template's environment as a container would see it."""
        from kubernetes import client

        apps, core = client.AppsV1Api(self.api), client.CoreV1Api(self.api)
        dep = apps.read_namespaced_deployment(self.deployment, self.namespace)
        c = next(c for c in dep.spec.template.spec.containers if c.name == self.container)
        env = dict(self.base_env)
        for source in c.env_from or []:
            if source.config_map_ref:
                env.update(core.read_namespaced_config_map(source.config_map_ref.name, self.namespace).data or {})
        for var in c.env or []:
            if var.value is not None:
                env[var.name] = var.value
        env.update(self.overrides)
        return env

    def _reconcile_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._reconcile()
            except Exception:  # noqa: BLE001 - try again on the next tick
                pass
            self._stop.wait(0.5)

    def _reconcile(self) -> None:
        with self._lock:
            for child, port in list(self.children):
                if not child.alive():  # crashed: restart it in place, as a kubelet would
                    self.children.remove((child, port))
                    self.restarts += 1
            alive = len(self.children)
        want = self._desired
        if want > alive:
            env = self._env()
            for _ in range(want - alive):
                port = free_port()
                self._serial += 1
                child = Child(f"worker-{self._serial}", self.argv,
                              {**env, "TRAFFIC_WORKER_METRICS_PORT": str(port)}, self.log_dir)
                with self._lock:
                    self.children.append((child, port))
                    self.started += 1
        elif want < alive:
            with self._lock:
                victims = self.children[want:]
                self.children = self.children[:want]
            for child, _ in victims:  # SIGTERM and wait in the background, as a kubelet's grace period
                thread = threading.Thread(target=child.terminate, daemon=True)
                thread.start()
                self._threads.append(thread)

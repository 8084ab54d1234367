"""Several ``traffic ingest`` replicas in one ingest group, as local processes: the demo, tests, bench.

Each replica is a child process in its own process group (so ``kill -9`` and ``SIGSTOP`` in tests
are real) configured only through the environment, as on Kubernetes; which cameras it holds is read
from its ``/metrics`` (``traffic_ingest_camera_held``).
"""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from devkit.broker import free_port
from devkit.local_pipeline import Child
from traffic.errors import TrafficError


@dataclass
class Replica:
    """One ingest replica: its name (label ``ingester``), metrics port and process."""

    name: str
    port: int
    child: Child

    def alive(self) -> bool:
        return self.child.alive()

    def metrics(self) -> str:
        """The replica's /metrics text, or "" while it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as resp:
                return resp.read().decode()
        except OSError:
            return ""

    def held(self) -> set[str] | None:
        """Cameras it holds now, or None when it does not answer (not started, frozen, dead)."""
        text = self.metrics()
        if not text:
            return None
        return {
            line.split('camera="', 1)[1].split('"', 1)[0]
            for line in text.splitlines()
            if line.startswith("traffic_ingest_camera_held{") and line.rstrip().endswith(" 1.0")
        }

    def sample(self, name: str, **labels: str) -> float:
        """The value of one sample of its /metrics (0 when absent)."""
        for line in self.metrics().splitlines():
            if line.startswith(name + ("{" if labels else " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


class IngestGroup:
    """Start, kill, freeze and watch ingest replicas that share one group.

    Args:
        env: environment for every replica (Kafka, topics, site); group settings are added.
        log_dir: where each replica's output goes (``<name>.log``).
        settings: extra ``TRAFFIC_INGEST_*`` values (e.g. a short session timeout for tests).
    """

    def __init__(self, env: dict[str, str], log_dir: Path, settings: dict[str, str] | None = None) -> None:
        self.env = {**env, "TRAFFIC_INGEST_ASSIGNMENT": "group", **(settings or {})}
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.replicas: dict[str, Replica] = {}
        self._argv = [sys.executable, "-m", "traffic.cli", "ingest"]

    def start(self, name: str | None = None) -> Replica:
        """Start one more replica (named ``ingest-<n>`` unless given)."""
        name = name or f"ingest-{len(self.replicas)}"
        port = free_port()
        env = {**self.env, "TRAFFIC_INGEST_NAME": name, "TRAFFIC_INGEST_METRICS_PORT": str(port)}
        replica = Replica(name, port, Child(name, self._argv, env, self.log_dir))
        self.replicas[name] = replica
        return replica

    def alive(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.alive()]

    def held(self) -> dict[str, set[str]]:
        """Replica name -> cameras held, for the replicas that answer."""
        out = {}
        for replica in self.alive():
            cams = replica.held()
            if cams is not None:
                out[replica.name] = cams
        return out

    def wait(self, condition: Callable[[dict[str, set[str]]], bool], timeout_s: float, poll_s: float = 0.25) -> dict[str, set[str]]:
        """Poll :meth:`held` until ``condition(held)``; TrafficError (with the last state) on timeout."""
        deadline = time.monotonic() + timeout_s
        held: dict[str, set[str]] = {}
        while time.monotonic() < deadline:
            held = self.held()
            if condition(held):
                return held
            time.sleep(poll_s)
        raise TrafficError(f"ingest group did not reach the expected state in {timeout_s:.0f} s; last: {held}")

    def kill9(self, name: str) -> None:
        """SIGKILL one replica (a crash: no release, no leave)."""
        self.replicas[name].child.kill9()

    def freeze(self, name: str) -> None:
        """SIGSTOP one replica (a stalled process or a partitioned node: it cannot tell anyone)."""
        os.killpg(self.replicas[name].child.proc.pid, signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        os.killpg(self.replicas[name].child.proc.pid, signal.SIGCONT)

    def stop(self, timeout_s: float = 30.0) -> dict[str, int | None]:
        """SIGTERM every replica (after a SIGCONT, in case one is frozen); exit codes by name."""
        for replica in self.replicas.values():  # all at once: one by one, each stop moves cameras to the rest
            if replica.alive():
                for sig in (signal.SIGCONT, signal.SIGTERM):
                    try:
                        os.killpg(replica.child.proc.pid, sig)
                    except ProcessLookupError:
                        pass
        codes: dict[str, int | None] = {}
        for name, replica in self.replicas.items():
            replica.child.wait(timeout_s)
            codes[name] = replica.child.proc.returncode
        return codes


def exactly_once(cameras: set[str], replicas: int | None = None) -> Callable[[dict[str, set[str]]], bool]:
    """A :meth:`IngestGroup.wait` condition: every camera held by exactly one replica (of ``replicas``)."""

    def check(held: dict[str, set[str]]) -> bool:
        flat = [c for cams in held.values() for c in cams]
        return (replicas is None or len(held) == replicas) and sorted(flat) == sorted(cameras)

    return check

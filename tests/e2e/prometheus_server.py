"""A real Prometheus server (Debian's ``prometheus`` package) scraping services on loopback."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from devkit.broker import free_port


class PrometheusServer:
    """Start ``prometheus`` with a scrape config for the given jobs; query its HTTP API.

    Args:
        workdir: holds the config and the TSDB.
        targets: job name -> list of ``host:port`` to scrape every ``scrape_interval_s``.
    """

    def __init__(self, workdir: Path, targets: dict[str, list[str]], scrape_interval_s: float = 1.0) -> None:
        self.workdir = workdir
        self.targets = targets
        self.scrape_interval_s = scrape_interval_s
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str | None:
        return shutil.which("prometheus")

    def start(self, timeout_s: float = 30) -> "PrometheusServer":
        binary = self.binary()
        if binary is None:
            raise RuntimeError("prometheus is not installed (apt-get install prometheus; deploy/local/setup.sh does it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": f"{int(self.scrape_interval_s * 1000)}ms", "evaluation_interval": f"{int(self.scrape_interval_s * 1000)}ms"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": hosts}]} for job, hosts in self.targets.items()
            ],
        }
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self._log = open(self.workdir / "prometheus.log", "wb")
        self._proc = subprocess.Popen(
            [binary, f"--config.file={self.workdir / 'prometheus.yml'}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
            if self._proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(self.workdir / 'prometheus.log').read_text()[-2000:]}")
        raise RuntimeError("prometheus did not become ready")

    def query(self, promql: str) -> list[dict]:
        """Instant query; the list of result series (empty when no data)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise AssertionError(f"query failed: {promql}: {body}")
        return body["data"]["result"]

    def targets_up(self) -> dict[str, str]:
        """``job/instance`` -> health of every scrape target."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/targets", timeout=10) as resp:
            body = json.loads(resp.read())
        return {f"{t['labels']['job']}/{t['labels']['instance']}": t["health"] for t in body["data"]["activeTargets"]}

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

"""``/metrics``, ``/healthz`` and ``/readyz`` on one port, for Prometheus and Kubernetes probes.

``/healthz`` (liveness) fails when the service's main loop has not reported a heartbeat for
``stall_s`` seconds: a hung loop gets the pod restarted. ``/readyz`` (readiness) fails until every
named check is true (e.g. ``kafka`` connected, ``model`` loaded), and says which ones are not.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


class Health:
    """Liveness heartbeat and readiness checks of one service; thread-safe."""

    def __init__(self, checks: tuple[str, ...] = ("kafka",), stall_s: float = 120.0) -> None:
        self._lock = threading.Lock()
        self._ready = {name: False for name in checks}
        self._reasons: dict[str, str] = {name: "not started" for name in checks}
        self._beat = time.monotonic()
        self.stall_s = stall_s

    def beat(self) -> None:
        """Call from the main loop at least every ``stall_s`` seconds."""
        self._beat = time.monotonic()

    def set(self, check: str, ok: bool, reason: str = "") -> None:
        """Record the state of one readiness check."""
        with self._lock:
            self._ready[check] = ok
            self._reasons[check] = "" if ok else reason

    def live(self) -> tuple[bool, dict[str, object]]:
        """Liveness and a small JSON-able explanation."""
        age = time.monotonic() - self._beat
        return age < self.stall_s, {"heartbeat_age_s": round(age, 1), "stall_s": self.stall_s}

    def ready(self) -> tuple[bool, dict[str, object]]:
        """Readiness and the state of each check."""
        with self._lock:
            ok = all(self._ready.values())
            return ok, {name: "ok" if good else self._reasons.get(name, "") for name, good in self._ready.items()}


class HealthServer:
    """A small HTTP server thread; ``start()`` / ``stop()`` are idempotent."""

    def __init__(self, health: Health, port: int, host: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY) -> None:
        self.health = health
        self._host = host
        self._port = port
        self._registry = registry
        self._server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return self._server.server_address[1] if self._server else self._port

    def start(self) -> "HealthServer":
        if self._server is not None:
            return self
        health, registry = self.health, self._registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, detail = health.live() if path == "/healthz" else health.ready()
                    body = json.dumps({"ok": ok, **detail}).encode()
                    self._send(200 if ok else 503, body, "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # probes every few seconds: keep logs quiet
                pass

        try:
            self._server = ThreadingHTTPServer((self._host, self._port), Handler)
        except OSError as exc:
            from traffic.errors import ConfigError

            raise ConfigError(f"cannot serve metrics on {self._host}:{self._port}: {exc.strerror}") from None
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True).start()
        log.info("serving /metrics /healthz /readyz", extra={"port": self.port})
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

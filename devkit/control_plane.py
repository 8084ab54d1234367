"""A real Kubernetes control plane with KEDA, on loopback, from the binaries deploy/tools/k8s_stack.py builds.

    etcd ─ kube-apiserver ─┬─ kube-controller-manager (deployment, replicaset, statefulset, job,
      (RBAC, Pod Security   │     HPA, namespace, service-account, garbage-collector controllers)
       admission, front-    ├─ keda operator  (ScaledObject -> HPA; gRPC metrics service)
       proxy for the        └─ keda-adapter   (v1beta1.external.metrics.k8s.io, reached through an
       aggregation layer)                       ExternalName Service to 127.0.0.1)

There is no scheduler and no kubelet: Pods are created (so Pod Security admission and the
controllers really run) but stay Pending. Something else plays the kubelet where a test needs
processes (tests/k8s has a node agent that runs ``traffic worker`` per replica).

Every certificate is made here with ``openssl`` in the run directory: the cluster CA (serving
certificate, ``system:masters`` client), the front-proxy CA and client (the aggregation layer's
``--requestheader-*``), the service-account key pair, and KEDA's CA with one certificate that
names ``keda-metrics-apiserver.keda.svc`` (what the aggregator verifies) and the operator's gRPC
service. Processes stop in reverse order (the apiserver hangs if etcd goes first).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devkit.broker import free_port
from devkit.local_pipeline import Child
from traffic.errors import TrafficError

KEDA_NAMESPACE = "keda"
KEDA_ADAPTER_SERVICE = "keda-metrics-apiserver"
KEDA_OPERATOR_SERVICE = "keda-operator"
EXTERNAL_METRICS_APISERVICE = "v1beta1.external.metrics.k8s.io"
# Controllers the tests need; names as kube-controller-manager v1.36 lists them in --help.
CONTROLLERS = (
    "deployment-controller", "replicaset-controller", "statefulset-controller", "job-controller",
    "horizontal-pod-autoscaler-controller", "namespace-controller", "serviceaccount-controller",
    "serviceaccount-token-controller", "garbage-collector-controller", "root-ca-certificate-publisher-controller",
)


class ControlPlaneError(TrafficError):
    """The control plane could not start or stopped unexpectedly."""


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args[:2])} failed: {proc.stderr.strip()}")


class Pki:
    """Certificates in one directory, named ``<name>.crt`` / ``<name>.key``; EC P-256, valid 2 days."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)

    def crt(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    def ca(self, name: str, common_name: str) -> None:
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(self.key(name)), "-out", str(self.crt(name)), "-days", "2",
                 "-subj", f"/CN={common_name}", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", cwd=self.dir)

    def leaf(self, name: str, ca: str, subject: str, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> None:
        """A certificate for both server and client use, signed by ``ca``."""
        csr = self.dir / f"{name}.csr"
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(self.key(name)), "-out", str(csr), "-subj", subject, cwd=self.dir)
        ext = self.dir / f"{name}.ext"
        lines = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
                 "extendedKeyUsage=serverAuth,clientAuth"]
        sans = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips]
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.crt(ca)), "-CAkey", str(self.key(ca)),
                 "-CAcreateserial", "-days", "2", "-out", str(self.crt(name)), "-extfile", str(ext), cwd=self.dir)

    def rsa_pair(self, name: str) -> None:
        """The service-account signing key (``<name>.key``) and its public key (``<name>.pub``)."""
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(self.key(name)), cwd=self.dir)
        _openssl("pkey", "-in", str(self.key(name)), "-pubout", "-out", str(self.dir / f"{name}.pub"), cwd=self.dir)


@dataclass
class ControlPlane:
    """Start with :meth:`start`, stop with :meth:`stop` (reverse order); a context manager too.

    Attributes:
        bin_dir: directory with etcd, kube-apiserver, kube-controller-manager, keda, keda-adapter.
        keda_crds: KEDA's CRD files (the build copies them next to the binaries).
        run_dir: certificates, etcd data, kubeconfig and logs go here.
        hpa_sync_period_s: how often the HPA controller reads metrics (the default is 15 s).
    """

    bin_dir: Path
    keda_crds: list[Path]
    run_dir: Path
    hpa_sync_period_s: int = 15
    extra_crds: list[Path] = field(default_factory=list)
    processes: list[Child] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    # Seconds from start() until each part was ready (for the report and the docs).
    timings: dict[str, float] = field(default_factory=dict)

    # -- paths -------------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        """An admin (``system:masters``) kubeconfig for clients and the controllers."""
        return self.run_dir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def pki(self) -> Pki:
        return Pki(self.run_dir / "pki")

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 180.0) -> None:
        """Start everything and wait until the external metrics API is Available."""
        started = time.monotonic()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(exist_ok=True)
        for name in ("etcd", "etcd_peer", "apiserver", "controller_manager", "keda_operator_metrics",
                     "keda_operator_probe", "keda_grpc", "keda_adapter", "keda_adapter_metrics"):
            self.ports[name] = free_port()
        self._make_certificates()
        self._write_kubeconfig()
        try:
            self._start_etcd()
            self._wait(lambda: self._http_ok(f"http://127.0.0.1:{self.ports['etcd']}/health"), "etcd", 60, started)
            self._start_apiserver()
            self._wait(lambda: self._https_ok("/readyz"), "kube-apiserver", timeout_s, started)
            self._start_controller_manager()
            self._install_keda_objects()
            self._start_keda()
            self._wait(self._external_metrics_available, "KEDA metrics adapter (APIService Available)", timeout_s, started)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop in reverse order of start: KEDA, controllers, the apiserver, then etcd."""
        for proc in reversed(self.processes):
            proc.terminate(timeout_s=15.0)
        self.processes.clear()

    def check_alive(self) -> None:
        for proc in self.processes:
            if not proc.alive():
                raise ControlPlaneError(f"{proc.name} exited with {proc.proc.returncode}:\n{proc.tail(15)}")

    # -- clients -----------------------------------------------------------------------------
    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for the admin kubeconfig."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def request(self, path: str, method: str = "GET", body: dict | None = None) -> tuple[int, Any]:
        """A raw admin request to the apiserver (status, decoded JSON or text)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, context=self._ssl_context(), timeout=10) as resp:
                raw = resp.read().decode()
                status = resp.status
        except urllib.error.HTTPError as err:
            raw, status = err.read().decode(), err.code
        try:
            return status, json.loads(raw)
        except json.JSONDecodeError:
            return status, raw

    # -- internals ---------------------------------------------------------------------------
    def _make_certificates(self) -> None:
        pki = self.pki
        pki.ca("ca", "traffic-pipeline-test-ca")
        pki.leaf("apiserver", "ca", "/CN=kube-apiserver",
                 dns=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                      "kubernetes.default.svc.cluster.local"), ips=("127.0.0.1",))
        pki.leaf("admin", "ca", "/O=system:masters/CN=admin")
        pki.ca("front-proxy-ca", "front-proxy-ca")
        pki.leaf("front-proxy-client", "front-proxy-ca", "/CN=front-proxy-client")
        pki.rsa_pair("sa")
        pki.ca("keda-ca", "KEDA")
        keda = pki.dir / "keda"
        keda.mkdir(exist_ok=True)
        pki.leaf("keda", "keda-ca", "/O=KEDAORG/CN=keda",
                 dns=(f"{KEDA_ADAPTER_SERVICE}.{KEDA_NAMESPACE}.svc", f"{KEDA_ADAPTER_SERVICE}.{KEDA_NAMESPACE}.svc.cluster.local",
                      f"{KEDA_OPERATOR_SERVICE}.{KEDA_NAMESPACE}.svc", f"{KEDA_OPERATOR_SERVICE}.{KEDA_NAMESPACE}.svc.cluster.local",
                      "localhost"), ips=("127.0.0.1",))
        # KEDA reads ca.crt, tls.crt and tls.key from one directory (its --cert-dir).
        for src, dst in (("keda-ca.crt", "ca.crt"), ("keda.crt", "tls.crt"), ("keda.key", "tls.key")):
            (keda / dst).write_bytes((pki.dir / src).read_bytes())

    def _write_kubeconfig(self) -> None:
        import yaml

        pki = self.pki
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "local",
            "clusters": [{"name": "local", "cluster": {"server": self.server, "certificate-authority": str(pki.crt("ca"))}}],
            "users": [{"name": "admin", "user": {"client-certificate": str(pki.crt("admin")), "client-key": str(pki.key("admin"))}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
        }  # fmt: skip
        self.kubeconfig.write_text(yaml.safe_dump(cfg))

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.processes.append(Child(name, argv, {**os.environ, **(env or {})}, self.run_dir / "logs"))

    def _start_etcd(self) -> None:
        p = self.ports
        self._spawn("etcd", [
            str(self.bin_dir / "etcd"), "--name", "local", "--data-dir", str(self.run_dir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{p['etcd']}", "--advertise-client-urls", f"http://127.0.0.1:{p['etcd']}",
            "--listen-peer-urls", f"http://127.0.0.1:{p['etcd_peer']}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{p['etcd_peer']}",
            "--initial-cluster", f"local=http://127.0.0.1:{p['etcd_peer']}",
            "--unsafe-no-fsync", "--quota-backend-bytes", str(2 * 2**30), "--log-level", "warn",
        ])  # fmt: skip

    def _start_apiserver(self) -> None:
        pki = self.pki
        self._spawn("kube-apiserver", [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.ports['apiserver']}",
            f"--tls-cert-file={pki.crt('apiserver')}", f"--tls-private-key-file={pki.key('apiserver')}",
            f"--client-ca-file={pki.crt('ca')}",
            "--authorization-mode=RBAC",
            # PodSecurity is on by default; named so a reader sees the admission under test.
            "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,PodSecurity,LimitRanger,ResourceQuota",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.dir / 'sa.pub'}", f"--service-account-signing-key-file={pki.key('sa')}",
            "--service-cluster-ip-range=10.96.0.0/24",
            # The aggregation layer (KEDA's external metrics API) authenticates to the adapter
            # with the front-proxy client certificate and passes the user in these headers.
            f"--requestheader-client-ca-file={pki.crt('front-proxy-ca')}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.crt('front-proxy-client')}", f"--proxy-client-key-file={pki.key('front-proxy-client')}",
            # Endpoints refuse loopback addresses: do not publish 127.0.0.1 as the kubernetes Service's endpoint.
            "--endpoint-reconciler-type=none",
            "--profiling=false", "--v=1",
        ])  # fmt: skip

    def _start_controller_manager(self) -> None:
        pki = self.pki
        kc = str(self.kubeconfig)
        self._spawn("kube-controller-manager", [
            str(self.bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", f"--secure-port={self.ports['controller_manager']}",
            f"--cert-dir={self.run_dir / 'controller-manager'}",
            "--controllers=" + ",".join(CONTROLLERS),
            f"--service-account-private-key-file={pki.key('sa')}", f"--root-ca-file={pki.crt('ca')}",
            "--use-service-account-credentials=false", "--leader-elect=false",
            f"--horizontal-pod-autoscaler-sync-period={self.hpa_sync_period_s}s",
            "--profiling=false", "--v=1",
        ])  # fmt: skip

    def _install_keda_objects(self) -> None:
        """KEDA's CRDs, its namespace, and the aggregation layer's route to the adapter on loopback."""
        import yaml
        from kubernetes import client, dynamic, utils

        api = self.api_client()
        try:
            dyn = dynamic.DynamicClient(api)
            for path in [*self.keda_crds, *self.extra_crds]:
                for doc in yaml.safe_load_all(path.read_text()):
                    if doc:
                        crd = dyn.resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")
                        crd.server_side_apply(body=doc, field_manager="control-plane", force_conflicts=True)
            utils.create_from_dict(api, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KEDA_NAMESPACE}})
            port = self.ports["keda_adapter"]
            client.CoreV1Api(api).create_namespaced_service(KEDA_NAMESPACE, {
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": KEDA_ADAPTER_SERVICE},
                # Endpoints cannot hold 127.0.0.1; an ExternalName can, and the aggregator resolves it.
                "spec": {"type": "ExternalName", "externalName": "127.0.0.1",
                         "ports": [{"name": "https", "port": port, "targetPort": port, "protocol": "TCP"}]},
            })  # fmt: skip
            ca = base64.b64encode(self.pki.crt("keda-ca").read_bytes()).decode()
            apiservice = {
                "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                "metadata": {"name": EXTERNAL_METRICS_APISERVICE},
                "spec": {"group": "external.metrics.k8s.io", "version": "v1beta1", "caBundle": ca,
                         "groupPriorityMinimum": 100, "versionPriority": 100,
                         "service": {"namespace": KEDA_NAMESPACE, "name": KEDA_ADAPTER_SERVICE, "port": port}},
            }  # fmt: skip
            dyn.resources.get(api_version="apiregistration.k8s.io/v1", kind="APIService").create(body=apiservice)
        finally:
            api.close()

    def _start_keda(self) -> None:
        p = self.ports
        keda_certs = str(self.pki.dir / "keda")
        env = {"KUBECONFIG": str(self.kubeconfig), "WATCH_NAMESPACE": "", "POD_NAMESPACE": KEDA_NAMESPACE,
               "KEDA_CLUSTER_OBJECT_NAMESPACE": KEDA_NAMESPACE, "OPERATOR_NAME": "keda-operator"}
        self._spawn("keda-operator", [
            str(self.bin_dir / "keda"), "--leader-elect=false", "--zap-log-level=info", "--zap-encoder=json",
            f"--metrics-bind-address=127.0.0.1:{p['keda_operator_metrics']}",
            f"--health-probe-bind-address=127.0.0.1:{p['keda_operator_probe']}",
            f"--metrics-service-bind-address=127.0.0.1:{p['keda_grpc']}",
            f"--cert-dir={keda_certs}", "--enable-cert-rotation=false",
            f"--ca-dir={keda_certs}",
        ], env)  # fmt: skip
        kc = str(self.kubeconfig)
        self._spawn("keda-adapter", [
            str(self.bin_dir / "keda-adapter"), "--bind-address=127.0.0.1", f"--secure-port={p['keda_adapter']}",
            f"--cert-dir={keda_certs}", f"--tls-cert-file={keda_certs}/tls.crt", f"--tls-private-key-file={keda_certs}/tls.key",
            f"--lister-kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            f"--metrics-service-address=127.0.0.1:{p['keda_grpc']}",
            f"--metrics-service-grpc-authority={KEDA_OPERATOR_SERVICE}.{KEDA_NAMESPACE}.svc.cluster.local",
            f"--port={p['keda_adapter_metrics']}", "--zap-log-level=info", "--zap-encoder=json",
        ], env)  # fmt: skip

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.crt("ca")))
        ctx.load_cert_chain(str(self.pki.crt("admin")), str(self.pki.key("admin")))
        return ctx

    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def _https_ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.server + path, context=self._ssl_context(), timeout=3) as resp:
                return resp.status == 200
        except OSError:
            return False

    def _external_metrics_available(self) -> bool:
        status, body = self.request(f"/apis/apiregistration.k8s.io/v1/apiservices/{EXTERNAL_METRICS_APISERVICE}")
        if status != 200 or not isinstance(body, dict):
            return False
        conds = {c["type"]: c["status"] for c in body.get("status", {}).get("conditions", [])}
        return conds.get("Available") == "True"

    def _wait(self, ready, what: str, timeout_s: float, started: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            self.check_alive()
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.name}\n{p.tail(15)}" for p in self.processes)
                raise ControlPlaneError(f"{what} not ready within {timeout_s:.0f} s\n{logs}")
            time.sleep(0.3)
        self.timings[what] = time.monotonic() - started


def apply_objects(api: Any, objects: list[dict[str, Any]], field_manager: str = "traffic-tests") -> list[dict[str, Any]]:
    """Server-side apply of rendered manifests, Namespaces and CRDs first; returns what the server stored.

    Any rejection (schema, admission, Pod Security on a Pod) raises the client's ApiException,
    whose body names the object and the reason.
    """
    from kubernetes import dynamic

    dyn = dynamic.DynamicClient(api)
    first = ("CustomResourceDefinition", "Namespace", "ServiceAccount", "ConfigMap", "Secret")
    ordered = sorted(objects, key=lambda o: first.index(o["kind"]) if o["kind"] in first else len(first))
    stored = []
    for obj in ordered:
        resource = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        namespace = obj["metadata"].get("namespace") if resource.namespaced else None
        result = resource.server_side_apply(body=obj, name=obj["metadata"]["name"], namespace=namespace,
                                            field_manager=field_manager, force_conflicts=True)
        stored.append(result.to_dict())
    return stored

"""A real Apache Kafka 4.x broker (KRaft, single node) on loopback, for the demo and the tests.

The broker's jars come from Maven Central through Maven (``kafka_2.13`` and its runtime
dependencies) and are cached outside the repository (``~/.cache/traffic-pipeline/kafka-<version>``,
or ``$TRAFFIC_CACHE_DIR``). Each broker gets its own data directory holding its
``server.properties``, KRaft log directory, ``broker.log`` and a ``state.json`` that lets a second
``start`` say "already running" instead of fighting over the directory.

    fetch_jars()                 # mvn dependency:copy-dependencies, once
    with LocalBroker(tmp) as b:  # format KRaft storage, start java, wait until it answers
        b.bootstrap              # "127.0.0.1:<free port>"

With ``users={"traffic-ingest": "<password>", ...}`` the broker is a secured one instead: its only
client listener is SASL_SSL with SCRAM-SHA-512 (a CA and broker certificate made by
:mod:`devkit.tls`, the SCRAM users written into the KRaft bootstrap metadata by
``kafka-storage format --add-scram``), ACLs are enforced by KRaft's ``StandardAuthorizer``
(``allow.everyone.if.no.acl.found=false``: a user without ACLs may do nothing) and the
controller listener takes SASL PLAIN with a broker-only password. A super user ``admin`` with a
random password is always added; :meth:`LocalBroker.client_settings` gives the
``KafkaSettings`` of any user, :meth:`LocalBroker.admin_settings` those of ``admin``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from traffic.errors import BrokerError
from traffic.settings import KafkaSettings

log = logging.getLogger(__name__)

KAFKA_VERSION = os.environ.get("TRAFFIC_KAFKA_VERSION", "4.1.1")
ADMIN_USER = "admin"
"""The super user of a secured local broker (the tests' and the demo's operator)."""
LOG4J_VERSION = "2.24.3"  # the log4j2 release kafka 4.1.x is built against; adds the slf4j binding

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.traffic-pipeline</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = {level}
logger.state.name = state.change.logger
logger.state.level = WARN
"""


def cache_root() -> Path:
    """Cache of downloaded tools (``$TRAFFIC_CACHE_DIR``, else ``~/.cache/traffic-pipeline``)."""
    if os.environ.get("TRAFFIC_CACHE_DIR"):
        return Path(os.environ["TRAFFIC_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "traffic-pipeline"


def jars_dir(version: str = KAFKA_VERSION) -> Path:
    """Where the broker jars of ``version`` are cached."""
    return cache_root() / f"kafka-{version}" / "libs"


def jars_cached(version: str = KAFKA_VERSION) -> bool:
    """True when a complete download of ``version`` is in the cache."""
    return (jars_dir(version).parent / "complete").exists()


def fetch_jars(version: str = KAFKA_VERSION, timeout_s: float = 900) -> Path:
    """Download the broker jars with Maven into the cache (once); return the jars directory."""
    target = jars_dir(version)
    if jars_cached(version):
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (mvn) is not installed; it is needed once to fetch the Kafka jars (apt-get install maven)")
    if shutil.which("java") is None:
        raise BrokerError("Java is not installed; the Kafka broker needs Java 17 (apt-get install openjdk-17-jre-headless)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kafka-pom-") as tmp:
        Path(tmp, "pom.xml").write_text(_POM.format(kafka=version, log4j=LOG4J_VERSION))
        staging = Path(tmp, "libs")
        log.info("fetching Kafka broker jars from Maven Central", extra={"version": version, "cache": str(target)})
        cmd = [mvn, "-B", "-q", "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={staging}"]
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise BrokerError(f"Maven did not finish fetching Kafka {version} within {timeout_s:.0f} s") from None
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise BrokerError(f"Maven could not fetch Kafka {version} (is Maven Central reachable?):\n{tail}")
        if not any(staging.glob(f"kafka_2.13-{version}.jar")):
            raise BrokerError(f"Maven finished but kafka_2.13-{version}.jar is missing from {staging}")
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(staging), target)
    (target.parent / "complete").write_text(version + "\n")
    return target


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something listens on (or holds) ``host:port``."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class LocalBroker:
    """One single-node KRaft broker + controller on loopback.

    Args:
        data_dir: holds config, logs, KRaft data and ``state.json``; created if missing.
        port: client port; ``None`` picks a free one. A taken port is a BrokerError.
        version: Kafka version of the cached jars.
        heap_mb: JVM heap; 512 MB is plenty for tests on a 2-core machine.
        fetch: download the jars if they are not cached (else BrokerError).
        users: SCRAM-SHA-512 users (name -> password) of a SASL_SSL broker with ACLs; None = PLAINTEXT.
        retention_check_ms: how often the broker deletes expired segments (Kafka's default is 5 minutes).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        version: str = KAFKA_VERSION,
        heap_mb: int = 512,
        fetch: bool = True,
        users: dict[str, str] | None = None,
        retention_check_ms: int = 60000,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.secure = users is not None
        self.users: dict[str, str] = dict(users or {})
        if self.secure:
            self.users.setdefault(ADMIN_USER, secrets.token_hex(16))
            for name, password in self.users.items():
                if not name.replace("-", "").replace("_", "").replace(".", "").isalnum() or not password.isalnum():
                    raise BrokerError(f"SCRAM user {name!r}: names take letters, digits, '-', '_', '.'; passwords letters and digits")
        self._controller_password = secrets.token_hex(16)
        self.retention_check_ms = retention_check_ms
        self.version = version
        self.heap_mb = heap_mb
        self.fetch = fetch
        self._requested_port = port
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        """``host:port`` for clients."""
        if self.port is None:
            raise BrokerError("the broker is not started")
        return f"127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        """The CA certificate clients of a secured broker trust (``TRAFFIC_KAFKA_SSL_CAFILE``)."""
        return self.data_dir / "tls" / "ca.crt"

    def client_settings(self, user: str, password: str | None = None, **overrides: object) -> KafkaSettings:
        """KafkaSettings of ``user`` (its own password unless one is given) for this broker."""
        if not self.secure:  # explicit: TRAFFIC_KAFKA_* of the environment must not turn this into SASL
            return KafkaSettings(bootstrap_servers=self.bootstrap, security_protocol="PLAINTEXT", **overrides)  # type: ignore[arg-type]
        if password is None:
            if user not in self.users:
                raise BrokerError(f"no SCRAM user {user!r} on this broker (users: {', '.join(sorted(self.users))})")
            password = self.users[user]
        return KafkaSettings(
            bootstrap_servers=self.bootstrap, security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
            sasl_username=user, sasl_password=password, ssl_cafile=str(self.ca_file), **overrides,  # type: ignore[arg-type]
        )  # fmt: skip

    def admin_settings(self) -> KafkaSettings:
        """KafkaSettings of the super user (PLAINTEXT settings for an unsecured broker)."""
        return self.client_settings(ADMIN_USER)

    @property
    def state_file(self) -> Path:
        return self.data_dir / "state.json"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    def running_state(self) -> dict[str, object] | None:
        """The state of a broker already running from this data directory, or None."""
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        return state if _pid_alive(int(state.get("pid", -1))) else None

    def start(self, timeout_s: float = 90.0) -> "LocalBroker":
        """Format storage if needed, start the JVM, and return once the broker answers."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        other = self.running_state()
        if other is not None:
            raise BrokerError(
                f"a broker is already running from {self.data_dir} (pid {other['pid']}, {other['bootstrap']}); "
                "stop it first with `traffic broker stop`"
            )
        if not jars_cached(self.version):
            if not self.fetch:
                raise BrokerError(f"Kafka {self.version} jars are not cached in {jars_dir(self.version)}; run `traffic broker fetch`")
            fetch_jars(self.version)
        if self._requested_port is not None and port_in_use(self._requested_port):
            raise BrokerError(f"port {self._requested_port} is already in use; choose another or omit it to pick a free one")
        self.port = self._requested_port or free_port()
        controller_port = free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self._write_config(controller_port)
        self._format(props)
        java = shutil.which("java") or "java"
        cmd = [
            java, f"-Xmx{self.heap_mb}m", f"-Xms{min(self.heap_mb, 256)}m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp", str(jars_dir(self.version) / "*"), "kafka.Kafka", str(props),
        ]  # fmt: skip
        with open(self.log_file, "ab") as out:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        state = {"pid": self._proc.pid, "bootstrap": self.bootstrap, "version": self.version}
        if self.secure:
            state.update(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", ssl_cafile=str(self.ca_file), users=sorted(self.users))
        self.state_file.write_text(json.dumps(state))
        os.chmod(self.state_file, 0o600)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        log.info("kafka broker up", extra={"bootstrap": self.bootstrap, "version": self.version, "data_dir": str(self.data_dir),
                                           "security_protocol": "SASL_SSL" if self.secure else "PLAINTEXT"})
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout_s``); idempotent.

        Also stops a broker started by another process from the same data directory.
        """
        pid: int | None = None
        if self._proc is not None:
            pid = self._proc.pid
        else:
            state = self.running_state()
            pid = int(state["pid"]) if state else None
        if pid is not None and _pid_alive(pid):
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout_s
            while _pid_alive(pid) and time.monotonic() < deadline:
                if self._proc is not None:
                    self._proc.poll()
                time.sleep(0.2)
            if _pid_alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self._proc = None
        self.state_file.unlink(missing_ok=True)

    def __enter__(self) -> "LocalBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------------------
    def _write_config(self, controller_port: int) -> Path:
        kraft = self.data_dir / "kraft-logs"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            **(self._security_config(controller_port) if self.secure else {}),
            "log.dirs": str(kraft),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "message.max.bytes": str(8 * 1024 * 1024),
            "replica.fetch.max.bytes": str(8 * 1024 * 1024),
            "auto.create.topics.enable": "true",
            "log.retention.check.interval.ms": str(self.retention_check_ms),
        }
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        os.chmod(path, 0o600)  # holds the broker's own passwords when secured
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2.format(level=os.environ.get("TRAFFIC_BROKER_LOG_LEVEL", "WARN")))
        return path

    def _security_config(self, controller_port: int) -> dict[str, str]:
        """SASL_SSL client listener, SASL PLAIN controller listener, StandardAuthorizer (see the module docstring)."""
        from devkit.tls import make_broker_tls

        tls = make_broker_tls(self.data_dir / "tls")
        admin = self.users[ADMIN_USER]
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
        plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
        cp = self._controller_password
        return {
            "listeners": f"SASL_SSL://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"SASL_SSL://127.0.0.1:{self.port}",
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "CONTROLLER:SASL_PLAINTEXT,SASL_SSL:SASL_SSL",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.sasl.enabled.mechanisms": "SCRAM-SHA-512",
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": f'{scram} required username="{ADMIN_USER}" password="{admin}";',
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": f'{plain} required username="controller" password="{cp}" user_controller="{cp}";',
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(tls.keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(tls.ca_file),
            "ssl.client.auth": "none",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{ADMIN_USER};User:controller",
            "allow.everyone.if.no.acl.found": "false",
        }

    def _format(self, props: Path) -> None:
        if (self.data_dir / "kraft-logs" / "meta.properties").exists():
            return  # formatted before: keep the data (a restarted broker keeps its topics)
        cluster_id = "-"
        while cluster_id.startswith("-"):  # the storage tool would read a leading '-' as an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        cmd = [
            shutil.which("java") or "java", "-Xmx256m",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp", str(jars_dir(self.version) / "*"), "kafka.tools.StorageTool",
            "format", "-t", cluster_id, "-c", str(props),
        ]  # fmt: skip
        for name, password in sorted(self.users.items()):  # SCRAM users in the bootstrap metadata
            cmd += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            output = (proc.stdout + proc.stderr)[-2000:]
            for password in self.users.values():
                output = output.replace(password, "***")
            raise BrokerError(f"formatting KRaft storage in {self.data_dir} failed:\n{output}")

    def _wait_ready(self, timeout_s: float) -> None:
        from traffic import clients

        deadline = time.monotonic() + timeout_s
        last_error = "no answer"
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise BrokerError(f"the Kafka broker exited with code {self._proc.returncode}; last log lines:\n{self._log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port or 0), timeout=1):
                    pass
                admin = clients.admin(self.admin_settings(), client_id="traffic-broker-probe", timeout_s=5)
                try:
                    admin.list_topics()
                    admin.describe_cluster()
                finally:
                    admin.close()
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"; the last one is reported
                last_error = f"{exc.__class__.__name__}: {exc}"
                time.sleep(0.5)
        raise BrokerError(f"the Kafka broker did not answer within {timeout_s:.0f} s ({last_error}); log tail:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

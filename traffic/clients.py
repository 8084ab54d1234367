"""Every Kafka client of the product is built here, from one :class:`~traffic.settings.KafkaSettings`.

One place decides how a service authenticates (``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT``,
``SASL_SSL`` with ``PLAIN`` / ``SCRAM-SHA-256`` / ``SCRAM-SHA-512``) and checks that the settings
are complete, so kafka-python (ingest, workers, admin) and aiokafka/faust (the aggregator) can never
disagree::

    producer(kafka, client_id="traffic-ingest", acks="all")     # kafka-python KafkaProducer
    consumer(kafka, "traffic.frames", client_id=..., group_id=...)
    admin(kafka)                                                 # KafkaAdminClient
    faust_options(kafka)      # {"broker": "kafka://h1:9093;h2:9093", "broker_credentials": ...}
    aiokafka_options(kafka)   # keyword arguments of AIOKafkaProducer / AIOKafkaConsumer

Secrets: the password is registered with :func:`traffic.logs.register_secret`, so no log line
shows it whatever the source of the setting (environment, command line, test code), and the
errors raised here name the servers, the user and the mechanism, never the password.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from kafka.errors import KafkaError

from traffic.errors import BrokerUnavailable, ConfigError
from traffic.logs import register_secret
from traffic.settings import KafkaSettings

_SASL_HINT = "TRAFFIC_KAFKA_SASL_MECHANISM, TRAFFIC_KAFKA_SASL_USERNAME and TRAFFIC_KAFKA_SASL_PASSWORD"


def check(kafka: KafkaSettings) -> list[str]:
    """Validate the connection settings once for every client; return the bootstrap servers.

    ConfigError (with the variables to set) when the servers are missing, a SASL protocol lacks
    mechanism, user or password, or the CA file does not exist.
    """
    servers = kafka.require_servers()
    if kafka.security_protocol.startswith("SASL"):
        missing = [
            name
            for name, value in (("mechanism", kafka.sasl_mechanism), ("username", kafka.sasl_username), ("password", kafka.sasl_password))
            if not value or (name == "password" and not kafka.sasl_password.get_secret_value())  # type: ignore[union-attr]
        ]
        if missing:
            raise ConfigError(f"SASL needs {_SASL_HINT} (missing: {', '.join(missing)}) for {kafka.security_protocol}")
        register_secret(kafka.sasl_password.get_secret_value())  # type: ignore[union-attr]
    if kafka.ssl_cafile and kafka.security_protocol in ("SSL", "SASL_SSL") and not Path(kafka.ssl_cafile).is_file():
        raise ConfigError(f"TRAFFIC_KAFKA_SSL_CAFILE={kafka.ssl_cafile} does not exist or is not a file")
    return servers


def describe(kafka: KafkaSettings) -> str:
    """``protocol[, user 'name' mechanism]`` for log lines and errors; never the password."""
    who = f", user {kafka.sasl_username!r} {kafka.sasl_mechanism}" if kafka.security_protocol.startswith("SASL") else ""
    return f"{kafka.security_protocol}{who}"


def connection(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection keyword arguments for kafka-python clients (KafkaProducer, KafkaConsumer, KafkaAdminClient)."""
    cfg: dict[str, Any] = {
        "bootstrap_servers": check(kafka),
        "security_protocol": kafka.security_protocol,
        "request_timeout_ms": kafka.request_timeout_ms,
        "retry_backoff_ms": kafka.retry_backoff_ms,
    }
    if kafka.security_protocol.startswith("SASL"):
        cfg.update(
            sasl_mechanism=kafka.sasl_mechanism,
            sasl_plain_username=kafka.sasl_username,
            sasl_plain_password=kafka.sasl_password.get_secret_value(),  # type: ignore[union-attr]
        )
    if kafka.ssl_cafile and kafka.security_protocol in ("SSL", "SASL_SSL"):
        cfg["ssl_cafile"] = kafka.ssl_cafile
    return cfg


def _unreachable(kafka: KafkaSettings, exc: BaseException) -> BrokerUnavailable:
    from kafka.errors import SaslAuthenticationFailedError, UnsupportedSaslMechanismError

    if isinstance(exc, SaslAuthenticationFailedError | UnsupportedSaslMechanismError):
        return BrokerUnavailable(f"Kafka at {kafka.bootstrap_servers} refused the credentials ({describe(kafka)})")
    return BrokerUnavailable(f"Kafka at {kafka.bootstrap_servers} is unreachable: {exc.__class__.__name__} ({describe(kafka)})")


def producer(kafka: KafkaSettings, *, client_id: str, **options: Any) -> Any:
    """A kafka-python KafkaProducer; ``options`` are its other settings (acks, linger_ms...).

    BrokerUnavailable (servers and user named, no password) when the cluster cannot be reached
    or refuses the credentials.
    """
    from kafka import KafkaProducer

    try:
        return KafkaProducer(**connection(kafka), client_id=client_id, **options)
    except (KafkaError, OSError) as exc:
        raise _unreachable(kafka, exc) from None


def consumer(kafka: KafkaSettings, *topics: str, client_id: str, **options: Any) -> Any:
    """A kafka-python KafkaConsumer subscribed to ``topics`` (none: subscribe or assign later)."""
    from kafka import KafkaConsumer

    try:
        return KafkaConsumer(*topics, **connection(kafka), client_id=client_id, **options)
    except (KafkaError, OSError) as exc:
        raise _unreachable(kafka, exc) from None


def admin(kafka: KafkaSettings, *, client_id: str = "traffic-admin", timeout_s: float = 10.0) -> Any:
    """A kafka-python KafkaAdminClient that gives up after ``timeout_s`` (BrokerUnavailable)."""
    from kafka.admin import KafkaAdminClient

    cfg = connection(kafka)
    cfg["request_timeout_ms"] = int(min(kafka.request_timeout_ms, timeout_s * 1000))
    try:
        return KafkaAdminClient(**cfg, client_id=client_id, bootstrap_timeout_ms=cfg["request_timeout_ms"])
    except (KafkaError, OSError) as exc:
        raise _unreachable(kafka, exc) from None


def ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """The TLS context of aiokafka/faust for SSL and SASL_SSL (CA from ``ssl_cafile``, else the system's)."""
    if kafka.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    check(kafka)
    return ssl.create_default_context(cafile=kafka.ssl_cafile or None)


def aiokafka_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection keyword arguments for aiokafka's AIOKafkaProducer / AIOKafkaConsumer / admin client.

    The same names as kafka-python's, except that TLS is an ``ssl_context`` instead of a CA file.
    """
    cfg = connection(kafka)
    cfg.pop("ssl_cafile", None)
    context = ssl_context(kafka)
    if context is not None:
        cfg["ssl_context"] = context
    return cfg


def faust_options(kafka: KafkaSettings) -> dict[str, Any]:
    """``broker`` and ``broker_credentials`` for ``faust.App(...)``.

    faust takes the protocol from the credentials' type: ``SASLCredentials`` with an SSL context
    is SASL_SSL, without one SASL_PLAINTEXT; ``SSLCredentials`` is SSL; none is PLAINTEXT.
    """
    import faust

    servers = check(kafka)
    credentials: Any = None
    context = ssl_context(kafka)
    if kafka.security_protocol.startswith("SASL"):
        credentials = faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value(),  # type: ignore[union-attr]
            mechanism=kafka.sasl_mechanism,
            ssl_context=context,
        )
    elif context is not None:
        credentials = faust.SSLCredentials(context)
    return {"broker": "kafka://" + ";".join(servers), "broker_credentials": credentials}


def environment(kafka: KafkaSettings) -> dict[str, str]:
    """The ``TRAFFIC_KAFKA_*`` variables that recreate ``kafka`` in a child process (tests, the demo)."""
    env: dict[str, str] = {}
    for name, value in kafka.model_dump().items():
        if value is None:
            continue
        if name == "sasl_password":
            value = kafka.sasl_password.get_secret_value()  # type: ignore[union-attr]
            register_secret(value)
        env[f"TRAFFIC_KAFKA_{name.upper()}"] = str(value)
    return env

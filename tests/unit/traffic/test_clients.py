"""The Kafka client factory: one SASL/SSL check, the same credentials for kafka-python and faust, no secret in errors or logs."""

from __future__ import annotations

import io
import logging
import ssl

import pytest

from traffic import clients
from traffic.errors import BrokerUnavailable, ConfigError
from traffic.logs import JsonFormatter
from traffic.settings import KafkaSettings

SECRET = "pw-Zq81-not-in-logs"


def _sasl(**kw) -> KafkaSettings:
    base = dict(bootstrap_servers="k1:9093,k2:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                sasl_username="traffic-worker", sasl_password=SECRET)  # fmt: skip
    return KafkaSettings(**{**base, **kw})


@pytest.mark.parametrize(
    ("drop", "missing"),
    [("sasl_mechanism", "mechanism"), ("sasl_username", "username"), ("sasl_password", "password")],
)
def test_sasl_without_one_credential_is_a_config_error_naming_it(drop: str, missing: str) -> None:
    kafka = _sasl(**{drop: None})
    for build in (clients.connection, clients.faust_options, clients.aiokafka_options):
        with pytest.raises(ConfigError, match=f"missing: {missing}"):
            build(kafka)


def test_empty_password_counts_as_missing() -> None:
    """The Kubernetes example Secret has empty strings: SASL with them must fail at start-up, clearly."""
    with pytest.raises(ConfigError, match="missing: password"):
        clients.connection(_sasl(sasl_password=""))


def test_kafka_python_and_faust_get_the_same_credentials(tmp_path) -> None:
    from devkit.tls import make_broker_tls

    ca = make_broker_tls(tmp_path / "tls").ca_file
    kafka = _sasl(ssl_cafile=str(ca))
    kp = clients.connection(kafka)
    assert kp["bootstrap_servers"] == ["k1:9093", "k2:9093"]
    assert (kp["security_protocol"], kp["sasl_mechanism"], kp["sasl_plain_username"], kp["sasl_plain_password"]) == (
        "SASL_SSL", "SCRAM-SHA-512", "traffic-worker", SECRET)  # fmt: skip
    assert kp["ssl_cafile"] == str(ca)
    fo = clients.faust_options(kafka)
    assert fo["broker"] == "kafka://k1:9093;k2:9093"
    creds = fo["broker_credentials"]
    assert (creds.username, creds.password, str(creds.mechanism.value), str(creds.protocol.value)) == (
        "traffic-worker", SECRET, "SCRAM-SHA-512", "SASL_SSL")  # fmt: skip
    assert SECRET not in repr(creds)
    ao = clients.aiokafka_options(kafka)
    assert ao["sasl_plain_password"] == SECRET and isinstance(ao["ssl_context"], ssl.SSLContext)


def test_sasl_plaintext_has_no_tls_and_plaintext_has_no_credentials() -> None:
    creds = clients.faust_options(_sasl(security_protocol="SASL_PLAINTEXT"))["broker_credentials"]
    assert str(creds.protocol.value) == "SASL_PLAINTEXT" and creds.ssl_context is None
    plain = KafkaSettings(bootstrap_servers="k:9092", sasl_username="ignored")
    assert clients.faust_options(plain)["broker_credentials"] is None
    assert "sasl_plain_password" not in clients.connection(plain)
    assert str(clients.faust_options(KafkaSettings(bootstrap_servers="k:9093", security_protocol="SSL"))["broker_credentials"].protocol.value) == "SSL"


def test_missing_ca_file_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="TRAFFIC_KAFKA_SSL_CAFILE"):
        clients.connection(_sasl(ssl_cafile=str(tmp_path / "nope.crt")))


def test_the_password_never_reaches_a_log_line_or_an_error() -> None:
    """Set in code (not from the environment), the factory still registers it with the log masking."""
    kafka = _sasl(bootstrap_servers="127.0.0.1:1", request_timeout_ms=500)
    clients.connection(kafka)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.secret")
    logger.addHandler(handler)
    try:
        logger.warning("config %s", clients.connection(kafka), extra={"password": SECRET})
        try:
            raise RuntimeError(f"boom {SECRET}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert SECRET not in stream.getvalue() and "***" in stream.getvalue()
    with pytest.raises(BrokerUnavailable) as info:
        clients.admin(kafka, timeout_s=1)
    assert "127.0.0.1:1" in str(info.value) and "traffic-worker" in str(info.value) and SECRET not in str(info.value)


def test_environment_recreates_the_settings() -> None:
    kafka = _sasl(ssl_cafile="/etc/ca.crt")
    env = clients.environment(kafka)
    assert env["TRAFFIC_KAFKA_SASL_PASSWORD"] == SECRET
    import os

    saved = dict(os.environ)
    try:
        os.environ.update(env)
        again = KafkaSettings()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert again == kafka

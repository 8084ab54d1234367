"""Settings from the environment, secret masking in logs, health endpoints."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

import pytest

from traffic.errors import ConfigError
from traffic.health import Health, HealthServer
from traffic.logs import JsonFormatter, mask_secrets
from traffic.settings import KafkaSettings, TopicSettings, load_settings


def test_settings_come_from_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAFFIC_KAFKA_BOOTSTRAP_SERVERS", "k1:9092, k2:9092")
    monkeypatch.setenv("TRAFFIC_TOPICS_FRAMES_PARTITIONS", "24")
    assert load_settings(KafkaSettings).require_servers() == ["k1:9092", "k2:9092"]
    assert load_settings(TopicSettings).frames_partitions == 24
    assert load_settings(TopicSettings, frames_partitions=6).frames_partitions == 6  # CLI overrides env


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("TRAFFIC_TOPICS_FRAMES_PARTITIONS", "many", "TRAFFIC_TOPICS_FRAMES_PARTITIONS"),  # not a number
        ("TRAFFIC_TOPICS_FRAMES_PARTITIONS", "0", "greater than 0"),  # zero partitions
        ("TRAFFIC_KAFKA_SECURITY_PROTOCOL", "TLS", "TRAFFIC_KAFKA_SECURITY_PROTOCOL"),  # unknown protocol
    ],
)
def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, env: str, value: str, expected: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=expected):
        load_settings(TopicSettings if "TOPICS" in env else KafkaSettings)


def test_unset_bootstrap_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRAFFIC_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    with pytest.raises(ConfigError, match="TRAFFIC_KAFKA_BOOTSTRAP_SERVERS is not set"):
        KafkaSettings().kafka_python()


def test_sasl_needs_credentials_and_passes_them() -> None:
    with pytest.raises(ConfigError, match="SASL needs"):
        KafkaSettings(bootstrap_servers="k:9093", security_protocol="SASL_SSL").kafka_python()
    cfg = KafkaSettings(
        bootstrap_servers="k:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc", sasl_password="s3cret-pw",
    ).kafka_python()  # fmt: skip
    assert cfg["sasl_plain_password"] == "s3cret-pw"
    assert "s3cret-pw" not in repr(KafkaSettings(bootstrap_servers="k", sasl_password="s3cret-pw"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rtsp://admin:hunter2@10.1.2.3:554/s1", "rtsp://admin:***@10.1.2.3:554/s1"),  # classic camera URL
        ("opening rtsp://u:p%40ss@cam/x and http://a:b@c/d", "opening rtsp://u:***@cam/x and http://a:***@c/d"),  # two URLs
        ("rtsp://cam.local/stream", "rtsp://cam.local/stream"),  # no credentials: untouched
        ("rtsp://user@cam/stream", "rtsp://user@cam/stream"),  # user only: nothing secret
    ],
)
def test_mask_secrets_in_urls(text: str, expected: str) -> None:
    assert mask_secrets(text) == expected


def test_json_logs_mask_secret_environment_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAFFIC_KAFKA_SASL_PASSWORD", "very-secret-value")
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "login with %s", ("very-secret-value",), None)
    record.camera = "cam-1"
    line = JsonFormatter().format(record)
    payload = json.loads(line)
    assert payload["msg"] == "login with ***" and payload["camera"] == "cam-1"
    assert "very-secret-value" not in line


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_health_server_reports_readiness_and_liveness() -> None:
    health = Health(checks=("kafka", "model"), stall_s=60)
    server = HealthServer(health, port=0, host="127.0.0.1").start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert _get(base + "/healthz")[0] == 200
        code, body = _get(base + "/readyz")
        assert code == 503 and body["kafka"] == "not started"
        health.set("kafka", True)
        health.set("model", False, "loading yolo11n")
        assert _get(base + "/readyz") == (503, {"ok": False, "kafka": "ok", "model": "loading yolo11n"})
        health.set("model", True)
        assert _get(base + "/readyz")[0] == 200
        health.stall_s = 0  # the loop has not beaten within 0 s: stalled
        assert _get(base + "/healthz")[0] == 503
        with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
            assert b"python_info" in resp.read()
    finally:
        server.stop()

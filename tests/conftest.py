"""Shared fixtures: a real Kafka 4.x broker for the whole test session, per-test topic names.

The broker is started from the cached jars (``traffic broker fetch``; fetched on first use) in a
temporary directory, or an already-running broker is used when ``TRAFFIC_TEST_BOOTSTRAP`` is set.
Each test that needs topics gets its own names (``t<hex>.frames`` ...), so tests never see each
other's messages and can run in any order.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.broker import LocalBroker
from traffic.settings import KafkaSettings, TopicSettings, shared_dir
from traffic.topics import create_topics

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a real Kafka broker, started once per test session."""
    if os.environ.get("TRAFFIC_TEST_BOOTSTRAP"):
        yield os.environ["TRAFFIC_TEST_BOOTSTRAP"]
        return
    broker = LocalBroker(tmp_path_factory.mktemp("kafka"), retention_check_ms=5000)  # expired segments go within seconds
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A second, secured broker (SASL_SSL + SCRAM-SHA-512, ACLs enforced), started once, only for the tests that ask.

    Only its super user exists at first (``sasl_broker.admin_settings()``); tests give the services
    their own users and ACLs with ``devkit.acls.provision``.
    """
    broker = LocalBroker(tmp_path_factory.mktemp("kafka-sasl"), users={})
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def kafka_settings(kafka_bootstrap: str) -> KafkaSettings:
    """Kafka settings pointing at the session broker."""
    return KafkaSettings(bootstrap_servers=kafka_bootstrap)


@pytest.fixture
def topic_settings(kafka_settings: KafkaSettings) -> TopicSettings:
    """Fresh, created topics for this test (few partitions so tests stay fast)."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    topics = TopicSettings(
        frames=f"{prefix}.frames",
        detections=f"{prefix}.detections",
        crossings=f"{prefix}.crossings",
        counts=f"{prefix}.counts",
        dlq=f"{prefix}.dlq",
        frames_dlq=f"{prefix}.frames-dlq",
        frames_partitions=4,
        detections_partitions=2,
        output_partitions=1,
    )
    create_topics(kafka_settings, topics)
    return topics


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared sample data folder (``TRAFFIC_SHARED_DIR``); skips the test where it is absent."""
    path = shared_dir()
    if not (path / "videos" / "intersection.mp4").exists():
        pytest.skip(f"sample data not found in {path}; set TRAFFIC_SHARED_DIR to the shared/ folder")
    return path


@pytest.fixture(scope="session")
def demo_site_file() -> Path:
    """The example site configuration for the sample intersection video."""
    return REPO / "deploy" / "sites" / "intersection-demo.yaml"


@pytest.fixture(scope="session")
def model(shared: Path) -> Path:
    """The shared YOLO11n INT8 OpenVINO model; skips the test where it is absent."""
    path = shared / "models" / "yolo11n_int8_openvino_model"
    if not path.exists():
        pytest.skip(f"shared model not found at {path}")
    return path


@pytest.fixture(scope="session")
def tools() -> Any:
    """The offline deployment tools (``tools_cache.ToolsCache``; kustomize, schemas, promcheck) that
    deploy/tools/install.sh installs, for tests/deploy and tests/k8s; skips with the command to run where absent."""
    if str(REPO / "deploy" / "tools") not in sys.path:
        sys.path.insert(0, str(REPO / "deploy" / "tools"))
    import tools_cache

    cache, reason = tools_cache.locate()
    if cache is None:
        pytest.skip(reason)
    return cache

"""docker-compose.yml, the Prometheus scrape config and Grafana provisioning:
the compose file validates against the Compose Specification schema, and
every file, service, port and setting it refers to exists and agrees."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
PIPELINE_SERVICES = {"ingest": 9101, "worker": 9102, "aggregator": 9103}
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def interpolate(text: str) -> str:
    """Compose's ${VAR:-default} with the current environment."""
    return _INTERPOLATION.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), text)


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source as written, target) of the service's bind mounts."""
    mounts = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, str):
            # SOURCE:TARGET[:MODE], where SOURCE may hold ${VAR:-default}.
            parts = re.split(r":(?![^{]*\})", vol)
            if parts[0].startswith((".", "/", "$")):
                mounts.append((parts[0], parts[1]))
        elif vol.get("type") == "bind":
            mounts.append((vol["source"], vol["target"]))
    return mounts


def repo_path(source: str) -> Path:
    return (REPO_ROOT / interpolate(source)).resolve()


def shared_dir() -> Path:
    return repo_path("${TRAFFIC_SHARED_DIR:-../shared}")


# ------------------------------------------------------------------ schema

def compose_validator(tools) -> jsonschema.protocols.Validator:
    schema = json.loads(tools.compose_schema.read_text())
    # The top-level `name` (the project name, so volume names do not depend on
    # the checkout's folder name) postdates this December 2024 schema snapshot.
    schema["properties"].setdefault("name", {"type": "string"})
    # The schema declares draft 2019-09 (with a trailing "#" jsonschema does not recognise).
    return jsonschema.Draft201909Validator(schema)


def test_compose_validates_against_the_compose_spec(tools, compose):
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}"
              for e in compose_validator(tools).iter_errors(compose)]
    assert not errors, "\n".join(errors)


def test_compose_schema_catches_a_typo(tools, compose):
    bad = {**compose, "services": {**compose["services"], "kafka": {**compose["services"]["kafka"], "restrat": "no"}}}
    assert any("restrat" in e.message for e in compose_validator(tools).iter_errors(bad))


# ------------------------------------------------------------- references

def test_services_the_brief_names_are_there(compose):
    assert set(compose["services"]) == {"kafka", "camera", "topics-init", "ingest", "worker", "aggregator",
                                        "prometheus", "grafana"}


def test_depends_on_names_services(compose):
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on") or []
        for dep in deps if isinstance(deps, list) else deps.keys():
            assert dep in services, f"{name} depends on unknown service {dep}"


def test_build_contexts_dockerfiles_and_targets_exist(compose):
    for name, svc in compose["services"].items():
        build = svc.get("build")
        if not build:
            continue
        context = REPO_ROOT / build["context"]
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert context.is_dir() and dockerfile.is_file(), f"{name}: {dockerfile}"
        stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile.read_text(), re.M | re.I)
        assert build.get("target", stages[-1]) in stages, f"{name}: no stage {build.get('target')} in {dockerfile}"


def test_bind_mount_sources_in_the_repo_exist(compose):
    """Includes files other parts of the project write (the demo site file)."""
    for name, svc in compose["services"].items():
        for source, target in bind_mounts(svc):
            if "TRAFFIC_SHARED_DIR" in source:
                continue  # test_shared_data_mounts
            assert repo_path(source).exists(), f"{name}: {source} -> {target} does not exist"


def test_shared_data_mounts():
    shared = shared_dir()
    if not shared.is_dir():
        pytest.skip(f"shared test data not at {shared} (set TRAFFIC_SHARED_DIR)")
    assert (shared / "videos" / "intersection.mp4").is_file()
    assert (shared / "models" / "yolo11n_int8_openvino_model").is_dir()


def test_camera_serves_what_ingest_reads(compose):
    services = compose["services"]
    command = services["camera"]["command"]
    script = command[1]
    assert (REPO_ROOT / script).is_file(), f"{script} (the simulated camera) is missing"
    args = dict(zip(command[2::2], command[3::2]))
    assert args["--host"] == "0.0.0.0", "the camera must listen beyond its own container"
    # The video it plays is in the mounted shared dir.
    assert any(target == str(Path(args["--video"]).parent) for _, target in bind_mounts(services["camera"]))
    # The camera image carries the script (deploy/images/Dockerfile, target camera).
    dockerfile = (REPO_ROOT / services["camera"]["build"]["dockerfile"]).read_text()
    assert "COPY deploy/rtsp/ deploy/rtsp/" in dockerfile
    # Ingest reads rtsp://camera:<port><mount> for a camera of the site file.
    overrides = env_of(services["ingest"])["TRAFFIC_INGEST_SOURCES"]
    site = yaml.safe_load((REPO_ROOT / "deploy/sites/intersection-demo.yaml").read_text())
    cameras = {c["id"] for i in site["intersections"] for c in i["cameras"]}
    for pair in overrides.split(","):
        camera, url = pair.split("=", 1)
        assert camera in cameras, f"TRAFFIC_INGEST_SOURCES names unknown camera {camera}"
        u = urlparse(url)
        assert (u.scheme, u.hostname, u.port, u.path) == ("rtsp", "camera", int(args["--port"]), args["--mount"])


def test_pipeline_services_share_the_kafka_address(compose):
    services = compose["services"]
    kafka_env = env_of(services["kafka"])
    advertised = dict(item.split("://", 1)[::-1] for item in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    for name in ("topics-init", *PIPELINE_SERVICES):
        env = env_of(services[name])
        assert env["TRAFFIC_KAFKA_BOOTSTRAP_SERVERS"] in advertised, name
        assert env["TRAFFIC_SITE_CONFIG"] in {t for _, t in bind_mounts(services[name])}, name
        deps = services[name].get("depends_on") or {}
        assert "kafka" in deps or "topics-init" in deps, f"{name} starts before Kafka is ready"


def test_metrics_ports_match_the_scrape_config(compose):
    services = compose["services"]
    ports = {}
    for name, port in PIPELINE_SERVICES.items():
        env = env_of(services[name])
        [(key, value)] = [(k, v) for k, v in env.items() if k.endswith("_METRICS_PORT")]
        assert int(value) == port, f"{name}: {key}={value}"
        ports[name] = int(value)
    prometheus = yaml.safe_load((REPO_ROOT / "deploy/prometheus/prometheus.yml").read_text())
    scraped = {}
    for job in prometheus["scrape_configs"]:
        for sd in job.get("dns_sd_configs") or []:
            for host in sd["names"]:
                scraped[host] = sd["port"]
        for sc in job.get("static_configs") or []:
            for target in sc["targets"]:
                host, port = target.rsplit(":", 1)
                if host != "localhost":
                    scraped[host] = int(port)
    assert scraped == ports
    # Prometheus loads the file that the repo has.
    assert ("./deploy/prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml") in bind_mounts(services["prometheus"])
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]


def test_prometheus_config_loads(tools):
    """Prometheus' own config loader (deploy/tools/promcheck)."""
    proc = subprocess.run([str(tools.promcheck), "config", str(REPO_ROOT / "deploy/prometheus/prometheus.yml")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_grafana_provisioning_points_at_real_things(compose):
    grafana = compose["services"]["grafana"]
    mounts = dict((t, s) for s, t in bind_mounts(grafana))
    provisioning = REPO_ROOT / "deploy/grafana/provisioning"
    for sub in ("datasources", "dashboards"):
        assert repo_path(mounts[f"/etc/grafana/provisioning/{sub}"]) == provisioning / sub
    [datasource] = yaml.safe_load((provisioning / "datasources/prometheus.yaml").read_text())["datasources"]
    url = urlparse(datasource["url"])
    assert url.hostname == "prometheus" and url.port == 9090 and "prometheus" in compose["services"]
    [provider] = yaml.safe_load((provisioning / "dashboards/traffic.yaml").read_text())["providers"]
    path = provider["options"]["path"]
    assert repo_path(mounts[path]) == REPO_ROOT / "deploy/grafana/dashboards"
    home = env_of(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(path + "/") and (REPO_ROOT / "deploy/grafana/dashboards" / Path(home).name).is_file()


def test_images_are_pinned(compose):
    for name, svc in compose["services"].items():
        image = svc["image"]
        tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned"
    assert compose["services"]["kafka"]["image"] == "apache/kafka:4.1.1"


def test_pipeline_image_is_the_project_version(compose):
    version = re.search(r'^version = "([^"]+)"', (REPO_ROOT / "pyproject.toml").read_text(), re.M).group(1)
    for name in ("topics-init", *PIPELINE_SERVICES):
        assert compose["services"][name]["image"] == f"traffic-pipeline:{version}", name
    default = yaml.safe_load((REPO_ROOT / "deploy/k8s/default/kustomization.yaml").read_text())
    assert default["labels"][0]["pairs"]["app.kubernetes.io/version"] == version
    assert {i["name"]: i["newTag"] for i in default["images"]}["traffic-pipeline"] == version


def test_frames_partitions_agree_everywhere(compose):
    compose_partitions = int(env_of(compose["services"]["topics-init"])["TRAFFIC_TOPICS_FRAMES_PARTITIONS"])
    topics = (REPO_ROOT / "deploy/k8s/topics/kustomization.yaml").read_text()
    k8s_partitions = int(re.search(r"TRAFFIC_TOPICS_FRAMES_PARTITIONS=(\d+)", topics).group(1))
    scaled = yaml.safe_load((REPO_ROOT / "deploy/k8s/worker/scaledobject.yaml").read_text())
    assert compose_partitions == k8s_partitions >= scaled["spec"]["maxReplicaCount"]


def test_services_run_hardened(compose):
    for name in ("topics-init", "camera", *PIPELINE_SERVICES):
        svc = compose["services"][name]
        assert svc.get("read_only") is True, name
        assert svc.get("cap_drop") == ["ALL"], name
        assert not str(svc.get("user", "0")).startswith("0"), name
        assert any(str(t).split(":")[0] == "/tmp" for t in svc.get("tmpfs") or []), name

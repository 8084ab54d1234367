"""The worker's site hot reload: cameras added to the file are known without a restart (no Kafka needed)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from tests.configmap import ConfigMapVolume
from traffic.settings import KafkaSettings, TopicSettings
from workers.service import Worker
from workers.settings import WorkerSettings

DEMO = Path(__file__).resolve().parents[3] / "deploy" / "sites" / "intersection-demo.yaml"


def test_a_camera_added_to_the_site_file_is_known_and_an_invalid_file_changes_nothing(tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path / "site")
    data = yaml.safe_load(DEMO.read_text())
    path = volume.write(yaml.safe_dump(data))
    worker = Worker(WorkerSettings(site_config=str(path), site_reload_s=0.1), KafkaSettings(), TopicSettings())
    assert worker._known_cameras == {"cam-demo"}
    watch = worker._site_watch
    assert watch is not None

    volume.write("intersections: [")  # not YAML: refused, the running list kept
    assert watch.poll() is None and worker._known_cameras == {"cam-demo"} and watch.rejected == 1

    cam = dict(copy.deepcopy(data["intersections"][0]["cameras"][0]), id="cam-new")
    data["intersections"].append({"id": "second", "cameras": [cam]})
    volume.write(yaml.safe_dump(data))
    assert watch.poll() is not None
    assert worker._known_cameras == {"cam-demo", "cam-new"}


def test_no_watcher_without_a_site_file_or_when_off(tmp_path: Path) -> None:
    assert Worker(WorkerSettings(), KafkaSettings(), TopicSettings())._site_watch is None
    assert Worker(WorkerSettings(site_config=str(DEMO), site_reload_s=0), KafkaSettings(), TopicSettings())._site_watch is None

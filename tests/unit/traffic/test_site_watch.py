"""traffic.site_watch: a ConfigMap-style symlink swap, in-place writes, invalid texts, diffs."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, Counter

from tests.configmap import ConfigMapVolume
from traffic.site import load_site
from traffic.site_watch import SiteWatcher, diff_sites

REPO = Path(__file__).resolve().parents[3]
DEMO = REPO / "deploy" / "sites" / "intersection-demo.yaml"


def _demo() -> dict:
    return yaml.safe_load(DEMO.read_text())


def _with_second_camera(data: dict) -> dict:
    cam = dict(copy.deepcopy(data["intersections"][0]["cameras"][0]), id="cam-two")
    data["intersections"].append({"id": "second", "cameras": [cam]})
    return data


def test_symlink_swap_is_seen_and_diffed(tmp_path):
    volume = ConfigMapVolume(tmp_path / "site")
    path = volume.write(yaml.safe_dump(_with_second_camera(_demo())))
    changes = []
    watcher = SiteWatcher(path, load_site(path), changes.append)
    assert watcher.poll() is None  # nothing changed yet

    data = _with_second_camera(_demo())
    data["intersections"][0]["cameras"][0]["lines"][0]["points"] = [[0.2, 0.1], [0.2, 0.5]]  # a moved line
    data["intersections"].append({"id": "third", "cameras": [dict(copy.deepcopy(data["intersections"][1]["cameras"][0]), id="cam-three")]})
    volume.write(yaml.safe_dump(data))
    change = watcher.poll()
    assert change is not None and changes == [change]
    assert change.changed == {"cam-demo"} and change.added == {"cam-three"} and not change.removed
    assert not change.counting
    assert [list(p) for p in watcher.site.cameras()["cam-demo"][1].lines[0].points] == [[0.2, 0.1], [0.2, 0.5]]

    del data["intersections"][1]
    data["counting"]["grace_s"] = 20
    volume.write(yaml.safe_dump(data))
    change = watcher.poll()
    assert change.removed == {"cam-two"} and change.counting and not change.changed


def test_invalid_text_is_refused_once_and_the_running_site_kept(tmp_path, caplog):
    volume = ConfigMapVolume(tmp_path / "site")
    path = volume.write(DEMO.read_text())
    changes = []
    results = Counter("site_reloads", "test", ["result"], registry=CollectorRegistry())
    watcher = SiteWatcher(path, load_site(path), changes.append, results=results)
    bad = _demo()
    bad["intersections"][0]["cameras"][0]["movements"][0]["to"] = "nowhere"
    volume.write(yaml.safe_dump(bad))
    assert watcher.poll() is None and watcher.poll() is None
    assert watcher.rejected == 1 and changes == []
    assert "cam-demo" in watcher.site.cameras()
    assert any("refused" in r.message for r in caplog.records)
    volume.write(yaml.safe_dump(_with_second_camera(_demo())))  # fixed: applied
    assert watcher.poll().added == {"cam-two"}
    assert (results.labels("refused")._value.get(), results.labels("applied")._value.get()) == (1, 1)


def test_in_place_write_and_failed_apply_is_retried(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(DEMO.read_text())
    calls = []

    def flaky(change):
        calls.append(change)
        if len(calls) == 1:
            raise RuntimeError("not now")

    watcher = SiteWatcher(path, load_site(path), flaky)
    path.write_text(yaml.safe_dump(_with_second_camera(_demo())))
    assert watcher.poll() is None  # the callback failed: not applied
    assert watcher.poll().added == {"cam-two"}  # retried
    assert watcher.reloads == 1


def test_same_content_is_no_change(tmp_path):
    volume = ConfigMapVolume(tmp_path / "site")
    path = volume.write(DEMO.read_text())
    calls = []
    watcher = SiteWatcher(path, load_site(path), calls.append)
    volume.write(DEMO.read_text() + "\n# a comment only\n")
    change = watcher.poll()
    assert change is not None and change.empty and calls == []


def test_diff_sites_unchanged_is_empty():
    site = load_site(DEMO)
    assert diff_sites(site, site).empty

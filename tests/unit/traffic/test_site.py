"""Site configuration: the example loads; each kind of bad config names file, field and problem."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from traffic.errors import ConfigError
from traffic.site import compass_movement, load_site

EXAMPLE = Path(__file__).resolve().parents[3] / "deploy" / "sites" / "intersection-demo.yaml"


def test_example_site_loads_with_five_legs_and_their_movements() -> None:
    site = load_site(EXAMPLE)
    intersection, camera = site.camera("cam-demo")
    assert intersection.id == "demo-intersection"
    assert {a.id for a in camera.approaches} == {"north", "east", "south", "west", "west-lower"}
    table = camera.movement_table()
    assert len(table) == 16 + 9  # 4 compass legs derived, the fifth leg's movements listed
    assert table[("east", "west-lower")] == "through"
    assert table[("west", "east")] == "through"
    assert table[("north", "east")] == "left"  # southbound turning east, right-hand traffic


@pytest.mark.parametrize(
    ("frm", "to", "rht", "expected"),
    [
        ("north", "south", True, "through"),  # straight on
        ("north", "east", True, "left"),  # southbound turning to the east is a left turn
        ("north", "west", True, "right"),  # southbound turning west
        ("east", "north", True, "right"),  # westbound turning north
        ("south", "west", True, "left"),  # northbound turning west
        ("west", "west", True, "u-turn"),  # back where it came from
        ("north", "east", False, "right"),  # left-hand traffic mirrors turns
        ("north", "south", False, "through"),  # ... but not through movements
    ],
)
def test_compass_movements(frm, to, rht, expected) -> None:
    assert compass_movement(frm, to, rht) == expected


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def _site(**camera_changes):
    camera = {
        "id": "cam-1",
        "source": "rtsp://example.invalid/stream",
        "lines": [{"id": "stop-bar", "points": [[0.1, 0.5], [0.9, 0.5]]}],
        "approaches": [
            {"id": "a", "polygon": [[0, 0], [0.2, 0], [0.2, 0.2]], "compass": "north"},
            {"id": "b", "polygon": [[0.8, 0.8], [1, 0.8], [1, 1]], "compass": "south"},
        ],
    }
    camera.update(camera_changes)
    return {"intersections": [{"id": "x1", "cameras": [camera]}]}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("intersections: [", "not valid YAML at line 1"),  # broken YAML
        ("- just a list", "must be a mapping"),  # wrong top-level type
        ({"intersections": []}, "intersections"),  # no intersection
        (_site(fps=0), "intersections[x1].cameras[cam-1].fps"),  # zero sampling rate
        (_site(colour="red"), "cameras[cam-1].colour: Extra inputs are not permitted"),  # unknown key (typo)
        (_site(source="ftp://x/y"), "unsupported source scheme 'ftp'"),  # unsupported scheme
        (_site(lines=[{"id": "l", "points": [[0.5, 0.5], [0.5, 0.5]]}]), "zero-length line"),  # degenerate line
        (_site(lines=[{"id": "l", "points": [[0.5, 0.5], [1.5, 0.5]]}]), "lines[l].points"),  # outside the image
        (_site(approaches=[{"id": "a", "polygon": [[0, 0], [0.5, 0.5], [1, 1]], "compass": "north"}]), "no area"),  # collinear
        (_site(movements=[{"from": "a", "to": "zz", "movement": "left"}]), "unknown approach 'zz'"),  # dangling ref
        (_site(movements=[{"from": "a", "to": "b", "movement": "sideways"}]), "movements[0].movement"),  # bad movement
        (_site(approaches=[{"id": "a", "polygon": [[0, 0], [0.2, 0], [0.2, 0.2]]}]), "need either a 'compass' or entries in the 'movements' table"),
        (_site(source="rtsp://u:${NOT_SET_ANYWHERE_42}@h/s"), "NOT_SET_ANYWHERE_42 is not set"),  # missing secret
        ({**_site(), "counting": {"intervals_s": [7]}}, "divide a day"),  # odd interval
    ],
)
def test_bad_site_files_name_file_field_and_reason(tmp_path: Path, content, expected: str) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(ConfigError) as info:
        load_site(path)
    message = str(info.value)
    assert expected in message
    if "YAML" not in expected and "mapping" not in expected:
        assert str(path) in message


def test_duplicate_camera_ids_across_intersections(tmp_path: Path) -> None:
    data = _site()
    data["intersections"].append({"id": "x2", "cameras": [data["intersections"][0]["cameras"][0]]})
    with pytest.raises(ConfigError, match="duplicate id 'cam-1' in cameras"):
        load_site(_write(tmp_path, data))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_site(tmp_path / "nope.yaml")


def test_secrets_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAM1_PASSWORD", "hunter2")
    site = load_site(_write(tmp_path, _site(source="rtsp://viewer:${CAM1_PASSWORD}@10.0.0.1/s")))
    _, camera = site.camera("cam-1")
    assert camera.source == "rtsp://viewer:${CAM1_PASSWORD}@10.0.0.1/s"  # the model never holds the secret
    assert camera.resolved_source() == "rtsp://viewer:hunter2@10.0.0.1/s"


def test_unknown_camera_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="'cam-x' is not in the site configuration .*cam-demo"):
        load_site(EXAMPLE).camera("cam-x")

"""``traffic count`` refuses bad input with one clear line and exit code 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def _count(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "traffic.cli", "count", *args, "--quiet"], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env={**os.environ, "TRAFFIC_LOG_LEVEL": "WARNING"})  # fmt: skip


def _assert_clean_failure(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    message = [line for line in proc.stderr.splitlines() if not line.startswith("{")]  # JSON log lines aside
    assert message and all(f in "\n".join(message) for f in fragments), proc.stderr


def test_missing_video(demo_site_file: Path, tmp_path: Path) -> None:
    proc = _count(str(tmp_path / "nope.mp4"), "--site", str(demo_site_file), "--camera", "cam-demo", cwd=tmp_path)
    _assert_clean_failure(proc, "VideoError", "does not exist")
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob("*.csv"))  # no half-written report


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 80,  # an MP4 header and garbage after it
        b"",  # an empty file
        b"this is a text file, not a video\n" * 100,  # not a video at all
    ],
)
def test_corrupt_video(content: bytes, demo_site_file: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(content)
    proc = _count(str(broken), "--site", str(demo_site_file), "--camera", "cam-demo", cwd=tmp_path)
    _assert_clean_failure(proc, "VideoError", "broken.mp4")


def test_unknown_camera(demo_site_file: Path, shared: Path, tmp_path: Path) -> None:
    proc = _count(str(shared / "videos" / "intersection.mp4"), "--site", str(demo_site_file), "--camera", "cam-x", cwd=tmp_path)
    _assert_clean_failure(proc, "configuration error", "'cam-x' is not in the site configuration", "cam-demo")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("intersections:\n  - id: x\n    cameras:\n      - id: c\n        source: a.mp4\n        fps: -3\n",
         "intersections[x].cameras[c].fps"),  # a field out of range, named by its path
        ("intersections: [\n", "not valid YAML"),  # broken YAML syntax
        ("- just\n- a list\n", "must be a mapping"),  # valid YAML, wrong shape
    ],
)  # fmt: skip
def test_malformed_site(text: str, fragment: str, shared: Path, tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(text)
    proc = _count(str(shared / "videos" / "intersection.mp4"), "--site", str(site), "--camera", "c", cwd=tmp_path)
    _assert_clean_failure(proc, "configuration error", fragment)


@pytest.mark.parametrize(
    ("points", "fragment"),
    [
        ([[0.0, 0.2], [0.0, 0.8]], "lies on the image border"),  # along the left edge: clipped to the image it is empty
        ([[0.1, 1.0], [0.9, 1.0]], "lies on the image border"),  # along the bottom edge
        ([[0.1, 0.5], [1.2, 0.5]], "less than or equal to 1"),  # a point outside the image: refused by the site file
    ],
)
def test_line_outside_the_image(points: list, fragment: str, shared: Path, tmp_path: Path) -> None:
    site = {"intersections": [{"id": "x", "cameras": [{"id": "c", "source": "a.mp4", "lines": [{"id": "edge", "points": points}]}]}]}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(site))
    proc = _count(str(shared / "videos" / "intersection.mp4"), "--site", str(path), "--camera", "c", cwd=tmp_path)
    _assert_clean_failure(proc, "configuration error", fragment)


@pytest.mark.parametrize(
    ("option", "fragment"),
    [
        (["--start", "yesterday"], "is not an ISO 8601 date-time"),  # a start time that is not a time
        (["--interval-min", "0"], "--interval-min"),  # no zero-length intervals
        (["--fps", "-1"], "--fps"),  # a negative sampling rate
    ],
)
def test_bad_options(option: list[str], fragment: str, demo_site_file: Path, shared: Path, tmp_path: Path) -> None:
    proc = _count(str(shared / "videos" / "intersection.mp4"), "--site", str(demo_site_file), "--camera", "cam-demo", *option, cwd=tmp_path)
    _assert_clean_failure(proc, "configuration error", fragment)

"""``traffic count`` on recordings: exact counts and report on a synthetic video, clean failures."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .synthetic_video import Pass, make_video, site_file


def _count(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "traffic.cli", "count", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env={**os.environ, "TRAFFIC_LOG_LEVEL": "WARNING"})  # fmt: skip


@pytest.fixture(scope="module")
def model(shared: Path) -> Path:
    path = shared / "models" / "yolo11n_int8_openvino_model"
    if not path.exists():
        pytest.skip(f"shared model not found at {path}")
    return path


@pytest.fixture(scope="module")
def synthetic(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A silver car driving west -> east at 0-4 s, a black car east -> west at 16-20 s (10 fps, 20 s)."""
    folder = tmp_path_factory.mktemp("synthetic")
    video = make_video(shared / "videos" / "intersection.mp4", folder / "synthetic.mp4",
                       [Pass("silver", 0, 40, 10, 520), Pass("black", 160, 40, 510, 5)], total_frames=200)  # fmt: skip
    return video, site_file(folder / "site.yaml", video)


def test_synthetic_recording_counts_and_report_are_exact(synthetic: tuple[Path, Path], model: Path, tmp_path: Path) -> None:
    video, site = synthetic
    # The recording starts at 07:14:45 UTC: the first car passes in the 07:00 interval, the second in 07:15.
    proc = _count(str(video), "--site", str(site), "--camera", "cam-synth", "--model", str(model),
                  "--start", "2024-05-14T07:14:45Z", "--out-json", "r.json", "--out-csv", "r.csv",
                  "--annotate", "r.mp4", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "200/200 frames" in proc.stderr  # the progress display reached the end
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["frames"] == 200
    assert result["lines"]["mid"]["eastbound"]["car"] == 1 and result["lines"]["mid"]["westbound"]["car"] == 1
    moves = {(m["approach"], m["exit"], m["movement"]): m["counts"]["car"] for m in result["movements"] if m["total"]}
    assert moves == {("west", "east", "through"): 1, ("east", "west", "through"): 1}
    rows = list(csv.reader(io.StringIO((tmp_path / "r.csv").read_text())))
    header = rows[0]
    car = {(r[1], r[2]): dict(zip(header, r)) for r in rows[1:] if r[0] == "car"}
    first = car[("interval", "2024-05-14 07:00:00")]
    second = car[("interval", "2024-05-14 07:15:00")]
    assert (first["EB Thru"], first["WB Thru"], first["Int Total"]) == ("1", "0", "1")
    assert (second["EB Thru"], second["WB Thru"], second["Int Total"]) == ("0", "1", "1")
    total = next(r for k, r in car.items() if k[0] == "total")
    assert (total["EB Thru"], total["WB Thru"], total["Int Total"]) == ("1", "1", "2")
    peak = next(r for k, r in car.items() if k[0] == "peak hour")
    assert peak["Start"] == "n/a"  # 20 s of video: no complete hour, so no peak hour and no PHF
    assert (tmp_path / "r.mp4").stat().st_size > 10_000


def test_missing_video_fails_cleanly(demo_site_file: Path, tmp_path: Path) -> None:
    proc = _count(str(tmp_path / "nope.mp4"), "--site", str(demo_site_file), "--camera", "cam-demo", cwd=tmp_path)
    assert proc.returncode == 2 and "VideoError" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_corrupt_video_fails_cleanly(demo_site_file: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(20_000))
    proc = _count(str(broken), "--site", str(demo_site_file), "--camera", "cam-demo", cwd=tmp_path)
    assert proc.returncode == 2 and "VideoError" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_camera_fails_cleanly(demo_site_file: Path, shared: Path, tmp_path: Path) -> None:
    proc = _count(str(shared / "videos" / "intersection.mp4"), "--site", str(demo_site_file), "--camera", "cam-x", cwd=tmp_path)
    assert proc.returncode == 2 and "'cam-x' is not in the site configuration" in proc.stderr


def test_malformed_site_fails_cleanly(shared: Path, tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("intersections:\n  - id: x\n    cameras:\n      - id: c\n        source: a.mp4\n        fps: -3\n")
    proc = _count(str(shared / "videos" / "intersection.mp4"), "--site", str(site), "--camera", "c", cwd=tmp_path)
    assert proc.returncode == 2 and "intersections[x].cameras[c].fps" in proc.stderr
    assert "Traceback" not in proc.stderr

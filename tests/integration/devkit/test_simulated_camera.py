"""The simulated RTSP camera serves real H.264 over RTSP that OpenCV/FFmpeg can read, survives a
kill/restart on the same URL, enforces basic auth when asked, and loops the file forever.

These run a real GStreamer RTSP server on loopback (``deploy/rtsp/simulated_camera.py`` under the
system Python); they skip with the reason from ``available()`` where GStreamer is not installed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

cv2 = pytest.importorskip("cv2")

from devkit.simulated_camera import SimulatedCamera, SimulatedCameraError, available  # noqa: E402

_OK, _REASON = available()
pytestmark = pytest.mark.skipif(not _OK, reason=f"simulated camera unavailable: {_REASON}")

FILE_FRAMES = 909  # intersection.mp4: 30.3 s at 30 fps
WIDTH, HEIGHT = 640, 480


@pytest.fixture(autouse=True)
def _ffmpeg_over_tcp(monkeypatch: pytest.MonkeyPatch) -> None:
    """RTP over the RTSP TCP connection: no UDP ports, no packet loss on a busy 2-core box."""
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")


@pytest.fixture
def video(shared: Path) -> Path:
    """The sample intersection video, read in place from the shared folder."""
    return shared / "videos" / "intersection.mp4"


@pytest.fixture
def camera(video: Path) -> Iterator[SimulatedCamera]:
    """A running open camera on a free port, stopped after the test."""
    with SimulatedCamera(video) as cam:
        yield cam


def open_capture(url: str) -> Any:
    """Open ``url`` the way the ingest service does (FFmpeg backend, 10 s open/read timeouts)."""
    return cv2.VideoCapture(
        url,
        cv2.CAP_FFMPEG,
        [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 10000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 10000],
    )


def read_frames(url: str, count: int, deadline_s: float) -> tuple[int, set[tuple[int, ...]]]:
    """Read up to ``count`` frames within ``deadline_s``; return how many came and their shapes."""
    cap = open_capture(url)
    try:
        if not cap.isOpened():
            return 0, set()
        got, shapes = 0, set()
        end = time.monotonic() + deadline_s
        while got < count and time.monotonic() < end:
            ok, frame = cap.read()
            if not ok:
                break
            got += 1
            shapes.add(frame.shape)
        return got, shapes
    finally:
        cap.release()


def test_opencv_reads_640x480_frames(camera: SimulatedCamera) -> None:
    got, shapes = read_frames(camera.url, 60, deadline_s=20)
    assert got >= 60, f"only {got} frames from {camera.url}"
    assert shapes == {(HEIGHT, WIDTH, 3)}


def test_camera_comes_back_on_same_url_after_kill(camera: SimulatedCamera) -> None:
    url, port = camera.url, camera.port
    assert read_frames(url, 10, deadline_s=15)[0] == 10

    camera.kill()
    assert not camera.running
    cap = open_capture(url)  # connection refused: fails fast, not after the 10 s timeout
    try:
        assert not cap.isOpened(), "a killed camera still accepted a connection"
    finally:
        cap.release()

    camera.start()
    assert camera.port == port and camera.url == url
    got, shapes = read_frames(url, 30, deadline_s=15)
    assert got == 30 and shapes == {(HEIGHT, WIDTH, 3)}


def test_basic_auth_required_when_configured(video: Path) -> None:
    with SimulatedCamera(video, user="alice", password="s3cr:t@x") as cam:
        assert cam.url.startswith("rtsp://alice:s3cr%3At%40x@127.0.0.1:")
        assert "s3cr" not in repr(cam)
        no_creds = f"rtsp://127.0.0.1:{cam.port}{cam.mount}"
        wrong = f"rtsp://alice:wrong@127.0.0.1:{cam.port}{cam.mount}"
        assert read_frames(no_creds, 1, deadline_s=15)[0] == 0
        assert read_frames(wrong, 1, deadline_s=15)[0] == 0
        assert read_frames(cam.url, 10, deadline_s=15)[0] == 10


def test_stop_is_clean_and_idempotent(video: Path) -> None:
    cam = SimulatedCamera(video).start()
    assert cam.running and cam.pid is not None
    assert cam.stop() == 0  # SIGTERM handled: exit code 0, not killed
    assert not cam.running
    assert cam.stop() is None
    cam.kill()  # no-op when stopped


def test_bad_video_raises_clear_error(tmp_path: Path) -> None:
    not_video = tmp_path / "not-a-video.mp4"
    not_video.write_bytes(b"\x00" * 1024)
    with pytest.raises(SimulatedCameraError, match="not a playable H.264 MP4"):
        SimulatedCamera(not_video).start(timeout_s=10)
    with pytest.raises(SimulatedCameraError, match="video not found"):
        SimulatedCamera(tmp_path / "missing.mp4").start()


@pytest.mark.slow
def test_loops_past_end_of_file_and_accepts_late_clients(camera: SimulatedCamera) -> None:
    """One client reads ~33 s (more frames than the file has); a second joins after the wrap."""
    target = FILE_FRAMES + 90  # three seconds into the second pass
    cap = open_capture(camera.url)
    try:
        assert cap.isOpened()
        got = 0
        end = time.monotonic() + 45
        while got < target and time.monotonic() < end:
            ok, frame = cap.read()
            assert ok, f"stream ended after {got} frames (file has {FILE_FRAMES}): not looping"
            assert frame.shape == (HEIGHT, WIDTH, 3)
            got += 1
        assert got >= target
        # A client joining now, while the first is in its second pass, still gets frames.
        late, shapes = read_frames(camera.url, 15, deadline_s=15)
        assert late == 15 and shapes == {(HEIGHT, WIDTH, 3)}
        ok, _ = cap.read()
        assert ok, "first client lost its stream when a second one joined"
    finally:
        cap.release()


def test_one_server_serves_several_cameras_with_auth_on_each(video: Path) -> None:
    """--mount given several times: every mount is its own camera (own pipeline, own start of the file)."""
    mounts = ["/cam-a", "/cam-b", "/cam-c"]
    with SimulatedCamera(video, mounts=mounts, user="viewer", password="pw-31") as cam:
        assert [u.rsplit("/", 1)[1] for u in cam.urls] == ["cam-a", "cam-b", "cam-c"]
        assert len({u.rsplit("/", 1)[0] for u in cam.urls}) == 1  # one port
        for url in cam.urls:
            count, shapes = read_frames(url, 10, deadline_s=20)
            assert count == 10 and shapes == {(HEIGHT, WIDTH, 3)}, url
        assert read_frames(cam.urls[1].replace("viewer:pw-31@", ""), 1, deadline_s=15)[0] == 0  # auth on every mount
        assert read_frames(cam.url_of("/cam-z"), 1, deadline_s=15)[0] == 0  # no such mount


def test_small_video_is_a_cheap_copy(shared: Path, tmp_path: Path) -> None:
    from devkit.simulated_camera import small_video

    small = small_video(shared / "videos" / "intersection.mp4", tmp_path, width=160, height=120, fps=5)
    cap = cv2.VideoCapture(str(small))
    try:
        assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (160, 120)
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(5, abs=0.01)
        assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == pytest.approx(909 / 6, abs=3)  # 30.3 s at 5 fps
    finally:
        cap.release()
    assert small_video(shared / "videos" / "intersection.mp4", tmp_path, width=160, height=120, fps=5) == small  # cached

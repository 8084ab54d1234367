"""Start and stop a simulated RTSP camera (``deploy/rtsp/simulated_camera.py``) from Python.

Why a subprocess: the RTSP server is GStreamer's, reached through the ``gi`` bindings that Debian
ships for its own ``/usr/bin/python3``; they cannot be pip-installed into the project's venv. So the
venv side (tests, the demo) runs the server as a child process of the system Python and talks to it
only through its command line and one ``READY rtsp://...`` line on stdout.

Typical use::

    with SimulatedCamera(shared_dir() / "videos" / "intersection.mp4") as cam:
        cap = cv2.VideoCapture(cam.url, cv2.CAP_FFMPEG)

``kill()`` then ``start()`` simulates a camera outage and its return on the same URL.

Several cameras from one server process (one port, one mount each)::

    with SimulatedCamera(video, mounts=[f"/cam{i}" for i in range(12)]) as cams:
        cams.urls   # rtsp://127.0.0.1:PORT/cam0 ... /cam11

:func:`small_video` makes a cheap copy of a sample (smaller frames, lower rate) for tests that run
many cameras on a small machine.
"""

from __future__ import annotations

import functools
import os
import queue
import signal
import subprocess
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import IO
from urllib.parse import quote, urlsplit

from traffic.errors import TrafficError

SYSTEM_PYTHON = Path(os.environ.get("TRAFFIC_SYSTEM_PYTHON", "/usr/bin/python3"))
"""Interpreter with the ``gi`` bindings (Debian's; override with ``TRAFFIC_SYSTEM_PYTHON``)."""

SERVER_SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "rtsp" / "simulated_camera.py"
"""The GStreamer RTSP server script this module runs."""

INSTALL_HINT = "run deploy/rtsp/install-deps.sh as root"

_EXIT_MISSING_GI = 3  # the server script's exit code when gi/GStreamer is missing
_STOP_GRACE_S = 5.0

_PROBE = """
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
missing = [e for e in ("filesrc", "qtdemux", "h264parse", "rtph264pay") if Gst.ElementFactory.find(e) is None]
if missing:
    raise SystemExit("missing GStreamer elements: " + ", ".join(missing))
"""


class SimulatedCameraError(TrafficError):
    """The simulated camera could not be started (missing GStreamer, bad video, no READY in time)."""


@functools.lru_cache(maxsize=1)
def available() -> tuple[bool, str]:
    """Tell whether the simulated camera can run here, and why not if it cannot.

    Why: tests need a cheap check to *skip* with a clear reason on machines without GStreamer,
    instead of failing with a subprocess traceback. The result is cached for the process.

    Returns:
        ``(True, "")`` when the system Python imports ``gi`` + ``GstRtspServer`` and the needed
        elements exist; otherwise ``(False, reason)`` where reason names what is missing and how to
        install it.
    """
    if not SERVER_SCRIPT.is_file():
        return False, f"server script not found: {SERVER_SCRIPT}"
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False, f"{SYSTEM_PYTHON} not found or not executable (needed for the gi bindings)"
    try:
        proc = subprocess.run(
            [str(SYSTEM_PYTHON), "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"cannot probe {SYSTEM_PYTHON} for GStreamer: {exc}"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        return False, f"{SYSTEM_PYTHON} cannot load gi/GstRtspServer ({last}); {INSTALL_HINT}"
    return True, ""


def _terminate_group(proc: subprocess.Popen[str], grace_s: float) -> None:
    """SIGTERM the process group, then SIGKILL it if it has not exited after ``grace_s``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _pump(stream: IO[str] | None, lines: queue.Queue[str | None] | None, tail: deque[str] | None) -> None:
    """Read a child's pipe to its end: stdout lines go to ``lines`` (then ``None``), stderr to ``tail``."""
    if stream is None:
        return
    for raw in stream:
        line = raw.rstrip("\n")
        if lines is not None:
            lines.put(line)
        if tail is not None:
            tail.append(line)
    if lines is not None:
        lines.put(None)


def small_video(video: Path, out_dir: Path, width: int = 320, height: int = 240, fps: int = 10) -> Path:
    """An H.264 MP4 copy of ``video`` scaled to ``width`` x ``height`` at ``fps``, made once and cached.

    Why: decoding is what a camera costs the ingester, at the camera's own rate; a dozen cameras
    of the 640x480, 30 fps sample would take a third of a core before anything else runs.
    Uses GStreamer's ``gst-launch-1.0`` with OpenH264 (``deploy/rtsp/install-deps.sh`` installs both).

    Raises:
        SimulatedCameraError: GStreamer cannot transcode (tools or plugins missing).
    """
    out = Path(out_dir) / f"{video.stem}-{width}x{height}-{fps}fps.mp4"
    if out.is_file() and out.stat().st_size > 0:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part.mp4")
    pipeline = (
        f"filesrc location={video} ! qtdemux ! h264parse ! openh264dec ! videoconvert ! videoscale ! videorate ! "
        f"video/x-raw,width={width},height={height},framerate={fps}/1 ! openh264enc gop-size={fps} ! h264parse ! "
        f"mp4mux ! filesink location={tmp}"
    )
    try:
        proc = subprocess.run(["gst-launch-1.0", "-q", *pipeline.split()], capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SimulatedCameraError(f"cannot run gst-launch-1.0 to make a small copy of {video.name}: {exc}; {INSTALL_HINT}") from None
    if proc.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SimulatedCameraError(f"gst-launch-1.0 could not transcode {video.name} ({tail}); {INSTALL_HINT}")
    tmp.replace(out)
    return out


class SimulatedCamera:
    """Looping RTSP cameras on loopback, served from a video file by a child process (one mount each).

    Why: ingest tests and the demo need a real RTSP endpoint (real network, real H.264 over RTP)
    that can be started, killed and restarted on the same URL to exercise reconnect logic.

    Attributes:
        video: the H.264 MP4 file served.
        host: address the server binds and the URL uses (loopback by default).
        port: TCP port; ``None`` until the first ``start()`` when none was given, then the port the
            server actually bound, so a later ``start()`` comes back on the same URL.
        mounts: RTSP mount points, e.g. ``["/cam1"]``; one camera each.
        mount: the first mount point.
        user: basic-auth user name, or ``None`` for no authentication.
        password: basic-auth password.
        loop: whether the server loops the file forever (default) or plays it once per client.
    """

    def __init__(
        self,
        video: Path,
        port: int | None = None,
        mount: str = "/cam1",
        user: str | None = None,
        password: str | None = None,
        *,
        host: str = "127.0.0.1",
        loop: bool = True,
        mounts: list[str] | None = None,
    ) -> None:
        """Describe the camera; nothing runs until ``start()``.

        Args:
            video: H.264 MP4 file to serve (read in place, never copied).
            port: TCP port, or ``None`` to let the kernel pick a free one at start.
            mount: mount point; a missing leading slash is added.
            mounts: several mount points instead of ``mount`` (several cameras, one server).
            user: basic-auth user, or ``None`` for an open camera.
            password: basic-auth password; required exactly when ``user`` is given.
            host: address to bind and to put in the URL.
            loop: loop the video forever (default) or play it once per client.

        Raises:
            ValueError: only one of ``user``/``password`` given.
        """
        if (user is None) != (password is None):
            raise ValueError("user and password go together")
        self.video = Path(video)
        self.port = port
        self.mounts = [m if m.startswith("/") else "/" + m for m in (mounts or [mount])]
        if not self.mounts or len(set(self.mounts)) != len(self.mounts):
            raise ValueError("mount points must be given and differ")
        self.mount = self.mounts[0]
        self.user = user
        self.password = password
        self.host = host
        self.loop = loop
        self._proc: subprocess.Popen[str] | None = None
        self._finalizer: weakref.finalize | None = None
        self._stderr_tail: deque[str] = deque(maxlen=50)

    # ------------------------------------------------------------------ properties

    @property
    def url(self) -> str:
        """The (first) camera's RTSP URL, with ``user:password@`` when authentication is on.

        Raises:
            SimulatedCameraError: the port is not known yet (never started and no port given).
        """
        return self.url_of(self.mount)

    @property
    def urls(self) -> list[str]:
        """One URL per mount, in the order of ``mounts``."""
        return [self.url_of(m) for m in self.mounts]

    def url_of(self, mount: str) -> str:
        """The URL of one mount point."""
        if self.port is None:
            raise SimulatedCameraError("the camera has no port yet: call start() first")
        auth = ""
        if self.user is not None and self.password is not None:
            auth = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"rtsp://{auth}{host}:{self.port}{mount}"

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id (also its process-group id), or ``None`` when not running."""
        return self._proc.pid if self.running and self._proc is not None else None

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout_s: float = 20.0) -> SimulatedCamera:
        """Start the server and wait until it accepts connections.

        A no-op when already running. When a fixed port is still held by a just-killed server,
        retries until ``timeout_s`` so that ``kill()`` + ``start()`` reliably comes back on the
        same URL.

        Args:
            timeout_s: how long to wait for the ``READY`` line, in seconds.

        Returns:
            ``self``, so ``cam = SimulatedCamera(...).start()`` works.

        Raises:
            SimulatedCameraError: GStreamer/gi missing, video unusable, port unavailable, or no
                ``READY`` within ``timeout_s``; the message carries the server's last stderr lines.
        """
        if self.running:
            return self
        if not self.video.is_file():
            raise SimulatedCameraError(f"video not found: {self.video}")
        ok, reason = available()
        if not ok:
            raise SimulatedCameraError(f"simulated camera unavailable: {reason}")

        deadline = time.monotonic() + timeout_s
        while True:
            error = self._try_start(deadline)
            if error is None:
                return self
            retriable = "cannot listen" in error and time.monotonic() < deadline - 0.5
            if not retriable:
                raise SimulatedCameraError(error)
            time.sleep(0.25)

    def _try_start(self, deadline: float) -> str | None:
        """One attempt to launch the server; ``None`` on success, else an error message."""
        cmd = [
            str(SYSTEM_PYTHON),
            str(SERVER_SCRIPT),
            "--video", str(self.video),
            "--port", str(self.port if self.port is not None else 0),
            *[arg for mount in self.mounts for arg in ("--mount", mount)],
            "--host", self.host,
            "--loop" if self.loop else "--no-loop",
        ]  # fmt: skip
        if self.user is not None and self.password is not None:
            cmd += ["--user", self.user, "--password", self.password]
        self._stderr_tail.clear()
        proc = subprocess.Popen(  # noqa: S603 - fixed interpreter and script, no shell
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,  # own process group: stop()/kill() reach every child
        )
        lines: queue.Queue[str | None] = queue.Queue()
        # Both pipes are drained for the server's whole life: it logs a line per client and per
        # loop, and a full pipe would block it.
        # The pumps hold no reference to self, so a forgotten camera is still garbage-collected
        # (its finalizer then stops the server).
        threading.Thread(target=_pump, args=(proc.stdout, lines, None), daemon=True).start()
        threading.Thread(target=_pump, args=(proc.stderr, None, self._stderr_tail), daemon=True).start()

        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _terminate_group(proc, 1.0)
                return f"simulated camera did not report READY within the timeout{self._tail()}"
            try:
                line = lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:  # stdout closed: the server exited
                rc = proc.wait()
                time.sleep(0.05)  # let the stderr pump catch the last lines
                if rc == _EXIT_MISSING_GI:
                    return f"GStreamer RTSP bindings missing for {SYSTEM_PYTHON}; {INSTALL_HINT}{self._tail()}"
                return f"simulated camera exited with code {rc} before READY{self._tail()}"
            if line.startswith("READY "):
                port = urlsplit(line.split()[1]).port
                if port is None:
                    _terminate_group(proc, 1.0)
                    return f"unparsable READY line from simulated camera: {line!r}"
                self.port = port
                self._proc = proc
                self._finalizer = weakref.finalize(self, _terminate_group, proc, 1.0)
                return None

    def _tail(self) -> str:
        """The server's last stderr lines, formatted for an error message."""
        if not self._stderr_tail:
            return ""
        return "; server stderr:\n  " + "\n  ".join(self._stderr_tail)

    def stop(self) -> int | None:
        """Stop the server: SIGTERM, then SIGKILL after 5 s. Safe to call any number of times.

        Returns:
            The server's exit code (0 after a clean shutdown, negative for a signal), or ``None``
            when it was not running.
        """
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is None:
            return None
        _terminate_group(proc, _STOP_GRACE_S)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL the server at once, like a camera losing power (for outage tests).

        The port is kept, so ``start()`` brings the camera back on the same URL.
        """
        proc, self._proc = self._proc, None
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def __enter__(self) -> SimulatedCamera:
        """Start the camera (if not running) for the ``with`` block."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the camera when the ``with`` block ends, whatever happened in it."""
        self.stop()

    def __repr__(self) -> str:
        """Show where the camera is, never its password."""
        mounts = self.mount if len(self.mounts) == 1 else f"{self.mount} (+{len(self.mounts) - 1})"
        where = f"{self.host}:{self.port}{mounts}" if self.port is not None else f"{self.host}:?{mounts}"
        return f"SimulatedCamera({str(self.video)!r}, {where}, running={self.running}, auth={self.user is not None})"

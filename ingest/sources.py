"""Open camera sources: RTSP (over TCP), HTTP-MJPEG and video files, all through OpenCV's FFmpeg backend.

Why one module: the traps of OpenCV capture live here and nowhere else:

* timeouts are only honoured when passed *at open* (opencv#23207), so :func:`open_source` always
  passes ``CAP_PROP_OPEN_TIMEOUT_MSEC`` / ``CAP_PROP_READ_TIMEOUT_MSEC``;
* RTSP over UDP loses packets and stalls; ``OPENCV_FFMPEG_CAPTURE_OPTIONS=rtsp_transport;tcp``
  must be in the environment before the open (opencv#27091); set here unless the operator set it,
  with ``fpsprobesize;2``: FFmpeg otherwise reads frames for seconds at open to estimate the frame
  rate (a 10 fps camera took 2.9 s to open, 1.0 s with it; files report the same fps either way),
  and the open is most of the time a camera moved to another replica is dark;
* a dead stream never comes back by itself (#24393): callers release and reopen.

FFmpeg's and OpenCV's own log lines go to stderr outside our JSON logging and can name the URL;
they are silenced (``OPENCV_FFMPEG_LOGLEVEL``/``OPENCV_LOG_LEVEL``) unless the operator set them.
URLs carry camera passwords: log only :func:`describe_source`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp|fpsprobesize;2")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
_OPERATOR_LOG_LEVEL = "OPENCV_LOG_LEVEL" in os.environ

import cv2  # noqa: E402 - the environment above must be set first
import numpy as np  # noqa: E402

from traffic.errors import Retriable  # noqa: E402
from traffic.logs import mask_secrets  # noqa: E402

LIVE_SCHEMES = ("rtsp", "rtsps", "http", "https")
DEFAULT_FILE_FPS = 30.0
_CV_LOG_LEVEL_ERROR = 2  # cv2.utils.logging.LOG_LEVEL_ERROR; cv2 may already be imported, so set it, not the env

if not _OPERATOR_LOG_LEVEL:
    cv2.setLogLevel(_CV_LOG_LEVEL_ERROR)  # "can't be used to capture by name" warnings on every failed open


class SourceError(Retriable):
    """A source could not be opened or stopped delivering frames; back off and reopen."""


def describe_source(url: str) -> str:
    """A loggable form of a source URL: the password masked, a query string (tokens) dropped."""
    parts = urlsplit(url)
    text = url.split("?", 1)[0] if parts.scheme in LIVE_SCHEMES else url
    return mask_secrets(text)


def is_live(url: str) -> bool:
    """True for network cameras (RTSP, HTTP-MJPEG), False for files (``file://`` or a path)."""
    return urlsplit(url).scheme.lower() in LIVE_SCHEMES


def file_path(url: str) -> Path:
    """The path of a ``file://`` URL or plain path."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return Path(parts.netloc + parts.path) if parts.netloc not in ("", "localhost") else Path(parts.path)
    return Path(url)


@dataclass
class Source:
    """An open capture and what is known about it.

    Attributes:
        capture: the OpenCV capture (owned: call :meth:`release`).
        live: True for network cameras (capture time = wall clock at read).
        fps: the stream's nominal frame rate (frames per second); files fall back to 30.
        width: frame width reported by the backend (pixels, 0 if unknown).
        height: frame height reported by the backend (pixels, 0 if unknown).
    """

    capture: cv2.VideoCapture
    live: bool
    fps: float
    width: int
    height: int

    def grab(self) -> bool:
        """Advance one frame without converting it (cheap for frames the sampler skips)."""
        return bool(self.capture.grab())

    def retrieve(self) -> np.ndarray | None:
        """The BGR image ``(height, width, 3) uint8`` of the last grabbed frame, or None."""
        ok, image = self.capture.retrieve()
        return image if ok and image is not None and image.size else None

    def release(self) -> None:
        """Close the capture; idempotent."""
        self.capture.release()


def open_source(url: str, open_timeout_ms: int = 10_000, read_timeout_ms: int = 5_000) -> Source:
    """Open a camera URL or video file with the FFmpeg backend and timeouts set at open.

    Args:
        url: ``rtsp://``, ``http(s)://`` (MJPEG or any FFmpeg stream), ``file://`` URL or a path.
            May contain credentials; they are never put in an exception message.
        open_timeout_ms: give up opening a network source after this long (ms).
        read_timeout_ms: a read that gets no frame for this long fails (ms), so a dead camera is noticed.

    Returns:
        An open :class:`Source`.

    Raises:
        SourceError: the source cannot be opened (message names the masked URL).
    """
    live = is_live(url)
    target = url if live else str(file_path(url))
    if not live and not Path(target).is_file():
        raise SourceError(f"video file {describe_source(target)} does not exist")
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_ms), cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_ms)]
    capture = cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
    if not capture.isOpened():
        capture.release()
        raise SourceError(f"cannot open {describe_source(url)}")
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    if not (0.0 < fps < 1000.0):  # NaN, 0 and the 90000 of some RTSP streams mean "unknown"
        fps = DEFAULT_FILE_FPS
    return Source(
        capture=capture,
        live=live,
        fps=fps,
        width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
        height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
    )

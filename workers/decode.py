"""JPEG decoding with a clear error for bad data.

OpenCV's ``imdecode`` (libjpeg-turbo inside opencv-python) decodes a 640x480 frame in about a
millisecond here; see bench/bench_worker.py for its share of a frame's cost.
"""

from __future__ import annotations

import cv2
import numpy as np

from traffic.errors import BadInput

_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"


def decode_jpeg(data: bytes) -> np.ndarray:
    """Decode JPEG bytes to a BGR ``(h, w, 3)`` uint8 array; BadInput on corrupt or truncated data.

    A truncated JPEG often still "decodes" with a grey bottom; the end-of-image marker check
    refuses it, so a half-received frame never reaches the detector.
    """
    if not data or not data.startswith(_JPEG_START):
        raise BadInput("not a JPEG (no start-of-image marker)")
    if not data.rstrip(b"\x00").endswith(_JPEG_END):
        raise BadInput("truncated JPEG (no end-of-image marker)")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise BadInput("undecodable JPEG")
    return image

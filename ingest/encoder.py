"""Resize and JPEG-encode frames for ``traffic.frames``.

Why resize here: the detector runs at 640 px; sending 1080p would cost the camera's uplink, the
broker and every worker's JPEG decode for nothing. ``cv2.imencode`` (libjpeg-turbo inside
OpenCV's wheel) is used; ``bench/bench_ingest.py`` measures its cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ingest.activity import thumbnail
from traffic.errors import BadInput


@dataclass(frozen=True, slots=True)
class EncodedImage:
    """A JPEG, its pixel size (the size goes into the frame headers) and, if asked for, the activity thumbnail."""

    jpeg: bytes
    width: int
    height: int
    thumb: np.ndarray | None = None


def target_size(width: int, height: int, max_width: int) -> tuple[int, int]:
    """Size after resizing to at most ``max_width`` pixels wide, keeping the aspect ratio.

    ``max_width`` 0 means never resize; frames narrower than it are never enlarged.
    """
    if max_width <= 0 or width <= max_width:
        return width, height
    return max_width, max(1, round(height * max_width / width))


class JpegEncoder:
    """Resize (INTER_AREA, the right filter for shrinking) and encode at a fixed quality.

    ``thumb_width`` > 0 also makes the activity thumbnail (:mod:`ingest.activity`) of the resized
    image: from the 640 px frame it costs a fraction of what it would from the camera's 1080p one.
    """

    def __init__(self, max_width: int, quality: int, thumb_width: int = 0) -> None:
        assert 1 <= quality <= 100, "JPEG quality is 1..100"
        self.max_width = max_width
        self.thumb_width = thumb_width
        self._params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]

    def encode(self, image: np.ndarray) -> EncodedImage:
        """JPEG of ``image`` (BGR ``(h, w, 3)`` uint8); BadInput if it is empty or encoding fails."""
        if image is None or image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
            raise BadInput(f"cannot encode an image of shape {getattr(image, 'shape', None)}")
        height, width = image.shape[:2]
        new_w, new_h = target_size(width, height, self.max_width)
        if (new_w, new_h) != (width, height):
            image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        ok, buffer = cv2.imencode(".jpg", image, self._params)
        if not ok:
            raise BadInput("cv2.imencode refused the frame")
        thumb = thumbnail(image, self.thumb_width) if self.thumb_width > 0 else None
        return EncodedImage(buffer.tobytes(), new_w, new_h, thumb)

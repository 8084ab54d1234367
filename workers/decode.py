"""JPEG decoding with a clear error for bad data, and the image size read before anything is decoded.

OpenCV's ``imdecode`` (libjpeg-turbo inside opencv-python) decodes a 640x480 frame in about a
millisecond here; see bench/bench_worker.py for its share of a frame's cost.

Why read the size first: a JPEG of a few kilobytes can declare 16384 x 16384 pixels (a
decompression bomb: 805 MB once decoded), which would take a worker's memory limit with it. The
frame header (SOF) is read from the marker segments without decoding, and frames larger than
``max_pixels`` or of another size than their Kafka headers say are refused before ``imdecode``.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

from traffic.errors import BadInput, ContractError

_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
"""Start-of-frame markers (baseline, progressive, lossless, arithmetic...); C4/C8/CC are not frames."""


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the JPEG's start-of-frame segment, without decoding; BadInput if there is none."""
    if not data or not data.startswith(_JPEG_START):
        raise BadInput("not a JPEG (no start-of-image marker)")
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise BadInput("not a JPEG (marker expected)")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            break
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if length < 2:
            raise BadInput("not a JPEG (bad segment length)")
        if marker in _SOF:
            if i + 9 > n:
                break
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            if width == 0 or height == 0:
                raise BadInput("JPEG without a size")
            return width, height
        i += 2 + length
    raise BadInput("not a JPEG (no frame header)")


def decode_jpeg(data: bytes, max_pixels: int | None = None, expect: tuple[int, int] | None = None) -> np.ndarray:
    """Decode JPEG bytes to a BGR ``(h, w, 3)`` uint8 array; BadInput on corrupt or truncated data.

    Args:
        max_pixels: refuse larger images before decoding (ContractError ``too_large``).
        expect: the (width, height) the frame's headers declare; another size is refused before
            decoding (ContractError ``size_mismatch``).

    A truncated JPEG often still "decodes" with a grey bottom; the end-of-image marker check
    refuses it, so a half-received frame never reaches the detector.
    """
    if not data or not data.startswith(_JPEG_START):
        raise BadInput("not a JPEG (no start-of-image marker)")
    if not data.rstrip(b"\x00").endswith(_JPEG_END):
        raise BadInput("truncated JPEG (no end-of-image marker)")
    width, height = jpeg_size(data)
    if max_pixels is not None and width * height > max_pixels:
        raise ContractError(f"JPEG of {width}x{height} pixels is larger than max_frame_pixels ({max_pixels})", "too_large")
    if expect is not None and (width, height) != expect:
        raise ContractError(f"JPEG is {width}x{height}, headers say {expect[0]}x{expect[1]}", "size_mismatch")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise BadInput("undecodable JPEG")
    return image

"""Messages of the aggregator's own internal topics (not part of the public contracts).

``<app_id>-by-intersection`` (key = intersection id) carries, in order, what the per-camera stage
tells the per-intersection stage::

    {"kind": "crossing", "crossing": {...CrossingEvent...}}
    {"kind": "watermark", "intersection": "...", "camera": "...", "time_ms": 1767225645000}
    {"kind": "close", "intersection": "...", "keys": ["<CountKey.encode()>", ...]}
    {"kind": "stream", "intersection": "...", "camera": "...", "ended": true}

``<app_id>-camera-control`` (sent to the partition of the camera's detections) carries
``{"kind": "finish", "camera": "..."}``: end the idle camera's tracks inside its stream, where its
state table may be written.
"""

from __future__ import annotations

import json
from typing import Any

from traffic.wire import CrossingEvent


def crossing_message(crossing: CrossingEvent) -> bytes:
    """A crossing for the per-intersection stage."""
    return b'{"kind":"crossing","crossing":' + crossing.encode() + b"}"


def watermark_message(intersection: str, camera: str, time_ms: int) -> bytes:
    """Event-time progress of one camera."""
    return json.dumps({"kind": "watermark", "intersection": intersection, "camera": camera, "time_ms": time_ms}).encode()


def close_message(intersection: str, keys: list[str]) -> bytes:
    """Ask the owner of the intersection's tables to publish these intervals as final."""
    return json.dumps({"kind": "close", "intersection": intersection, "keys": keys}).encode()


def stream_message(intersection: str, camera: str, ended: bool) -> bytes:
    """A camera's stream ended (its end-of-session marker was counted) or is live again."""
    return json.dumps({"kind": "stream", "intersection": intersection, "camera": camera, "ended": ended}).encode()


def finish_message(camera: str) -> bytes:
    """Ask the owner of the camera's state to end its tracks (stream idle)."""
    return json.dumps({"kind": "finish", "camera": camera}).encode()


def parse(raw: bytes) -> dict[str, Any]:
    """Decode an internal message (written by this app: a failure is a bug, not bad input)."""
    message = json.loads(raw)
    assert isinstance(message, dict) and "kind" in message, f"not an internal message: {raw[:80]!r}"
    return message

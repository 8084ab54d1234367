"""Typed messages of the aggregator's own internal topics (not part of the public contracts).

``<app_id>-by-intersection`` (key = intersection id) carries, in order, what the camera stage
tells the intersection stage, and the housekeeping timer's wake-up calls::

    {"kind": "crossing", "crossing": {...CrossingEvent...}}
    {"kind": "watermark", "intersection": "...", "camera": "...", "time_ms": 1767225645000}
    {"kind": "stream", "intersection": "...", "camera": "...", "ended": true}
    {"kind": "close", "intersection": "..."}

``<app_id>-camera-control`` (sent to the partition of the camera's detections) carries
``{"kind": "finish", "camera": "...", "session": "...", "next_seq": 120, "events": 118}``.

``close`` and ``finish`` have no authority of their own: they only bring the housekeeping
timer's decision into a stream, where tables may be written, and the stage checks it again
(``close``: what its watermark and its idle clock make due; ``finish``: only when the camera is
still idle at that position). A repeated or stale wake-up does nothing.

Anything that does not decode (garbage written to an internal topic) raises ContractError with
reason ``internal_malformed``: the stage sends it to the DLQ and goes on.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from traffic.errors import ContractError
from traffic.wire import CrossingEvent, EpochMs, Identifier

MALFORMED = "internal_malformed"


class _Internal(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CrossingMessage(_Internal):
    """A counted crossing for the intersection stage."""

    kind: Literal["crossing"] = "crossing"
    crossing: CrossingEvent


class WatermarkMessage(_Internal):
    """Event-time progress of one camera (capture ms it has certainly passed)."""

    kind: Literal["watermark"] = "watermark"
    intersection: Identifier
    camera: Identifier
    time_ms: EpochMs


class StreamMessage(_Internal):
    """A camera's stream ended (its end-of-session marker was counted), or is live again."""

    kind: Literal["stream"] = "stream"
    intersection: Identifier
    camera: Identifier
    ended: bool


class CloseMessage(_Internal):
    """Wake-up: close what is due at this intersection."""

    kind: Literal["close"] = "close"
    intersection: Identifier


class FinishMessage(_Internal):
    """Wake-up: end the tracks of an idle camera, if it is still at this position."""

    kind: Literal["finish"] = "finish"
    camera: Identifier
    session: str | None = Field(default=None, max_length=128)
    next_seq: int = Field(ge=0)
    events: int = Field(ge=0)


IntersectionMessage = Annotated[CrossingMessage | WatermarkMessage | StreamMessage | CloseMessage, Field(discriminator="kind")]
_INTERSECTION = TypeAdapter(IntersectionMessage)
_CONTROL = TypeAdapter(FinishMessage)


def encode(message: _Internal) -> bytes:
    """Compact JSON of any internal message."""
    return message.model_dump_json().encode()


def decode_intersection(raw: bytes | None) -> CrossingMessage | WatermarkMessage | StreamMessage | CloseMessage:
    """A message of the by-intersection topic; ContractError (``internal_malformed``) otherwise."""
    return _decode(_INTERSECTION, raw)  # type: ignore[no-any-return]


def decode_control(raw: bytes | None) -> FinishMessage:
    """A message of the camera-control topic; ContractError (``internal_malformed``) otherwise."""
    return _decode(_CONTROL, raw)  # type: ignore[no-any-return]


def _decode(adapter: TypeAdapter, raw: bytes | None) -> object:
    if not raw:
        raise ContractError("internal message: empty", MALFORMED)
    try:
        return adapter.validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise ContractError(f"internal message: {where}: {first['msg']}", MALFORMED) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ContractError(f"internal message: not JSON: {exc.__class__.__name__}", MALFORMED) from None

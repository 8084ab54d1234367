"""Wire contracts between the services, as code.

Each topic of ``docs/contracts.md`` has one type here with ``encode`` / ``decode``. Decoding
validates and raises :class:`traffic.errors.ContractError` (with a short ``reason``) on anything
malformed, so a service can route the message to the DLQ instead of crashing.

* ``traffic.frames``: value = JPEG bytes, metadata in Kafka headers (:class:`FrameHeaders`).
* ``traffic.detections``: :class:`DetectionEvent` (JSON), one per frame, also when empty.
* ``traffic.crossings``: :class:`CrossingEvent` (JSON), one per counted vehicle.
* ``traffic.counts``: :class:`CountRecord` (JSON), one per window and series.

The JSON Schemas in ``traffic/schemas/`` are generated from these models
(``traffic schemas write``) and a test checks that they are up to date.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from traffic.errors import ContractError

Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]
"""Ids of cameras, intersections, lines, approaches: safe as Kafka keys and Prometheus labels."""

Unit = Annotated[float, Field(ge=0.0, le=1.0)]
EpochMs = Annotated[int, Field(ge=0, description="milliseconds since the Unix epoch, UTC")]

MAX_FRAME_SIDE = 16384

# ----------------------------------------------------------------------------------------------
# traffic.frames: JPEG bytes + headers
# ----------------------------------------------------------------------------------------------

FRAME_HEADER_NAMES = ("camera", "intersection", "session", "seq", "capture_ms", "width", "height")
END_OF_SESSION_HEADER = "end-of-session"
HANDOVER_HEADER = "handover"
UNCHANGED_SINCE_HEADER = "unchanged-since"


@dataclass(frozen=True, slots=True)
class FrameHeaders:
    """Kafka headers of one frame on ``traffic.frames`` (all values UTF-8 text).

    Attributes:
        camera: camera id (also the record key).
        intersection: intersection id of the camera.
        session: id of one uninterrupted stream session of this camera; a reconnect starts a new one.
        seq: 0, 1, 2, ... per (camera, session), gap-free.
        capture_ms: capture time, epoch milliseconds.
        width: JPEG width in pixels.
        height: JPEG height in pixels.
        end: True for the end-of-session marker: the last seq of a session, with an empty value,
            sent when a stream ends (file done, stream lost, shutdown). It lets the aggregator end
            the session's tracks by the data instead of by a wall-clock timeout, so a slow or
            restarted worker never changes counts.
        handover: only with ``end``: the ingester let go of a live camera (it was stopped: a
            rolling update, a scale-in, the camera moved to another replica) and the camera goes on
            in a new session elsewhere. The session's tracks end as at any marker, but the
            camera's intersection does not take it as the end of the stream: its intervals close by
            time, so the next session's crossings in them still count.
        unchanged_since: set on an **unchanged frame**: the ingester found it (nearly) identical to
            frame ``unchanged_since`` of the same session, the last one it sent with its JPEG, and
            sent no JPEG (empty value). Workers skip the model; the aggregator reuses that frame's
            detections. Decided by the camera's single ingester in seq order, so it does not depend
            on which worker handles which frame.
    """

    camera: str
    intersection: str
    session: str
    seq: int
    capture_ms: int
    width: int
    height: int
    end: bool = False
    unchanged_since: int | None = None
    handover: bool = False

    def to_kafka(self) -> list[tuple[str, bytes]]:
        """Headers as kafka-python / aiokafka want them."""
        headers = [(name, str(getattr(self, name)).encode()) for name in FRAME_HEADER_NAMES]
        if self.end:
            return headers + [(END_OF_SESSION_HEADER, b"1")] + ([(HANDOVER_HEADER, b"1")] if self.handover else [])
        if self.unchanged_since is not None:
            return headers + [(UNCHANGED_SINCE_HEADER, str(self.unchanged_since).encode())]
        return headers + [("content-type", b"image/jpeg")]

    @classmethod
    def from_kafka(cls, headers: list[tuple[str, bytes]] | None) -> "FrameHeaders":
        """Parse and validate headers; raise ContractError naming the first bad one."""
        found: dict[str, str] = {}
        end = handover = False
        for name, value in headers or []:
            if name == END_OF_SESSION_HEADER:
                end = value in (b"1", "1")
            elif name == HANDOVER_HEADER:
                handover = value in (b"1", "1")
            elif name in FRAME_HEADER_NAMES or name == UNCHANGED_SINCE_HEADER:
                if name in found:  # two values for one header: which one is true is anyone's guess
                    raise ContractError(f"frame header {name!r} appears more than once", "bad_header")
                try:
                    found[name] = value.decode() if isinstance(value, bytes | bytearray) else str(value)
                except UnicodeDecodeError as exc:
                    raise ContractError(f"frame header {name!r} is not UTF-8", "bad_header") from exc
        missing = [n for n in FRAME_HEADER_NAMES if n not in found]
        if missing:
            raise ContractError(f"frame is missing headers: {', '.join(missing)}", "missing_header")
        for name in ("camera", "intersection", "session"):
            _check_identifier(name, found[name])
        ints: dict[str, int] = {}
        for name in ("seq", "capture_ms", "width", "height"):
            try:
                ints[name] = int(found[name])
            except ValueError as exc:
                raise ContractError(f"frame header {name!r}={found[name]!r} is not an integer", "bad_header") from exc
            if ints[name] < 0:
                raise ContractError(f"frame header {name!r}={ints[name]} is negative", "bad_header")
        for name in ("width", "height"):
            if not 0 < ints[name] <= MAX_FRAME_SIDE:
                raise ContractError(f"frame header {name!r}={ints[name]} is out of range", "bad_header")
        unchanged: int | None = None
        if UNCHANGED_SINCE_HEADER in found and not end:
            try:
                unchanged = int(found[UNCHANGED_SINCE_HEADER])
            except ValueError as exc:
                raise ContractError(f"frame header {UNCHANGED_SINCE_HEADER!r}={found[UNCHANGED_SINCE_HEADER]!r} is not an integer", "bad_header") from exc
            if not 0 <= unchanged < ints["seq"]:
                raise ContractError(f"frame header {UNCHANGED_SINCE_HEADER!r}={unchanged} must name an earlier seq than {ints['seq']}", "bad_header")
        return cls(found["camera"], found["intersection"], found["session"], **ints, end=end, unchanged_since=unchanged, handover=end and handover)


def _check_identifier(name: str, value: str) -> None:
    try:
        _IdProbe(v=value)
    except ValidationError as exc:
        raise ContractError(f"{name} {value!r} is not a valid identifier", "bad_header") from exc


class _IdProbe(BaseModel):
    v: Identifier


# ----------------------------------------------------------------------------------------------
# JSON topics
# ----------------------------------------------------------------------------------------------

_M = TypeVar("_M", bound="_Message")


class _Message(BaseModel):
    """Base of the JSON contracts: strict keys, compact encoding, one error type on decode."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    SCHEMA: ClassVar[str]

    def encode(self) -> bytes:
        """Compact UTF-8 JSON."""
        return self.model_dump_json(exclude_none=False).encode()

    @classmethod
    def decode(cls: type[_M], raw: bytes | str | None) -> _M:
        """Parse and validate; raise ContractError with the first problem on bad input."""
        if raw is None:
            raise ContractError(f"{cls.__name__}: empty message", "empty")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "<root>"
            raise ContractError(f"{cls.__name__}: {where}: {first['msg']}", "malformed") from exc
        except (UnicodeDecodeError, ValueError) as exc:
            raise ContractError(f"{cls.__name__}: not JSON: {exc}", "malformed") from exc

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """JSON Schema (draft 2020-12) of the message, for consumers in other languages."""
        schema = cls.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://github.com/traffic-pipeline/schemas/{cls.SCHEMA}.json"
        return schema


class Detection(BaseModel):
    """One object found in a frame.

    Attributes:
        class_id: COCO class id of the model.
        label: class name (``car``, ``bus``, ``truck``, ``motorcycle``, ``bicycle``, ``person``).
        confidence: detector score in [0, 1].
        box: ``[x1, y1, x2, y2]`` normalized to [0, 1] by the frame width and height.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    class_id: int = Field(ge=0, le=10_000)
    label: str = Field(min_length=1, max_length=64)
    confidence: Unit
    box: tuple[Unit, Unit, Unit, Unit]

    @field_validator("box")
    @classmethod
    def _ordered(cls, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        if box[2] < box[0] or box[3] < box[1]:
            raise ValueError("box must be [x1, y1, x2, y2] with x2 >= x1 and y2 >= y1")
        return box


class DetectionEvent(_Message):
    """What a worker found in one frame (``traffic.detections``, key = camera id).

    ``end_of_session=True`` events carry the seq of the session's end marker and no detections.
    ``handover=True`` on an end marker: the ingester let go of a live camera that goes on in a new
    session (see :class:`FrameHeaders`); its intersection's intervals close by time, not here.
    ``reused_from_seq=N`` events are unchanged frames: no model ran and ``detections`` is empty;
    the frame's detections are those of frame N of the session (the aggregator substitutes them).
    Both fields are left out of the JSON when unset, so the other events are byte-for-byte what
    they were before they existed.
    """

    SCHEMA: ClassVar[str] = "traffic.detections.v1"

    camera: Identifier
    intersection: Identifier
    session: Identifier
    seq: int = Field(ge=0)
    capture_ms: EpochMs
    model: str = Field(min_length=1, max_length=256)
    width: int = Field(gt=0, le=MAX_FRAME_SIDE)
    height: int = Field(gt=0, le=MAX_FRAME_SIDE)
    detections: tuple[Detection, ...] = ()
    inference_ms: float | None = Field(default=None, ge=0)
    end_of_session: bool = Field(default=False, description="the session's end marker: no frame, no detections; its tracks end here")
    reused_from_seq: int | None = Field(
        default=None, ge=0,
        description="an unchanged frame: no inference ran; its detections are those of this earlier seq of the session (absent = inferred)",
    )  # fmt: skip
    handover: bool = Field(
        default=False,
        description="only on an end marker: the camera goes on in a new session (its ingester was stopped), so its intervals close by time",
    )  # fmt: skip

    @model_validator(mode="after")
    def _reuse(self) -> "DetectionEvent":
        if self.reused_from_seq is not None and (self.reused_from_seq >= self.seq or self.detections or self.end_of_session):
            raise ValueError("reused_from_seq must name an earlier seq, with no detections of its own and not on an end marker")
        if self.handover and not self.end_of_session:
            raise ValueError("handover is only for an end marker (end_of_session=true)")
        return self

    def encode(self) -> bytes:
        """Compact UTF-8 JSON; ``reused_from_seq`` and ``handover`` only when set (older readers forbid unknown keys)."""
        unset = ({"reused_from_seq"} if self.reused_from_seq is None else set()) | (set() if self.handover else {"handover"})
        return self.model_dump_json(exclude=unset or None).encode()

    @property
    def frame_key(self) -> tuple[str, str, int]:
        """The de-duplication key (camera, session, seq)."""
        return (self.camera, self.session, self.seq)


class CrossingEvent(_Message):
    """One counted vehicle (``traffic.crossings``, key = intersection id).

    ``kind="line"``: the track crossed ``line`` in ``direction``.
    ``kind="movement"``: the track entered by ``approach`` and left by ``exit``: ``movement``.
    ``event_id`` is deterministic (camera, session, track, line or movement) so consumers can
    de-duplicate replays.
    """

    SCHEMA: ClassVar[str] = "traffic.crossings.v1"

    event_id: str = Field(min_length=1, max_length=512)
    kind: Literal["line", "movement"]
    intersection: Identifier
    camera: Identifier
    session: Identifier
    track_id: int = Field(ge=0)
    vehicle_class: str = Field(min_length=1, max_length=64)
    time_ms: EpochMs
    line: Identifier | None = None
    direction: str | None = Field(default=None, max_length=64)
    approach: Identifier | None = None
    exit: Identifier | None = None
    movement: str | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _kind_fields(self) -> "CrossingEvent":
        if self.kind == "line" and (self.line is None or self.direction is None):
            raise ValueError("a line crossing needs line and direction")
        if self.kind == "movement" and (self.approach is None or self.exit is None or self.movement is None):
            raise ValueError("a movement needs approach, exit and movement")
        return self


class CountRecord(_Message):
    """Count of one series in one interval (``traffic.counts``, key = intersection id).

    A series is (intersection, series kind, approach-or-line, movement-or-direction, class).
    ``final=False`` records are provisional updates of an open interval; the one ``final=True``
    record of an interval is published after the grace period. Consumers keep the last record per
    (series, interval_start_ms, interval_s).
    """

    SCHEMA: ClassVar[str] = "traffic.counts.v1"

    intersection: Identifier
    interval_s: int = Field(gt=0)
    interval_start_ms: EpochMs
    interval_end_ms: EpochMs
    series: Literal["movement", "line"]
    approach: str = Field(min_length=1, max_length=128, description="approach id, or line id for series=line")
    movement: str = Field(min_length=1, max_length=64, description="left/through/right/u-turn, or direction label")
    direction: str = Field(default="", max_length=64, description="direction label of the approach or line")
    vehicle_class: str = Field(min_length=1, max_length=64)
    count: int = Field(ge=0)
    final: bool

    @model_validator(mode="after")
    def _interval(self) -> "CountRecord":
        if self.interval_end_ms - self.interval_start_ms != self.interval_s * 1000:
            raise ValueError("interval_end_ms - interval_start_ms must equal interval_s * 1000")
        return self


JSON_CONTRACTS: dict[str, type[_Message]] = {
    "detections": DetectionEvent,
    "crossings": CrossingEvent,
    "counts": CountRecord,
}


def schema_documents() -> dict[str, str]:
    """File name -> pretty JSON Schema text, as written under ``traffic/schemas/``."""
    return {
        f"{model.SCHEMA}.schema.json": json.dumps(model.json_schema(), indent=2, sort_keys=True) + "\n"
        for model in JSON_CONTRACTS.values()
    }

"""Wire contracts: every message round-trips, malformed input raises ContractError with a reason."""

from __future__ import annotations

import json

import jsonschema
import pytest

from traffic.errors import ContractError
from traffic.wire import (
    CountRecord,
    CrossingEvent,
    Detection,
    DetectionEvent,
    FrameHeaders,
    schema_documents,
)
from pathlib import Path

SCHEMAS = Path(__file__).resolve().parents[3] / "traffic" / "schemas"

EVENT = DetectionEvent(
    camera="cam-1", intersection="main-5th", session="s1a2", seq=7, capture_ms=1_700_000_000_123,
    model="yolo11n", width=640, height=480,
    detections=(Detection(class_id=2, label="car", confidence=0.9, box=(0.1, 0.2, 0.3, 0.4)),),
)  # fmt: skip
CROSSING = CrossingEvent(
    event_id="cam-1:s1a2:3:west>east", kind="movement", intersection="main-5th", camera="cam-1", session="s1a2",
    track_id=3, vehicle_class="car", time_ms=1_700_000_000_500, approach="west", exit="east", movement="through",
)  # fmt: skip
COUNT = CountRecord(
    intersection="main-5th", interval_s=900, interval_start_ms=1_699_999_200_000, interval_end_ms=1_700_000_100_000,
    series="movement", approach="west", movement="through", direction="EB", vehicle_class="car", count=12, final=True,
)  # fmt: skip


@pytest.mark.parametrize("message", [EVENT, CROSSING, COUNT], ids=["detection", "crossing", "count"])
def test_json_contracts_round_trip_and_match_their_schema(message) -> None:
    raw = message.encode()
    assert type(message).decode(raw) == message
    schema = json.loads((SCHEMAS / f"{type(message).SCHEMA}.schema.json").read_text())
    jsonschema.validate(json.loads(raw), schema)


def test_event_with_no_detections_is_valid() -> None:
    empty = EVENT.model_copy(update={"detections": ()})
    assert DetectionEvent.decode(empty.encode()).detections == ()


def _mutated(message, **changes) -> bytes:
    data = json.loads(message.encode())
    for key, value in changes.items():
        if value is ...:
            data.pop(key)
        else:
            data[key] = value
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("model", "raw"),
    [
        (DetectionEvent, b""),  # empty value
        (DetectionEvent, b"\xff\xfe garbage"),  # not UTF-8, not JSON
        (DetectionEvent, b"[1, 2, 3]"),  # JSON, wrong shape
        (DetectionEvent, _mutated(EVENT, seq=-1)),  # negative seq
        (DetectionEvent, _mutated(EVENT, camera=...)),  # missing camera
        (DetectionEvent, _mutated(EVENT, camera="bad id with spaces")),  # id not usable as key / label
        (DetectionEvent, _mutated(EVENT, width=0)),  # zero-size frame
        (DetectionEvent, _mutated(EVENT, surprise=1)),  # unknown field
        (DetectionEvent, _mutated(EVENT, detections=[{"class_id": 2, "label": "car", "confidence": 1.5, "box": [0, 0, 1, 1]}])),  # confidence > 1
        (DetectionEvent, _mutated(EVENT, detections=[{"class_id": 2, "label": "car", "confidence": 0.5, "box": [0.5, 0, 0.2, 1]}])),  # x2 < x1
        (DetectionEvent, _mutated(EVENT, detections=[{"class_id": 2, "label": "car", "confidence": 0.5, "box": [0, 0, 1]}])),  # 3-value box
        (CrossingEvent, _mutated(CROSSING, movement=...)),  # movement without its movement name
        (CrossingEvent, _mutated(CROSSING, kind="line")),  # line crossing without line/direction
        (CrossingEvent, _mutated(CROSSING, kind="teleport")),  # unknown kind
        (CountRecord, _mutated(COUNT, interval_end_ms=COUNT.interval_start_ms + 1)),  # end != start + interval
        (CountRecord, _mutated(COUNT, count=-3)),  # negative count
        (CountRecord, _mutated(COUNT, final="maybe")),  # not a boolean
    ],
)
def test_malformed_json_is_a_contract_error(model, raw: bytes) -> None:
    with pytest.raises(ContractError) as info:
        model.decode(raw)
    assert info.value.reason in {"malformed", "empty"}


def test_schemas_on_disk_are_generated_from_the_code() -> None:
    for name, text in schema_documents().items():
        path = SCHEMAS / name
        assert path.exists(), f"{name} missing: run `traffic schemas write`"
        assert path.read_text() == text, f"{name} is stale: run `traffic schemas write`"


HEADERS = FrameHeaders("cam-1", "main-5th", "s1a2", 41, 1_700_000_000_000, 640, 480)


def test_frame_headers_round_trip() -> None:
    assert FrameHeaders.from_kafka(HEADERS.to_kafka()) == HEADERS


def _headers_with(name: str, value: bytes | None) -> list[tuple[str, bytes]]:
    headers = [(k, v) for k, v in HEADERS.to_kafka() if k != name]
    return headers if value is None else headers + [(name, value)]


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        (None, "missing_header"),  # a record without headers
        ([], "missing_header"),  # empty header list
        (_headers_with("seq", None), "missing_header"),  # seq missing
        (_headers_with("seq", b"seven"), "bad_header"),  # seq not a number
        (_headers_with("seq", b"-1"), "bad_header"),  # negative seq
        (_headers_with("width", b"0"), "bad_header"),  # zero width
        (_headers_with("height", b"99999999"), "bad_header"),  # absurd height
        (_headers_with("camera", b"\xff\xfe"), "bad_header"),  # not UTF-8
        (_headers_with("camera", b"../etc/passwd"), "bad_header"),  # not an identifier
    ],
)
def test_bad_frame_headers_name_the_problem(headers, reason: str) -> None:
    with pytest.raises(ContractError) as info:
        FrameHeaders.from_kafka(headers)
    assert info.value.reason == reason


# -- unchanged frames (activity-adaptive inference, docs/contracts.md "Unchanged frames") ----------

UNCHANGED_T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, capture time in ms


def test_unchanged_frame_headers_round_trip_and_are_checked() -> None:
    h = FrameHeaders("cam", "x1", "s1", 7, UNCHANGED_T0, 640, 480, unchanged_since=3)
    raw = h.to_kafka()
    assert ("unchanged-since", b"3") in raw and ("content-type", b"image/jpeg") not in raw
    assert FrameHeaders.from_kafka(raw) == h
    assert FrameHeaders.from_kafka(FrameHeaders("cam", "x1", "s1", 7, UNCHANGED_T0, 640, 480).to_kafka()).unchanged_since is None
    for bad in (b"7", b"9", b"-1", b"x"):  # must name an earlier seq of the session
        headers = [(k, bad if k == "unchanged-since" else v) for k, v in raw]
        with pytest.raises(ContractError) as err:
            FrameHeaders.from_kafka(headers)
        assert err.value.reason == "bad_header"


def _event(seq: int, **kw: object) -> DetectionEvent:
    return DetectionEvent(camera="cam", intersection="x1", session="s", seq=seq, capture_ms=UNCHANGED_T0 + seq * 100, model="m",
                          width=640, height=480, **kw)  # type: ignore[arg-type]  # fmt: skip


def test_reused_from_seq_is_left_out_when_unset_and_checked_when_set() -> None:
    assert b"reused_from_seq" not in _event(1).encode()  # inferred frames: the bytes of before the field existed
    reused = _event(5, reused_from_seq=2)
    assert DetectionEvent.decode(reused.encode()) == reused
    car = Detection(class_id=2, label="car", confidence=0.9, box=(0.1, 0.1, 0.2, 0.2))
    for bad in ({"reused_from_seq": 5}, {"reused_from_seq": 2, "detections": (car,)}, {"reused_from_seq": 2, "end_of_session": True}):
        with pytest.raises(ValueError):
            _event(5, **bad)


# -- handover markers (an ingester let go of a live camera, docs/contracts.md "End of a session") ---


def test_handover_marker_headers_round_trip_and_need_an_end_marker() -> None:
    marker = FrameHeaders("cam", "x1", "s1", 7, UNCHANGED_T0, 640, 480, end=True, handover=True)
    raw = marker.to_kafka()
    assert ("end-of-session", b"1") in raw and ("handover", b"1") in raw
    assert FrameHeaders.from_kafka(raw) == marker
    plain = FrameHeaders("cam", "x1", "s1", 7, UNCHANGED_T0, 640, 480, end=True)
    assert ("handover", b"1") not in plain.to_kafka() and not FrameHeaders.from_kafka(plain.to_kafka()).handover
    # a handover header on a frame that is no marker means nothing
    frame = FrameHeaders("cam", "x1", "s1", 7, UNCHANGED_T0, 640, 480).to_kafka() + [("handover", b"1")]
    assert not FrameHeaders.from_kafka(frame).handover


def test_handover_is_left_out_when_unset_and_only_allowed_on_an_end_marker() -> None:
    marker = _event(5, end_of_session=True)
    assert b"handover" not in marker.encode()  # markers of a stream's real end: the bytes of before the field existed
    handover = _event(5, end_of_session=True, handover=True)
    assert b'"handover":true' in handover.encode() and DetectionEvent.decode(handover.encode()) == handover
    with pytest.raises(ValueError):
        _event(5, handover=True)

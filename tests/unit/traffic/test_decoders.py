"""Property tests of the wire decoders: any input decodes to a valid message or raises ContractError, never anything else.

A decoder that raises another exception (or none on garbage) would crash-loop the service that
reads the record, or let garbage through; hypothesis throws bytes, near-valid JSON and header lists
at each of them.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from traffic.errors import ContractError
from traffic.wire import CountRecord, CrossingEvent, Detection, DetectionEvent, FrameHeaders

DECODERS = (DetectionEvent, CrossingEvent, CountRecord)
ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,20}", fullmatch=True)
unit = st.floats(0, 1, allow_nan=False)


@st.composite
def detections(draw: st.DrawFn) -> Detection:
    x1, x2 = sorted((draw(unit), draw(unit)))
    y1, y2 = sorted((draw(unit), draw(unit)))
    return Detection(class_id=draw(st.integers(0, 10_000)), label=draw(st.text(min_size=1, max_size=10)), confidence=draw(unit), box=(x1, y1, x2, y2))


events = st.builds(
    DetectionEvent, camera=ids, intersection=ids, session=ids, seq=st.integers(0, 2**40), capture_ms=st.integers(0, 2**53),
    model=st.text(min_size=1, max_size=20), width=st.integers(1, 16384), height=st.integers(1, 16384),
    detections=st.lists(detections(), max_size=5).map(tuple), end_of_session=st.booleans(),
)  # fmt: skip


@settings(deadline=None)
@given(events)
def test_valid_events_round_trip(event: DetectionEvent) -> None:
    assert DetectionEvent.decode(event.encode()) == event


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=500))
def test_any_bytes(raw: bytes) -> None:
    for model in DECODERS:
        try:
            model.decode(raw)
        except ContractError:
            pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25,
)


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(events, st.sampled_from(["camera", "seq", "capture_ms", "width", "detections", "end_of_session", "model", "extra", "box"]), json_values)
def test_near_valid_events_with_one_field_replaced(event: DetectionEvent, name: str, value: object) -> None:
    data = json.loads(event.encode())
    if name == "box":
        data["detections"] = [{**d, "box": value} for d in data["detections"]] or [{"class_id": 1, "label": "car", "confidence": 0.5, "box": value}]
    else:
        data[name] = value
    try:
        decoded = DetectionEvent.decode(json.dumps(data, allow_nan=True).encode())
    except ContractError as exc:
        assert exc.reason in ("malformed", "empty")
        return
    assert DetectionEvent.decode(decoded.encode()) == decoded  # what passes is a valid event


@settings(deadline=None)
@given(json_values)
def test_any_json_document(value: object) -> None:
    raw = json.dumps(value, allow_nan=True).encode()
    for model in DECODERS:
        try:
            model.decode(raw)
        except ContractError:
            pass


header_names = st.sampled_from(["camera", "intersection", "session", "seq", "capture_ms", "width", "height", "end-of-session", "content-type", "x"])
header_values = st.one_of(st.binary(max_size=20), st.integers(-(2**70), 2**70).map(lambda i: str(i).encode()), st.text(max_size=20).map(str.encode))


@settings(deadline=None, max_examples=300)
@given(st.lists(st.tuples(header_names, header_values), max_size=12))
def test_any_frame_headers(headers: list[tuple[str, bytes]]) -> None:
    try:
        parsed = FrameHeaders.from_kafka(headers)
    except ContractError as exc:
        assert exc.reason in ("missing_header", "bad_header")
        return
    assert FrameHeaders.from_kafka(parsed.to_kafka()) == parsed

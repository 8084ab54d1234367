"""Internal messages: each kind round-trips; anything else is ContractError(internal_malformed), never a crash."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.records import (
    CloseMessage, CrossingMessage, FinishMessage, StreamMessage, WatermarkMessage, decode_control, decode_intersection, encode,
)  # fmt: skip
from traffic.errors import ContractError
from traffic.wire import CrossingEvent

CROSSING = CrossingEvent(
    event_id="cam:s:1:l1", kind="line", intersection="i", camera="cam", session="s", track_id=1, vehicle_class="car", time_ms=5, line="l1", direction="in"
)  # fmt: skip


@pytest.mark.parametrize(
    "message",
    [
        CrossingMessage(crossing=CROSSING),
        WatermarkMessage(intersection="i", camera="cam", time_ms=1_767_225_600_000),
        StreamMessage(intersection="i", camera="cam", ended=True),
        CloseMessage(intersection="i"),
    ],
)
def test_intersection_messages_round_trip(message: object) -> None:
    assert decode_intersection(encode(message)) == message  # type: ignore[arg-type]


def test_finish_round_trips_with_its_position() -> None:
    finish = FinishMessage(camera="cam", session=None, next_seq=0, events=0)
    assert decode_control(encode(finish)) == finish


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"{not json",
        b"[]",
        b'{"kind": "explode"}',  # unknown kind
        b'{"kind": "watermark", "intersection": "i", "camera": "cam", "time_ms": -1}',  # before the epoch
        b'{"kind": "watermark", "intersection": "i", "camera": "cam", "time_ms": "soon"}',
        b'{"kind": "close", "intersection": "i", "extra": 1}',  # unknown field
        b'{"kind": "close", "intersection": "bad id with spaces"}',
        b'{"kind": "crossing", "crossing": {"event_id": "x"}}',
        b"\xff\xfe\x00garbage",  # not UTF-8
        b"[" * 100_000 + b"]" * 100_000,  # deeply nested
    ],
)
def test_garbage_is_internal_malformed(raw: bytes | None) -> None:
    with pytest.raises(ContractError) as info:
        decode_intersection(raw)
    assert info.value.reason == "internal_malformed"
    with pytest.raises(ContractError):
        decode_control(raw)


@settings(deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_refuse(raw: bytes) -> None:
    for decode in (decode_intersection, decode_control):
        try:
            decode(raw)
        except ContractError as exc:
            assert exc.reason == "internal_malformed"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(["kind", "intersection", "camera", "time_ms", "ended", "crossing", "x"]), children, max_size=5),
    max_leaves=20,
)


@settings(deadline=None)
@given(_json)
def test_any_json_decodes_or_refuses(value: object) -> None:
    raw = json.dumps(value).encode()
    for decode in (decode_intersection, decode_control):
        try:
            message = decode(raw)
        except ContractError:
            continue
        assert decode(encode(message)) == message  # what decodes re-encodes to itself

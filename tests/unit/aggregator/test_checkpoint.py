"""Checkpoints: a counter and its gate survive the round trip; a record that is not ours is refused, never loaded."""

from __future__ import annotations

import pickle
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator import checkpoint
from aggregator.counting import CameraCounter
from aggregator.sessions import Held, SessionGate
from traffic.site import TrackerConfig
from tests.synthetic import CAMERA, synthetic_site, synthetic_stream


@pytest.fixture(scope="module")
def busy_counter() -> CameraCounter:
    """A counter in the middle of a dense scene, with events waiting in its reorder buffer."""
    counter = CameraCounter(synthetic_site(), CAMERA)
    for i, e in enumerate(synthetic_stream(per_movement=1, crowd=100).events[:200]):
        if i % 10 != 5:  # gaps: events wait in the reorder buffer
            counter.update(e)
    return counter


def test_round_trip_continues_exactly_where_it_stopped(busy_counter: CameraCounter) -> None:
    events = synthetic_stream(per_movement=1, crowd=100).events
    gate = SessionGate()
    stray = events[3].model_copy(update={"session": "other"})
    gate.offer(Held(stray, stray.encode(), b"k", (("h", b"v"),), ("t", 1, 2)), "s1", 10, False)
    data = checkpoint.encode(CAMERA, busy_counter.snapshot(), gate)
    snapshot, gate2 = checkpoint.decode(CAMERA, data)
    assert gate2 == gate
    a, b = CameraCounter.restore(synthetic_site(), CAMERA, busy_counter.snapshot()), CameraCounter.restore(synthetic_site(), CAMERA, snapshot)
    rest = events[200:]
    assert [c.event_id for e in rest for c in a.update(e)] == [c.event_id for e in rest for c in b.update(e)]
    assert b.pending == a.pending



def test_a_counter_at_the_default_tracker_round_trips() -> None:
    """The default tracker binds its buffered-IoU association with functools.partial: the
    allow-list must load it, or every restart of a camera on a default site starts afresh."""
    site = synthetic_site()
    tracker = site.counting.tracker.model_copy(update={"buffer": TrackerConfig().buffer})
    site = site.model_copy(update={"counting": site.counting.model_copy(update={"tracker": tracker})})
    assert tracker.buffer > 0
    events = synthetic_stream(per_movement=1, site=site).events
    counter = CameraCounter(site, CAMERA)
    for e in events[:120]:
        counter.update(e)
    snapshot, _ = checkpoint.decode(CAMERA, checkpoint.encode(CAMERA, counter.snapshot(), SessionGate()))
    restored = CameraCounter.restore(site, CAMERA, snapshot)
    rest = events[120:]
    assert [c.event_id for e in rest for c in restored.update(e)] == [c.event_id for e in rest for c in counter.update(e)]

def test_compression_keeps_a_dense_checkpoint_small() -> None:
    counter = CameraCounter(synthetic_site(), CAMERA)
    for e in synthetic_stream(per_movement=1, crowd=100).events[:100]:
        counter.update(e)
    raw = counter.snapshot()
    packed = checkpoint.encode(CAMERA, raw, SessionGate())
    assert counter.active_tracks > 100 and len(packed) * 4 < len(raw), (len(packed), len(raw))


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        import os

        return (os.system, ("echo pwned",))


class _Reach:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        from aggregator.tracking import CameraTracker

        return (getattr, (CameraTracker, "__init__"))


def _forge(camera: str, snapshot: bytes) -> bytes:
    body = zlib.compress(pickle.dumps((camera, snapshot, (3, 3, None, [], 0, []))))
    return checkpoint.MAGIC + zlib.crc32(body).to_bytes(4, "big") + body


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "empty"),
        (b"garbage that is not a checkpoint", "no magic"),
        (checkpoint.MAGIC + b"\x00\x00\x00\x00" + zlib.compress(b"x"), "bad CRC"),
        (_forge("another-camera", b""), "another camera's"),
        (_forge(CAMERA, pickle.dumps(_Evil())), "code in the snapshot"),
        (_forge(CAMERA, pickle.dumps(__import__("os").getcwd)), "a function of another module"),
        (_forge(CAMERA, pickle.dumps(_Reach())), "getattr to reach a function's globals"),
        (checkpoint.MAGIC + b"\x00" * 4, "truncated"),
    ],
)
def test_untrusted_records_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.decode(CAMERA, data)


def test_an_envelope_with_classes_is_refused() -> None:
    body = zlib.compress(pickle.dumps((CAMERA, b"", _Evil())))
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.decode(CAMERA, checkpoint.MAGIC + zlib.crc32(body).to_bytes(4, "big") + body)


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=400))
def test_any_bytes_are_a_checkpoint_or_refused(data: bytes) -> None:
    for candidate in (data, checkpoint.MAGIC + zlib.crc32(data).to_bytes(4, "big") + data):
        try:
            checkpoint.decode(CAMERA, candidate)
        except checkpoint.CheckpointError:
            pass

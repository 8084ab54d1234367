"""Activity-adaptive inference: the ingester's gate, the wire fields, the counter's substitution.

The design under test (docs/contracts.md, "Unchanged frames"): the camera's single ingester marks
a frame ``unchanged-since: N`` in seq order; workers pass it on as ``reused_from_seq=N`` without
running the model; the aggregator's per-camera counter, which sees a camera's events in seq
order, tracks it with the detections of frame N. Counts must not depend on which worker handled
which frame, on redeliveries, on arrival order or on an aggregator restart.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from aggregator.counting import CameraCounter
from ingest.activity import ActivityGate, ActivityRule, changed_share, thumbnail
from ingest.encoder import JpegEncoder
from ingest.settings import IngestSettings
from traffic.errors import ContractError
from traffic.wire import Detection, DetectionEvent, FrameHeaders

from tests.unit.aggregator.test_counting import T0, events_for, run, small_site, straight, summary

RULE = ActivityRule()


def scene(square_x: int | None = None, noise: int = 0, seed: int = 0) -> np.ndarray:
    """A 640x480 grey road with some texture; optionally a dark 60x40 'car' at ``square_x``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:480, 0:640]
    image = np.stack([(xx // 4 + yy // 3) % 200 + 30] * 3, axis=-1).astype(np.int16)
    if square_x is not None:
        image[300:340, square_x : square_x + 60] = 20
    if noise:
        image = image + rng.integers(-noise, noise + 1, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def thumb(image: np.ndarray) -> np.ndarray:
    return thumbnail(image, RULE.thumb_width)


def test_thumbnail_is_small_grey_and_keeps_the_aspect_ratio() -> None:
    t = thumbnail(np.zeros((1080, 1920, 3), np.uint8), 80)
    assert t.shape == (45, 80) and t.dtype == np.int16
    assert JpegEncoder(640, 80, thumb_width=80).encode(scene()).thumb.shape == (60, 80)
    assert JpegEncoder(640, 80).encode(scene()).thumb is None  # gating off: no thumbnail work


def test_sensor_noise_is_unchanged_a_moving_car_is_not() -> None:
    still = thumb(scene())
    assert changed_share(still, thumb(scene(noise=20, seed=1)), RULE.pixel_delta) <= RULE.changed_fraction  # averaged away
    assert changed_share(thumb(scene(square_x=100)), thumb(scene(square_x=110)), RULE.pixel_delta) > RULE.changed_fraction


def test_gate_refers_to_the_last_whole_frame_and_forces_one_every_max_reuse() -> None:
    gate = ActivityGate(RULE)
    still = thumb(scene())
    decisions = []
    for seq in range(40):  # 10 fps: 4 s of an empty road
        ms = T0 + seq * 100
        reused = gate.unchanged_since(still, ms)
        if reused is None:
            gate.sent(still, ms, seq)
        decisions.append(reused)
    whole = [seq for seq, d in enumerate(decisions) if d is None]
    assert whole == [0, 30]  # the first frame, then one every max_reuse_s (3 s)
    assert decisions[1:30] == [0] * 29 and decisions[31:] == [30] * 9


def test_slow_change_accumulates_against_the_reference() -> None:
    """Dusk: the picture brightens 1 grey level a frame. Each step is below pixel_delta, but the
    comparison is with the last whole frame, so the drift is sent whole every 13 levels."""
    gate = ActivityGate(RULE)
    base = scene().astype(np.int16)
    whole = []
    for seq in range(30):
        t, ms = thumb(np.clip(base + seq, 0, 255).astype(np.uint8)), T0 + seq * 100
        if gate.unchanged_since(t, ms) is None:
            gate.sent(t, ms, seq)
            whole.append(seq)
    assert whole == [0, 13, 26]


def test_reset_disabled_and_size_change_send_whole_frames() -> None:
    gate = ActivityGate(RULE)
    still = thumb(scene())
    gate.sent(still, T0, 0)
    assert gate.unchanged_since(still, T0 + 100) == 0
    assert gate.unchanged_since(thumbnail(np.zeros((360, 640, 3), np.uint8), 80), T0 + 100) is None  # other size
    assert gate.unchanged_since(still, T0 - 100) is None  # capture time went back (a restarted clock)
    gate.reset()  # a new session: nothing may refer across sessions
    assert gate.unchanged_since(still, T0 + 200) is None
    off = ActivityGate(ActivityRule(enabled=False))
    off.sent(still, T0, 0)
    assert off.unchanged_since(still, T0 + 100) is None
    assert gate.unchanged_since(None, T0 + 300) is None


def test_settings_give_the_rule() -> None:
    rule = IngestSettings(activity_max_reuse_s=5, activity_changed_fraction=0.01).activity_rule()
    assert (rule.enabled, rule.max_reuse_ms, rule.changed_fraction) == (True, 5000, 0.01)
    assert not IngestSettings(activity_gate=False).activity_rule().enabled


# -- wire --------------------------------------------------------------------------------------


def test_unchanged_frame_headers_round_trip_and_are_checked() -> None:
    h = FrameHeaders("cam", "x1", "s1", 7, T0, 640, 480, unchanged_since=3)
    raw = h.to_kafka()
    assert ("unchanged-since", b"3") in raw and ("content-type", b"image/jpeg") not in raw
    assert FrameHeaders.from_kafka(raw) == h
    assert FrameHeaders.from_kafka(FrameHeaders("cam", "x1", "s1", 7, T0, 640, 480).to_kafka()).unchanged_since is None
    for bad in (b"7", b"9", b"-1", b"x"):  # must name an earlier seq of the session
        headers = [(k, bad if k == "unchanged-since" else v) for k, v in raw]
        with pytest.raises(ContractError) as err:
            FrameHeaders.from_kafka(headers)
        assert err.value.reason == "bad_header"


def _event(seq: int, **kw: object) -> DetectionEvent:
    return DetectionEvent(camera="cam", intersection="x1", session="s", seq=seq, capture_ms=T0 + seq * 100, model="m",
                          width=640, height=480, **kw)  # type: ignore[arg-type]  # fmt: skip


def test_reused_from_seq_is_left_out_when_unset_and_checked_when_set() -> None:
    assert b"reused_from_seq" not in _event(1).encode()  # inferred frames: the bytes of before the field existed
    reused = _event(5, reused_from_seq=2)
    assert DetectionEvent.decode(reused.encode()) == reused
    car = Detection(class_id=2, label="car", confidence=0.9, box=(0.1, 0.1, 0.2, 0.2))
    for bad in ({"reused_from_seq": 5}, {"reused_from_seq": 2, "detections": (car,)}, {"reused_from_seq": 2, "end_of_session": True}):
        with pytest.raises(ValueError):
            _event(5, **bad)


# -- the counter -------------------------------------------------------------------------------

# A car comes down to the line, waits at a red light for 3 s (30 frames, not moving), then goes on.
STOPPED = straight(0.1, 0.45) + [(0.5, 0.45)] * 30 + straight(0.45, 0.9)


def gated(events: list[DetectionEvent], unchanged: set[int]) -> list[DetectionEvent]:
    """What the pipeline delivers when the ingester marked ``unchanged`` seqs: no detections, reused_from_seq."""
    out, reference = [], 0
    for e in events:
        if e.seq in unchanged:
            out.append(e.model_copy(update={"detections": (), "reused_from_seq": reference}))
        else:
            reference = e.seq
            out.append(e)
    return out


def test_reused_frames_count_exactly_like_their_reference() -> None:
    full = events_for([STOPPED])
    first_stop = len(straight(0.1, 0.45))
    still = set(range(first_stop + 1, first_stop + 30))  # every waiting frame but the first is unchanged
    expected = run(CameraCounter(small_site(timeout_s=1.0), "cam"), full)
    got = run(CameraCounter(small_site(timeout_s=1.0), "cam"), gated(full, still))
    assert summary(got) == summary(expected) == [("line", "southbound"), ("movement", "north>south:through")]
    assert [c.track_id for c in got] == [c.track_id for c in expected]  # one track across the wait: reuse kept it alive


def test_without_substitution_the_wait_would_lose_the_track() -> None:
    """The test above is not vacuous: empty detections for 3 s end the track (1 s timeout) and split the count."""
    full = events_for([STOPPED])
    first_stop = len(straight(0.1, 0.45))
    blind = [e.model_copy(update={"detections": ()}) if first_stop < e.seq < first_stop + 30 else e for e in full]
    got = run(CameraCounter(small_site(timeout_s=1.0), "cam"), blind)
    assert summary(got) != [("line", "southbound"), ("movement", "north>south:through")]


def test_a_missing_reference_gives_no_detections_not_some_other_frame() -> None:
    counter = CameraCounter(small_site(), "cam", reorder_limit=1)
    car = Detection(class_id=2, label="car", confidence=0.9, box=(0.45, 0.1, 0.55, 0.2))
    seen: dict[int, int] = {}  # seq -> detections the tracker got

    def observe(event: DetectionEvent, tracked: object, crossings: object) -> None:
        seen[event.seq] = len(event.detections)

    counter.update(_event(0, detections=(car,)), observe)
    counter.update(_event(2, reused_from_seq=1), observe)  # seq 1 (its reference) never came: the gap is skipped at once
    assert counter.skipped == 1
    assert seen == {0: 1, 2: 0}  # seq 2 was tracked with no detections, not with seq 0's


@pytest.mark.parametrize("seed", range(5))
def test_redelivery_reordering_and_restart_do_not_change_counts_of_a_gated_stream(seed: int) -> None:
    """Events as several workers (one killed, its batch redone) and an aggregator restart deliver them."""
    first_stop = len(straight(0.1, 0.45))
    paths = [STOPPED, [None] * (first_stop + 30) + straight(0.9, 0.1, x=0.3)]  # the second car comes after the wait
    full = events_for(paths)
    stream = gated(full, set(range(first_stop + 1, first_stop + 30)))
    expected = run(CameraCounter(small_site(), "cam"), stream)
    rng = random.Random(seed)
    delivered = list(stream)
    for i in range(0, len(delivered) - 8, 8):  # local reordering inside batches, as parallel workers produce
        chunk = delivered[i : i + 8]
        rng.shuffle(chunk)
        delivered[i : i + 8] = chunk
    redo = rng.randrange(10, len(delivered) - 20)
    delivered[redo:redo] = delivered[redo - 8 : redo]  # a killed worker's last batch, published again by the next owner
    counter, got = CameraCounter(small_site(), "cam"), []
    for i, e in enumerate(delivered):
        got += counter.update(e)
        if i == len(delivered) // 2:  # the aggregator restarts from its changelog snapshot
            counter = CameraCounter.restore(small_site(), "cam", counter.snapshot())
    got += counter.finish()
    assert summary(got) == summary(expected) and len(expected) == 4
    assert sorted(c.event_id for c in got) == sorted(c.event_id for c in expected)

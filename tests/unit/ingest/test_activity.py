"""Activity-adaptive inference, the ingester's side: the thumbnail, the change measure and the gate.

The design (docs/contracts.md, "Unchanged frames"): the camera's single ingester marks a frame
``unchanged-since: N`` in seq order when it differs too little from the last whole frame N. The
wire fields are tested in tests/unit/traffic/test_wire.py, the counter's substitution in
tests/unit/aggregator/test_counting_reused.py.
"""

from __future__ import annotations

import numpy as np

from ingest.activity import ActivityGate, ActivityRule, changed_share, thumbnail
from ingest.encoder import JpegEncoder
from ingest.settings import IngestSettings

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, capture time in ms

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

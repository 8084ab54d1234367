"""Activity-adaptive inference, the aggregator's side: the per-camera counter tracks a frame marked
``reused_from_seq=N`` with the detections of frame N.

The counter sees a camera's events in seq order (docs/contracts.md, "Unchanged frames"), so counts
must not depend on which worker handled which frame, on redeliveries, on arrival order or on an
aggregator restart.
"""

from __future__ import annotations

import random

import pytest

from aggregator.counting import CameraCounter
from traffic.wire import Detection, DetectionEvent

from tests.unit.aggregator.test_counting import T0, events_for, run, small_site, straight, summary


def _event(seq: int, **kw: object) -> DetectionEvent:
    return DetectionEvent(camera="cam", intersection="x1", session="s", seq=seq, capture_ms=T0 + seq * 100, model="m",
                          width=640, height=480, **kw)  # type: ignore[arg-type]  # fmt: skip


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

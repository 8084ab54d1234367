"""Event-time progress: no single record moves a camera's progress; a camera that jumps cannot close its neighbours' intervals."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.event_time import CameraProgress, intersection_watermark


def test_one_frame_far_ahead_does_not_move_progress() -> None:
    p = CameraProgress(quorum=3)
    seen = [p.observe(t) for t in (10_000, 10_100, 10_200, 250_000, 10_400, 10_500, 10_600)]
    assert seen == [None, None, 10_000, 10_100, 10_200, 10_400, 10_400]


def test_progress_never_goes_back_and_can_be_forced_at_the_end() -> None:
    p = CameraProgress(quorum=2)
    p.observe(5_000)
    p.observe(6_000)
    p.observe(1_000)  # a frame from the past
    assert p.watermark == 5_000
    assert p.force(9_000) == 9_000 and p.force(2_000) == 9_000


@settings(deadline=None)
@given(st.lists(st.integers(0, 10**9), min_size=1, max_size=50), st.integers(1, 5), st.integers(0, 49))
def test_progress_needs_quorum_records_at_or_above_it(times: list[int], quorum: int, spike_at: int) -> None:
    p = CameraProgress(quorum)
    for t in times:
        wm = p.observe(t)
        if wm is not None:  # at least `quorum` observed records are >= the progress
            assert sum(1 for x in times if x >= wm) >= quorum


def test_intersection_is_the_slowest_live_camera() -> None:
    progress = {"a": 100, "b": 5_000_000, "c": 200}
    assert intersection_watermark(["a", "b", "c"], progress, live=["a", "b", "c"]) == 100
    assert intersection_watermark(["a", "b", "c"], progress, live=["b", "c"]) == 200  # a ended or idle
    assert intersection_watermark(["a", "b", "c"], progress, live=[]) == 5_000_000  # all done: the fastest
    assert intersection_watermark(["a", "d"], progress, live=["d"]) == 100  # d has not reported yet
    assert intersection_watermark(["x"], progress, live=["x"]) is None

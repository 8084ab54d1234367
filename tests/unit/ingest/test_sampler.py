"""Sampling by capture time: which frames are kept, and that files sample deterministically."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.sampler import Sampler, file_capture_ms, sample_file


@pytest.mark.parametrize(
    ("fps", "source_fps", "frames", "kept"),
    [
        # 30 fps file at 10 fps: exactly every 3rd frame
        (10.0, 30.0, 12, [0, 3, 6, 9]),
        # 30 fps at 15 fps: every 2nd frame
        (15.0, 30.0, 7, [0, 2, 4, 6]),
        # 25 fps at 10 fps: the ratio is not an integer; 2.5 frames per slot alternate 3 / 2
        (10.0, 25.0, 11, [0, 3, 5, 8, 10]),
        # asking for more than the source delivers keeps every frame, never duplicates
        (60.0, 30.0, 5, [0, 1, 2, 3, 4]),
        # equal rates keep every frame (boundary: slot = index exactly)
        (30.0, 30.0, 4, [0, 1, 2, 3]),
        # 29.97 fps (NTSC) at 10 fps: float rounding must not drop or double a slot
        (10.0, 29.97, 10, [0, 3, 6, 9]),
        # very low rate: one frame every 2 s of a 30 fps source
        (0.5, 30.0, 121, [0, 60, 120]),
    ],
)
def test_keep_index(fps: float, source_fps: float, frames: int, kept: list[int]) -> None:
    sampler = Sampler(fps)
    assert [i for i in range(frames) if sampler.keep_index(i, source_fps)] == kept


@pytest.mark.parametrize(
    ("fps", "times_ms", "kept_ms"),
    [
        # live 30 fps camera with jittery arrival at 10 fps: the first frame of each 100 ms slot
        (10.0, [0, 35, 64, 101, 130, 170, 199, 234, 266, 300], [0, 101, 234, 300]),
        # a burst of frames read at the same millisecond (backend buffer drained) keeps one
        (10.0, [0, 0, 0, 1, 2, 150], [0, 150]),
        # a stall longer than a slot: the next frame is kept at once, no catch-up burst
        (10.0, [0, 100, 900, 933, 966, 1000], [0, 100, 900, 1000]),
        # the clock stepping backwards (NTP) never keeps a frame from an earlier slot twice
        (10.0, [0, 150, 120, 260], [0, 150, 260]),
    ],
)
def test_keep_by_time(fps: float, times_ms: list[int], kept_ms: list[int]) -> None:
    sampler = Sampler(fps)
    assert [t for t in times_ms if sampler.keep(t / 1000)] == kept_ms


@pytest.mark.parametrize(
    ("start_ms", "index", "file_fps", "expected"),
    [
        # frame 0 is the session start
        (1_000_000, 0, 30.0, 1_000_000),
        # 3 frames of 30 fps = 100 ms
        (1_000_000, 3, 30.0, 1_000_100),
        # rounding to the nearest millisecond (33.33 -> 33)
        (0, 1, 30.0, 33),
        # 25 fps: 40 ms per frame
        (5, 10, 25.0, 405),
    ],
)
def test_file_capture_ms(start_ms: int, index: int, file_fps: float, expected: int) -> None:
    assert file_capture_ms(start_ms, index, file_fps) == expected


def test_sample_file_is_deterministic(shared: Path) -> None:
    """Two passes over the sample video give the same indices, times and pixels; 10 of 30 fps = every 3rd."""
    video = shared / "videos" / "intersection.mp4"

    def first(n: int) -> list[tuple[int, int, bytes]]:
        frames = sample_file(video, 10.0, 1_000)
        out = [(f.frame_index, f.capture_ms, f.image.tobytes()) for _, f in zip(range(n), frames)]
        frames.close()  # type: ignore[attr-defined]
        return out

    a, b = first(8), first(8)
    assert [i for i, _, _ in a] == [0, 3, 6, 9, 12, 15, 18, 21]
    assert [t for _, t, _ in a] == [1_000 + 100 * k for k in range(8)]
    assert a == b
    assert len(a[0][2]) == 640 * 480 * 3


def test_sample_file_missing_file_raises_at_call(tmp_path: Path) -> None:
    from ingest.sources import SourceError

    with pytest.raises(SourceError, match="does not exist"):
        sample_file(tmp_path / "nope.mp4", 10.0, 0)

"""Bounded hand-over between threads: drop-oldest publish buffer and newest-frame reader slot."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ingest.publisher import DropOldestBuffer
from ingest.reader import LatestFrame
from ingest.sampler import SampledFrame


@pytest.mark.parametrize(
    ("maxlen", "puts", "dropped", "left"),
    [
        # below capacity: nothing dropped, FIFO order
        (3, [1, 2], 0, [1, 2]),
        # exactly full: nothing dropped
        (3, [1, 2, 3], 0, [1, 2, 3]),
        # two over: the two oldest go, the newest stay
        (3, [1, 2, 3, 4, 5], 2, [3, 4, 5]),
        # capacity one: always the latest
        (1, [1, 2, 3], 2, [3]),
    ],
)
def test_drop_oldest(maxlen: int, puts: list[int], dropped: int, left: list[int]) -> None:
    buffer: DropOldestBuffer[int] = DropOldestBuffer(maxlen)
    assert sum(buffer.put(item) for item in puts) == dropped
    out = []
    while (item := buffer.get_nowait()) is not None:
        out.append(item)
    assert out == left


def test_put_front_requeues_ahead_even_when_full() -> None:
    buffer: DropOldestBuffer[int] = DropOldestBuffer(2)
    buffer.put(2)
    buffer.put(3)
    buffer.put_front(1)  # a frame the producer refused goes back first, nothing is pushed out
    assert [buffer.get_nowait() for _ in range(4)] == [1, 2, 3, None]


def test_blocking_put_waits_for_room_and_drops_nothing() -> None:
    buffer: DropOldestBuffer[int] = DropOldestBuffer(1)
    buffer.put(1)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(buffer.put(2, block=True)))
    thread.start()
    time.sleep(0.2)
    assert thread.is_alive() and len(buffer) == 1  # still waiting
    assert buffer.get_nowait() == 1
    thread.join(timeout=2)
    assert result == [0] and buffer.get_nowait() == 2


def test_blocking_put_gives_up_on_stop() -> None:
    buffer: DropOldestBuffer[int] = DropOldestBuffer(1)
    buffer.put(1)
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    assert buffer.put(2, block=True, stop=stop) == 1  # the new item is the one not added
    assert buffer.get_nowait() == 1 and buffer.get_nowait() is None


def _frame(index: int) -> SampledFrame:
    return SampledFrame(index, index * 100, np.zeros((2, 2, 3), np.uint8))


def test_latest_frame_keeps_newest_and_reports_skips() -> None:
    slot = LatestFrame()
    assert slot.put(_frame(0)) is False  # empty slot: nothing skipped
    assert slot.put(_frame(1)) is True  # frame 0 was never taken: skipped
    taken = slot.take(0.01)
    assert taken is not None and taken.frame_index == 1
    assert slot.take(0.01) is None and slot.empty()


def test_latest_frame_blocking_put_loses_nothing() -> None:
    slot = LatestFrame()
    got: list[int] = []

    def consume() -> None:
        while len(got) < 5:
            item = slot.take(0.5)
            if item is not None:
                got.append(item.frame_index)
                time.sleep(0.01)

    thread = threading.Thread(target=consume)
    thread.start()
    skipped = [slot.put(_frame(i), block=True) for i in range(5)]
    thread.join(timeout=5)
    assert got == [0, 1, 2, 3, 4] and not any(skipped)

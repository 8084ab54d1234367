"""Holes in a source partition are read again before anything after them (aggregator/continuity.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.types.tuples import TP

from aggregator.continuity import Continuity

TOPIC = TP("detections", 0)


class Partition:
    """The consumer's side: committed offsets, the seeks asked for, the gaps given to faust."""

    def __init__(self, committed: int | None) -> None:
        self.committed = committed
        self.seeks: list[int] = []
        self.gaps: list[tuple[int, int]] = []
        self.holes: list[int] = []

    async def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append(offset)

    async def accept_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        self.gaps.append((offset_from, offset_to))

    def continuity(self, **kw: Any) -> Continuity:
        return Continuity("test", self.seek, lambda tp: self.committed, self.accept_gap, self.holes.append, **kw)


def _deliver(c: Continuity, offsets: list[int]) -> list[int]:
    async def run() -> list[int]:
        return [o for o in offsets if await c.admit(TOPIC, o)]

    return asyncio.run(run())


def test_contiguous_offsets_pass_from_the_committed_one() -> None:
    p = Partition(committed=220)
    assert _deliver(p.continuity(), list(range(220, 230))) == list(range(220, 230))
    assert p.seeks == [] and p.holes == []


def test_a_hole_is_read_again_before_the_records_after_it() -> None:
    """What faust did after a restart: 220..240, then 322 on; 241..321 never delivered."""
    p = Partition(committed=220)
    c = p.continuity()
    first = _deliver(c, list(range(220, 241)) + list(range(322, 330)))
    assert first == list(range(220, 241))  # nothing after the hole is processed
    assert p.seeks == [241] and p.holes == [81]
    again = _deliver(c, list(range(241, 330)))  # after the seek: the hole, then what was passed over
    assert again == list(range(241, 330))
    assert c.holes == {}


def test_a_hole_at_the_head_is_seen_from_the_committed_offset() -> None:
    p = Partition(committed=220)
    c = p.continuity()
    assert _deliver(c, [300, 301]) == []
    assert p.seeks == [220]
    assert _deliver(c, list(range(220, 302))) == list(range(220, 302))


def test_records_read_again_below_the_expected_offset_are_passed_over() -> None:
    p = Partition(committed=None)  # a new group: the first record is where it starts
    c = p.continuity()
    assert _deliver(c, [5, 6, 7, 5, 6, 7, 8]) == [5, 6, 7, 8]
    assert p.seeks == []


def test_a_seek_that_brings_nothing_is_repeated_by_the_timer() -> None:
    p = Partition(committed=10)
    c = p.continuity(retry_s=0.0)
    assert _deliver(c, [20]) == []
    asyncio.run(c.retry())
    asyncio.run(c.retry())
    assert p.seeks == [10, 10, 10]


def test_records_deleted_by_retention_are_accepted_after_some_seeks_and_given_to_faust() -> None:
    p = Partition(committed=10)
    c = p.continuity(retry_s=0.0, accept_after=3)
    got = _deliver(c, [50, 50, 50, 50, 51])  # each seek brings the broker's first offset, 50, again
    assert got == [50, 51]
    assert p.seeks == [10, 10, 10]
    assert p.gaps == [(10, 49)] and c.accepted == [(TOPIC, 10, 49)]


def test_a_new_assignment_starts_again_from_the_committed_offset() -> None:
    p = Partition(committed=0)
    c = p.continuity()
    assert _deliver(c, [0, 1, 2]) == [0, 1, 2]
    c.reset()
    p.committed = 100
    assert _deliver(c, [100, 101]) == [100, 101]


def test_a_partition_that_stalls_while_the_broker_has_records_is_read_again() -> None:
    """What faust also did: every fetched record skipped, nothing after them to show the hole."""
    p = Partition(committed=220)
    highwater = {TOPIC: 441}
    c = Continuity("test", p.seek, lambda tp: p.committed, p.accept_gap, p.holes.append, assigned=lambda: [TOPIC], highwater=highwater.get, stall_s=0.0)
    asyncio.run(c.retry())
    assert p.seeks == [220] and p.holes == [221]
    assert _deliver(c, list(range(220, 441))) == list(range(220, 441))
    asyncio.run(c.retry())  # caught up: nothing to do
    assert p.seeks == [220]


def test_a_quiet_partition_is_not_a_stall() -> None:
    p = Partition(committed=220)
    c = Continuity("test", p.seek, lambda tp: p.committed, p.accept_gap, assigned=lambda: [TOPIC], highwater=lambda tp: 220, stall_s=0.0)
    asyncio.run(c.retry())
    assert p.seeks == []


def test_a_message_passed_over_is_marked_acked_so_faust_never_acknowledges_it() -> None:
    p = Partition(committed=10)
    c = p.continuity()
    after_hole, next_one = (SimpleNamespace(tp=TOPIC, offset=o, acked=False) for o in (12, 10))

    async def run() -> tuple[bool, bool]:
        return await c.admit_message(after_hole), await c.admit_message(next_one)

    assert asyncio.run(run()) == (False, True)
    assert after_hole.acked is True and next_one.acked is False

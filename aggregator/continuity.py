"""Every offset of a source partition reaches its agent, in order: holes faust leaves are read again.

Why: our source topics (detections, camera control, by-intersection) have contiguous offsets (no
compaction, no transactions), but faust-streaming (0.15.x) can drop fetched records around a
rebalance or the end of recovery without telling the agent: records of a partition it has just
paused are skipped while the client's position moves past them, and the stream queues are
cleared after a seek that a concurrent fetch undid (:mod:`aggregator.faust_fixes` closes the one
window we found; this guard covers the rest). faust also marks such a hole as acknowledged
when the next record shows it (it takes holes for compaction), so its commit would go past
records never counted. With :func:`aggregator.faust_fixes.install` it does not: a hole blocks
the commit, and :class:`Continuity` fills it.

How: per partition, the next offset the agent expects (from the committed offset after an
assignment). A record past it is not processed: the consumer seeks back to the expected offset
and the agent passes over records until that one comes (redelivered records below it are
already processed and passed over too). A record passed over is never acknowledged (the agent
marks it acked before faust would), or faust would commit past it once the hole before it is
filled - and a crash then would lose it. A seek that brings nothing is repeated every
``retry_s`` (faust's fetch loop can undo a seek in flight). If the first record after each of
``accept_after`` seeks is the same later offset, the records in between are gone from the broker
(retention deleted them while the aggregator was down): that is logged as an error and accepted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Seek = Callable[[Any, int], Awaitable[None]]


def for_app(agent: str, app: Any, topics: Iterable[str], on_hole: Callable[[int], None] | None = None) -> Continuity:
    """A :class:`Continuity` on ``app``'s consumer for the agent's source ``topics`` (``faust_fixes.install`` must have run)."""
    consumer = app.consumer
    names = frozenset(topics)

    def assigned() -> list[Any]:
        try:
            return [tp for tp in consumer.assignment() if tp.topic in names]
        except Exception:  # noqa: BLE001 - not started yet
            return []

    return Continuity(
        agent, consumer.seek, lambda tp: consumer._committed_offset.get(tp), consumer.accept_gap, on_hole,
        assigned=assigned, highwater=consumer.highwater,
    )  # fmt: skip


@dataclass
class _Hole:
    expected: int
    seeks: int = 0
    last_seek: float = 0.0
    fresh: bool = False  # a seek since the last record
    firsts: list[int] = field(default_factory=list)  # the first offset after each seek


class Continuity:
    """The next expected offset of each source partition of one agent (see the module docstring)."""

    def __init__(
        self, agent: str, seek: Seek, committed: Callable[[Any], int | None], accept_gap: Callable[[Any, int, int], Awaitable[None]],
        on_hole: Callable[[int], None] | None = None, retry_s: float = 3.0, accept_after: int = 3,
        assigned: Callable[[], Iterable[Any]] = lambda: (), highwater: Callable[[Any], int | None] = lambda tp: None, stall_s: float = 5.0,
    ) -> None:  # fmt: skip
        self.agent = agent
        self.seek = seek
        self.committed = committed
        self.accept_gap = accept_gap
        self.on_hole = on_hole or (lambda n: None)
        self.retry_s = retry_s
        self.accept_after = accept_after
        self.assigned = assigned
        self.highwater = highwater
        self.stall_s = stall_s
        self.since = time.monotonic()
        self.progress: dict[Any, float] = {}  # tp -> when its last record came
        self.expected: dict[Any, int] = {}
        self.holes: dict[Any, _Hole] = {}
        self.accepted: list[tuple[Any, int, int]] = []  # (tp, from, to) given up as gone from the broker

    def reset(self) -> None:
        """A new assignment: the committed offsets are the truth again."""
        self.expected.clear()
        self.holes.clear()
        self.progress.clear()
        self.since = time.monotonic()

    async def admit_message(self, message: Any) -> bool:
        """:meth:`admit` for a faust message; one passed over is marked acked, so faust never acknowledges it.

        Acknowledged, it would let faust commit past it once the hole before it is filled, and a
        crash then would lose it.
        """
        if await self.admit(message.tp, message.offset):
            return True
        message.acked = True
        return False

    def _committed(self, tp: Any) -> int | None:
        """The committed offset of ``tp`` after the last assignment, None when the group has none."""
        committed = self.committed(tp)
        return None if committed is None or committed < 0 else committed

    async def admit(self, tp: Any, offset: int) -> bool:
        """True if the record at ``offset`` is the next one of ``tp`` and is to be processed."""
        self.progress[tp] = time.monotonic()
        expected = self.expected.get(tp)
        if expected is None:
            committed = self._committed(tp)
            expected = offset if committed is None else committed
        if offset == expected:
            self.expected[tp] = offset + 1
            self.holes.pop(tp, None)
            return True
        if offset < expected:
            return False  # read again after a seek: processed already
        self.expected[tp] = expected
        hole = self.holes.get(tp)
        if hole is None:
            hole = self.holes[tp] = _Hole(expected)
            self.on_hole(offset - expected)
            log.warning("records skipped by the consumer: reading them again", extra={
                "agent": self.agent, "topic": tp.topic, "partition": tp.partition, "expected_offset": expected, "offset": offset})  # fmt: skip
        elif hole.fresh:
            hole.fresh = False
            hole.firsts.append(offset)
            if len(hole.firsts) >= self.accept_after and len(set(hole.firsts[-self.accept_after :])) == 1:
                log.error("records gone from the broker before they were processed (retention): skipped", extra={
                    "agent": self.agent, "topic": tp.topic, "partition": tp.partition, "from_offset": expected, "to_offset": offset - 1})  # fmt: skip
                self.accepted.append((tp, expected, offset - 1))
                await self.accept_gap(tp, expected, offset - 1)  # faust may commit past them now
                self.holes.pop(tp, None)
                self.expected[tp] = offset + 1
                return True
        if not hole.seeks or time.monotonic() - hole.last_seek >= self.retry_s:
            await self._seek(tp, hole)
        return False

    async def retry(self) -> None:
        """The timer's check: seek again where a hole's last seek brought nothing for ``retry_s``; find stalled partitions.

        A partition is stalled when the broker has records from its expected (or committed)
        offset on and none has come for ``stall_s``: faust skipped every record it fetched (a
        hole with nothing after it to show it).
        """
        now = time.monotonic()
        for tp, hole in list(self.holes.items()):
            if now - hole.last_seek >= self.retry_s:
                await self._seek(tp, hole)
        for tp in self.assigned():
            if tp in self.holes or now - self.progress.get(tp, self.since) < self.stall_s:
                continue
            expected = self.expected.get(tp)
            if expected is None:
                expected = self._committed(tp)
            highwater = self.highwater(tp)
            if expected is None or highwater is None or highwater <= expected:
                continue
            hole = self.holes[tp] = _Hole(expected)
            self.on_hole(highwater - expected)
            log.warning("no records come from a partition the broker has records of: reading them again", extra={
                "agent": self.agent, "topic": tp.topic, "partition": tp.partition, "expected_offset": expected, "highwater": highwater})  # fmt: skip
            await self._seek(tp, hole)

    async def _seek(self, tp: Any, hole: _Hole) -> None:
        if hole.seeks:
            log.info("seeking again over a hole", extra={"agent": self.agent, "topic": tp.topic, "partition": tp.partition, "expected_offset": hole.expected, "seeks": hole.seeks})
        hole.seeks += 1
        hole.fresh = True
        hole.last_seek = time.monotonic()
        await self.seek(tp, hole.expected)

"""Three fixes to faust-streaming (0.15.x): races that lost records the aggregator had been given.

They were found by the restart test (``tests/integration/aggregator/test_pipeline.py``), which
failed in CI and in about half the local runs; :func:`install` applies them to the app, and
:mod:`aggregator.continuity` fills the holes faust still leaves.

1. **The producer flush before a commit drains** (:class:`DrainingProducerBuffer`). faust sends
   table writes (our checkpoints) and ``send_soon`` records (crossings, the intersection stage's
   records, dead letters) through a buffer that one task drains, and flushes it before it
   commits offsets. But ``ProducerBuffer.flush`` returns as soon as 0.1 s pass without a message
   sent, with messages still queued: on a loaded machine, or when the first send to a topic
   waits for its metadata, offsets were committed without the sends they covered, and on the way
   out (``on_stop``) what was left was dropped with "Cannot flush: Producer not Running". This
   flush waits until every send buffered before it is with the Kafka client (whose own flush,
   which faust calls next, waits for the broker), with a deadline after which the commit fails
   instead of going on without them.

2. **The source partitions are resumed after the seek to their committed offsets, not before**
   (:func:`seek_before_resume`). When recovery ends, faust resumes the source partitions and
   *then* awaits the seek to the committed offsets. A fetch in that window delivers records from
   the committed offset on; the seek's reset of faust's read offset is then overwritten by the
   fetch loop (which sets it after each record), the re-fetched records fall below it and are
   dropped as already read, and ``flow_control.resume()`` right after clears the stream queues,
   dropping the records fetched but not yet processed. Seen: the camera stage got offsets
   220..240, then 322 on; 241..321 were never delivered, never acked, and the consumer group
   stopped committing at 241 (a hole faust waits for), so counts went wrong and stayed behind
   until the next restart. Resuming after the seek closes the window: nothing of a source
   partition is fetched until its position and read offset are the committed offset.

3. **A hole in a source partition is not acknowledged** (:func:`install` replaces
   ``Consumer._add_gap``). When the next record of a partition comes more than one offset after
   the last, faust takes the offsets between for a compacted topic's and marks them acked, so it
   commits past them. Our source topics are never compacted and never transactional: such a
   hole is records faust dropped (as in 2), and acking them loses them for good. The hole now
   blocks the commit until :class:`aggregator.continuity.Continuity` has read them again, or has
   found them deleted by retention and passes them to faust's own gap (``consumer.accept_gap``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import faust
from faust.transport.producer import ProducerBuffer
from faust.types.tuples import TP, FutureMessage

FLUSH_TIMEOUT_S = 120.0
"""Longest a flush waits for the buffer to drain before the commit fails (a dead broker, not a slow one)."""


class ProducerFlushTimeout(RuntimeError):
    """The buffer did not drain in time: the offsets are not committed (the records come again)."""


class DrainingProducerBuffer(ProducerBuffer):
    """faust's producer buffer, with a flush that returns only once every buffered send is with the client."""

    timeout_s = FLUSH_TIMEOUT_S

    def __post_init__(self) -> None:
        super().__post_init__()
        self.enqueued = 0  # sends put into the buffer, ever
        self.handed = 0  # sends handed to the Kafka client (or failed), ever: the buffer is FIFO
        self.in_transit = 0

    def put(self, fut: FutureMessage) -> None:
        self.enqueued += 1
        super().put(fut)

    async def _send_pending(self, fut: FutureMessage) -> None:
        # Counted from the moment it leaves the queue: faust's sending task awaits this right
        # after taking the message, with no other task running in between.
        self.in_transit += 1
        try:
            await super()._send_pending(fut)
        finally:
            self.in_transit -= 1
            self.handed += 1

    async def flush(self) -> None:
        """Wait until every send buffered before this call is with the Kafka client (see the module docstring).

        Sends buffered during the wait (the agents go on) are not waited for: they belong to
        records after the offsets being committed, and waiting for them could go on for ever.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        target = self.enqueued
        while self.handed < target:
            if self.should_stop and not self.in_transit:
                # Stopping: faust's sending task has ended; send what is left from here.
                await self._send_pending(self.pending.get_nowait())
                continue
            if loop.time() > deadline:
                raise ProducerFlushTimeout(f"{target - self.handed} buffered sends not handed to Kafka after {self.timeout_s:.0f} s")
            self.message_sent.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.message_sent.wait(), timeout=0.1)


def seek_before_resume(
    resume: Callable[[Iterable[TP]], None], seek: Callable[[], Awaitable[None]], is_changelog: Callable[[TP], bool]
) -> tuple[Callable[[Iterable[TP]], None], Callable[[], Awaitable[None]]]:
    """(resume_partitions, perform_seek) replacements: source partitions resumed only once the seek is done.

    faust (0.15.x) resumes source partitions in two places, both right before it awaits
    ``perform_seek()`` (the end of recovery); changelog partitions are resumed as they were. A
    seek that fails or is cancelled (another rebalance) still resumes what it held back: the next
    rebalance pauses them again.
    """
    held: set[TP] = set()

    def resume_partitions(tps: Iterable[TP]) -> None:
        tps = set(tps)
        sources = {tp for tp in tps if not is_changelog(tp)}
        held.update(sources)
        if tps - sources:
            resume(tps - sources)

    async def perform_seek() -> None:
        try:
            await seek()
        finally:
            if held:
                resume(set(held))
                held.clear()

    return resume_partitions, perform_seek


def install(app: faust.App) -> None:
    """Apply the three fixes to ``app`` (before it starts; see the module docstring)."""
    if app.conf.producer_threaded:
        raise ValueError("the draining producer buffer does not cover faust's threaded producer")
    producer: Any = app.producer
    buffer = DrainingProducerBuffer(loop=producer.loop, beacon=producer.beacon)
    buffer.app = app
    producer.buffer = buffer
    consumer: Any = app.consumer
    consumer.resume_partitions, consumer.perform_seek = seek_before_resume(
        consumer.resume_partitions, consumer.perform_seek, functools.partial(_is_changelog, app)
    )
    consumer.accept_gap = consumer._add_gap  # for the holes retention made (aggregator.continuity)
    consumer._add_gap = _hole_not_acked


async def _hole_not_acked(tp: TP, offset_from: int, offset_to: int) -> None:
    """faust's ``_add_gap`` replaced: a hole in a source partition blocks the commit (fix 3)."""
    return None


def _is_changelog(app: faust.App, tp: TP) -> bool:
    return tp.topic in app.tables.changelog_topics

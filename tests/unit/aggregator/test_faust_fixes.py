"""The two fixes to faust of aggregator/faust_fixes.py: the producer flush, the seek before the resume.

The producer flush before a commit waits for every buffered send.

The sends here go to a channel that takes 0.3 s per message (what a first send to a topic
waiting for its metadata, or a loaded machine, looks like to faust's buffer). faust's own flush
gives up after 0.1 s with messages still queued - the reason the module exists; the draining
buffer's flush returns only once each of them has been handed over.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.transport.producer import ProducerBuffer

from aggregator import faust_fixes
from aggregator.faust_fixes import DrainingProducerBuffer, ProducerFlushTimeout, seek_before_resume


class SlowChannel:
    """Takes ``delay_s`` per message; remembers what it was given, in order."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.sent: list[int] = []

    async def publish_message(self, fut: Any, wait: bool = False) -> None:
        await asyncio.sleep(self.delay_s)
        self.sent.append(fut.n)


def _message(channel: SlowChannel, n: int) -> Any:
    return SimpleNamespace(n=n, message=SimpleNamespace(channel=channel))


def _app() -> faust.App:
    return faust.App("flush-test", broker="kafka://127.0.0.1:1", autodiscover=False)


async def _started(buffer: ProducerBuffer, channel: SlowChannel, n: int) -> ProducerBuffer:
    """``buffer`` of a test app, started, with ``n`` sends to ``channel`` put into it."""
    buffer.app = _app()
    await buffer.start()
    for i in range(n):
        buffer.put(_message(channel, i))
    return buffer


async def _flush_after(buffer: ProducerBuffer, channel: SlowChannel, n: int) -> list[int]:
    await _started(buffer, channel, n)
    try:
        await buffer.flush()
        return list(channel.sent)
    finally:
        await buffer.stop()


def test_fausts_own_flush_returns_with_sends_still_buffered() -> None:
    async def run() -> list[int]:
        channel = SlowChannel(0.3)
        buffer = await _started(ProducerBuffer(), channel, 3)
        await buffer.flush()
        sent = list(channel.sent)
        with pytest.raises(RuntimeError, match="Producer not Running"):
            await buffer.stop()  # and what is left when it stops is dropped with an error
        return sent

    assert len(asyncio.run(run())) < 3  # if this fails, faust fixed its flush: faust_fixes.DrainingProducerBuffer can go


def test_the_draining_flush_returns_after_every_send_buffered_before_it() -> None:
    channel = SlowChannel(0.3)
    assert asyncio.run(_flush_after(DrainingProducerBuffer(), channel, 3)) == [0, 1, 2]


def test_sends_buffered_during_the_flush_are_not_waited_for() -> None:
    async def run() -> tuple[list[int], int]:
        channel = SlowChannel(0.2)
        buffer = await _started(DrainingProducerBuffer(), channel, 2)
        try:

            async def keep_sending() -> None:  # an agent going on during the commit
                for i in range(2, 50):
                    buffer.put(_message(channel, i))
                    await asyncio.sleep(0.05)

            feeder = asyncio.ensure_future(keep_sending())
            await buffer.flush()
            sent = list(channel.sent)
            feeder.cancel()
            return sent, buffer.enqueued
        finally:
            await buffer.stop()

    sent, enqueued = asyncio.run(run())
    assert sent[:2] == [0, 1]
    assert len(sent) < enqueued  # it returned while the agent was still sending


def test_a_flush_that_cannot_drain_fails_instead_of_letting_the_commit_go_on() -> None:
    async def run() -> None:
        channel = SlowChannel(1.5)  # a broker that does not answer in time
        buffer = await _started(DrainingProducerBuffer(), channel, 1)
        buffer.timeout_s = 0.3
        try:
            await buffer.flush()
        finally:
            buffer.timeout_s = 30
            await buffer.stop()

    with pytest.raises(ProducerFlushTimeout, match="1 buffered sends not handed to Kafka"):
        asyncio.run(run())


def test_sends_left_when_the_buffer_stops_are_sent_on_the_way_out() -> None:
    async def run() -> list[int]:
        channel = SlowChannel(0.05)
        buffer = await _started(DrainingProducerBuffer(), channel, 5)
        await buffer.stop()  # faust's on_stop flushes
        return channel.sent

    assert asyncio.run(run()) == [0, 1, 2, 3, 4]


def test_install_gives_the_app_the_draining_buffer_and_the_seek_before_the_resume() -> None:
    app = _app()
    faust_fixes.install(app)
    assert isinstance(app.producer.buffer, DrainingProducerBuffer)
    assert app.producer.buffer.app is app
    assert app.consumer.perform_seek.__qualname__.startswith("seek_before_resume")
    assert app.consumer.resume_partitions.__qualname__.startswith("seek_before_resume")


class Consumer:
    """What faust's consumer does when recovery ends, reduced to its calls: resume, then the seek."""

    def __init__(self, seek_fails: bool = False) -> None:
        self.calls: list[tuple[str, frozenset[str]]] = []
        self.seek_fails = seek_fails

    def resume(self, tps: object) -> None:
        self.calls.append(("resume", frozenset(tp.topic for tp in tps)))  # type: ignore[attr-defined]

    async def seek(self) -> None:
        self.calls.append(("seek", frozenset()))
        await asyncio.sleep(0.01)  # the window a fetch fell into
        self.calls.append(("seek done", frozenset()))
        if self.seek_fails:
            raise RuntimeError("rebalance")


def _tp(topic: str) -> Any:
    from faust.types.tuples import TP

    return TP(topic, 0)


def test_source_partitions_resume_only_after_the_seek_and_changelogs_at_once() -> None:
    consumer = Consumer()
    resume, seek = seek_before_resume(consumer.resume, consumer.seek, lambda tp: tp.topic.endswith("-changelog"))

    async def end_of_recovery() -> None:
        resume([_tp("state-changelog")])  # during recovery: at once
        resume([_tp("detections"), _tp("control")])  # faust's order at the end of recovery ...
        await seek()  # ... then the seek

    asyncio.run(end_of_recovery())
    assert consumer.calls == [
        ("resume", frozenset({"state-changelog"})),
        ("seek", frozenset()),
        ("seek done", frozenset()),
        ("resume", frozenset({"detections", "control"})),
    ]


def test_a_failed_seek_still_resumes_what_it_held_back() -> None:
    consumer = Consumer(seek_fails=True)
    resume, seek = seek_before_resume(consumer.resume, consumer.seek, lambda tp: False)

    async def end_of_recovery() -> None:
        resume([_tp("detections")])
        await seek()

    with pytest.raises(RuntimeError, match="rebalance"):
        asyncio.run(end_of_recovery())
    assert consumer.calls[-1] == ("resume", frozenset({"detections"}))

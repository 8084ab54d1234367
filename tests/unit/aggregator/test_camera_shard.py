"""The camera stage's per-record work without a broker (aggregator/camera_shard.py), and the counting process that runs it.

The shard must count exactly what the plain CameraCounter loop counts, refuse bad records with
their reasons, and resume from its checkpoint as if it had never stopped; the counting pool must
give, through a real counting process, the very effects the shard gives in the loop.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from aggregator import checkpoint
from aggregator.camera_shard import CameraShard, Effect, Record
from aggregator.counting import CameraCounter
from aggregator.counting_pool import CountingPool, ShardConfig
from aggregator.records import FinishMessage, StreamMessage, decode_intersection, encode
from aggregator.settings import AggregatorSettings
from tests.synthetic import CAMERA, end_marker, synthetic_site, synthetic_stream
from traffic.partitions import camera_partition
from traffic.settings import TopicSettings
from traffic.wire import CrossingEvent, DetectionEvent

PARTITIONS = 4
CONTROL = "agg-camera-control"
DETECTIONS = "traffic.detections"


def _settings(**kw: object) -> AggregatorSettings:
    return AggregatorSettings(capture_max_age_s=20 * 365 * 86400.0, **kw)  # synthetic events are from 2026-01-01


def _shard(**kw: object) -> CameraShard:
    return CameraShard(_settings(**kw), TopicSettings(), synthetic_site(), PARTITIONS, CONTROL)


def _record(event: DetectionEvent, offset: int = 0, partition: int | None = None, value: bytes | None = None) -> Record:
    part = camera_partition(event.camera, PARTITIONS) if partition is None else partition
    return Record(DETECTIONS, part, offset, event.camera.encode(), event.encode() if value is None else value, ())


def _crossings(effects: list[Effect]) -> list[CrossingEvent]:
    return [CrossingEvent.decode(e[3]) for e in effects if e[0] == "send" and e[1] == "crossings"]


def _reasons(effects: list[Effect]) -> list[str]:
    return [e[2][0] for e in effects if e[0] == "inc" and e[1] == "dlq"]


@pytest.fixture(scope="module")
def events() -> list[DetectionEvent]:
    return synthetic_stream(per_movement=2).events


def test_the_shard_counts_what_the_plain_counter_loop_counts(events: list[DetectionEvent]) -> None:
    counter = CameraCounter(synthetic_site(), CAMERA)
    expected = [c for e in events for c in counter.update(e)]
    shard = _shard()
    effects = [e for i, event in enumerate(events) for e in shard.process(_record(event, i))]
    assert _crossings(effects) == expected and expected
    assert not _reasons(effects)
    sends = [e for e in effects if e[0] == "send"]
    assert sum(1 for e in sends if e[1] == "by_intersection") > len(expected)  # each crossing, plus watermarks and the stream state
    assert sum(e[3] for e in effects if e[:2] == ("inc", "events")) == len(events)


def test_a_handover_marker_ends_the_tracks_but_not_the_stream_for_the_intersection(events: list[DetectionEvent]) -> None:
    """A live camera whose ingester was stopped goes on in a new session: its intervals must not be made final at the marker."""

    def streams(handover: bool) -> tuple[list[bool], list[CrossingEvent]]:
        shard = _shard()
        last = events[-1]
        end = end_marker(last, handover=handover)
        effects = [e for i, event in enumerate([*events, end]) for e in shard.process(_record(event, i))]
        sent = [decode_intersection(e[3]) for e in effects if e[0] == "send" and e[1] == "by_intersection"]
        return [m.ended for m in sent if isinstance(m, StreamMessage)], _crossings(effects)

    ended, crossings = streams(handover=False)
    handed_over, crossings_handed_over = streams(handover=True)
    assert ended[-1] is True  # the stream's real end: the intersection may close its intervals now
    assert True not in handed_over  # a handover: they close by time
    assert crossings_handed_over == crossings and crossings  # the tracks end at either marker


def test_bad_records_are_dead_letters_with_their_reasons(events: list[DetectionEvent]) -> None:
    shard = _shard(max_event_bytes=64 * 1024)
    event = events[0]
    wrong = (camera_partition(CAMERA, PARTITIONS) + 1) % PARTITIONS
    cases = {
        "empty": Record(DETECTIONS, camera_partition(CAMERA, PARTITIONS), 0, CAMERA.encode(), None, ()),  # a tombstone
        "oversized": _record(event, value=b"{" + b" " * (70 * 1024) + b"}"),
        "malformed": _record(event, value=b"not json"),
        "unknown_camera": _record(event.model_copy(update={"camera": "cam-elsewhere"}), partition=0),
        "intersection_mismatch": _record(event.model_copy(update={"intersection": "other"})),
        "wrong_partition": _record(event, partition=wrong),
        "capture_time_future": _record(event.model_copy(update={"capture_ms": int(time.time() * 1000) + 3_600_000})),
    }
    for reason, record in cases.items():
        effects = shard.process(record)
        assert _reasons(effects) == [reason], (reason, effects)
        letter = next(e for e in effects if e[0] == "send" and e[1] == "dlq")
        assert dict(letter[4])["reason"] == reason.encode()
        assert letter[3] == (record.value or b"")  # the input, unchanged
    assert not shard.cameras  # nothing of them reached a counter


def test_checkpoint_and_replay_resume_as_if_it_never_stopped(events: list[DetectionEvent]) -> None:
    whole = _shard()
    expected = _crossings([e for i, ev in enumerate(events) for e in whole.process(_record(ev, i))])
    first = _shard()
    half = len(events) // 2
    got = _crossings([e for i, ev in enumerate(events[:half]) for e in first.process(_record(ev, i))])
    states = [e for e in first.checkpoint() if e[0] == "state"]
    assert [s[1] for s in states] == [CAMERA] and not first.dirty
    more = _crossings([e for i, ev in enumerate(events[half : half + 20]) for e in first.process(_record(ev, half + i))])  # lost with the crash
    assert len(got) + len(more) <= len(expected)
    second = _shard()
    assert second.restore(CAMERA, states[0][2]) == []
    replayed = [e for i, ev in enumerate(events[half:]) for e in second.process(_record(ev, half + i))]  # redelivered from the committed offset
    assert got + _crossings(replayed) == expected


def test_a_checkpoint_that_cannot_be_trusted_starts_the_camera_afresh() -> None:
    shard = _shard()
    assert shard.restore(CAMERA, b"TCP1garbage") == [("inc", "state_restore_failed", (CAMERA,), 1)]
    assert CAMERA not in shard.cameras


def test_an_idle_camera_is_finished_by_its_wake_up_and_asks_for_a_commit(events: list[DetectionEvent]) -> None:
    shard = _shard(idle_close_s=0.2)
    for i, event in enumerate(events[:60]):  # vehicles on the road
        shard.process(_record(event, i))
    time.sleep(0.15)
    idle = shard.idle_cameras(time.monotonic())
    assert [(p, m.camera) for p, m in idle] == [(camera_partition(CAMERA, PARTITIONS), CAMERA)]
    assert shard.idle_cameras(time.monotonic()) == []  # asked once
    finish = idle[0][1]
    effects = shard.process(Record(CONTROL, idle[0][0], 0, CAMERA.encode(), encode(finish), ()))
    assert effects[-1] == ("commit",) and _crossings(effects)
    stale = FinishMessage(camera=CAMERA, session=finish.session, next_seq=finish.next_seq - 1, events=finish.events)
    assert shard.process(Record(CONTROL, idle[0][0], 1, CAMERA.encode(), encode(stale), ())) == []


def test_the_counting_process_gives_the_effects_the_loop_gives(events: list[DetectionEvent]) -> None:
    """A real counting process (python -m aggregator.counting_process) against the same shard in the loop."""
    config = ShardConfig(_settings(), TopicSettings(), synthetic_site(), PARTITIONS, CONTROL)
    records = [_record(ev, i) for i, ev in enumerate(events[:160])] + [_record(events[0], 160, value=b"{}")]

    def position(data: bytes) -> tuple[object, ...]:  # a checkpoint's pickle differs in object sharing, not in what it holds
        snapshot, gate = checkpoint.decode(CAMERA, data)
        c = CameraCounter.restore(synthetic_site(), CAMERA, snapshot)
        return (c.session, c.next_seq, c.events, c.active_tracks, c.last_capture_ms, c.duplicates, gate.waiting)

    def strip(effects: list[Effect]) -> list[Effect]:  # dead letters carry the time they were refused
        def one(e: Effect) -> Effect:
            if e[:2] == ("send", "dlq"):
                return e[:4]
            if e[0] == "state":
                return (e[0], e[1], position(e[2]))
            if e[1] in ("state_bytes", "checkpoint_bytes"):
                return e[:3]  # its size, by a byte or two
            return e

        return [one(e) for e in effects]

    async def run(processes: int, in_flight_bytes: int = 256 * 1024) -> list[Effect]:
        applied: list[Effect] = []

        def apply(effects: list[Effect]) -> bool:
            applied.extend(strip(effects))
            return False

        pool = CountingPool(config, processes, in_flight=4, apply=apply, in_flight_bytes=in_flight_bytes)
        pool.start()
        await pool.ready()
        for i, record in enumerate(records):
            await pool.submit(record)
            if i == len(records) // 2:
                pool.checkpoint()  # blocking: every reply before it applied, then the checkpoints
                assert sum(1 for e in applied if e[0] == "state") == 1
                assert sum(1 for e in applied if e[:2] == ("inc", "events")) == i + 1
        pool.checkpoint()
        pool.close()
        return applied

    inline, process = asyncio.run(run(0)), asyncio.run(run(1))
    assert process == inline
    assert asyncio.run(run(1, in_flight_bytes=1024)) == inline  # a budget below one record: one at a time, the same effects
    assert [e[2] for e in inline if e[:2] == ("inc", "dlq")] == [("malformed",)]

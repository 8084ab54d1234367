"""Final and provisional records never cross (aggregator/intersection_stage.py): no provisional after a final.

A KEDA test run once never settled: a provisional batch computed just before an intersection's
intervals were closed was sent after their final records, so the counts topic ended with those
cells provisional. The stage's sends await, so the two publishers interleave on the event loop;
here the counts topic is a stand-in whose send yields to the loop as the real one may.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from aggregator.counting import CameraCounter
from aggregator.intersection_stage import IntersectionStage
from aggregator.windows import WindowStore
from tests.synthetic import CAMERA, synthetic_site, synthetic_stream


class _CountsTopic:
    """Records what was sent, in order; each send lets other tasks run first (a busy producer)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bool]] = []

    async def send(self, key: bytes, value: bytes) -> None:
        await asyncio.sleep(0)
        record = json.loads(value)
        self.sent.append((f"{record['interval_s']}:{record['interval_start_ms']}:{record['series']}:{record['approach']}:"
                          f"{record['movement']}:{record['direction']}:{record['vehicle_class']}", record["final"]))  # fmt: skip


def _stage() -> tuple[IntersectionStage, _CountsTopic]:
    site = synthetic_site()
    counter = CameraCounter(site, CAMERA)
    events = synthetic_stream(per_movement=1).events
    crossings = [c for e in events for c in counter.update(e)] + counter.finish()
    store = WindowStore(tuple(site.counting.intervals_s), site.counting.grace_s)
    for crossing in crossings:
        store.add(crossing)
    topic = _CountsTopic()
    stage = IntersectionStage.__new__(IntersectionStage)  # the publishing part only: no app, no tables
    stage.store, stage.topo = store, SimpleNamespace(counts_out=topic)
    stage._publishing = asyncio.Lock()
    return stage, topic


def test_a_provisional_batch_is_never_sent_after_the_final_records_of_its_cells() -> None:
    async def race() -> list[tuple[str, bool]]:
        stage, topic = _stage()
        keys = stage.store.open_keys(synthetic_site().intersections[0].id)
        assert keys
        # the close starts first; the timer's provisional batch comes while its sends are in flight
        await asyncio.gather(stage.publish_final(keys), stage.publish_provisional())
        return topic.sent

    sent = asyncio.run(race())
    final_at = {key: i for i, (key, final) in enumerate(sent) if final}
    assert final_at, "nothing was made final"
    late = [key for i, (key, final) in enumerate(sent) if not final and key in final_at and i > final_at[key]]
    assert not late, f"provisional records after the final ones: {late}"
    last = {key: final for key, final in sent}
    assert all(last.values()), "a cell's last record is provisional"

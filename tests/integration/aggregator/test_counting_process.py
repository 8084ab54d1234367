"""The counting process dies mid-stream (kill -9): the aggregator stops at once without committing, and a restart counts exactly.

Its state dies with it, so the aggregator must not commit offsets of records whose effects it
never applied (aggregator/counting_pool.py): it exits with code 70, and after a restart the
records since the last checkpoint are redelivered and counted once.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from aggregator.counting import CameraCounter
from aggregator.counting_pool import EXIT_CHILD_DIED
from aggregator.windows import final_counts
from tests.integration.aggregator.harness import Aggregator, Output, committed, send
from tests.synthetic import CAMERA, synthetic_site, synthetic_stream
from traffic.settings import TopicSettings


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


@pytest.mark.faults
@pytest.mark.slow  # an abrupt restart (40 s): the README's test command runs it after the default suite (-m faults)
def test_a_killed_counting_process_stops_the_aggregator_and_a_restart_counts_exactly(
    tmp_path: Path, kafka_bootstrap: str, topic_settings: TopicSettings
) -> None:
    stream = synthetic_stream(per_movement=1)
    counter = CameraCounter(synthetic_site(), CAMERA)
    expected = final_counts([c for e in stream.events for c in counter.update(e)] + counter.finish(), synthetic_site().counting.intervals_s)
    agg = Aggregator(tmp_path, kafka_bootstrap, topic_settings, idle_close_s=10)
    out = Output(kafka_bootstrap, topic_settings)
    half = len(stream.events) // 2
    try:
        agg.start()
        assert agg.proc is not None
        send(kafka_bootstrap, topic_settings.detections, stream.events[:half])
        deadline = time.monotonic() + 300  # a loaded machine: start-up (the counting process imports torch) is slow
        while committed(kafka_bootstrap, agg.app_id, topic_settings.detections) < half // 2:
            assert time.monotonic() < deadline and agg.proc.poll() is None, agg.logs()
            time.sleep(0.3)
        (child,) = _children(agg.proc.pid)
        os.kill(child, signal.SIGKILL)
        assert agg.proc.wait(timeout=60) == EXIT_CHILD_DIED
        assert "counting process died" in agg.logs()
        agg.proc = None
        send(kafka_bootstrap, topic_settings.detections, stream.events[half:])
        agg.start()
        finals = out.wait_finals(sum(n for k, n in expected.items() if k.interval_s == 900), agg)
        assert finals == expected  # nothing lost, nothing counted twice
    finally:
        out.close()
        agg.kill()

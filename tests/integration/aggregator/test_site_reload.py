"""Site hot reload in a running aggregator (real broker, the app as a subprocess).

Two intersections with one camera each (the synthetic camera's geometry), their streams ending
with end-of-session markers, and no idle timeout within the test (a pause must not end tracks
the undisturbed run keeps). Half of both streams is counted; then the site file changes the way a ConfigMap volume does (a ``..data`` symlink
swap): first to an invalid text (refused, a log line and a metric, the running site kept), then
to a valid one that replaces cam-a's north count line by one across the middle of the picture
and moves its west line (same id). The second halves follow. cam-a must count on the new line
from then on and never on the old one again, keeping its tracks (its crossings are exactly
those of the plain CameraCounter loop reconfigured at that event); cam-b's crossings (event
ids, hence its track ids) and its final counts must be exactly those of an undisturbed run (the
plain CameraCounter loop over the same events).

The second test (slow) changes the file while the aggregator is down: the checkpoint it restores
was written under the old lines, and must not bring them back.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import yaml

from aggregator.counting import CameraCounter
from aggregator.windows import CountKey, final_counts
from tests.configmap import ConfigMapVolume
from tests.integration.aggregator.harness import Aggregator, Output, committed, send
from tests.synthetic import SITE, end_marker, synthetic_stream
from traffic.settings import TopicSettings
from traffic.site import parse_site
from traffic.wire import CrossingEvent, DetectionEvent

CAM_A, CAM_B = "cam-a", "cam-b"
NEW_LINE = {"id": "centre", "points": [[0.3, 0.5], [0.7, 0.5]], "in_label": "southbound", "out_label": "northbound"}


def two_cameras() -> dict:
    """The synthetic site's camera twice, as cam-a (intersection-a) and cam-b (intersection-b)."""
    site = copy.deepcopy(SITE)
    template = site["intersections"][0]["cameras"][0]
    site["intersections"] = [{"id": f"intersection-{c[-1]}", "cameras": [{**copy.deepcopy(template), "id": c}]} for c in (CAM_A, CAM_B)]
    return site


def moved_line(site: dict) -> dict:
    """cam-a's north-stop line replaced by one across the middle of the picture; its west-stop line moved 0.08 east."""
    site = copy.deepcopy(site)
    cam = site["intersections"][0]["cameras"][0]
    cam["lines"] = [NEW_LINE if line["id"] == "north-stop" else {**line, "points": [[0.3, 0.7], [0.3, 0.3]]} for line in cam["lines"]]
    return site


def events_of(camera: str) -> list[DetectionEvent]:
    """The synthetic stream as ``camera``'s, ending with its end-of-session marker (so nothing waits for an idle timeout)."""
    base = synthetic_stream(per_movement=2).events
    events = [e.model_copy(update={"camera": camera, "intersection": f"intersection-{camera[-1]}"}) for e in base]
    last = events[-1]
    return events + [end_marker(last, period_ms=100)]


def undisturbed(site: dict, camera: str, events: list[DetectionEvent]) -> list[CrossingEvent]:
    counter = CameraCounter(parse_site(site, "<test>"), camera)
    return [c for e in events for c in counter.update(e)] + counter.finish()


def reconfigured_at(site: dict, new_site: dict, camera: str, events: list[DetectionEvent], at: int) -> list[CrossingEvent]:
    """The plain loop under ``site`` for ``events[:at]``, then under ``new_site``."""
    counter = CameraCounter(parse_site(site, "<test>"), camera)
    out = [c for e in events[:at] for c in counter.update(e)]
    counter = counter.reconfigured(parse_site(new_site, "<test>"))
    return out + [c for e in events[at:] for c in counter.update(e)] + counter.finish()


def _key(c: CrossingEvent) -> tuple:
    return (c.event_id, c.track_id, c.kind, c.line, c.direction, c.approach, c.exit, c.movement, c.vehicle_class, c.time_ms)


def metric(agg: Aggregator, series: str) -> float:
    """One series' value (0 while the metrics server is not up yet)."""
    try:
        status, text = agg.get("/metrics")
    except OSError:
        return 0.0
    assert status == 200
    return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(series + " ")), 0.0)


def full_log(agg: Aggregator) -> str:
    """The whole log (``Aggregator.logs`` is its tail: a loaded machine's timer warnings push lines out of it)."""
    return agg.log.read_text(errors="replace")


def wait(what: str, agg: Aggregator, predicate, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {timeout_s:.0f} s:\n{agg.logs()}"
        assert agg.proc is not None and agg.proc.poll() is None, f"aggregator exited:\n{agg.logs()}"
        time.sleep(0.3)


def wait_done(out: Output, agg: Aggregator, expected_b: list[CrossingEvent], timeout_s: float = 400) -> None:
    """Until cam-b's crossings are all there and both intersections have final 15-minute records."""

    def done() -> bool:
        out.poll()
        finals = {r["intersection"] for r in out.records if r["final"] and r["interval_s"] == 900}
        return len([c for c in out.crossings if c.camera == CAM_B]) >= len(expected_b) and finals == {"intersection-a", "intersection-b"}

    wait("cam-b's crossings and both intersections' final records", agg, done, timeout_s)
    time.sleep(1.5)  # anything more (a double count) would arrive now
    out.poll()


def finals_of(out: Output, intersection: str) -> dict[CountKey, int]:
    return {k: n for k, n in out.finals().items() if k.intersection == intersection}


def check(out: Output, site: dict, events_a: list[DetectionEvent], events_b: list[DetectionEvent], at: int) -> None:
    """cam-b as undisturbed; cam-a on the old line up to event ``at`` only, on the new one after, as the plain loop reconfigured there."""
    boundary_ms = events_a[at - 1].capture_ms
    expected_b = undisturbed(site, CAM_B, events_b)
    got_b = [c for c in out.crossings if c.camera == CAM_B]
    assert sorted(map(_key, got_b)) == sorted(map(_key, expected_b))  # same crossings, same track ids, once each
    counting = parse_site(site, "<test>").counting
    assert finals_of(out, "intersection-b") == final_counts(expected_b, counting.intervals_s)
    got_a = [c for c in out.crossings if c.camera == CAM_A]
    old = [c for c in got_a if c.line == "north-stop"]
    new = [c for c in got_a if c.line == NEW_LINE["id"]]
    assert old and all(c.time_ms <= boundary_ms for c in old), [(c.track_id, c.time_ms) for c in old if c.time_ms > boundary_ms]
    assert new and all(c.time_ms > boundary_ms for c in new)
    assert sorted(map(_key, got_a)) == sorted(map(_key, reconfigured_at(site, moved_line(site), CAM_A, events_a, at)))


def test_a_moved_line_applies_live_and_the_other_camera_is_undisturbed(tmp_path: Path, kafka_bootstrap: str, topic_settings: TopicSettings) -> None:
    site = two_cameras()
    volume = ConfigMapVolume(tmp_path / "site")
    path = volume.write(yaml.safe_dump(site))
    a, b = events_of(CAM_A), events_of(CAM_B)
    half = len(a) // 2  # vehicles are on the road here
    agg = Aggregator(tmp_path, kafka_bootstrap, topic_settings, idle_close_s=120, site_config=str(path), site_reload_s="0.5")
    out = Output(kafka_bootstrap, topic_settings)
    try:
        agg.start()
        send(kafka_bootstrap, topic_settings.detections, a[:half] + b[:half])
        wait("the first halves counted", agg, lambda: all(
            metric(agg, f'traffic_aggregator_events_total{{camera="{c}"}}') >= half for c in (CAM_A, CAM_B)))

        bad = moved_line(site)
        bad["intersections"][0]["cameras"][0]["movements"] = [{"from": "north", "to": "nowhere", "movement": "left"}]
        volume.write(yaml.safe_dump(bad))
        wait("the invalid file refused", agg, lambda: metric(agg, 'traffic_aggregator_site_reloads_total{result="refused"}') == 1.0)
        assert "site configuration change refused; keeping the running one" in full_log(agg) and "nowhere" in full_log(agg)

        volume.write(yaml.safe_dump(moved_line(site)))
        wait("the moved line applied", agg, lambda: "camera counts with new lines and zones" in full_log(agg))
        assert metric(agg, 'traffic_aggregator_site_reloads_total{result="applied"}') == 1.0
        assert metric(agg, 'traffic_aggregator_site_reloads_total{result="restart_needed"}') == 0.0
        send(kafka_bootstrap, topic_settings.detections, a[half:] + b[half:])
        wait_done(out, agg, undisturbed(site, CAM_B, b))
        check(out, site, a, b, half)
        assert metric(agg, 'traffic_aggregator_site_reloads_total{result="refused"}') == 1.0  # once, not at every poll
    finally:
        out.close()
        agg.kill()


@pytest.mark.slow  # a second aggregator start (about a minute): the default suite keeps the live test
def test_a_checkpoint_of_the_old_lines_does_not_bring_them_back_after_a_restart(
    tmp_path: Path, kafka_bootstrap: str, topic_settings: TopicSettings
) -> None:
    site = two_cameras()
    volume = ConfigMapVolume(tmp_path / "site")
    path = volume.write(yaml.safe_dump(site))
    a, b = events_of(CAM_A), events_of(CAM_B)
    half = len(a) // 2
    agg = Aggregator(tmp_path, kafka_bootstrap, topic_settings, idle_close_s=120, site_config=str(path), site_reload_s="0.5")
    out = Output(kafka_bootstrap, topic_settings)
    try:
        agg.start()
        send(kafka_bootstrap, topic_settings.detections, a[:half] + b[:half])
        wait("the first halves committed", agg, lambda: committed(kafka_bootstrap, agg.app_id, topic_settings.detections) >= 2 * half)
        assert agg.stop() == 0  # the checkpoints hold live tracks under the old lines
        volume.write(yaml.safe_dump(moved_line(site)))  # the ConfigMap changed while it was down
        send(kafka_bootstrap, topic_settings.detections, a[half:] + b[half:])
        agg.start()
        wait_done(out, agg, undisturbed(site, CAM_B, b))
        check(out, site, a, b, half)
        assert "camera checkpoint of other lines and zones" in full_log(agg)
    finally:
        out.close()
        agg.kill()

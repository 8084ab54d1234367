"""The agents and the housekeeping timer of the aggregator (see :mod:`aggregator.app` for the picture).

At-least-once: faust commits a consumed offset only after the producer has flushed everything
sent while processing it (crossings, internal messages, changelogs). After a crash the camera
stage may see events again: its restored counter drops them as duplicates (by session and seq),
and the intersection stage drops crossings it has counted already (by event id).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from aggregator import metrics
from aggregator.counting import CameraCounter
from aggregator.records import close_message, crossing_message, finish_message, parse, stream_message, watermark_message
from aggregator.windows import CountKey, count_keys, interval_end_ms, is_closed
from traffic.dlq import event_dead_letter
from traffic.errors import ContractError
from traffic.wire import CrossingEvent, DetectionEvent

if TYPE_CHECKING:
    from aggregator.app import AggregatorApp

log = logging.getLogger(__name__)

CLOSE_RETRY_S = 5.0
PURGE_EVERY_S = 60.0


def register(ctx: "AggregatorApp") -> None:
    """Attach the two agents and the timer to ``ctx.app``."""
    app, rt, tables = ctx.app, ctx.runtime, ctx.tables
    counting = ctx.site.counting
    max_interval_ms = max(counting.intervals_s) * 1000
    grace_ms = int(counting.grace_s * 1000)
    for camera in ctx.cameras:  # series exist from the start (at 0), so dashboards' rate() has data before the first duplicate
        metrics.EVENTS.labels(camera)
        metrics.DUPLICATES.labels(camera)
        metrics.ACTIVE_TRACKS.labels(camera).set(0)

    # -- camera stage ---------------------------------------------------------------------------
    async def to_dlq(message: Any, reason: str, detail: str) -> None:
        letter = event_dead_letter(message, ctx.topics, stage="aggregator", reason=reason, detail=detail)
        await ctx.dlq_out.send(key=letter.key, value=letter.value, headers=letter.headers)
        metrics.DLQ.labels(reason).inc()
        log.warning("event to the DLQ", extra={"reason": reason, "detail": detail[:200], "partition": message.partition, "offset": message.offset})

    def counter_for(camera: str) -> CameraCounter:
        counter = rt.counters.get(camera)
        if counter is None:
            data = tables.camera_state.get(camera)
            if data is not None:
                counter = CameraCounter.restore(ctx.site, camera, data, ctx.settings.reorder_limit)
                log.info("camera state restored", extra={"camera": camera, "session": counter.session, "next_seq": counter.next_seq, "bytes": len(data)})
            else:
                counter = CameraCounter(ctx.site, camera, ctx.settings.reorder_limit)
            rt.counters[camera] = counter
        return counter

    async def publish(crossings: list[CrossingEvent]) -> None:
        for crossing in crossings:
            key = crossing.intersection.encode()
            await ctx.crossings_out.send(key=key, value=crossing.encode())
            await ctx.by_intersection.send(key=key, value=crossing_message(crossing))
            metrics.COUNT_LATENCY.observe(max(0.0, time.time() - crossing.time_ms / 1000))

    async def report_watermark(counter: CameraCounter, force: bool = False) -> None:
        wm = counter.last_capture_ms
        if wm is None:
            return
        sent = rt.watermark_sent_ms.get(counter.camera_id)
        if force or sent is None or wm >= sent + ctx.settings.watermark_interval_ms:
            rt.watermark_sent_ms[counter.camera_id] = wm
            await ctx.by_intersection.send(key=counter.intersection_id.encode(), value=watermark_message(counter.intersection_id, counter.camera_id, wm))

    async def on_detection(message: Any) -> None:
        try:
            event = DetectionEvent.decode(message.value)
        except ContractError as exc:
            await to_dlq(message, exc.reason, str(exc))
            return
        found = ctx.cameras.get(event.camera)
        if found is None:
            await to_dlq(message, "unknown_camera", f"camera {event.camera!r} is not in the site configuration")
            return
        if found[0].id != event.intersection:
            await to_dlq(message, "intersection_mismatch", f"camera {event.camera!r} belongs to {found[0].id!r}, event says {event.intersection!r}")
            return
        metrics.EVENTS.labels(event.camera).inc()
        counter = counter_for(event.camera)
        duplicates = counter.duplicates
        crossings = counter.update(event)
        rt.camera_partition[event.camera] = message.partition
        rt.camera_last_wall[event.camera] = time.monotonic()
        rt.camera_idle_finished.discard(event.camera)
        if counter.duplicates > duplicates:
            metrics.DUPLICATES.labels(event.camera).inc(counter.duplicates - duplicates)
        await publish(crossings)
        await report_watermark(counter, force=counter.stream_ended)
        if rt.stream_ended_sent.get(event.camera) != counter.stream_ended:  # after a restart: said once again
            rt.stream_ended_sent[event.camera] = counter.stream_ended
            await ctx.by_intersection.send(key=counter.intersection_id.encode(), value=stream_message(counter.intersection_id, event.camera, counter.stream_ended))
        if counter.duplicates == duplicates or crossings:  # a pure duplicate changes no state worth a changelog write
            tables.camera_state[event.camera] = counter.snapshot()
        metrics.ACTIVE_TRACKS.labels(event.camera).set(counter.active_tracks)

    async def on_camera_control(message: Any) -> None:
        command = parse(message.value)
        camera = command["camera"]
        if command["kind"] != "finish" or camera not in ctx.cameras:
            return
        counter = counter_for(camera)
        crossings = counter.finish()
        await publish(crossings)
        await report_watermark(counter, force=True)
        tables.camera_state[camera] = counter.snapshot()
        metrics.ACTIVE_TRACKS.labels(camera).set(counter.active_tracks)
        log.info("idle camera: tracks ended", extra={"camera": camera, "crossings": len(crossings)})

    @app.agent(app.topic(ctx.detections.get_topic_name(), ctx.camera_control.get_topic_name(), key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"), name=f"{ctx.settings.app_id}.camera-stage")
    async def camera_stage(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            try:
                if message.topic == ctx.camera_control.get_topic_name():
                    await on_camera_control(message)
                else:
                    await on_detection(message)
            except ContractError as exc:  # e.g. a counter refusing an event: bad input, never fatal
                await to_dlq(message, exc.reason, str(exc))

    # -- intersection stage ---------------------------------------------------------------------
    async def publish_count(key: str, count: int, final: bool) -> None:
        k = CountKey.decode(key)
        await ctx.counts_out.send(key=k.intersection.encode(), value=k.record(count, final).encode())

    def on_crossing(crossing: CrossingEvent) -> None:
        if crossing.event_id in tables.seen:
            return  # a replay after a restart of the camera stage
        tables.seen[crossing.event_id] = crossing.time_ms
        counted = False
        for key in count_keys(crossing, list(counting.intervals_s)):
            text = key.encode()
            cell = tables.windows.get(text)
            if cell is not None and cell["final"]:
                log.warning("late crossing for a final interval", extra={"event_id": crossing.event_id, "interval_s": key.interval_s, "interval_start_ms": key.interval_start_ms})
                continue
            tables.windows[text] = {"count": (cell["count"] if cell else 0) + 1, "final": False}
            rt.dirty.add(text)
            counted = True
        if not counted:
            return
        if crossing.kind == "movement":
            metrics.VEHICLES.labels(crossing.intersection, crossing.approach, crossing.movement, crossing.vehicle_class).inc()
        else:
            metrics.LINE_CROSSINGS.labels(crossing.intersection, crossing.camera, crossing.line, crossing.direction, crossing.vehicle_class).inc()

    async def on_close(intersection: str, keys: list[str]) -> None:
        for key in keys:
            cell = tables.windows.get(key)
            if cell is None or cell["final"]:
                continue
            await publish_count(key, cell["count"], final=True)
            tables.windows[key] = {"count": cell["count"], "final": True}
            rt.dirty.discard(key)
            rt.close_requested.pop(key, None)
        now = time.monotonic()
        if now - rt.last_purge >= PURGE_EVERY_S:
            rt.last_purge = now
            purge(intersection)

    def purge(intersection: str) -> None:
        """Forget final intervals and crossing ids that no event can reach any more (bounded tables)."""
        wm = tables.watermarks.get(intersection)
        if wm is None:
            return
        horizon = wm - 2 * max_interval_ms - grace_ms
        for key in [k for k, cell in tables.windows.items() if cell["final"]]:
            k = CountKey.decode(key)
            if k.intersection == intersection and interval_end_ms(k.interval_start_ms, k.interval_s) < horizon:
                del tables.windows[key]
        for event_id in [e for e, t in tables.seen.items() if t < horizon and e.split(":", 1)[0] in _cameras_of(intersection)]:
            del tables.seen[event_id]

    def _cameras_of(intersection: str) -> set[str]:
        return {cam for cam, (inter, _) in ctx.cameras.items() if inter.id == intersection}

    @app.agent(ctx.by_intersection, name=f"{ctx.settings.app_id}.intersection-stage")
    async def intersection_stage(stream: Any) -> None:
        async for value in stream:
            message = parse(value)
            kind = message["kind"]
            if kind == "crossing":
                crossing = CrossingEvent.model_validate(message["crossing"])
                rt.intersection_last_wall[crossing.intersection] = time.monotonic()
                on_crossing(crossing)
            elif kind == "watermark":
                intersection = message["intersection"]
                rt.intersection_last_wall[intersection] = time.monotonic()
                if message["time_ms"] > tables.watermarks.get(intersection, -1):
                    tables.watermarks[intersection] = message["time_ms"]
            elif kind == "close":
                await on_close(message["intersection"], message["keys"])
            elif kind == "stream":
                intersection = message["intersection"]
                tables.streams[message["camera"]] = bool(message["ended"])
                if message["ended"] and all(tables.streams.get(cam, False) for cam in _cameras_of(intersection)):
                    keys = [k for k, cell in tables.windows.items() if not cell["final"] and CountKey.decode(k).intersection == intersection]
                    log.info("every camera of the intersection ended its stream: closing its intervals", extra={"intersection": intersection, "intervals": len(keys)})
                    await on_close(intersection, keys)

    # -- housekeeping -----------------------------------------------------------------------------
    @app.timer(ctx.settings.tick_interval_s, name=f"{ctx.settings.app_id}.housekeeping")
    async def housekeeping() -> None:
        ctx.health.beat()
        if not app.rebalancing:
            ctx.health.set("kafka", True)
        now = time.monotonic()
        # cameras idle for half the idle time: end their tracks inside their stream
        for camera in list(tables.camera_state.keys()):
            rt.camera_last_wall.setdefault(camera, now)  # after a restart: idle from now on
        for camera, last in list(rt.camera_last_wall.items()):
            if camera in rt.camera_idle_finished or now - last < ctx.settings.idle_close_s / 2:
                continue
            counter = rt.counters.get(camera)
            if counter is None and camera in tables.camera_state:
                counter = counter_for(camera)
            if counter is None or (counter.active_tracks == 0 and not counter._buffer):
                rt.camera_idle_finished.add(camera)
                continue
            partition = rt.camera_partition.get(camera)
            await ctx.camera_control.send(key=camera.encode(), value=finish_message(camera), partition=partition)
            rt.camera_idle_finished.add(camera)
        # intervals due: watermark past end + grace, or the intersection idle
        due: dict[str, list[str]] = defaultdict(list)
        for key, cell in list(tables.windows.items()):
            if cell["final"]:
                continue
            k = CountKey.decode(key)
            wm = tables.watermarks.get(k.intersection)
            last = rt.intersection_last_wall.setdefault(k.intersection, now)
            if (wm is not None and is_closed(k.interval_start_ms, k.interval_s, wm, counting.grace_s)) or now - last >= ctx.settings.idle_close_s:
                if now - rt.close_requested.get(key, -1e9) >= CLOSE_RETRY_S:
                    due[k.intersection].append(key)
        for intersection, keys in due.items():
            for key in keys:
                rt.close_requested[key] = now
            await ctx.by_intersection.send(key=intersection.encode(), value=close_message(intersection, keys))
        # provisional records of changed open intervals
        if now - rt.last_provisional >= ctx.settings.provisional_interval_s:
            rt.last_provisional = now
            for key in sorted(rt.dirty):
                cell = tables.windows.get(key)
                if cell is not None and not cell["final"]:
                    await publish_count(key, cell["count"], final=False)
            rt.dirty.clear()
        watermarks = [wm for _, wm in tables.watermarks.items()]
        if watermarks:
            metrics.WINDOW_LAG.set(max(0.0, time.time() - min(watermarks) / 1000))

    @app.on_partitions_revoked.connect
    async def forget_cached_counters(*args: Any, **kwargs: Any) -> None:
        rt.counters.clear()  # a partition may move: the table is the truth, re-read it

    @app.on_partitions_assigned.connect
    async def reload_cached_counters(*args: Any, **kwargs: Any) -> None:
        rt.counters.clear()

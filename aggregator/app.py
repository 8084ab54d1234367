"""The faust-streaming aggregator, composed: topology, the two stages, housekeeping, the metrics server.

    aggregator.topology            app, topics, tables (imported by the stages; imports none of them)
        ^          ^          ^
    camera_stage  intersection_stage  housekeeping (uses both stages)
        ^          ^          ^
    aggregator.app  (this module: builds them in that order and runs the worker)

See :mod:`aggregator.topology` for the data flow and the tables, the stage modules for what each
does to one message, and ``docs/aggregator.md`` for the semantics.

A stream ends by its data: the camera stage ends a session's tracks when it processes the
session's end-of-session marker, then tells the intersection stage (a ``stream`` message); once
every camera of an intersection has ended, its open intervals are closed and published as final.
As a fallback for streams that never send a marker (an ingester killed), the housekeeping timer
ends the tracks of cameras idle for ``idle_close_s / 2`` and closes the intervals of an
intersection idle for ``idle_close_s``.
"""

from __future__ import annotations

import gc
import logging
import threading
from dataclasses import dataclass

from aggregator.camera_stage import CameraStage
from aggregator.housekeeping import Housekeeping
from aggregator.intersection_stage import IntersectionStage
from aggregator.metrics import AggregatorMetrics
from aggregator.settings import AggregatorSettings
from aggregator.topology import Topology, build_topology, create_internal_topics, topic_partitions
from traffic.health import Health
from traffic.settings import KafkaSettings, TopicSettings
from traffic.site import Site

log = logging.getLogger(__name__)


@dataclass
class AggregatorApp:
    """One worker's parts, for ``run()`` and for tests."""

    topology: Topology
    cameras: CameraStage
    intersections: IntersectionStage
    housekeeping: Housekeeping
    metrics: AggregatorMetrics
    health: Health


def create_app(
    settings: AggregatorSettings, kafka: KafkaSettings, topics: TopicSettings, site: Site, partitions: int, health: Health | None = None
) -> AggregatorApp:
    """Declare the faust app with its topics, tables, agents and timer."""
    topo = build_topology(settings, kafka, topics, site, partitions)
    metrics = AggregatorMetrics()
    health = health or Health(checks=("kafka",), stall_s=max(60.0, 10 * settings.tick_interval_s))
    cameras = CameraStage(topo, metrics)
    intersections = IntersectionStage(topo, metrics)
    housekeeping = Housekeeping(topo, cameras, intersections, metrics, health)
    cameras.register()
    intersections.register()
    housekeeping.register()
    return AggregatorApp(topo, cameras, intersections, housekeeping, metrics, health)


def _import_tracker_in_background() -> threading.Thread:
    """Import Ultralytics' tracker (and torch: most of a restart's seconds) while Kafka is set up.

    ``run`` joins it before the faust worker starts, so only the main thread's own imports, the
    topic checks and the faust app's construction go on beside it; the group join and the table
    recovery come after (the restart's phases are measured in docs/aggregator.md "Fast recovery").
    """

    def load() -> None:
        import ultralytics.trackers.byte_tracker  # noqa: F401

        # Everything imported and built so far (torch, ultralytics, faust: ~400k objects) lives as
        # long as the process: out of the cyclic collector's sight, so its collections, which the
        # tracker's many short-lived arrays trigger, no longer walk them.
        gc.freeze()

    thread = threading.Thread(target=load, name="import-tracker", daemon=True)
    thread.start()
    return thread


def run(settings: AggregatorSettings, kafka: KafkaSettings, topics: TopicSettings) -> int:
    """Run one aggregator worker until SIGTERM / SIGINT; offsets and checkpoints are flushed on the way out."""
    # Counting in the loop needs the tracker here; counting processes import it themselves.
    importing = _import_tracker_in_background() if settings.counting_processes == 0 else None
    from mode import Worker

    from traffic.health import HealthServer
    from traffic.site import load_site
    from traffic.topics import create_topics

    site = load_site(settings.site_config)
    create_topics(kafka, topics)
    partitions = topic_partitions(kafka, topics.detections)
    create_internal_topics(kafka, topics, settings, partitions)
    ctx = create_app(settings, kafka, topics, site, partitions)
    server = HealthServer(ctx.health, settings.metrics_port, registry=ctx.metrics.registry).start()
    watcher = None
    if settings.site_reload_s > 0:  # new lines and zones without a restart (the timer applies them)
        from traffic.site_watch import SiteWatcher

        watcher = SiteWatcher(settings.site_config, site, ctx.cameras.offer_site, interval_s=settings.site_reload_s, results=ctx.metrics.site_reloads)
        watcher.start()
    # faust warns "producer buffer full" at every burst of changelog writes (its buffer holds 100
    # messages and drains on its own): not actionable, keep it out of the logs.
    logging.getLogger("faust.transport.producer").setLevel(logging.ERROR)
    log.info(
        "aggregator starting",
        extra={"app_id": settings.app_id, "detections": topics.detections, "partitions": partitions, "cameras": sorted(ctx.topology.cameras),
               "group_instance_id": settings.group_instance_id or None},
    )  # fmt: skip
    # Everything imported and built so far (torch, ultralytics, faust: ~400k objects) lives as long
    # as the process: out of the cyclic collector's sight, so its collections, which the tracker's
    # many short-lived arrays trigger, no longer walk them.
    if importing is not None:
        importing.join()  # before the freeze: the tracker's modules are permanent too
    gc.freeze()
    try:
        worker = Worker(ctx.topology.app, loglevel=logging.getLogger().level or logging.INFO, override_logging=False, redirect_stdouts=False)
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        if watcher is not None:
            watcher.stop()
        server.stop()
    return 0

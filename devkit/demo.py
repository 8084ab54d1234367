"""``traffic demo``: a local broker, the simulated camera, and :class:`LocalPipeline`, with a live view.

``--cameras M`` feeds M copies of the demo camera (M intersections, one camera each, from M mounts
of the simulated camera); ``--ingesters N`` reads them through an ingest group of N replicas, so
each camera is read by exactly one of them. Every process it starts is stopped on the way out, also
on Ctrl-C.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from devkit.broker import LocalBroker
from traffic.errors import ConfigError
from devkit.local_pipeline import CountsReader, LocalPipeline, PipelineConfig
from traffic.settings import KafkaSettings, shared_dir
from traffic.site import load_site

REPO = Path(__file__).resolve().parent.parent


@dataclass
class DemoOptions:
    """What the demo runs; see ``traffic demo --help``."""

    source: str = "auto"
    site: Path = REPO / "deploy" / "sites" / "intersection-demo.yaml"
    camera: str | None = None
    workers: int = 1
    ingesters: int = 1
    cameras: int = 1
    model: str = ""
    duration_s: float = 0.0
    fast: bool = False
    bootstrap_servers: str | None = None
    secure: bool = False
    live: bool = True
    out_dir: Path = field(default_factory=lambda: REPO / "runs" / time.strftime("demo-%Y%m%d-%H%M%S"))
    settle_timeout_s: float = 300.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "DemoOptions":
        return cls(
            source=args.source,
            site=Path(args.site) if args.site else cls.site,
            camera=args.camera,
            workers=args.workers,
            ingesters=args.ingesters,
            cameras=args.cameras,
            model=args.model or str(shared_dir() / "models" / "yolo11n_int8_openvino_model"),
            duration_s=args.duration_s,
            fast=args.fast,
            bootstrap_servers=args.bootstrap_servers,
            secure=args.secure,
            live=not args.no_live and sys.stdout.isatty(),
            out_dir=Path(args.out_dir) if args.out_dir else REPO / "runs" / time.strftime("demo-%Y%m%d-%H%M%S"),
        )


def render_table(counts: CountsReader, interval_s: int, title: str, latest_only: bool) -> str:
    """A plain-text table of counts by series, approach / line, movement / direction and class."""
    records = [r for r in counts.records.values() if r.interval_s == interval_s]
    if latest_only and records:
        latest = max(r.interval_start_ms for r in records)
        records = [r for r in records if r.interval_start_ms == latest]
    sums: dict[tuple[str, str, str, str], int] = {}
    for r in records:
        where = f"{r.approach} ({r.direction})" if r.series == "movement" and r.direction else r.approach
        key = (r.series, where, r.movement, r.vehicle_class)
        sums[key] = sums.get(key, 0) + r.count
    lines = [title, f"  {'series':<9} {'approach / line':<22} {'movement / dir':<16} {'class':<11} {'count':>6}"]
    for (series, where, what, cls), count in sorted(sums.items()):
        if count:
            lines.append(f"  {series:<9} {where:<22} {what:<16} {cls:<11} {count:>6}")
    if len(lines) == 2:
        lines.append("  (nothing counted yet)")
    return "\n".join(lines)


def clone_site(site_file: Path, camera_id: str, copies: int, out_dir: Path) -> tuple[Path, list[str]]:
    """A site file with ``copies`` intersections, each a copy of ``camera_id``'s intersection with only that camera.

    Ids get ``-1`` .. ``-<copies>`` appended. Returns the new file and the camera ids.
    """
    data = yaml.safe_load(site_file.read_text())
    template = next(i for i in data["intersections"] if any(c["id"] == camera_id for c in i["cameras"]))
    camera = next(c for c in template["cameras"] if c["id"] == camera_id)
    data["intersections"] = []
    ids = []
    for k in range(1, copies + 1):
        intersection = copy.deepcopy(template)
        intersection["id"] = f"{template['id']}-{k}"
        intersection["cameras"] = [{**copy.deepcopy(camera), "id": f"{camera_id}-{k}"}]
        data["intersections"].append(intersection)
        ids.append(f"{camera_id}-{k}")
    path = out_dir / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, ids


def run_demo(opts: DemoOptions) -> int:
    """Run the demo; returns the process exit code."""
    site = load_site(opts.site)
    cameras = site.cameras()
    camera_id = opts.camera or next(iter(cameras))
    if camera_id not in cameras:
        raise ConfigError(f"camera {camera_id!r} is not in {opts.site} (known: {', '.join(cameras)})")
    if opts.workers < 1:
        raise ConfigError("--workers must be at least 1")
    if not 1 <= opts.ingesters <= 32:
        raise ConfigError("--ingesters must be 1..32")
    if not 1 <= opts.cameras <= 200:
        raise ConfigError("--cameras must be 1..200")
    if not Path(opts.model).exists() and not opts.model.endswith(".pt"):
        raise ConfigError(f"model {opts.model} not found (set TRAFFIC_SHARED_DIR to the shared/ folder or pass --model)")
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    if "TRAFFIC_LOG_LEVEL" not in os.environ:  # the children log to files; keep this terminal for the view
        logging.getLogger().setLevel(logging.WARNING)
    broker: LocalBroker | None = None
    camera_sim = None
    pipeline: LocalPipeline | None = None
    smallest, largest = min(site.counting.intervals_s), max(site.counting.intervals_s)
    site_file, camera_ids = opts.site, [camera_id]
    if opts.cameras > 1:
        site_file, camera_ids = clone_site(opts.site, camera_id, opts.cameras, opts.out_dir)
    video = cameras[camera_id][1].resolved_source()
    group = opts.ingesters > 1
    try:
        if opts.bootstrap_servers:
            bootstrap = opts.bootstrap_servers
            kafka = KafkaSettings(bootstrap_servers=bootstrap)  # protocol and credentials: TRAFFIC_KAFKA_* of the environment
        else:
            print(f"starting a local Kafka broker{' (SASL_SSL, SCRAM-SHA-512, ACLs)' if opts.secure else ''} ...", flush=True)
            broker = LocalBroker(opts.out_dir / "kafka", users={} if opts.secure else None).start()
            bootstrap = broker.bootstrap
            kafka = broker.admin_settings()
        urls, camera_sim = _choose_sources(opts, video, camera_ids)
        if (camera_sim is not None or group) and not opts.duration_s:
            opts.duration_s = _video_seconds(video)  # a live stream (or a replica of a group) never ends by itself
        pipeline = LocalPipeline(PipelineConfig(
            bootstrap=bootstrap, site=site_file, camera=camera_ids[0], source=urls[0], model=opts.model,
            out_dir=opts.out_dir, workers=opts.workers, realtime=not opts.fast, kafka=kafka, least_privilege=opts.secure,
            ingesters=opts.ingesters, sources=dict(zip(camera_ids, urls)),
        ))  # fmt: skip
        print(f"broker {bootstrap}; process logs in {opts.out_dir}; loading the model ...", flush=True)
        pipeline.start_services()
        pipeline.start_ingest()
        counts = pipeline.counts
        assert counts is not None

        def tick(stats: dict[str, float]) -> None:
            if opts.duration_s and pipeline.ingest_alive() and time.monotonic() - pipeline.started > opts.duration_s:
                pipeline.stop_ingest()
            status = (
                f"t={time.monotonic() - pipeline.started:4.0f}s | ingest {stats['published']:.0f} frames | workers "
                f"{stats['detected']:.0f} events {stats['fps']:.1f}/s lag {stats['lag']:.0f} | aggregator "
                f"{stats['aggregated']:.0f} events, {stats['tracks']:.0f} tracks, latency {stats['latency_s']:.2f} s"
            )
            if pipeline.ingest_group is not None and pipeline.ingest_alive():
                held = pipeline.ingest_group.held()
                shares = ", ".join(f"{name} {len(cams)}" for name, cams in sorted(held.items()))
                status += "\ncameras per ingester: " + (shares or "none yet (the replicas are joining the group)")
            if opts.live:
                title = f"live: current {smallest}-second interval" + (f", all {len(camera_ids)} cameras" if len(camera_ids) > 1 else "")
                table = render_table(counts, smallest, title, latest_only=True)
                sys.stdout.write("\033[2J\033[H" + table + "\n\n" + status + "\n")
                sys.stdout.flush()
            else:
                print(status, flush=True)

        settled = pipeline.wait_settled(opts.settle_timeout_s + (opts.duration_s or 60), on_tick=tick)
        if not settled:
            print("warning: the pipeline did not settle in time; showing what was counted so far", file=sys.stderr)
        state = "final" if counts.all_final(largest) else "provisional"
        if len(camera_ids) == 1:
            intersection = cameras[camera_id][0].id
            print(render_table(counts, largest, f"\n{intersection} / {camera_id}: counts per {largest}-second interval ({state})",
                               latest_only=False))  # fmt: skip
        else:
            print(render_table(counts, largest, f"\nall {len(camera_ids)} intersections together: counts per {largest}-second "
                                                f"interval ({state})", latest_only=False))  # fmt: skip
            print("\n" + render_totals(counts, largest))
        (opts.out_dir / "result.json").write_text(json.dumps([r.model_dump() for r in counts.records.values()], indent=1))
        return 0 if settled else 1
    except KeyboardInterrupt:
        print("\ninterrupted; stopping every process ...", file=sys.stderr)
        return 130
    finally:
        if pipeline is not None:
            pipeline.stop()
        if camera_sim is not None:
            camera_sim.stop()
        if broker is not None:
            broker.stop()
        print("all demo processes stopped.", file=sys.stderr)


def render_totals(counts: CountsReader, interval_s: int) -> str:
    """Vehicles per intersection (movements), one line each."""
    totals: dict[str, int] = {}
    for r in counts.records.values():
        if r.interval_s == interval_s and r.series == "movement":
            totals[r.intersection] = totals.get(r.intersection, 0) + r.count
    lines = [f"  {'intersection':<28} {'vehicles':>8}"]
    lines += [f"  {name:<28} {count:>8}" for name, count in sorted(totals.items())] or ["  (nothing counted yet)"]
    return "\n".join(lines)


def _choose_sources(opts: DemoOptions, video: str, camera_ids: list[str]):
    """Source URL per camera, and the simulated camera started for them (if any)."""
    if opts.source not in ("auto", "rtsp", "file"):
        return [opts.source] * len(camera_ids), None
    if opts.source in ("auto", "rtsp"):
        from devkit.simulated_camera import SimulatedCamera, available

        ok, reason = available()
        if ok:
            camera = SimulatedCamera(Path(video), mounts=[f"/{c}" for c in camera_ids])
            camera.start()
            where = camera.url if len(camera_ids) == 1 else f"{len(camera_ids)} mounts of {camera.url_of('/')}"
            print(f"simulated RTSP camera serving {video} at {where}", flush=True)
            return camera.urls, camera
        if opts.source == "rtsp":
            raise ConfigError(f"no RTSP server available: {reason}")
        print(f"RTSP server not available ({reason}); reading the file directly", flush=True)
    return [video] * len(camera_ids), None


def _video_seconds(path: str) -> float:
    """Length of a video file in seconds (frames / fps), 30 s when unknown."""
    import cv2

    cap = cv2.VideoCapture(path)
    try:
        frames, fps = cap.get(cv2.CAP_PROP_FRAME_COUNT), cap.get(cv2.CAP_PROP_FPS)
    finally:
        cap.release()
    return frames / fps + 1.0 if frames > 0 and fps > 0 else 30.0

"""The developer kit's subcommands: ``traffic broker`` (a local Kafka) and ``traffic demo``.

Kept light: the broker and the demo's orchestration are imported when a command runs. The
production image does not contain :mod:`devkit`, so these commands are absent there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``broker`` and ``demo`` subcommands."""
    p = sub.add_parser("broker", help="a local Apache Kafka 4.x broker (KRaft) for the demo and tests")
    p.add_argument("action", choices=["fetch", "start", "stop", "status", "run"], help="fetch jars / start detached / stop / status / run in foreground")
    p.add_argument("--port", type=int, default=None, help="client port (default: a free one)")
    p.add_argument("--data-dir", default=None, help="broker data directory (default: ~/.cache/traffic-pipeline/broker)")
    p.add_argument("--version", default=None, help="Kafka version (default: TRAFFIC_KAFKA_VERSION or 4.1.1)")
    p.set_defaults(handler=_broker)

    p = sub.add_parser(
        "demo",
        help="run ingest -> workers -> aggregator on the sample video and print per-intersection counts",
        description=(
            "Starts a local Kafka broker (unless --bootstrap-servers is given), creates the topics, then runs the "
            "ingester, N workers and the aggregator as separate processes on the sample intersection video, shows a live "
            "view (counts of the current interval; frames/s, lag and latency per stage), prints the final table and stops "
            "every process it started, also on Ctrl-C."
        ),
    )
    p.add_argument("--source", default="auto", help="'auto' (RTSP simulated camera when GStreamer is installed, else the file), 'file', 'rtsp', or a video path / URL")
    p.add_argument("--site", default=None, help="site YAML (default: deploy/sites/intersection-demo.yaml)")
    p.add_argument("--camera", default=None, help="camera id of the site to feed (default: the first camera)")
    p.add_argument("--workers", type=int, default=1, help="number of worker processes (default 1)")
    p.add_argument("--ingesters", type=int, default=1, help="ingest replicas sharing the cameras through the ingest group (default 1)")
    p.add_argument("--cameras", type=int, default=1, help="copies of the demo camera, one intersection each, served as RTSP mounts (default 1)")
    p.add_argument("--model", default=None, help="Ultralytics model name or path (default: the shared YOLO11n OpenVINO model)")
    p.add_argument("--duration-s", type=float, default=0.0, help="stop ingesting after this many seconds (default: the whole video, once)")
    p.add_argument("--fast", action="store_true", help="read the file as fast as possible instead of at its own frame rate")
    p.add_argument("--bootstrap-servers", default=None, help="use this Kafka instead of starting a local broker (protocol and credentials from TRAFFIC_KAFKA_*)")
    p.add_argument("--secure", action="store_true", help="SASL_SSL with each service as its own SCRAM user holding only its ACLs (deploy/k8s/components/strimzi/kafkauser.yaml); "
                   "starts a secured local broker, or, with --bootstrap-servers, provisions the users on it with the TRAFFIC_KAFKA_* super-user credentials")
    p.add_argument("--no-live", action="store_true", help="no live view; print progress lines instead (default when stdout is not a terminal)")
    p.add_argument("--out-dir", default=None, help="where process logs and the result JSON go (default: runs/demo-<time>)")
    p.set_defaults(handler=_run)


def _broker(args: argparse.Namespace) -> int:
    from devkit.broker import KAFKA_VERSION, LocalBroker, cache_root, fetch_jars

    data_dir = Path(args.data_dir) if args.data_dir else cache_root() / "broker"
    broker = LocalBroker(data_dir, port=args.port, version=args.version or KAFKA_VERSION)
    if args.action == "fetch":
        print(fetch_jars(broker.version))
    elif args.action == "start":
        broker.start()
        broker._proc = None  # detach: the broker keeps running after this command; stop with `traffic broker stop`
        print(broker.bootstrap)
    elif args.action == "stop":
        state = broker.running_state()
        broker.stop()
        print("stopped" if state else "not running")
    elif args.action == "status":
        state = broker.running_state()
        print(json.dumps(state) if state else "not running")
        return 0 if state else 1
    elif args.action == "run":
        with broker:
            print(broker.bootstrap, flush=True)
            try:
                while broker._proc is not None and broker._proc.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    return 0


def _run(args: argparse.Namespace) -> int:
    from devkit.demo import DemoOptions, run_demo

    return run_demo(DemoOptions.from_args(args))

"""``traffic demo``: the whole pipeline on the sample video, with a live terminal view.

Kept light: the orchestration lives in :mod:`traffic.demo` and is imported when the command runs.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand."""
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
    p.add_argument("--model", default=None, help="Ultralytics model name or path (default: the shared YOLO11n OpenVINO model)")
    p.add_argument("--duration-s", type=float, default=0.0, help="stop ingesting after this many seconds (default: the whole video, once)")
    p.add_argument("--fast", action="store_true", help="read the file as fast as possible instead of at its own frame rate")
    p.add_argument("--bootstrap-servers", default=None, help="use this Kafka instead of starting a local broker")
    p.add_argument("--no-live", action="store_true", help="no live view; print progress lines instead (default when stdout is not a terminal)")
    p.add_argument("--out-dir", default=None, help="where process logs and the result JSON go (default: runs/demo-<time>)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from traffic.demo import DemoOptions, run_demo

    return run_demo(DemoOptions.from_args(args))

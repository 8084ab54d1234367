"""``traffic aggregate``: run the aggregator (light module: faust is imported only when it runs)."""

from __future__ import annotations

import argparse

from aggregator.settings import AggregatorSettings
from traffic.settings import add_service_command, service_settings


def _run(args: argparse.Namespace) -> int:
    from aggregator.app import run

    return run(*service_settings(args, AggregatorSettings))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``aggregate`` subcommand."""
    add_service_command(
        subparsers, "aggregate", AggregatorSettings, "aggregator", _run,
        help="count vehicles: traffic.detections -> tracks -> crossings and interval counts (faust worker)",
        description="Consume detection events, track vehicles per camera, count line crossings and movements per "
        "interval, publish traffic.crossings and traffic.counts. Stop with SIGTERM/Ctrl-C (state is kept in changelogs).",
    )

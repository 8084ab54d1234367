"""``traffic aggregate``: run the aggregator (light module: faust is imported only when it runs)."""

from __future__ import annotations

import argparse

from aggregator.settings import AggregatorSettings
from traffic.settings import KafkaSettings, TopicSettings, add_settings_arguments, settings_from_args


def _run(args: argparse.Namespace) -> int:
    from aggregator.app import run

    return run(settings_from_args(args, AggregatorSettings), settings_from_args(args, KafkaSettings), settings_from_args(args, TopicSettings))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``aggregate`` subcommand."""
    p = subparsers.add_parser(
        "aggregate",
        help="count vehicles: traffic.detections -> tracks -> crossings and interval counts (faust worker)",
        description="Consume detection events, track vehicles per camera, count line crossings and movements per "
        "interval, publish traffic.crossings and traffic.counts. Stop with SIGTERM/Ctrl-C (state is kept in changelogs).",
    )
    add_settings_arguments(p, AggregatorSettings, "aggregator")
    add_settings_arguments(p, KafkaSettings, "kafka")
    add_settings_arguments(p, TopicSettings, "topics")
    p.set_defaults(handler=_run)

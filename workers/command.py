"""``traffic worker``: consume frames, run YOLO, publish detection events.

Kept light: ultralytics, torch and kafka are imported only when the command runs.
"""

from __future__ import annotations

import argparse

from traffic.settings import KafkaSettings, TopicSettings, add_settings_arguments, settings_from_args
from workers.settings import WorkerSettings


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``worker`` subcommand with one option per setting."""
    parser = sub.add_parser(
        "worker",
        help="detection worker: frames topic -> YOLO -> detections topic (consumer group, at-least-once)",
        description=(
            "Polls micro-batches of JPEG frames from the frames topic in consumer group --group-id, runs the model, "
            "publishes one detection event per frame (also when empty) and commits offsets only after the broker "
            "acknowledged those events. Bad frames go to the DLQ topic with a reason. Serves /metrics /healthz /readyz "
            "on --metrics-port. SIGTERM: finish the batch, publish, commit, leave the group."
        ),
    )
    add_settings_arguments(parser, WorkerSettings, "worker")
    add_settings_arguments(parser, KafkaSettings, "kafka")
    add_settings_arguments(parser, TopicSettings, "topics")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from workers.service import serve

    return serve(
        settings_from_args(args, WorkerSettings),
        settings_from_args(args, KafkaSettings),
        settings_from_args(args, TopicSettings),
    )

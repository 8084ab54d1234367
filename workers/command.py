"""``traffic worker``: consume frames, run YOLO, publish detection events.

Kept light: ultralytics, torch and kafka are imported only when the command runs.
"""

from __future__ import annotations

import argparse

from traffic.settings import add_service_command, service_settings
from workers.settings import WorkerSettings


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``worker`` subcommand with one option per setting."""
    add_service_command(
        sub, "worker", WorkerSettings, "worker", _run,
        help="detection worker: frames topic -> YOLO -> detections topic (consumer group, at-least-once)",
        description=(
            "Polls micro-batches of JPEG frames from the frames topic in consumer group --group-id, runs the model, "
            "publishes one detection event per frame (also when empty) and commits offsets only after the broker "
            "acknowledged those events. Bad frames go to the DLQ topic with a reason. Serves /metrics /healthz /readyz "
            "on --metrics-port. SIGTERM: finish the batch, publish, commit, leave the group."
        ),
    )


def _run(args: argparse.Namespace) -> int:
    from workers.service import serve

    return serve(*service_settings(args, WorkerSettings))

"""``traffic ingest``: read the site's cameras and publish sampled JPEG frames to Kafka.

Kept light: the service (OpenCV, kafka-python) is imported only when the command runs.
"""

from __future__ import annotations

import argparse
import signal
from types import FrameType

from ingest.settings import IngestSettings
from traffic.settings import add_service_command, service_settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``ingest`` subcommand with one option per setting."""
    add_service_command(
        sub, "ingest", IngestSettings, "ingest", _run,
        help="read cameras (RTSP / HTTP-MJPEG / files) and publish sampled JPEG frames to Kafka",
        description=(
            "Reads every camera of the site file (or --cameras), samples at each camera's fps, resizes, "
            "JPEG-encodes and publishes to the frames topic. Serves /metrics /healthz /readyz on --metrics-port. "
            "Stops on SIGTERM/SIGINT (flushing within --shutdown-deadline-s), or when every file / --max-frames is done."
        ),
    )


def _run(args: argparse.Namespace) -> int:
    from ingest.service import IngestService

    service = IngestService(*service_settings(args, IngestSettings))

    def _on_signal(signum: int, _frame: FrameType | None) -> None:
        service.stop()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    return service.run()

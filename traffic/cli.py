"""The one command line: ``traffic <subcommand>``.

Subcommands of the services (``ingest``, ``worker``, ``aggregate``, ``count``) and of the developer
kit (``broker``, ``demo``; absent from the production image) are registered by each package's light
``command`` module, which imports nothing heavy until the
subcommand runs, so ``traffic --help`` stays fast. Errors that are the user's to fix
(configuration, unreachable broker) print one clear line and exit 2 (config) or 3 (broker).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from typing import Callable

from traffic.errors import BadInput, BrokerError, BrokerUnavailable, ConfigError, Retriable
from traffic.logs import configure_logging

log = logging.getLogger("traffic.cli")

SERVICE_COMMANDS = ("ingest.command", "workers.command", "aggregator.command", "offline.command", "devkit.command", "traffic.status")


def _topics(args: argparse.Namespace) -> int:
    from traffic.settings import connection_from_args
    from traffic.topics import create_topics

    result = create_topics(*connection_from_args(args))
    for name, state in result.items():
        print(f"{name}: {state}")
    refused = [name for name, state in result.items() if state == "not-authorized"]
    if refused:
        raise ConfigError(f"not authorized to create {', '.join(refused)}: the principal needs Create and Describe on them (docs/security.md)")
    return 0


def _schemas(args: argparse.Namespace) -> int:
    from traffic.wire import schema_documents

    folder = Path(__file__).parent / "schemas"
    stale = []
    for name, text in schema_documents().items():
        path = folder / name
        if args.action == "write":
            folder.mkdir(exist_ok=True)
            path.write_text(text)
            print(path)
        elif not path.exists() or path.read_text() != text:
            stale.append(name)
    if stale:
        print(f"out of date: {', '.join(stale)}; run `traffic schemas write`", file=sys.stderr)
        return 1
    return 0


def _site(args: argparse.Namespace) -> int:
    from traffic.site import load_site

    site = load_site(args.file)
    for intersection in site.intersections:
        for camera in intersection.cameras:
            print(
                f"{intersection.id}/{camera.id}: {len(camera.lines)} lines, {len(camera.approaches)} approaches, "
                f"{len(camera.movement_table())} movements"
            )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full parser; service subcommands are added by their own modules."""
    from traffic.settings import add_connection_arguments

    parser = argparse.ArgumentParser(
        prog="traffic",
        description="Streaming traffic analytics: cameras -> Kafka -> YOLO workers -> per-intersection counts.",
        epilog="Logs are JSON lines on stderr; set TRAFFIC_LOG_LEVEL=DEBUG for more.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("topics", help="create the pipeline's topics (idempotent)")
    p.add_argument("action", choices=["create"])
    add_connection_arguments(p)
    p.set_defaults(handler=_topics)

    p = sub.add_parser("schemas", help="write or check the JSON Schemas of the wire contracts")
    p.add_argument("action", choices=["write", "check"])
    p.set_defaults(handler=_schemas)

    p = sub.add_parser("site", help="validate a site configuration file and summarize it")
    p.add_argument("action", choices=["check"])
    p.add_argument("file", help="site YAML file")
    p.set_defaults(handler=_site)

    for module_name in SERVICE_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # service not present in this build
            raise
        register: Callable[[argparse._SubParsersAction], None] = module.register
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``traffic`` console script."""
    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except BadInput as exc:  # e.g. a video that cannot be decoded
        print(f"{exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 2
    except (BrokerUnavailable, BrokerError, Retriable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

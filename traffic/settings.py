"""Settings shared by every service, read from the environment (12-factor).

Each service adds its own settings object with its own prefix (``TRAFFIC_INGEST_``,
``TRAFFIC_WORKER_``, ``TRAFFIC_AGGREGATOR_``); the Kafka connection and topic names are common to
all and live here. Every field documents its unit and default; ``traffic <service> --help`` lists
them with their environment variable names.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from traffic.errors import ConfigError

_S = TypeVar("_S", bound=BaseSettings)


def shared_dir() -> Path:
    """Where the sample videos and model live (``TRAFFIC_SHARED_DIR``, default ``../shared``)."""
    import os

    return Path(os.environ.get("TRAFFIC_SHARED_DIR", Path(__file__).resolve().parent.parent.parent / "shared"))


class KafkaSettings(BaseSettings):
    """How to reach the Kafka cluster (``TRAFFIC_KAFKA_*``)."""

    model_config = SettingsConfigDict(env_prefix="TRAFFIC_KAFKA_", extra="forbid")

    bootstrap_servers: str = Field(default="", description="host:port[,host:port]; empty = not configured (the demo then starts a local broker)")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(default="PLAINTEXT", description="Kafka security protocol")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(default=None, description="SASL mechanism when the protocol is SASL_*")
    sasl_username: str | None = Field(default=None, description="SASL user name")
    sasl_password: SecretStr | None = Field(default=None, description="SASL password (never logged)")
    ssl_cafile: str | None = Field(default=None, description="CA bundle for SSL/SASL_SSL")
    request_timeout_ms: int = Field(default=30000, gt=0, description="client request timeout (ms)")
    retry_backoff_ms: int = Field(default=200, gt=0, description="first backoff after a failed request (ms)")

    def require_servers(self) -> list[str]:
        """Bootstrap servers as a list; ConfigError if unset."""
        servers = [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]
        if not servers:
            raise ConfigError("TRAFFIC_KAFKA_BOOTSTRAP_SERVERS is not set (e.g. kafka:9092)")
        return servers

    def kafka_python(self) -> dict[str, Any]:
        """Connection keyword arguments for kafka-python clients (see :func:`traffic.clients.connection`)."""
        from traffic.clients import connection

        return connection(self)

    def faust_broker_url(self) -> str:
        """Broker URL in faust's form (``kafka://h1:9092;h2:9092``); credentials: :func:`traffic.clients.faust_options`."""
        from traffic.clients import faust_options

        return str(faust_options(self)["broker"])


class TopicSettings(BaseSettings):
    """Topic names, partitions and retention (``TRAFFIC_TOPICS_*``); the defaults are those of docs/contracts.md ("Topics")."""

    model_config = SettingsConfigDict(env_prefix="TRAFFIC_TOPICS_", extra="forbid")

    frames: str = Field(default="traffic.frames", description="JPEG frames, key = camera")
    detections: str = Field(default="traffic.detections", description="detection events, key = camera")
    crossings: str = Field(default="traffic.crossings", description="counted vehicles, key = intersection")
    counts: str = Field(default="traffic.counts", description="interval counts, key = intersection")
    dlq: str = Field(default="traffic.dlq", description="refused input with reason headers (frames without their image, see dlq_keep_frame_images)")
    frames_dlq: str = Field(default="traffic.frames-dlq", description="refused frames with their image, kept as long as frames (only used with dlq_keep_frame_images)")
    dlq_keep_frame_images: bool = Field(default=False, description="keep refused frames' images in frames_dlq (frames retention) for debugging; default false: the dlq record keeps headers, reason, size and SHA-256 of the image, not the image")
    frames_partitions: int = Field(default=12, gt=0, description="partitions of the frames topic = most worker replicas")
    detections_partitions: int = Field(default=6, gt=0, description="partitions of the detections topic")
    output_partitions: int = Field(default=3, gt=0, description="partitions of crossings, counts, dlq and frames_dlq")
    replication_factor: int = Field(default=1, gt=0, description="replication factor of created topics")
    frames_retention_ms: int = Field(default=10 * 60 * 1000, gt=0, description="retention of frames and frames_dlq (ms): images of the public are not kept; segments roll every half of it, so deletion is never held back by an open segment")
    detections_retention_ms: int = Field(default=7 * 86400 * 1000, gt=0, description="detections retention (ms)")
    output_retention_ms: int = Field(default=90 * 86400 * 1000, gt=0, description="crossings and counts retention (ms)")
    dlq_retention_ms: int = Field(default=14 * 86400 * 1000, gt=0, description="dlq retention (ms)")
    max_message_bytes: int = Field(default=4 * 1024 * 1024, gt=0, description="max message size of the frames, dlq and frames_dlq topics (bytes)")


def load_settings(cls: type[_S], **overrides: Any) -> _S:
    """Build a settings object from the environment plus overrides; ConfigError on bad values."""
    try:
        return cls(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        problems = [
            f"{prefix}{str(err['loc'][0]).upper() if err['loc'] else ''}: {err['msg']} (got {err.get('input')!r})"
            for err in exc.errors()
        ]
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems)) from None


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type[BaseSettings], title: str) -> None:
    """Add one ``--option`` per settings field, with its environment variable and default in the help.

    Command-line values override the environment.
    """
    group = parser.add_argument_group(title, f"each option can also be set with the environment variable shown")
    prefix = cls.model_config.get("env_prefix", "")
    for name, field in cls.model_fields.items():
        env = f"{prefix}{name.upper()}"
        default = field.get_default(call_default_factory=True)
        if isinstance(default, SecretStr):
            default = "***"
        text = f"{field.description or ''} [env {env}; default {default!r}]"
        group.add_argument(f"--{name.replace('_', '-')}", dest=f"{cls.__name__}.{name}", default=None, help=text, metavar=name.upper())


def settings_from_args(args: argparse.Namespace, cls: type[_S]) -> _S:
    """Settings object from the environment, with the options given on the command line on top."""
    overrides = {
        key.split(".", 1)[1]: value for key, value in vars(args).items() if key.startswith(f"{cls.__name__}.") and value is not None
    }
    return load_settings(cls, **overrides)


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the Kafka connection and of the topic names: the same on every command that talks to the broker."""
    add_settings_arguments(parser, KafkaSettings, "kafka")
    add_settings_arguments(parser, TopicSettings, "topics")


def connection_from_args(args: argparse.Namespace) -> tuple[KafkaSettings, TopicSettings]:
    """Kafka and topic settings of a command declared with :func:`add_connection_arguments`."""
    return settings_from_args(args, KafkaSettings), settings_from_args(args, TopicSettings)


def add_service_command(
    sub: argparse._SubParsersAction, name: str, cls: type[BaseSettings], title: str,
    handler: Callable[[argparse.Namespace], int], *, help: str, description: str
) -> argparse.ArgumentParser:
    """A service's subcommand (``traffic ingest``, ``worker``, ``aggregate``): one option per setting of the
    service (group ``title``), then the connection options (:func:`add_connection_arguments`)."""
    parser = sub.add_parser(name, help=help, description=description)
    add_settings_arguments(parser, cls, title)
    add_connection_arguments(parser)
    parser.set_defaults(handler=handler)
    return parser


def service_settings(args: argparse.Namespace, cls: type[_S]) -> tuple[_S, KafkaSettings, TopicSettings]:
    """(service settings, Kafka, topics) of a command declared with :func:`add_service_command`, in the order the
    services' entry points take them."""
    return (settings_from_args(args, cls), *connection_from_args(args))

"""One exception hierarchy, caught by class.

``BadInput`` is a problem with data in the per-frame path: callers route it to the DLQ and go on.
``ConfigError`` is a problem with configuration: it fails at start-up with file, field and reason.
``Retriable`` is a state of the world (broker down, camera gone) that backoff may fix.
"""

from __future__ import annotations


class TrafficError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(TrafficError):
    """Bad configuration: a file, a field or an environment variable is wrong. Fatal at start-up."""


class BadInput(TrafficError, ValueError):
    """Bad data on the wire (undecodable frame, malformed event). Never fatal: DLQ and go on."""


class ContractError(BadInput):
    """A message does not satisfy its wire contract (see ``traffic.wire``).

    Attributes:
        reason: short machine-readable reason, used as the DLQ ``reason`` header and metric label.
    """

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class Retriable(TrafficError):
    """A transient condition; the caller should back off and retry."""


class BrokerUnavailable(Retriable):
    """The Kafka broker could not be reached."""


class BrokerError(TrafficError):
    """The local development broker could not be fetched, started or stopped."""

"""Structured (JSON lines) logging with secrets masked.

Every record is one JSON object with ``ts``, ``level``, ``logger``, ``msg`` and whatever
``extra={...}`` fields the caller added (``camera``, ``partition``...). A filter masks passwords in
URLs (``rtsp://user:***@host``), the values of secret environment variables and every secret
registered with :func:`register_secret` (the Kafka client factory registers the SASL password),
so a camera password or SASL credential never reaches a log line, whatever the caller passed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]*)@")
_SECRET_ENV = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|SASL)", re.IGNORECASE)
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_REGISTERED: set[str] = set()


def register_secret(value: str) -> None:
    """Mask ``value`` in every log line from now on (secrets that do not come from the environment)."""
    if len(value) >= 4:
        _REGISTERED.add(value)


def mask_secrets(text: str) -> str:
    """Replace URL passwords, values of secret-looking environment variables and registered secrets with ``***``."""
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    for name, value in os.environ.items():
        if len(value) >= 4 and _SECRET_ENV.search(name) and value in text:
            text = text.replace(value, "***")
    for value in _REGISTERED:
        if value in text:
            text = text.replace(value, "***")
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line; extra fields are kept, secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return mask_secrets(json.dumps(payload, default=str))


def configure_logging(level: str | None = None) -> None:
    """JSON logs on stderr at ``TRAFFIC_LOG_LEVEL`` (default INFO); idempotent."""
    root = logging.getLogger()
    level = (level or os.environ.get("TRAFFIC_LOG_LEVEL", "INFO")).upper()
    root.setLevel(level)
    for handler in root.handlers:
        if isinstance(handler.formatter, JsonFormatter):
            return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.handlers = [handler]
    for noisy in ("kafka", "aiokafka", "faust", "mode", "ultralytics"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

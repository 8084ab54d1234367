"""Timing a restarted service: what its JSON log says about its start-up phases."""

from __future__ import annotations

import json
from datetime import datetime, timezone


def log_ts(line: str) -> float:
    """Wall-clock seconds of a JSON log line's ``ts`` (UTC, milliseconds)."""
    ts = json.loads(line)["ts"]
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def phases(log: str, started_wall: float, marks: dict[str, str]) -> dict[str, float]:
    """Seconds from a process's start (``started_wall``, ``time.time()``) to the first log line of each ``marks`` message.

    ``marks`` maps a log message to the phase's name; phases whose line is absent are left out.
    """
    out: dict[str, float] = {}
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        for msg, name in marks.items():
            if name not in out and f'"msg": "{msg}"' in line:
                out[name] = round(log_ts(line) - started_wall, 1)
    return out

"""Is a capture time believable? Checked against the receiving service's own clock.

Event time drives tracking and the closing of count intervals, so one record from a camera with
a wrong clock (an RTC reset to 1970, a timezone applied twice, ``2**53`` from a broken encoder)
must not be taken at its word. Every service that receives capture times (the worker for frames,
the aggregator for detection events) refuses the ones outside a window around its own clock::

     refused: stale        accepted                               refused: future
    ------------------|------------------------------------|------------------> capture_ms
               now - max_age_s                       now + future_skew_s

``future_skew_s`` covers clock differences between hosts and files ingested faster than real
time (their capture times run ahead of the clock by up to the recording's length);
``max_age_s`` covers backlogs and replays (the detections topic keeps 7 days by default).
Refused records go to the DLQ with reason ``capture_time_future`` or ``capture_time_stale``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from traffic.errors import ContractError

log = logging.getLogger(__name__)

DEFAULT_FUTURE_SKEW_S = 300.0
DEFAULT_MAX_AGE_S = 7 * 86400.0
FUTURE = "capture_time_future"
STALE = "capture_time_stale"


@dataclass(frozen=True, slots=True)
class CaptureTimeLimits:
    """The window of believable capture times around the receiving service's clock.

    Attributes:
        future_skew_s: how far ahead of this service's clock a capture time may be (s).
        max_age_s: how far behind it a capture time may be (s).
    """

    future_skew_s: float = DEFAULT_FUTURE_SKEW_S
    max_age_s: float = DEFAULT_MAX_AGE_S

    def __post_init__(self) -> None:
        assert self.future_skew_s >= 0 and self.max_age_s > 0, "future_skew_s must be >= 0 and max_age_s > 0"

    def check(self, capture_ms: int, now_ms: int | None = None) -> None:
        """Raise ContractError (reason ``capture_time_future`` / ``capture_time_stale``) when out of bounds."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        offset_s = (capture_ms - now) / 1000
        if offset_s > self.future_skew_s:
            raise ContractError(f"capture time {capture_ms} is {offset_s:.0f} s ahead of this service's clock (limit {self.future_skew_s:.0f} s)", FUTURE)
        if -offset_s > self.max_age_s:
            raise ContractError(f"capture time {capture_ms} is {-offset_s:.0f} s older than this service's clock allows (limit {self.max_age_s:.0f} s)", STALE)


@dataclass
class ClockReport:
    """Says once per camera and ``every_s`` that a camera's clock looks wrong (a log line, not one per frame).

    Why: a camera with a wrong clock sends every frame out of bounds; one warning a minute with
    the offset and the count since the last warning is what an operator can act on.
    """

    every_s: float = 60.0
    _last: dict[str, float] = field(default_factory=dict)
    _since: dict[str, int] = field(default_factory=dict)

    def refused(self, camera: str, error: ContractError, capture_ms: int, service: str) -> None:
        """Record one refused capture time of ``camera``; log when the camera has not been reported recently."""
        self._since[camera] = self._since.get(camera, 0) + 1
        now = time.monotonic()
        if now - self._last.get(camera, -1e18) < self.every_s:
            return
        self._last[camera] = now
        log.warning(
            "camera clock looks wrong: capture times refused",
            extra={"camera": camera, "reason": error.reason, "capture_ms": capture_ms, "offset_s": round(capture_ms / 1000 - time.time(), 1),
                   "refused_since_last_report": self._since.pop(camera), "service": service},
        )  # fmt: skip

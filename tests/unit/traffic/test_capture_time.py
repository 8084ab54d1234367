"""The capture-time window around the receiving service's clock."""

from __future__ import annotations

import logging

import pytest

from traffic.capture_time import FUTURE, STALE, CaptureTimeLimits, ClockReport
from traffic.errors import ContractError

NOW = 1_780_000_000_000


@pytest.mark.parametrize(
    ("offset_ms", "reason"),
    [
        (0, None),  # now
        (300_000, None),  # exactly the future skew
        (300_001, FUTURE),  # 1 ms more
        (2**53 - NOW, FUTURE),  # a broken encoder
        (-7 * 86_400_000, None),  # exactly the max age
        (-7 * 86_400_000 - 1, STALE),
        (-NOW, STALE),  # 1970: an RTC without battery
    ],
)
def test_window(offset_ms: int, reason: str | None) -> None:
    limits = CaptureTimeLimits(future_skew_s=300, max_age_s=7 * 86400)
    if reason is None:
        limits.check(NOW + offset_ms, NOW)
    else:
        with pytest.raises(ContractError) as info:
            limits.check(NOW + offset_ms, NOW)
        assert info.value.reason == reason


def test_clock_report_logs_once_per_camera_and_interval(caplog: pytest.LogCaptureFixture) -> None:
    report = ClockReport(every_s=3600)
    error = ContractError("x", FUTURE)
    with caplog.at_level(logging.WARNING, logger="traffic.capture_time"):
        for _ in range(5):
            report.refused("cam-1", error, 2**53, "worker")
        report.refused("cam-2", error, 2**53, "worker")
    lines = [r for r in caplog.records if "clock" in r.getMessage()]
    assert [r.camera for r in lines] == ["cam-1", "cam-2"]  # type: ignore[attr-defined]

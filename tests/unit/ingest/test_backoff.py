"""Reconnect backoff: doubling, cap, jitter bounds, reset."""

from __future__ import annotations

import random

import pytest

from ingest.backoff import Backoff


@pytest.mark.parametrize(
    ("initial_s", "max_s", "calls", "expected"),
    [
        # doubling from the first wait
        (0.5, 30.0, 5, [0.5, 1.0, 2.0, 4.0, 8.0]),
        # capped at max_s
        (1.0, 5.0, 5, [1.0, 2.0, 4.0, 5.0, 5.0]),
        # initial equal to max: constant waits
        (2.0, 2.0, 3, [2.0, 2.0, 2.0]),
    ],
)
def test_without_jitter(initial_s: float, max_s: float, calls: int, expected: list[float]) -> None:
    backoff = Backoff(initial_s, max_s, jitter=0.0)
    assert [backoff.next_s() for _ in range(calls)] == expected


@pytest.mark.parametrize(
    ("jitter", "low_factor"),
    [
        # equal jitter: between half and all of the ceiling
        (0.5, 0.5),
        # full jitter: anywhere between 0 and the ceiling
        (1.0, 0.0),
    ],
)
def test_jitter_stays_within_bounds_and_varies(jitter: float, low_factor: float) -> None:
    backoff = Backoff(1.0, 8.0, jitter=jitter, rng=random.Random(7))
    waits = []
    for _ in range(200):
        ceiling = backoff.ceiling_s()
        wait = backoff.next_s()
        assert ceiling * low_factor <= wait <= ceiling
        waits.append(wait)
        if backoff.attempts > 6:
            backoff.reset()
    assert len(set(round(w, 6) for w in waits)) > 50  # really random, not a constant factor


def test_reset_goes_back_to_initial() -> None:
    backoff = Backoff(0.25, 10.0, jitter=0.0)
    for _ in range(10):
        backoff.next_s()
    assert backoff.next_s() == 10.0  # capped after many attempts (no overflow)
    backoff.reset()
    assert backoff.next_s() == 0.25


def test_huge_attempt_count_does_not_overflow() -> None:
    backoff = Backoff(0.5, 30.0, jitter=0.0)
    backoff.attempts = 10_000
    assert backoff.next_s() == 30.0

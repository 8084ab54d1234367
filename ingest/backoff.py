"""Exponential backoff with jitter, for reconnecting cameras and the broker.

Why jitter: after a network blip every camera of a site drops at once; without jitter they would
all hammer the VMS / camera again at the same instants.
"""

from __future__ import annotations

import random


class Backoff:
    """Waits ``initial_s * 2**n`` capped at ``max_s``, each scaled by a random factor in ``[1 - jitter, 1]``.

    Args:
        initial_s: first wait (s).
        max_s: longest wait (s).
        jitter: fraction of the wait that is random (0 = none, 0.5 = "equal jitter").
        rng: random source (tests pass a seeded one).
    """

    def __init__(self, initial_s: float, max_s: float, jitter: float = 0.5, rng: random.Random | None = None) -> None:
        assert 0 < initial_s <= max_s, "need 0 < initial_s <= max_s"
        assert 0.0 <= jitter <= 1.0, "jitter is a fraction"
        self.initial_s = initial_s
        self.max_s = max_s
        self.jitter = jitter
        self.attempts = 0
        self._rng = rng or random.Random()

    def ceiling_s(self) -> float:
        """The wait before jitter for the next attempt (s)."""
        return min(self.max_s, self.initial_s * 2.0 ** min(self.attempts, 62))

    def next_s(self) -> float:
        """The wait before the next attempt (s); each call doubles the ceiling."""
        ceiling = self.ceiling_s()
        self.attempts += 1
        return ceiling * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        """Back to ``initial_s`` after a success."""
        self.attempts = 0

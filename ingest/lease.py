"""How long this replica may keep reading the cameras the group gave it, from what the coordinator said.

Why: a replica cut off from the group coordinator (network partition, a frozen process, a broker
failover) is expelled by the coordinator once its session times out, and its cameras are given to
others. It cannot be told so, so it must stop by itself *before* that can happen. Everything is
measured on this process's monotonic clock, from the *send* time of requests the coordinator
answered - the coordinator received them later, so its own timers started later than ours::

    ours:         send hb ───(answered NONE)──────────────────────── lease ends ─ margin ─┐
    coordinator:        recv hb ─── session.timeout ───────────────────────────────────── expel ──> reassign
                         (later)                                                           (later still)

The coordinator removes a member in three ways, each bounded here:

* no heartbeat for ``session_timeout``: any answered heartbeat (NONE, or REBALANCE_IN_PROGRESS,
  which also resets the member's session timer) or completed SyncGroup restarts that timer, so
  the lease ends at ``alive_sent + session_timeout - margin``;
* not rejoining within the rebalance timeout once a rebalance began: a rebalance can only begin
  after the last heartbeat answered NONE (or SyncGroup completed) was processed, so the lease ends at
  ``ok_sent + rebalance_timeout - margin`` at the latest;
* the client's own leave when ``poll()`` was not called for ``max_poll_interval`` (= the rebalance
  timeout here): ``polled + rebalance_timeout - margin``.

``margin`` absorbs the time from a lease check to the last frame handed to the producer and any
difference in clock rates. Pure and thread-safe; :mod:`ingest.membership` feeds it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class Lease:
    """The end of this replica's right to read its assigned cameras (monotonic seconds).

    Args:
        session_timeout_s: the group session timeout the member asked for (s).
        rebalance_timeout_s: the rebalance timeout (kafka-python's ``max_poll_interval_ms``) (s).
        margin_s: safety margin subtracted from every bound (s).
        clock: monotonic clock (tests pass their own).
    """

    def __init__(
        self,
        session_timeout_s: float,
        rebalance_timeout_s: float,
        margin_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert 0 <= margin_s < session_timeout_s <= rebalance_timeout_s, "need 0 <= margin < session <= rebalance timeout"
        self.session_timeout_s = session_timeout_s
        self.rebalance_timeout_s = rebalance_timeout_s
        self.margin_s = margin_s
        self._clock = clock
        self._lock = threading.Lock()
        self._ok_sent = -math.inf  # last heartbeat answered NONE, or SyncGroup answered NONE
        self._alive_sent = -math.inf  # last heartbeat answered NONE or REBALANCE_IN_PROGRESS
        self._polled = -math.inf  # last consumer poll() started

    def confirmed(self, sent_at: float) -> None:
        """A heartbeat or SyncGroup sent at ``sent_at`` was answered without error: still a member, group stable."""
        with self._lock:
            self._ok_sent = max(self._ok_sent, sent_at)
            self._alive_sent = max(self._alive_sent, sent_at)

    def kept_alive(self, sent_at: float) -> None:
        """A heartbeat sent at ``sent_at`` was answered REBALANCE_IN_PROGRESS: session timer reset, rebalance running."""
        with self._lock:
            self._alive_sent = max(self._alive_sent, sent_at)

    def polled(self, at: float | None = None) -> None:
        """The membership loop called ``poll()`` (kafka-python leaves the group after max_poll_interval without one)."""
        with self._lock:
            self._polled = max(self._polled, self._clock() if at is None else at)

    def revoke(self) -> None:
        """Membership is known to be lost (expelled, left, closed): no lease until the coordinator confirms again."""
        with self._lock:
            self._ok_sent = self._alive_sent = -math.inf

    def valid_until(self) -> float:
        """Monotonic time at which the lease ends (``-inf`` before the first confirmation)."""
        with self._lock:
            return (
                min(
                    self._alive_sent + self.session_timeout_s,
                    self._ok_sent + self.rebalance_timeout_s,
                    self._polled + self.rebalance_timeout_s,
                )
                - self.margin_s
            )

    def remaining_s(self) -> float:
        """Seconds of lease left (negative or ``-inf`` when it has ended)."""
        return self.valid_until() - self._clock()

    def valid(self) -> bool:
        """True while this replica may read and publish its assigned cameras."""
        return self.remaining_s() > 0

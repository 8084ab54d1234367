"""The session gate: a camera switches to a new stream session only when the new session is real.

The counter treats an event of a new session as "the stream restarted": it ends every live track
of the current session and ignores the current session's events from then on. One stray event
with a foreign session id (a misconfigured second ingester, a replayed test file, garbage)
would therefore stop a camera's counting. The gate sits in front of the counter and holds the
events of a candidate session back until the candidate is confirmed::

    current session s1:  ... 41 42 43 44 45 46 ...          (fed to the counter)
    candidate x:                 x7                          held (1 of confirm_events)
    s1 goes on:                     44 45 46                 3 fresh s1 events: x7 is foreign -> DLQ

    s1 stops (ingester restarted without an end marker):
    candidate s2:                    0  1  2                 held, held, 3rd: confirmed -> all fed

    s1 ended (its end-of-session marker was counted):
    candidate s2:                    0                       seq 0 after an end: confirmed at once

A confirmed switch feeds the held events in their arrival order, so the counter sees exactly
the stream it would have seen without the gate, only a few events later; counts are unchanged.
Events of sessions that were current before are passed on (the counter drops them as
duplicates). Deterministic (no clock), bounded (at most ``confirm_events`` events held), and
picklable: its state goes into the camera's checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from traffic.wire import DetectionEvent

PAST_SESSIONS_KEPT = 16
FOREIGN = "foreign_session"


@dataclass(frozen=True, slots=True)
class Held:
    """An event held back, with what the DLQ needs should it be refused (the input, unchanged)."""

    event: DetectionEvent
    value: bytes
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    source: tuple[str, int, int] = ("", -1, -1)
    """(topic, partition, offset) it was read from."""


@dataclass(frozen=True, slots=True)
class Gated:
    """What to do after one offered event.

    Attributes:
        feed: events for the counter, in this order.
        refused: held events of a session found to be foreign: to the DLQ (reason ``foreign_session``).
    """

    feed: tuple[DetectionEvent, ...] = ()
    refused: tuple[Held, ...] = ()


@dataclass
class SessionGate:
    """Session switches of one camera (see the module docstring).

    Args:
        confirm_events: events of a candidate session that confirm it.
        foreign_after: fresh events of the current session (seq >= the counter's next seq) that,
            arriving while a candidate waits, show the candidate is foreign.
    """

    confirm_events: int = 3
    foreign_after: int = 3
    candidate: str | None = None
    held: list[Held] = field(default_factory=list)
    strikes: int = 0
    past: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        assert self.confirm_events >= 1 and self.foreign_after >= 1, "confirm_events and foreign_after must be >= 1"

    def offer(self, held: Held, current: str | None, next_seq: int, ended: bool) -> Gated:
        """Decide about one event, given the counter's position (session, next seq, stream ended)."""
        event = held.event
        if current is None or event.session in self.past:
            return Gated(feed=(event,))
        if event.session == current:
            refused: tuple[Held, ...] = ()
            if self.candidate is not None and event.seq >= next_seq:
                self.strikes += 1
                if self.strikes >= self.foreign_after:
                    refused = self._drop()
            return Gated(feed=(event,), refused=refused)
        refused = self._drop() if self.candidate not in (None, event.session) else ()
        self.candidate = event.session
        self.held.append(held)
        if len(self.held) >= self.confirm_events or (ended and any(h.event.seq == 0 for h in self.held)):
            feed = tuple(h.event for h in self.held)
            self.past = (self.past + [current])[-PAST_SESSIONS_KEPT:]
            self._drop()
            return Gated(feed=feed, refused=refused)
        return Gated(refused=refused)

    @property
    def waiting(self) -> int:
        """Events held now."""
        return len(self.held)

    def _drop(self) -> tuple[Held, ...]:
        out = tuple(self.held)
        self.candidate, self.held, self.strikes = None, [], 0
        return out

"""One camera's events in order, once each: de-duplication and reordering by (session, seq).

Event order::

    arriving seq:   0 1 2 2 3 5 6 4 7 ...
                          ^     ^^^ ^
                          |      |  +-- fills the gap: 4, 5, 6 are released in order
                          |      +----- seq > expected: held in a bounded reorder buffer
                          +------------ seq < expected: duplicate (a redelivery), dropped, counted

    A gap that persists (the frame went to the DLQ and its event never comes) is skipped once the
    buffer holds ``reorder_limit`` events: deterministic, never wall-clock based. A new session
    expects seq 0; joining one mid-stream is the same as a long gap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from traffic.wire import DetectionEvent

log = logging.getLogger(__name__)

DEFAULT_REORDER_LIMIT = 50
FINISHED_SESSIONS_KEPT = 16


@dataclass
class Released:
    """What one arriving event lets through.

    Attributes:
        ended_session: the session that ended because a new one began: ``ended_events`` (what was
            still held of it) come first, then its tracks end, then ``events`` of the new session.
        ended_events: the ended session's last events, in order.
        events: events now in order (oldest first).
    """

    ended_session: str | None = None
    ended_events: list[DetectionEvent] = field(default_factory=list)
    events: list[DetectionEvent] = field(default_factory=list)


class EventOrder:
    """The ordering state of one camera (bounded: at most ``reorder_limit`` events held).

    Attributes:
        session: the session being counted.
        next_seq: the next seq expected in it.
        duplicates: events dropped as duplicates (redeliveries, events of finished sessions).
        skipped: missing seqs skipped over (frames that never produced an event).
    """

    def __init__(self, camera_id: str, reorder_limit: int = DEFAULT_REORDER_LIMIT) -> None:
        assert reorder_limit >= 1, "reorder_limit must be >= 1"
        self.camera_id = camera_id
        self.reorder_limit = reorder_limit
        self.session: str | None = None
        self.next_seq = 0
        self.duplicates = 0
        self.skipped = 0
        self._buffer: dict[int, DetectionEvent] = {}
        self._finished: list[str] = []

    @property
    def pending(self) -> int:
        """Events held waiting for a missing seq."""
        return len(self._buffer)

    def add(self, event: DetectionEvent) -> Released:
        """Take one event in arrival order; return what is now in order."""
        out = Released()
        if event.session != self.session:
            if event.session in self._finished:
                self.duplicates += 1  # a late redelivery from a stream that has restarted since
                return out
            if self.session is not None:
                out.ended_events = self.flush()
                out.ended_session = self.session
                self._finished = (self._finished + [self.session])[-FINISHED_SESSIONS_KEPT:]
            self.session, self.next_seq, self._buffer = event.session, 0, {}
        if event.seq < self.next_seq or event.seq in self._buffer:
            self.duplicates += 1
            return out
        self._buffer[event.seq] = event
        out.events += self._drain()
        if len(self._buffer) >= self.reorder_limit:
            first = min(self._buffer)
            self.skipped += first - self.next_seq
            log.info("skipping missing events", extra={"camera": self.camera_id, "session": self.session, "from_seq": self.next_seq, "to_seq": first})
            self.next_seq = first
            out.events += self._drain()
        return out

    def flush(self) -> list[DetectionEvent]:
        """Release everything held, skipping the gaps (end of stream)."""
        out: list[DetectionEvent] = []
        while self._buffer:
            first = min(self._buffer)
            self.skipped += first - self.next_seq
            self.next_seq = first
            out += self._drain()
        return out

    def _drain(self) -> list[DetectionEvent]:
        out: list[DetectionEvent] = []
        while self.next_seq in self._buffer:
            out.append(self._buffer.pop(self.next_seq))
            self.next_seq += 1
        return out

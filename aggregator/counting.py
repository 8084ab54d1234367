"""Per-camera counting: ordered, de-duplicated events -> tracks -> line crossings and movements.

:class:`CameraCounter` holds everything one camera needs and nothing else, so the streaming app
can keep one per camera (and snapshot it), and the offline ``traffic count`` command can run the
exact same code over a video: both give the same counts for the same events.

Event order::

    arriving seq:   0 1 2 2 3 5 6 4 7 ...
                          ^     ^^^ ^
                          |      |  +-- fills the gap: 4, 5, 6 are processed in order
                          |      +----- seq > expected: held in a bounded reorder buffer
                          +------------ seq < expected: duplicate (a redelivery), ignored, counted

    A gap that persists (the frame went to the DLQ and its event never comes) is skipped once the
    buffer holds ``reorder_limit`` events: deterministic, never wall-clock based. A new session
    expects seq 0; joining one mid-stream is the same as a long gap.

All time inside the counter is the events' ``capture_ms``; never the wall clock.
"""

from __future__ import annotations

import logging
import pickle
from collections import Counter
from dataclasses import dataclass, field

from aggregator.geometry import LineGeometry, LineSideState, bottom_centre, point_in_polygon, step_line
from aggregator.tracking import CameraTracker, TrackedObject
from traffic.errors import ContractError
from traffic.site import Site
from traffic.wire import CrossingEvent, DetectionEvent

__all__ = ["CameraCounter", "TrackedObject", "TrackState"]

log = logging.getLogger(__name__)

DEFAULT_REORDER_LIMIT = 50
FINISHED_SESSIONS_KEPT = 16
SNAPSHOT_VERSION = 1
# What changes while counting; everything else comes from the site configuration at restore time.
_DYNAMIC = ("_session", "_expected", "_buffer", "_finished_sessions", "_tracker", "_tracks", "duplicates", "skipped", "events", "last_capture_ms", "stream_ended")


@dataclass(slots=True)
class TrackState:
    """What the counter remembers about one track; bounded (no position history).

    Attributes:
        first_ms: capture time of its first frame.
        last_seen_ms: capture time of its last frame.
        labels: label -> frames seen with it (at most one entry per class).
        lines: line id -> side state for the hysteresis.
        counted_lines: lines this track was already counted on.
        entry: first approach zone its ground point was in.
        left_entry: it has been outside its entry zone since.
        last_zone: the last approach zone it was in after leaving its entry zone.
        in_zone: the zone it is in now (None = in no zone).
        movement_done: its movement was decided (counted or not).
    """

    first_ms: int
    last_seen_ms: int
    labels: Counter[str] = field(default_factory=Counter)
    lines: dict[str, LineSideState] = field(default_factory=dict)
    counted_lines: set[str] = field(default_factory=set)
    entry: str | None = None
    left_entry: bool = False
    last_zone: str | None = None
    in_zone: str | None = None
    movement_done: bool = False

    @property
    def vehicle_class(self) -> str:
        """Most frequent label over the track's life (ties: the label seen first)."""
        return self.labels.most_common(1)[0][0]


class CameraCounter:
    """Everything one camera needs: de-duplication/ordering by (session, seq), tracker, line crossings, movements.

    Args:
        site: the site configuration.
        camera_id: the camera; ConfigError if it is not in ``site``.
        reorder_limit: events held while waiting for a missing seq before skipping the gap.

    Attributes:
        duplicates: how many events were ignored as duplicates (redeliveries, finished sessions).
        skipped: how many missing seqs were skipped over (frames that never produced an event).
        events: how many events were processed (in order, once each).
    """

    def __init__(self, site: Site, camera_id: str, reorder_limit: int = DEFAULT_REORDER_LIMIT) -> None:
        assert reorder_limit >= 1, "reorder_limit must be >= 1"
        intersection, camera = site.camera(camera_id)
        self.camera_id = camera_id
        self.intersection_id = intersection.id
        self._camera = camera
        self._classes = tuple(site.counting.classes)
        self._timeout_ms = int(round(site.counting.track_timeout_s * 1000))
        self._hysteresis = site.counting.line_hysteresis
        self._reorder_limit = reorder_limit
        self._lines = [(line, LineGeometry(line.points[0], line.points[1])) for line in camera.lines]
        self._zones = [(a.id, [tuple(p) for p in a.polygon]) for a in camera.approaches]
        self._report_labels = {a.id: a.report_label for a in camera.approaches}
        self._movements = camera.movement_table()
        self._session: str | None = None
        self._expected = 0
        self._buffer: dict[int, DetectionEvent] = {}
        self._finished_sessions: list[str] = []
        self.stream_ended = False  # the current session's end marker was processed: nothing more will come
        self.last_tracked: list[TrackedObject] = []  # tracks of the last processed event (not part of the state)
        self._tracker: CameraTracker | None = None
        self._tracks: dict[int, TrackState] = {}
        self.duplicates = 0
        self.skipped = 0
        self.events = 0
        self.last_capture_ms: int | None = None

    # -- public API ------------------------------------------------------------------------------
    @property
    def active_tracks(self) -> int:
        """Tracks alive now (seen within the track timeout)."""
        return len(self._tracks)

    @property
    def session(self) -> str | None:
        """The stream session being counted."""
        return self._session

    @property
    def next_seq(self) -> int:
        """The next seq expected in the current session."""
        return self._expected

    @property
    def pending(self) -> int:
        """Events held in the reorder buffer, waiting for a missing seq."""
        return len(self._buffer)

    def snapshot(self) -> bytes:
        """The counting state (position, reorder buffer, tracker, tracks) as bytes, without the configuration.

        Why: the streaming app keeps it in a table with a changelog, so a restarted aggregator goes
        on exactly where it stopped (same track ids, same de-duplication position).
        """
        return pickle.dumps((SNAPSHOT_VERSION, {name: getattr(self, name) for name in _DYNAMIC}), protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def restore(cls, site: Site, camera_id: str, data: bytes, reorder_limit: int = DEFAULT_REORDER_LIMIT) -> "CameraCounter":
        """A counter configured from ``site`` with the state of :meth:`snapshot` (our own changelog: trusted)."""
        counter = cls(site, camera_id, reorder_limit)
        version, state = pickle.loads(data)  # noqa: S301 - written by this app to its own changelog topic
        if version != SNAPSHOT_VERSION:
            log.warning("counter snapshot of another version ignored", extra={"camera": camera_id, "version": version})
            return counter
        for name in _DYNAMIC:
            if name in state:  # fields added later keep their defaults
                setattr(counter, name, state[name])
        return counter

    def update(self, event: DetectionEvent) -> list[CrossingEvent]:
        """Take one event in arrival order; return the crossings and movements it lets us decide.

        Duplicates return ``[]``; an event ahead of a gap may return ``[]`` now and its crossings
        come with the event that fills the gap (or when the reorder buffer overflows).
        """
        if event.camera != self.camera_id:
            raise ContractError(f"event of camera {event.camera!r} given to the counter of {self.camera_id!r}", "wrong_camera")
        out: list[CrossingEvent] = []
        if event.session != self._session:
            if event.session in self._finished_sessions:
                self.duplicates += 1  # a late redelivery from a stream that has restarted since
                return out
            if self._session is not None:
                out += self._end_session()
            self._start_session(event.session)
        if event.seq < self._expected or event.seq in self._buffer:
            self.duplicates += 1
            return out
        self._buffer[event.seq] = event
        out += self._drain()
        if len(self._buffer) >= self._reorder_limit:
            first = min(self._buffer)
            self.skipped += first - self._expected
            log.info(
                "skipping missing events",
                extra={"camera": self.camera_id, "session": self._session, "from_seq": self._expected, "to_seq": first},
            )
            self._expected = first
            out += self._drain()
        return out

    def finish(self) -> list[CrossingEvent]:
        """End of stream: process what waits in the reorder buffer, end all live tracks, decide their movements.

        The session stays current (a later event of it continues with new track ids).
        """
        out: list[CrossingEvent] = []
        while self._buffer:
            first = min(self._buffer)
            self.skipped += first - self._expected
            self._expected = first
            out += self._drain()
        return out + self._end_all_tracks(self.last_capture_ms or 0)

    def _end_all_tracks(self, time_ms: int) -> list[CrossingEvent]:
        out: list[CrossingEvent] = []
        for track_id in sorted(self._tracks):
            out += self._end_track(track_id, self._tracks[track_id], time_ms)
        self._tracks.clear()
        if self._tracker is not None:
            self._tracker.end_all()
        return out

    # -- internals -------------------------------------------------------------------------------
    def _start_session(self, session: str) -> None:
        self._session = session
        self.stream_ended = False
        # Expect seq 0 even when a later seq arrives first (workers racing at the stream's start);
        # joining a session mid-stream (after retention) costs one reorder-buffer fill, then skips.
        self._expected = 0
        self._buffer = {}
        self._tracks = {}
        self._tracker = CameraTracker(self._camera.fps, self._timeout_ms / 1000, self._classes)

    def _end_session(self) -> list[CrossingEvent]:
        out = self.finish()
        assert self._session is not None
        self._finished_sessions = (self._finished_sessions + [self._session])[-FINISHED_SESSIONS_KEPT:]
        return out

    def _drain(self) -> list[CrossingEvent]:
        out: list[CrossingEvent] = []
        while self._expected in self._buffer:
            event = self._buffer.pop(self._expected)
            self._expected += 1
            out += self._process(event)
        return out

    def _process(self, event: DetectionEvent) -> list[CrossingEvent]:
        assert self._tracker is not None
        self.events += 1
        now = event.capture_ms
        self.last_capture_ms = now if self.last_capture_ms is None else max(self.last_capture_ms, now)
        out: list[CrossingEvent] = []
        self.last_tracked = self._tracker.update(event)  # for drawing (aggregator.annotate); never counted from
        for obj in self.last_tracked:
            state = self._tracks.get(obj.track_id)
            if state is None:
                state = self._tracks[obj.track_id] = TrackState(first_ms=now, last_seen_ms=now)
            state.last_seen_ms = now
            state.labels[obj.label] += 1
            out += self._step(obj.track_id, state, bottom_centre(obj.box), now)
        for track_id in [t for t, s in self._tracks.items() if now - s.last_seen_ms > self._timeout_ms]:
            out += self._end_track(track_id, self._tracks.pop(track_id), now)
        if event.end_of_session:  # the ingester's end marker (in seq order): the stream is over, its tracks end here
            out += self._end_all_tracks(now)
            self.stream_ended = True
        return out

    def _step(self, track_id: int, state: TrackState, point: tuple[float, float], now: int) -> list[CrossingEvent]:
        out: list[CrossingEvent] = []
        for line, geometry in self._lines:
            side_state = state.lines.get(line.id)
            if side_state is None:
                side_state = state.lines[line.id] = LineSideState()
            crossed = step_line(side_state, geometry, point, self._hysteresis)
            if not crossed or line.id in state.counted_lines:
                continue
            direction = "in" if crossed > 0 else "out"
            if line.count not in ("both", direction):
                continue
            state.counted_lines.add(line.id)
            label = line.in_label if crossed > 0 else line.out_label
            out.append(self._crossing(track_id, state, now, kind="line", key=line.id, line=line.id, direction=label))
        zone = next((zone_id for zone_id, polygon in self._zones if point_in_polygon(point, polygon)), None)
        previous_zone, state.in_zone = state.in_zone, zone
        if state.movement_done:
            return out
        if state.entry is None:
            state.entry = zone
            return out
        if zone != state.entry:
            state.left_entry = True
        if state.left_entry and zone is not None:
            state.last_zone = zone
        if state.left_entry and zone is None and previous_zone is not None and state.last_zone is not None:
            out += self._decide_movement(track_id, state, now)  # it has just left its exit zone
        return out

    def _end_track(self, track_id: int, state: TrackState, now: int) -> list[CrossingEvent]:
        if state.movement_done or not state.left_entry or state.last_zone is None:
            return []
        return self._decide_movement(track_id, state, now)

    def _decide_movement(self, track_id: int, state: TrackState, now: int) -> list[CrossingEvent]:
        state.movement_done = True
        assert state.entry is not None and state.last_zone is not None
        movement = self._movements.get((state.entry, state.last_zone))
        if movement is None:
            log.debug("no movement for zone pair", extra={"camera": self.camera_id, "entry": state.entry, "exit": state.last_zone})
            return []
        return [
            self._crossing(
                track_id, state, now, kind="movement", key=f"{state.entry}>{state.last_zone}",
                approach=state.entry, exit=state.last_zone, movement=movement, direction=self._report_labels[state.entry],
            )
        ]  # fmt: skip

    def _crossing(self, track_id: int, state: TrackState, now: int, kind: str, key: str, **fields: str) -> CrossingEvent:
        assert self._session is not None
        return CrossingEvent(
            event_id=f"{self.camera_id}:{self._session}:{track_id}:{key}",
            kind=kind,  # type: ignore[arg-type]
            intersection=self.intersection_id,
            camera=self.camera_id,
            session=self._session,
            track_id=track_id,
            vehicle_class=state.vehicle_class,
            time_ms=now,
            **fields,
        )

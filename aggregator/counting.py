"""Per-camera counting: ordered, de-duplicated events -> tracks -> line crossings and movements.

:class:`CameraCounter` holds everything one camera needs and nothing else, so the streaming app
can keep one per camera (and checkpoint it), and the offline ``traffic count`` command runs the
exact same code over a video: both give the same counts for the same events.

    event (seq order, aggregator.ordering)
      -> Detections in pixels (traffic.detections)
      -> riders dropped, one box per vehicle (aggregator.detection_cleanup)
      -> tracker (aggregator.tracking)                      -> tracked Detections
      -> per track: ground point, class votes (aggregator.trajectory)
      -> line crossings with hysteresis (aggregator.geometry), counted at once
      -> movements when the track ends (aggregator.movements)

All time inside the counter is the events' ``capture_ms``; never the wall clock.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable

import numpy as np

from aggregator.detection_cleanup import drop_riders, merge_duplicates
from aggregator.geometry import LineGeometry, LineSideState, Point, step_line
from aggregator.movements import MovementRules, decide
from aggregator.ordering import DEFAULT_REORDER_LIMIT, EventOrder
from aggregator.tracking import CameraTracker
from aggregator.trajectory import TrackState
from traffic.detections import Detections
from traffic.errors import ContractError
from traffic.site import Site
from traffic.wire import CrossingEvent, DetectionEvent

__all__ = ["CameraCounter", "Observer", "TrackState"]

log = logging.getLogger(__name__)

SNAPSHOT_VERSION = 2
# What changes while counting; everything else comes from the site configuration at restore time.
_DYNAMIC = ("_order", "_tracker", "_tracks", "events", "last_capture_ms", "stream_ended")

Observer = Callable[[DetectionEvent, Detections, list[CrossingEvent]], None]
"""Called for every processed event with its tracked detections (pixels) and the crossings it gave."""


class CameraCounter:
    """Everything one camera needs: ordering by (session, seq), tracker, line crossings, movements.

    Args:
        site: the site configuration.
        camera_id: the camera; ConfigError if it is not in ``site``.
        reorder_limit: events held while waiting for a missing seq before skipping the gap.

    Attributes:
        events: how many events were processed (in order, once each).
        last_capture_ms: the latest capture time processed.
        stream_ended: the current session's end marker was processed: nothing more will come.
    """

    def __init__(self, site: Site, camera_id: str, reorder_limit: int = DEFAULT_REORDER_LIMIT) -> None:
        intersection, camera = site.camera(camera_id)
        counting = site.counting
        self.camera_id = camera_id
        self.intersection_id = intersection.id
        self._camera = camera
        self._counting = counting
        self._classes = np.array(sorted(counting.classes))
        self._timeout_ms = int(round(counting.track_timeout_s * 1000))
        self._hysteresis = counting.line_hysteresis
        self._lines = [(line, LineGeometry(line.points[0], line.points[1])) for line in camera.lines]
        self._zones = [(a.id, [tuple(p) for p in a.polygon]) for a in camera.approaches]
        self._rules = MovementRules(min_travel=counting.min_travel, uturn_depth=counting.uturn_depth, reach=counting.reach)
        self._report_labels = {a.id: a.report_label for a in camera.approaches}
        self._movements = camera.movement_table()
        self._order = EventOrder(camera_id, reorder_limit)
        self._tracker: CameraTracker | None = None
        self._tracks: dict[int, TrackState] = {}
        self.events = 0
        self.last_capture_ms: int | None = None
        self.stream_ended = False

    # -- public API ------------------------------------------------------------------------------
    @property
    def active_tracks(self) -> int:
        """Tracks alive now (seen within the track timeout)."""
        return len(self._tracks)

    @property
    def session(self) -> str | None:
        """The stream session being counted."""
        return self._order.session

    @property
    def next_seq(self) -> int:
        """The next seq expected in the current session."""
        return self._order.next_seq

    @property
    def pending(self) -> int:
        """Events held in the reorder buffer, waiting for a missing seq."""
        return self._order.pending

    @property
    def duplicates(self) -> int:
        """Events ignored as duplicates (redeliveries, finished sessions)."""
        return self._order.duplicates

    @property
    def skipped(self) -> int:
        """Missing seqs skipped over (frames that never produced an event)."""
        return self._order.skipped

    def snapshot(self) -> bytes:
        """The counting state (ordering, tracker, tracks) as bytes, without the configuration.

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
        counter._order.reorder_limit = reorder_limit
        return counter

    def update(self, event: DetectionEvent, observer: Observer | None = None) -> list[CrossingEvent]:
        """Take one event in arrival order; return the crossings and movements it lets us decide.

        Duplicates return ``[]``; an event ahead of a gap may return ``[]`` now and its crossings
        come with the event that fills the gap (or when the reorder buffer overflows).
        ``observer`` sees every event processed by this call (for drawing; never for counting).
        """
        if event.camera != self.camera_id:
            raise ContractError(f"event of camera {event.camera!r} given to the counter of {self.camera_id!r}", "wrong_camera")
        released = self._order.add(event)
        out: list[CrossingEvent] = []
        if released.ended_session is not None:
            session = released.ended_session
            for old in released.ended_events:
                out += self._process(old, session, observer)
            out += self._end_all_tracks(self.last_capture_ms or 0, session)
        if self._order.session is not None and (self._tracker is None or released.ended_session is not None):
            self._start_session()
        for ordered in released.events:
            out += self._process(ordered, ordered.session, observer)
        return out

    def finish(self) -> list[CrossingEvent]:
        """End of stream: process what waits in the reorder buffer, end all live tracks, decide their movements.

        The session stays current (a later event of it continues with new track ids).
        """
        session = self._order.session
        if session is None:
            return []
        out: list[CrossingEvent] = []
        for event in self._order.flush():
            out += self._process(event, session, None)
        return out + self._end_all_tracks(self.last_capture_ms or 0, session)

    # -- internals -------------------------------------------------------------------------------
    def _start_session(self) -> None:
        self.stream_ended = False
        self._tracks = {}
        self._tracker = CameraTracker(self._counting.tracker, self._camera.fps, self._timeout_ms / 1000)

    def _end_all_tracks(self, time_ms: int, session: str) -> list[CrossingEvent]:
        out: list[CrossingEvent] = []
        for track_id in sorted(self._tracks):
            out += self._end_track(track_id, self._tracks[track_id], session)
        self._tracks.clear()
        if self._tracker is not None:
            self._tracker.end_all()
        return out

    def _prepare(self, event: DetectionEvent) -> Detections:
        """The frame's detections as the tracker should see them: riders dropped, counted classes, one box per vehicle."""
        detections = Detections.from_event(event)
        if not len(detections):
            return detections
        detections = drop_riders(detections)
        detections = detections[np.isin(detections.class_name, self._classes)]
        return merge_duplicates(detections, self._counting.duplicate_iou)

    def _process(self, event: DetectionEvent, session: str, observer: Observer | None) -> list[CrossingEvent]:
        assert self._tracker is not None
        self.events += 1
        now = event.capture_ms
        self.last_capture_ms = now if self.last_capture_ms is None else max(self.last_capture_ms, now)
        out: list[CrossingEvent] = []
        tracked = self._tracker.update(self._prepare(event))
        w, h = float(event.width), float(event.height)
        eps = self._counting.motion_eps
        assert tracked.tracker_id is not None
        for box, track_id, label, score in zip(tracked.xyxy, tracked.tracker_id.tolist(), tracked.class_name, tracked.confidence):
            state = self._tracks.get(track_id)
            if state is None:
                state = self._tracks[track_id] = TrackState(first_ms=now, last_seen_ms=now)
            point = (min(max((box[0] + box[2]) / 2 / w, 0.0), 1.0), min(max(box[3] / h, 0.0), 1.0))
            state.observe(now, point, str(label), float(score), float(box[3] - box[1]) / h, eps)
            out += self._step_lines(track_id, state, point, now, session)
        for track_id in [t for t, s in self._tracks.items() if now - s.last_seen_ms > self._timeout_ms]:
            out += self._end_track(track_id, self._tracks.pop(track_id), session)
        if event.end_of_session:  # the ingester's end marker (in seq order): the stream is over, its tracks end here
            out += self._end_all_tracks(now, session)
            self.stream_ended = True
        if observer is not None:
            observer(event, tracked, out)
        return out

    def _step_lines(self, track_id: int, state: TrackState, point: Point, now: int, session: str) -> list[CrossingEvent]:
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
            out.append(self._crossing(track_id, state, now, session, kind="line", key=line.id, line=line.id, direction=label))
        return out

    def _end_track(self, track_id: int, state: TrackState, session: str) -> list[CrossingEvent]:
        if state.movement_done or not self._zones:
            return []
        state.movement_done = True
        decided = decide(state, self._zones, self._rules)
        if decided is None:
            return []
        entry, exit_ = decided
        movement = self._movements.get((entry, exit_))
        if movement is None:
            log.debug("no movement for zone pair", extra={"camera": self.camera_id, "entry": entry, "exit": exit_})
            return []
        return [
            self._crossing(
                track_id, state, state.last_seen_ms, session, kind="movement", key=f"{entry}>{exit_}",
                approach=entry, exit=exit_, movement=movement, direction=self._report_labels[entry],
            )
        ]  # fmt: skip

    def _crossing(self, track_id: int, state: TrackState, time_ms: int, session: str, kind: str, key: str, **fields: str) -> CrossingEvent:
        return CrossingEvent(
            event_id=f"{self.camera_id}:{session}:{track_id}:{key}",
            kind=kind,  # type: ignore[arg-type]
            intersection=self.intersection_id,
            camera=self.camera_id,
            session=session,
            track_id=track_id,
            vehicle_class=state.vehicle_class,
            time_ms=time_ms,
            **fields,
        )

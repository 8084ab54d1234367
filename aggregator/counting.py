"""Per-camera counting: ordered, de-duplicated events -> tracks -> line crossings and movements.

:class:`CameraCounter` holds everything one camera needs and nothing else, so the streaming app
can keep one per camera (and checkpoint it), and the offline ``traffic count`` command runs the
exact same code over a video: both give the same counts for the same events.

    event (seq order, aggregator.ordering)
      -> an unchanged frame (reused_from_seq) takes the detections of its reference frame
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
import math
import pickle
from collections import deque
from collections.abc import Callable

import numpy as np

from aggregator.detection_cleanup import drop_riders, fuse_riders, merge_duplicates
from aggregator.geometry import LineGeometry, LineSideState, Point, projection, step_line
from aggregator.movements import MovementRules, decide, zone_of
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
_DYNAMIC = ("_order", "_tracker", "_tracks", "_recent", "_retired", "_inferred", "events", "last_capture_ms", "stream_ended", "handed_over")

def _kind(label: str) -> str:
    """Two-wheelers (and their riders) or other vehicles: a track is only stitched to one of its kind."""
    return "two-wheeler" if label in ("motorcycle", "bicycle", "person") else "vehicle"


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
        handed_over: that marker was a handover (``DetectionEvent.handover``): the camera goes on
            in a new session, so its stream has not ended for its intersection's intervals.
    """

    def __init__(self, site: Site, camera_id: str, reorder_limit: int = DEFAULT_REORDER_LIMIT) -> None:
        intersection, camera = site.camera(camera_id)
        counting = site.counting
        self.camera_id = camera_id
        self.intersection_id = intersection.id
        self._camera = camera
        self._counting = counting
        self._classes = np.array(sorted(counting.classes))
        # Persons are tracked too where two-wheelers are counted: a rider is often found without its
        # scooter (aggregator/detection_cleanup.py); such tracks count as the two-wheeler they ride.
        self._tracked_classes = np.array(counting.detected_classes())
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
        self._recent: deque[tuple[str, int, float, int]] = deque(maxlen=64)  # (line, side, where along it, time) of recent crossings
        self._retired: dict[int, int] = {}  # track ids stitched into another id -> until when (capture ms) their boxes are ignored
        self._inferred: tuple[int, tuple] = (-1, ())  # (seq, detections) of the session's last inferred frame (for reused frames)
        self.events = 0
        self.last_capture_ms: int | None = None
        self.stream_ended = False
        self.handed_over = False

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

    def reconfigured(self, site: Site) -> "CameraCounter":
        """This counter under ``site``'s lines, zones and movements for its camera (a site hot reload).

        Ordering, de-duplication and the live tracks (same ids) go on. A line whose points changed
        is re-armed in every live track (its side is found again from the track's next point), so
        no track counts for being on the other side of where the line used to be.
        """
        counter = CameraCounter.restore(site, self.camera_id, self.snapshot(), self._order.reorder_limit)
        points = {line.id: line.points for line in counter._camera.lines}
        moved = [line.id for line in self._camera.lines if points.get(line.id, line.points) != line.points]
        for state in counter._tracks.values():
            for line_id in moved:
                state.lines.pop(line_id, None)
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
        self.stream_ended = self.handed_over = False
        self._tracks = {}
        self._retired = {}
        self._inferred = (-1, ())
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
        detections = fuse_riders(detections) if self._counting.riders == "fuse" else drop_riders(detections)
        detections = detections[np.isin(detections.class_name, self._tracked_classes)]
        return merge_duplicates(detections, self._counting.duplicate_iou)

    def _process(self, event: DetectionEvent, session: str, observer: Observer | None) -> list[CrossingEvent]:
        assert self._tracker is not None
        self.events += 1
        now = event.capture_ms
        self.last_capture_ms = now if self.last_capture_ms is None else max(self.last_capture_ms, now)
        out: list[CrossingEvent] = []
        event = self._substitute(event)
        tracked = self._tracker.update(self._prepare(event))
        w, h = float(event.width), float(event.height)
        eps = self._counting.motion_eps
        assert tracked.tracker_id is not None
        for box, track_id, label, score in zip(tracked.xyxy, tracked.tracker_id.tolist(), tracked.class_name, tracked.confidence):
            point = (min(max((box[0] + box[2]) / 2 / w, 0.0), 1.0), min(max(box[3] / h, 0.0), 1.0))
            if track_id in self._retired:
                continue  # its state goes on under the id it was stitched to
            state = self._tracks.get(track_id)
            if state is None:
                state = self._stitch(point, now, str(label), float(box[3] - box[1]) / h)
                if state is None:
                    state = TrackState(first_ms=now, last_seen_ms=now)
                self._tracks[track_id] = state
            state.observe(now, point, str(label), float(score), float(box[3] - box[1]) / h, eps, zone_of(point, self._zones))
            out += self._step_lines(track_id, state, point, now, session)
            if state.pending_lines and self._counted(state):
                out += self._flush_pending(track_id, state, session)
        for track_id in [t for t, s in self._tracks.items() if now - s.last_seen_ms > self._timeout_ms]:
            out += self._end_track(track_id, self._tracks.pop(track_id), session)
        self._retired = {t: until for t, until in self._retired.items() if until >= now}
        if event.end_of_session:  # the ingester's end marker (in seq order): the stream is over, its tracks end here
            out += self._end_all_tracks(now, session)
            self.stream_ended, self.handed_over = True, event.handover
        if observer is not None:
            observer(event, tracked, out)
        return out

    def _substitute(self, event: DetectionEvent) -> DetectionEvent:
        """An unchanged frame (``reused_from_seq``, docs/contracts.md) with its reference's detections.

        Events come here in seq order, so the reference is the last inferred frame of the session;
        a reference that never arrived (a skipped gap) gives an empty frame.
        """
        if event.reused_from_seq is not None:
            reused = self._inferred[1] if self._inferred[0] == event.reused_from_seq else ()
            return event.model_copy(update={"detections": reused})
        if not event.end_of_session:
            self._inferred = (event.seq, event.detections)
        return event

    def _stitch(self, point: Point, now: int, label: str, size: float) -> TrackState | None:
        """The state of a track lost within ``stitch_s`` that a new track id continues, if one is where it would be now.

        Why: when a vehicle moves farther between frames than its box is long (a scooter at 6 fps)
        or is hidden for a moment, the tracker may give it a new id; its path would then be cut in
        two and neither half would show where it came from and where it went. The lost track's
        last position, moved on by its last velocity, must be within ``stitch_gate`` box heights
        of the new track's first point, and both must be of the same kind (two-wheeler or not).
        The lost id is retired: if the tracker finds it again, those boxes are not counted twice.
        """
        window = int(self._counting.stitch_s * 1000)
        if window <= 0:
            return None
        best: tuple[float, int] | None = None
        for track_id, state in self._tracks.items():
            gap = now - state.last_seen_ms
            if gap <= 0 or gap > window or _kind(state.vehicle_class) != _kind(label):
                continue
            tail = state.tail
            dt = (tail[-1].time_ms - tail[0].time_ms) or 1
            vx, vy = (tail[-1].x - tail[0].x) / dt, (tail[-1].y - tail[0].y) / dt
            px, py = tail[-1].x + vx * gap, tail[-1].y + vy * gap
            distance = math.hypot(point[0] - px, point[1] - py)
            if distance <= self._counting.stitch_gate * max(size, state.size) and (best is None or distance < best[0]):
                best = (distance, track_id)
        if best is None:
            return None
        state = self._tracks.pop(best[1])
        self._retired[best[1]] = now + self._timeout_ms
        return state

    def _step_lines(self, track_id: int, state: TrackState, point: Point, now: int, session: str) -> list[CrossingEvent]:
        out: list[CrossingEvent] = []
        margin = self._counting.line_birth_margin
        for line, geometry in self._lines:
            side_state = state.lines.get(line.id)
            if side_state is None:
                side_state = state.lines[line.id] = LineSideState()
                d = geometry.signed_distance(point)
                if margin > 0 and abs(d) < margin and 0.0 <= projection(geometry, point) <= 1.0:
                    side_state.birth = d
            crossed = step_line(side_state, geometry, point, self._hysteresis)
            if not crossed and side_state.birth is not None and side_state.side != 0:
                crossed = self._birth_crossing(side_state, geometry, point, line.id, now)
            elif crossed:
                side_state.birth = None
            if not crossed or line.id in state.counted_lines:
                continue
            direction = "in" if crossed > 0 else "out"
            if line.count not in ("both", direction):
                continue
            state.counted_lines.add(line.id)
            self._recent.append((line.id, crossed, projection(geometry, point), now))
            label = line.in_label if crossed > 0 else line.out_label
            if self._counted(state):
                out.append(self._crossing(track_id, state, now, session, kind="line", key=line.id, line=line.id, direction=label))
            else:
                state.pending_lines[line.id] = (label, now)
        return out

    def _birth_crossing(self, side_state: LineSideState, geometry: LineGeometry, point: Point, line_id: str, now: int) -> int:
        """A track first seen on or just past a line, now moving away from it: the crossing it was making.

        Resolved once: moving away by the hysteresis counts (unless another track crossed the line
        at that place in the last second: then this one is a fragment of it); moving back
        towards the line does not.
        """
        assert side_state.birth is not None
        side = side_state.side
        moved = (geometry.signed_distance(point) - side_state.birth) * side
        if moved < self._hysteresis:
            if moved < 0:
                side_state.birth = None
            return 0
        side_state.birth = None
        where = projection(geometry, point)
        for other_line, other_side, other_where, time_ms in self._recent:
            if other_line == line_id and other_side == side and now - time_ms <= 1000 and abs(other_where - where) * geometry.length <= 0.04:
                return 0
        return side

    def _counted(self, state: TrackState) -> bool:
        return state.vehicle_class in self._counting.classes

    def _flush_pending(self, track_id: int, state: TrackState, session: str) -> list[CrossingEvent]:
        """The crossings a track made before its class was a counted one, with the times they happened."""
        out = [
            self._crossing(track_id, state, time_ms, session, kind="line", key=line_id, line=line_id, direction=label)
            for line_id, (label, time_ms) in sorted(state.pending_lines.items(), key=lambda item: item[1][1])
        ]
        state.pending_lines.clear()
        return out

    def _end_track(self, track_id: int, state: TrackState, session: str) -> list[CrossingEvent]:
        if state.movement_done or not self._zones or not self._counted(state):
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

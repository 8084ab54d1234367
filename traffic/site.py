"""Site configuration: intersections, their cameras, count lines, approach zones and movements.

One YAML file (a ConfigMap in Kubernetes). All geometry is in normalized image coordinates
(x right, y down, both in [0, 1]) so it survives a change of resolution or resize.

Count line direction: a line is drawn from ``points[0]`` (A) to ``points[1]`` (B). ``in`` is the
side the normal points to, the normal being AB turned 90 degrees clockwise on screen::

        A ------------------> B          crossing downwards  = "in"
                  |                      crossing upwards    = "out"
                  v  in

Movements: each approach zone is where traffic enters from and leaves to one leg of the
intersection. A vehicle that enters through approach P and leaves through approach Q makes the
movement ``movements[P][Q]``; with ``compass`` set on the approaches and no explicit table, the
table is derived for right-hand traffic (from north: to south = through, to east = left, to west
= right, back north = u-turn).

Secrets: ``source`` may contain ``${ENV_VAR}`` or ``${ENV_VAR:-default}`` placeholders (e.g. the camera password); they are
filled from the environment at load time and are never written back or logged (see
``traffic.logs.mask_secrets``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from traffic.errors import ConfigError
from traffic.wire import Identifier

Point = tuple[Annotated[float, Field(ge=0.0, le=1.0)], Annotated[float, Field(ge=0.0, le=1.0)]]
Movement = Literal["left", "through", "right", "u-turn"]
Compass = Literal["north", "east", "south", "west"]

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SOURCE_SCHEMES = ("rtsp", "rtsps", "http", "https", "file")

# For right-hand traffic: movement of a vehicle entering from `frm` and leaving towards `to`.
_CLOCKWISE: tuple[Compass, ...] = ("north", "east", "south", "west")


def compass_movement(frm: Compass, to: Compass, right_hand_traffic: bool = True) -> Movement:
    """Movement of a vehicle entering from leg ``frm`` and leaving by leg ``to``.

    Entering from the north a vehicle drives south; leaving east is a left turn in right-hand
    traffic (and a right turn in left-hand traffic).
    """
    steps = (_CLOCKWISE.index(to) - _CLOCKWISE.index(frm)) % 4
    if steps == 0:
        return "u-turn"
    if steps == 2:
        return "through"
    left = steps == 1  # north -> east: one step clockwise on the compass is a left turn when driving south
    if not right_hand_traffic:
        left = not left
    return "left" if left else "right"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CountLine(_Strict):
    """A counting line; see the module docstring for which way is ``in``."""

    id: Identifier
    points: tuple[Point, Point]
    in_label: str = Field(default="in", min_length=1, max_length=64, description="direction label for crossing to the 'in' side")
    out_label: str = Field(default="out", min_length=1, max_length=64, description="direction label for crossing to the 'out' side")
    count: Literal["both", "in", "out"] = "both"

    @field_validator("points")
    @classmethod
    def _not_degenerate(cls, points: tuple[Point, Point]) -> tuple[Point, Point]:
        (ax, ay), (bx, by) = points
        if abs(ax - bx) < 1e-6 and abs(ay - by) < 1e-6:
            raise ValueError("the two points of a line must differ (zero-length line)")
        return points


class Approach(_Strict):
    """One leg of the intersection: the zone where its traffic enters and leaves the picture.

    Attributes:
        id: approach id, e.g. ``north``.
        polygon: >= 3 points, normalized.
        compass: which leg this is; lets the movement table be derived.
        label: direction of travel of entering traffic, e.g. ``SB`` for the north leg (used as the
            column prefix of turning-movement reports).
    """

    id: Identifier
    polygon: list[Point] = Field(min_length=3)
    compass: Compass | None = None
    label: str | None = Field(default=None, max_length=16)

    @field_validator("polygon")
    @classmethod
    def _has_area(cls, polygon: list[Point]) -> list[Point]:
        area = 0.0
        for (x1, y1), (x2, y2) in zip(polygon, polygon[1:] + polygon[:1]):
            area += x1 * y2 - x2 * y1
        if abs(area) / 2 < 1e-6:
            raise ValueError("polygon has no area (points are collinear or repeated)")
        return polygon

    @property
    def report_label(self) -> str:
        """Column prefix for reports: the label, else derived from the compass, else the id."""
        if self.label:
            return self.label
        if self.compass:
            return {"north": "SB", "south": "NB", "east": "WB", "west": "EB"}[self.compass]
        return self.id


class MovementRule(_Strict):
    """An explicit entry in the movement table: from approach ``from_`` to approach ``to``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_: Identifier = Field(alias="from")
    to: Identifier
    movement: Movement


class Camera(_Strict):
    """One camera of an intersection and what to count in its view.

    Attributes:
        source: ``rtsp://``, ``http(s)://`` (MJPEG) or ``file://`` URL, or a plain file path;
            ``${ENV}`` placeholders are filled from the environment.
        fps: sampling rate sent to Kafka (frames per second); the camera may send more.
        max_width: resize frames wider than this before encoding (pixels; 0 = never).
        jpeg_quality: JPEG quality 1..100.
    """

    id: Identifier
    source: str = Field(min_length=1)
    fps: float = Field(default=10.0, gt=0, le=120)
    max_width: int = Field(default=640, ge=0, le=16384)
    jpeg_quality: int = Field(default=80, ge=1, le=100)
    lines: list[CountLine] = Field(default_factory=list)
    approaches: list[Approach] = Field(default_factory=list)
    movements: list[MovementRule] = Field(default_factory=list)
    right_hand_traffic: bool = True

    @field_validator("source")
    @classmethod
    def _source_scheme(cls, source: str) -> str:
        scheme = urlsplit(source).scheme
        if scheme and len(scheme) > 1 and scheme not in _SOURCE_SCHEMES:
            raise ValueError(f"unsupported source scheme {scheme!r}; use one of {', '.join(_SOURCE_SCHEMES)} or a file path")
        return source

    @model_validator(mode="after")
    def _geometry_refs(self) -> "Camera":
        _unique("lines", [line.id for line in self.lines])
        approach_ids = [a.id for a in self.approaches]
        _unique("approaches", approach_ids)
        for rule in self.movements:
            for ref in (rule.from_, rule.to):
                if ref not in approach_ids:
                    raise ValueError(f"movement refers to unknown approach {ref!r} (known: {', '.join(approach_ids) or 'none'})")
        without_compass = [a.id for a in self.approaches if not a.compass]
        explicit = {ref for rule in self.movements for ref in (rule.from_, rule.to)}
        unmapped = [a for a in without_compass if a not in explicit]
        if unmapped:
            raise ValueError(f"approaches {unmapped} need either a 'compass' or entries in the 'movements' table")
        return self

    def movement_table(self) -> dict[tuple[str, str], str]:
        """(entry approach, exit approach) -> movement; explicit rules win over compass rules."""
        table: dict[tuple[str, str], str] = {}
        for a in self.approaches:
            for b in self.approaches:
                if a.compass and b.compass:
                    table[(a.id, b.id)] = compass_movement(a.compass, b.compass, self.right_hand_traffic)
        for rule in self.movements:
            table[(rule.from_, rule.to)] = rule.movement
        return table

    def resolved_source(self) -> str:
        """The source with ``${ENV}`` placeholders filled in. Contains secrets: never log it."""
        return _expand(self.source)


class Intersection(_Strict):
    """An intersection and its cameras."""

    id: Identifier
    name: str = ""
    cameras: list[Camera] = Field(min_length=1)


class TrackerConfig(_Strict):
    """Which Ultralytics tracker follows the vehicles, and its thresholds (see ``aggregator/tracking.py``).

    Attributes:
        type: ``bytetrack``, ``ocsort`` (observation-centric: keeps tracks through occlusions and
            fast motion) or ``botsort`` (without camera-motion compensation or ReID).
        high_thresh: detections at or above this score are matched first.
        low_thresh: detections between this and ``high_thresh`` are matched second (ByteTrack's
            low-score stage); the workers must send detections down to it (their ``conf``).
        new_track_thresh: an unmatched detection starts a track only at or above this score.
        match_thresh: largest association cost (1 - IoU, fused with the score) accepted.
        buffer: boxes are enlarged by this fraction of their size on each side before the IoU of
            the association (buffered IoU), so fast or low-frame-rate objects stay matched.
    """

    type: Literal["bytetrack", "ocsort", "botsort"] = "bytetrack"
    high_thresh: float = Field(default=0.25, ge=0, le=1)
    low_thresh: float = Field(default=0.1, ge=0, le=1)
    new_track_thresh: float = Field(default=0.25, ge=0, le=1)
    match_thresh: float = Field(default=0.9, gt=0, le=2)
    buffer: float = Field(default=0.6, ge=0, le=2)

    @model_validator(mode="after")
    def _ordered(self) -> "TrackerConfig":
        if self.low_thresh > self.high_thresh:
            raise ValueError(f"low_thresh {self.low_thresh} must not exceed high_thresh {self.high_thresh}")
        return self


DEFAULT_CLASSES: tuple[str, ...] = ("car", "bus", "truck", "motorcycle", "bicycle", "person")
"""The classes counted (site ``counting.classes``) and detected (the worker's ``classes``) unless configured otherwise."""


class Counting(_Strict):
    """How counts are aggregated.

    Attributes:
        classes: vehicle classes that are counted (detector labels).
        intervals_s: tumbling interval lengths in seconds (15 minutes for engineering counts,
            1 minute for live dashboards).
        grace_s: how long after its end an interval still accepts late events before it is final.
        track_timeout_s: a track not seen for this long has ended (its movement is decided then).
        line_hysteresis: distance (normalized) a point must move past a line to count, and back
            across it to re-arm, so stop-and-go traffic on the line is counted once.
        tracker: the tracker and its thresholds.
        duplicate_iou, motion_eps, min_travel, uturn_depth, reach: see ``aggregator/detection_cleanup.py``
            and ``aggregator/movements.py`` (normalized image units).
    """

    classes: list[str] = Field(default_factory=lambda: list(DEFAULT_CLASSES), min_length=1)
    intervals_s: list[int] = Field(default_factory=lambda: [900, 60], min_length=1)
    grace_s: float = Field(default=10.0, ge=0)
    track_timeout_s: float = Field(default=1.0, gt=0)
    line_hysteresis: float = Field(default=0.01, ge=0, le=0.5)
    tracker: TrackerConfig = Field(default_factory=TrackerConfig)
    riders: Literal["fuse", "drop"] = Field(default="fuse", description="a person riding a detected two-wheeler: fused with it into one box (fuse) or dropped (drop)")
    line_birth_margin: float = Field(default=0.1, ge=0, le=0.5, description="a track first seen within this distance of a line (on it or just past it) and moving away from it was crossing it: counted (normalized; 0 = off)")
    stitch_s: float = Field(default=0.0, ge=0, le=10, description="a new track id that appears where a track lost less than this long ago would be now continues that track (0 = off)")
    stitch_gate: float = Field(default=1.0, gt=0, le=10, description="how near (in box heights) to the lost track's predicted position the new track must appear")
    duplicate_iou: float = Field(default=0.7, gt=0, le=1, description="boxes of counted classes overlapping more than this are one vehicle")
    motion_eps: float = Field(default=0.02, gt=0, le=0.5, description="a track has started moving once its ground point is this far from where it stood")
    min_travel: float = Field(default=0.08, ge=0, le=2, description="a track must move this far (start to end) to make a movement")
    uturn_depth: float = Field(default=0.2, ge=0, le=2, description="a u-turn must travel at least twice this far")
    reach: float = Field(default=0.45, ge=0, le=2, description="how far along its heading a track that starts or ends outside every zone may be extended to find its approach")

    def detected_classes(self) -> tuple[str, ...]:
        """What the detector must find for this counting: the counted classes, and persons where
        two-wheelers are counted (riders; see ``aggregator/detection_cleanup.py``)."""
        riders = {"person"} if {"motorcycle", "bicycle"} & set(self.classes) else set()
        return tuple(sorted(set(self.classes) | riders))

    @field_validator("intervals_s")
    @classmethod
    def _positive_intervals(cls, intervals: list[int]) -> list[int]:
        for value in intervals:
            if value <= 0 or 86400 % value and value % 86400:
                raise ValueError(f"interval {value} s must be positive and divide a day (e.g. 60, 300, 900, 3600)")
        return sorted(set(intervals), reverse=True)


class Site(_Strict):
    """The whole site file."""

    intersections: list[Intersection] = Field(min_length=1)
    counting: Counting = Field(default_factory=Counting)

    @model_validator(mode="after")
    def _unique_ids(self) -> "Site":
        _unique("intersections", [i.id for i in self.intersections])
        _unique("cameras", [c.id for i in self.intersections for c in i.cameras])
        return self

    def cameras(self) -> dict[str, tuple[Intersection, Camera]]:
        """Camera id -> (its intersection, the camera)."""
        return {c.id: (i, c) for i in self.intersections for c in i.cameras}

    def camera(self, camera_id: str) -> tuple[Intersection, Camera]:
        """Look up a camera; ConfigError listing the known ids if it is not in the file."""
        found = self.cameras().get(camera_id)
        if found is None:
            raise ConfigError(f"camera {camera_id!r} is not in the site configuration (known: {', '.join(self.cameras())})")
        return found


def _unique(what: str, ids: list[str]) -> None:
    seen: set[str] = set()
    for item in ids:
        if item in seen:
            raise ValueError(f"duplicate id {item!r} in {what}")
        seen.add(item)


def _expand(text: str) -> str:
    def fill(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(f"environment variable {name} (used in a camera source) is not set")

    return _PLACEHOLDER.sub(fill, text)


def _location(loc: tuple[int | str, ...], data: object) -> str:
    """Human path of a validation error, naming list items by their id where they have one.

    ``('intersections', 0, 'cameras', 1, 'fps')`` -> ``intersections[main].cameras[cam-2].fps``.
    """
    path = ""
    node: object = data
    for key in loc:
        if isinstance(key, int) and isinstance(node, list) and 0 <= key < len(node):
            node = node[key]
            ident = node.get("id") if isinstance(node, dict) else None
            path += f"[{ident}]" if ident else f"[{key}]"
        else:
            path += f".{key}" if path else str(key)
            node = node.get(key) if isinstance(node, dict) else None
    return path or "<top level>"


def parse_site(data: object, origin: str = "<site>") -> Site:
    """Validate already-parsed YAML; ConfigError naming origin, field and problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the site file must be a mapping with 'intersections', got {type(data).__name__}")
    try:
        site = Site.model_validate(data)
    except ValidationError as exc:
        problems = [f"{origin}: {_location(err['loc'], data)}: {err['msg']}" for err in exc.errors()[:5]]
        raise ConfigError("invalid site configuration:\n  " + "\n  ".join(problems)) from None
    for cam_id, (_, camera) in site.cameras().items():
        for name, default in _PLACEHOLDER.findall(camera.source):
            if name not in os.environ and not default:
                raise ConfigError(f"{origin}: cameras[id={cam_id}].source: environment variable {name} is not set")
    return site


def load_site(path: str | os.PathLike[str]) -> Site:
    """Load and validate a site file; every failure is a ConfigError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"site configuration {path} does not exist (set TRAFFIC_SITE_CONFIG or --site)") from None
    except OSError as exc:
        raise ConfigError(f"site configuration {path} cannot be read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_site(data, str(path))

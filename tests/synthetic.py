"""Synthetic traffic with known ground truth, for tests, benchmarks and demos without a model.

A plus-shaped intersection seen from above: four approach zones at the picture edges and two
count lines across the north and west legs::

              north zone (0.3..0.7, 0..0.2)
                 |  v  ^  |
      - - - - - -+- - - - +- - - - -   line north-stop (y = 0.22), A (0.3) -> B (0.7): in = southbound
    west   ->    |         |     <-   east
    zone   <-    |    +    |     ->   zone
                 |         |
                 |  v  ^  |
              south zone (0.3..0.7, 0.8..1)
      line west-stop (x = 0.22), A (y 0.7) -> B (y 0.3): in = eastbound

Each vehicle drives from its entry lane through the centre to its exit lane at a constant speed
and vanishes at the picture edge (its track then times out and its movement is decided). The
ground truth is computed from the paths alone, not by the counting code.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass

from traffic.site import Site, parse_site
from traffic.wire import Detection, DetectionEvent

CAMERA = "cam-synth"
INTERSECTION = "synth-intersection"
FPS = 10.0

SITE = {
    "intersections": [
        {
            "id": INTERSECTION,
            "cameras": [
                {
                    "id": CAMERA,
                    "source": "synthetic.mp4",
                    "fps": FPS,
                    "approaches": [
                        {"id": "north", "compass": "north", "polygon": [[0.3, 0.0], [0.7, 0.0], [0.7, 0.2], [0.3, 0.2]]},
                        {"id": "east", "compass": "east", "polygon": [[0.8, 0.3], [1.0, 0.3], [1.0, 0.7], [0.8, 0.7]]},
                        {"id": "south", "compass": "south", "polygon": [[0.3, 0.8], [0.7, 0.8], [0.7, 1.0], [0.3, 1.0]]},
                        {"id": "west", "compass": "west", "polygon": [[0.0, 0.3], [0.2, 0.3], [0.2, 0.7], [0.0, 0.7]]},
                    ],
                    "lines": [
                        {"id": "north-stop", "points": [[0.3, 0.22], [0.7, 0.22]], "in_label": "southbound", "out_label": "northbound"},
                        {"id": "west-stop", "points": [[0.22, 0.7], [0.22, 0.3]], "in_label": "eastbound", "out_label": "westbound"},
                    ],
                }
            ],
        }
    ],
    "counting": {"classes": ["car", "truck", "bus"], "intervals_s": [900, 60], "grace_s": 5, "track_timeout_s": 1.0, "line_hysteresis": 0.01,
                 # Plain IoU association: the synthetic vehicles drive identical paths 1.2 s apart, which the
                 # buffered association tuned on real video (the default) swaps where the paths cross.
                 "tracker": {"buffer": 0.0, "match_thresh": 0.8}},
}

# Lanes (bottom-centre points at the picture edge) for right-hand traffic.
_ENTRY = {"north": (0.45, 0.03), "south": (0.55, 0.97), "west": (0.03, 0.55), "east": (0.97, 0.45)}
_EXIT = {"north": (0.55, 0.03), "south": (0.45, 0.97), "west": (0.03, 0.45), "east": (0.97, 0.55)}
_CENTRE = (0.5, 0.5)
BOX_W, BOX_H = 0.10, 0.08


def synthetic_site(**counting: object) -> Site:
    """The synthetic site, with optional overrides of its ``counting`` section."""
    data = {**SITE, "counting": {**SITE["counting"], **counting}}  # type: ignore[dict-item]
    return parse_site(data, "<synthetic>")


@dataclass(frozen=True)
class Vehicle:
    """One synthetic vehicle: where it enters and leaves, its label and its first frame."""

    entry: str
    exit: str
    label: str
    start_frame: int


def _path(v: Vehicle, step: float) -> list[tuple[float, float]]:
    """Bottom-centre points, one per frame: a smooth curve (quadratic Bezier) from the entry lane
    to the exit lane with the centre as control point; turns slow down as real vehicles do."""
    (x0, y0), (x1, y1), (x2, y2) = _ENTRY[v.entry], _CENTRE, _EXIT[v.exit]
    length = math.hypot(x1 - x0, y1 - y0) + math.hypot(x2 - x1, y2 - y1)
    n = max(2, math.ceil(length / step))
    return [
        ((1 - t) ** 2 * x0 + 2 * (1 - t) * t * x1 + t**2 * x2, (1 - t) ** 2 * y0 + 2 * (1 - t) * t * y1 + t**2 * y2)
        for t in (i / n for i in range(n + 1))
    ]


def _first_crossings(points: list[tuple[float, float]], site: Site) -> dict[str, str]:
    """Ground truth of the lines: line id -> label of the first crossing of the path (segment test)."""
    _, camera = site.camera(CAMERA)
    found: dict[str, str] = {}
    for line in camera.lines:
        (ax, ay), (bx, by) = line.points
        for (px, py), (qx, qy) in zip(points, points[1:]):
            d1 = (bx - ax) * (py - ay) - (by - ay) * (px - ax)
            d2 = (bx - ax) * (qy - ay) - (by - ay) * (qx - ax)
            e1 = (qx - px) * (ay - py) - (qy - py) * (ax - px)
            e2 = (qx - px) * (by - py) - (qy - py) * (bx - px)
            if d1 * d2 < 0 and e1 * e2 < 0:
                found[line.id] = line.in_label if d2 > 0 else line.out_label
                break
    return found


@dataclass
class SyntheticStream:
    """Events of one synthetic stream and what a perfect counter must find in them.

    Attributes:
        events: one event per frame, seq 0.. (including empty frames).
        movements: (entry, exit, movement, class) -> vehicles.
        lines: (line id, direction label, class) -> vehicles.
    """

    events: list[DetectionEvent]
    movements: Counter[tuple[str, str, str, str]]
    lines: Counter[tuple[str, str, str]]


def synthetic_stream(
    per_movement: int = 2,
    start_ms: int = 1_767_225_645_000,
    session: str = "s1",
    spacing_frames: int = 12,
    step: float = 0.025,
    tail_frames: int = 30,
    seed: int = 7,
    site: Site | None = None,
    crowd: int = 0,
) -> SyntheticStream:
    """``per_movement`` vehicles for each (entry, exit) pair of the site, staggered ``spacing_frames`` apart.

    ``start_ms`` defaults to 45 s before a minute boundary (2026-01-01T00:01:00Z), so 1-minute
    intervals are split. Every frame also carries a static parked car outside all zones and lines
    (tracked but never counted) and a pedestrian (not a counted class). ``crowd`` adds that many
    parked cars (a dense scene: a car park or a queue in view), see :func:`crowd_boxes`.
    """
    site = site or synthetic_site()
    _, camera = site.camera(CAMERA)
    table = camera.movement_table()
    rng = random.Random(seed)
    vehicles: list[Vehicle] = []
    pairs = sorted(table)
    for round_ in range(per_movement):
        for entry, exit_ in pairs:
            label = "truck" if rng.random() < 0.25 else "car"
            vehicles.append(Vehicle(entry, exit_, label, len(vehicles) * spacing_frames))
    paths = {i: _path(v, step) for i, v in enumerate(vehicles)}
    n_frames = max(v.start_frame + len(paths[i]) for i, v in enumerate(vehicles)) + tail_frames
    movements: Counter[tuple[str, str, str, str]] = Counter()
    lines: Counter[tuple[str, str, str]] = Counter()
    for i, v in enumerate(vehicles):
        movements[(v.entry, v.exit, table[(v.entry, v.exit)], v.label)] += 1
        for line_id, label in _first_crossings(paths[i], site).items():
            lines[(line_id, label, v.label)] += 1
    events: list[DetectionEvent] = []
    parked = crowd_boxes(crowd)
    for f in range(n_frames):
        dets: list[Detection] = [
            Detection(class_id=2, label="car", confidence=0.9, box=(0.85, 0.85, 0.93, 0.91)),  # parked, no zone
            Detection(class_id=0, label="person", confidence=0.8, box=(0.75, 0.1, 0.78, 0.2)),
        ]
        for x1, y1, x2, y2 in parked:  # detector jitter of a few pixels, frame by frame
            jx, jy = rng.uniform(-0.0015, 0.0015), rng.uniform(-0.0015, 0.0015)
            dets.append(Detection(class_id=2, label="car", confidence=0.8, box=(x1 + jx, y1 + jy, x2 + jx, y2 + jy)))
        for i, v in enumerate(vehicles):
            k = f - v.start_frame
            if 0 <= k < len(paths[i]):
                x, y = paths[i][k]
                box = (max(0.0, x - BOX_W / 2), max(0.0, y - BOX_H), min(1.0, x + BOX_W / 2), min(1.0, y))
                dets.append(Detection(class_id=7 if v.label == "truck" else 2, label=v.label, confidence=round(0.6 + 0.3 * rng.random(), 3), box=box))
        events.append(
            DetectionEvent(
                camera=CAMERA, intersection=INTERSECTION, session=session, seq=f, capture_ms=start_ms + int(f * 1000 / FPS),
                model="synthetic", width=640, height=480, detections=tuple(dets),
            )
        )  # fmt: skip
    return SyntheticStream(events, movements, lines)



def _crowd_grid() -> list[tuple[float, float, float, float]]:
    """Places for parked cars: a 9 x 9 grid in each corner (squares of side 0.26), boxes 0.016
    wide, without the ones that overlap the other static boxes; spread over the corners."""
    static = [(0.85, 0.85, 0.93, 0.91), (0.75, 0.1, 0.78, 0.2)]
    out: list[tuple[float, float, float, float]] = []
    for cx, cy in ((0.01, 0.01), (0.735, 0.01), (0.01, 0.735), (0.735, 0.735)):
        for i in range(81):
            x, y = cx + (i % 9) * 0.029, cy + (i // 9) * 0.029
            box = (x, y, x + 0.016, y + 0.016)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in static):
                out.append(box)
    return [out[k] for k in sorted(range(len(out)), key=lambda k: (k % 4, k))]


CROWD_MAX = len(_crowd_grid())
"""Most parked cars :func:`crowd_boxes` can place."""


def crowd_boxes(n: int) -> list[tuple[float, float, float, float]]:
    """``n`` boxes of parked cars in the four corners of the picture, away from every zone, line,
    vehicle path and the other static boxes, so they are tracked but never counted (the zones
    start 0.3 from the corners; the vehicles' curves stay inside 0.3..0.7 there)."""
    assert 0 <= n <= CROWD_MAX, f"crowd must be 0..{CROWD_MAX}"
    return _crowd_grid()[:n]


def end_marker(last: DetectionEvent, handover: bool = False, period_ms: int = 0) -> DetectionEvent:
    """The end-of-session event after ``last``, as the worker passes the ingester's marker on (``handover``: the camera goes on)."""
    return last.model_copy(
        update={"seq": last.seq + 1, "capture_ms": last.capture_ms + period_ms, "detections": (), "end_of_session": True, "handover": handover}
    )

"""What the tracker is fed: one box per road user.

A COCO detector answers per class, so two failure modes reach the tracker as two objects:

* **one vehicle, two classes.** A van is found as a ``car`` and as a ``truck`` with nearly the
  same box (NMS is per class); the tracker then starts two tracks and the vehicle is counted
  twice. :func:`merge_duplicates` keeps the higher-scored box of any pair of counted-class boxes
  overlapping more than ``iou`` and remembers the other class as a vote.
* **one two-wheeler, two objects.** The rider of a motorcycle or bicycle is a ``person`` box
  standing on the two-wheeler's box. :func:`drop_riders` removes persons whose lower half lies on a
  two-wheeler, so a scooter is one vehicle and its rider is not counted as a pedestrian::

        +--------+          person box: its lower half (hatched) must lie mostly inside the
        | person |          two-wheeler's box, and its centre must be over it horizontally
        |////////|---+
        +--------+   |      <- motorcycle box
        | motorcycle |
        +------------+
"""

from __future__ import annotations

import numpy as np

from traffic.detections import Detections, box_ioa, box_iou

TWO_WHEELERS = ("motorcycle", "bicycle")


def merge_duplicates(detections: Detections, iou: float) -> Detections:
    """Greedy cross-class NMS: of boxes overlapping more than ``iou``, keep the highest-scored.

    Why after the detector and not in it: the worker's events stay what the model said (per-class
    NMS, as Ultralytics does by default), so the choice is the counting's and can be changed in
    the site file without touching the workers.
    """
    if len(detections) < 2 or iou >= 1.0:
        return detections
    order = np.argsort(-detections.confidence, kind="stable")
    overlaps = box_iou(detections.xyxy[order], detections.xyxy[order])
    keep: list[int] = []
    removed = np.zeros(len(order), dtype=bool)
    for i in range(len(order)):
        if removed[i]:
            continue
        keep.append(order[i])
        removed |= overlaps[i] > iou
    return detections[np.sort(np.array(keep))]


def _rider_pairs(detections: Detections, min_overlap: float) -> list[tuple[int, int]]:
    """(person index, two-wheeler index) of each rider and the two-wheeler it rides (best overlap)."""
    persons = np.flatnonzero(detections.class_name == "person")
    wheels = np.flatnonzero(np.isin(detections.class_name, TWO_WHEELERS))
    if not len(persons) or not len(wheels):
        return []
    p = detections.xyxy[persons]
    lower = p.copy()
    lower[:, 1] = (p[:, 1] + p[:, 3]) / 2.0
    w = detections.xyxy[wheels]
    overlap = box_ioa(lower, w)
    centre_x = (p[:, 0] + p[:, 2]) / 2.0
    above = (centre_x[:, None] >= w[None, :, 0]) & (centre_x[:, None] <= w[None, :, 2])
    overlap = np.where(above & (overlap >= min_overlap), overlap, 0.0)
    return [(int(persons[i]), int(wheels[int(np.argmax(overlap[i]))])) for i in range(len(persons)) if overlap[i].max() > 0]


def drop_riders(detections: Detections, min_overlap: float = 0.5) -> Detections:
    """Remove ``person`` boxes that are riders of a detected motorcycle or bicycle.

    A person is a rider when at least ``min_overlap`` of the lower half of its box lies inside a
    two-wheeler's box and its centre is within the two-wheeler's horizontal extent.
    """
    pairs = _rider_pairs(detections, min_overlap)
    if not pairs:
        return detections
    keep = np.ones(len(detections), dtype=bool)
    keep[[person for person, _ in pairs]] = False
    return detections[keep]


def fuse_riders(detections: Detections, min_overlap: float = 0.5) -> Detections:
    """One box per ridden two-wheeler: rider and two-wheeler become the two-wheeler with their union box.

    Why the union and not the two-wheeler's box alone: the rider is what the detector finds best
    (a scooter under its rider is often found at a low score, or not at all, in the next frame),
    so a rider seen without its two-wheeler in one frame and with it in the next keeps a box of
    about the same size and the same ground point (the wheels: the union's bottom edge). The
    score is the better of the two.
    """
    pairs = _rider_pairs(detections, min_overlap)
    if not pairs:
        return detections
    xyxy, confidence = detections.xyxy.copy(), detections.confidence.copy()
    for person, wheel in pairs:
        xyxy[wheel, :2] = np.minimum(xyxy[wheel, :2], xyxy[person, :2])
        xyxy[wheel, 2:] = np.maximum(xyxy[wheel, 2:], xyxy[person, 2:])
        confidence[wheel] = max(confidence[wheel], confidence[person])
    fused = Detections(xyxy, confidence, detections.class_id, detections.class_name, detections.tracker_id)
    keep = np.ones(len(detections), dtype=bool)
    keep[[person for person, _ in pairs]] = False
    return fused[keep]

"""The detection events a worker publishes: built here only, for the worker and the offline count.

One event per frame (also when nothing was found), and one ``end_of_session`` event for the
ingester's end-of-session marker (with its ``handover`` flag), so the aggregator ends the session's
tracks by the data. A frame
the ingester marked unchanged (``unchanged_since``) gets an event without detections that says
``reused_from_seq``: the aggregator uses the detections of that earlier frame (docs/contracts.md).
"""

from __future__ import annotations

from traffic.wire import Detection, DetectionEvent, FrameHeaders


def detection_event(headers: FrameHeaders, model: str, detections: tuple[Detection, ...], inference_ms: float | None) -> DetectionEvent:
    """The event of one frame (``headers.end``: the end-of-session event; ``headers.unchanged_since``: a reused frame; both without detections)."""
    reused = headers.unchanged_since is not None  # with ``end`` too: the event's validation refuses the pair
    return DetectionEvent(
        camera=headers.camera, intersection=headers.intersection, session=headers.session, seq=headers.seq,
        capture_ms=headers.capture_ms, model=model, width=headers.width, height=headers.height,
        detections=() if headers.end or reused else detections, inference_ms=None if headers.end or reused else inference_ms,
        end_of_session=headers.end, reused_from_seq=headers.unchanged_since, handover=headers.handover,
    )  # fmt: skip


def end_of_session_headers(last: FrameHeaders, frame_period_ms: int = 0) -> FrameHeaders:
    """The headers of the marker that follows the session's last frame (the next seq, no image)."""
    return FrameHeaders(
        camera=last.camera, intersection=last.intersection, session=last.session, seq=last.seq + 1,
        capture_ms=last.capture_ms + frame_period_ms, width=last.width, height=last.height, end=True,
    )  # fmt: skip

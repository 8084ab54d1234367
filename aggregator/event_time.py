"""Event-time progress that no single record can move far: per camera, then per intersection.

A camera's progress is the smallest capture time among its last ``quorum`` accepted events,
never decreasing, so one frame stamped minutes ahead (within the clock window) does not move it::

    capture times (s):   10.0 10.1 10.2 [250.0] 10.4 10.5 10.6
    progress, quorum 3:   -    -   10.0  10.1   10.2 10.4 10.4       (250.0 is never the minimum)

An intersection's watermark is the slowest of its cameras that are still live (stream not ended,
heard from within the idle time): a camera that jumps ahead cannot close its neighbours'
intervals, and a camera that lags keeps its intersection's intervals open for its own late
crossings. When none is live (all ended or idle) it is the fastest: everything is done.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping


class CameraProgress:
    """Progress of one camera (see the module docstring); in memory: after a restart it starts again."""

    def __init__(self, quorum: int = 3) -> None:
        assert quorum >= 1, "quorum must be >= 1"
        self._recent: deque[int] = deque(maxlen=quorum)
        self.watermark: int | None = None

    def observe(self, capture_ms: int) -> int | None:
        """Take one accepted event's capture time; return the progress (None until ``quorum`` events)."""
        self._recent.append(capture_ms)
        if len(self._recent) == self._recent.maxlen:
            candidate = min(self._recent)
            if self.watermark is None or candidate > self.watermark:
                self.watermark = candidate
        return self.watermark

    def force(self, capture_ms: int) -> int:
        """The stream ended at ``capture_ms``: nothing earlier will come, progress may jump there."""
        if self.watermark is None or capture_ms > self.watermark:
            self.watermark = capture_ms
        return self.watermark


def intersection_watermark(cameras: Iterable[str], progress: Mapping[str, int], live: Iterable[str]) -> int | None:
    """The watermark of an intersection from its cameras' progress.

    Args:
        cameras: the intersection's cameras.
        progress: camera -> reported progress (ms); cameras without a report are ignored.
        live: cameras still streaming (not ended, heard from recently).
    """
    known = {c: progress[c] for c in cameras if c in progress}
    if not known:
        return None
    live_known = [t for c, t in known.items() if c in set(live)]
    return min(live_known) if live_known else max(known.values())

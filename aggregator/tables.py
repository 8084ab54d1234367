"""The aggregator's tables: all state that must survive a restart, each with a changelog topic.

=================  =====================  ==================================================  ===========
table              key                    value                                               partitioned
=================  =====================  ==================================================  ===========
``camera-state``   camera id              CameraCounter.snapshot() bytes (tracker, de-dup)    by camera (detections)
``windows``        CountKey.encode()      {"count": n, "final": bool}                         by intersection
``seen``           crossing event_id      crossing time_ms (de-duplication of crossings)      by intersection
``watermarks``     intersection id        largest capture time reported by its cameras (ms)   by intersection
``streams``        camera id              true once its stream ended (end-of-session marker)  by intersection
=================  =====================  ==================================================  ===========

When every camera of an intersection has ended its stream, its open intervals are closed at once:
a finished recording or a stopped camera gets final counts by the data, not by a wall-clock
timeout that a slow or restarted worker could trip.

Closed intervals are derivable from the tables alone (``windows`` + ``watermarks``), so a restart or
rebalance between "interval due" and "final record sent" only delays the final record, never loses
it (faust's closed-window callbacks are not replayed after a crash: faust#185).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust


@dataclass(frozen=True)
class Tables:
    """The tables of one app instance."""

    camera_state: Any
    windows: Any
    seen: Any
    watermarks: Any
    streams: Any


def define_tables(app: faust.App, partitions: int) -> Tables:
    """Declare the tables; ``partitions`` must equal the partitions of their source topics."""
    # Keys and values are JSON (no key/value type: faust would try to rebuild a dict or int as a
    # model at recovery); only the counter snapshots are raw bytes.
    common: dict[str, Any] = {"partitions": partitions}
    return Tables(
        camera_state=app.Table("camera-state", value_type=bytes, help="per-camera counter snapshots", **common),
        windows=app.Table("windows", help="interval counts", **common),
        seen=app.Table("seen", help="counted crossing ids", **common),
        watermarks=app.Table("watermarks", help="event-time watermark per intersection", **common),
        streams=app.Table("streams", help="cameras whose stream ended", **common),
    )

"""Which partition a camera's records are on: Kafka's default partitioner on the camera id key.

Every service keys camera records by camera id (frames, detections, assignments), so the ingest
assignment, the aggregator's partition check and ``traffic status`` all ask this one function.
"""

from __future__ import annotations

from kafka.partitioner.default import murmur2


def camera_partition(camera: str | bytes, partitions: int) -> int:
    """toPositive(murmur2(key)) % partitions, as the Java client and kafka-python's default partitioner compute it."""
    assert partitions >= 1, "need at least one partition"
    key = camera.encode() if isinstance(camera, str) else camera
    return (murmur2(key) & 0x7FFFFFFF) % partitions

"""Dead letters: refused input of any stage, with one header schema (docs/contracts.md "DLQ").

A dead letter keeps the refused record's key and original headers and adds, in this order:

==================  ==========================================================================
header              value (UTF-8 text)
==================  ==========================================================================
``reason``          short machine-readable reason (``ContractError.reason``; the metric label)
``stage``           the refusing stage: ``worker``, ``aggregator``, ...
``detail``          one human-readable line, at most 500 characters, secrets masked
``source_topic``    topic of the refused record
``source_partition``  its partition
``source_offset``   its offset
``refused_ms``      when it was refused, epoch ms
``value_bytes``     size of the refused value in bytes
``value_sha256``    SHA-256 of the refused value, hex (empty value: of b"")
``value_kept``      ``true`` when the record's value is the refused value, ``false`` when it
                    was left out (a frame: an image of the public, see below)
==================  ==========================================================================

Frames are images of the public and must not outlive the frames' retention (minutes), while the
DLQ keeps records for weeks. So a refused frame goes to the DLQ *without* its image by default
(headers, reason, size and hash are enough to find the camera and the bug); with
``TRAFFIC_TOPICS_DLQ_KEEP_FRAME_IMAGES=true`` it goes with its image to the frames DLQ topic,
which has the frames' retention. Events (JSON without images) keep the DLQ's retention.

Original headers named like one of the schema's headers are dropped (a hostile record could
otherwise pose as a dead letter with another reason).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from traffic.logs import mask_secrets
from traffic.settings import TopicSettings

DLQ_HEADERS = (
    "reason", "stage", "detail", "source_topic", "source_partition", "source_offset", "refused_ms",
    "value_bytes", "value_sha256", "value_kept",
)  # fmt: skip
DETAIL_MAX_CHARS = 500


@dataclass(frozen=True)
class DeadLetter:
    """A record to produce: ``topic``, ``key``, ``value``, ``headers`` (kafka-python / faust form)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass(frozen=True)
class DeadLetterInfo:
    """The schema's headers of a dead letter read back (for tools, tests and operators)."""

    reason: str
    stage: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    refused_ms: int
    value_bytes: int
    value_sha256: str
    value_kept: bool
    original_headers: list[tuple[str, bytes]]

    @classmethod
    def from_headers(cls, headers: Any) -> "DeadLetterInfo":
        """Parse the headers of a record read from a DLQ topic; KeyError names a missing header."""
        pairs = _header_pairs(headers)
        ours = {name: value for name, value in pairs if name in DLQ_HEADERS}
        text = {name: (value or b"").decode("utf-8", "replace") for name, value in ours.items()}
        for name in DLQ_HEADERS:
            if name not in text:
                raise KeyError(f"dead letter header {name!r} is missing")
        return cls(
            reason=text["reason"], stage=text["stage"], detail=text["detail"], source_topic=text["source_topic"],
            source_partition=int(text["source_partition"]), source_offset=int(text["source_offset"]),
            refused_ms=int(text["refused_ms"]), value_bytes=int(text["value_bytes"]), value_sha256=text["value_sha256"],
            value_kept=text["value_kept"] == "true", original_headers=[(n, v) for n, v in pairs if n not in DLQ_HEADERS],
        )  # fmt: skip


def _header_pairs(headers: Any) -> list[tuple[str, bytes]]:
    """Headers as (name, bytes) pairs from kafka-python (list of tuples) or faust (list or dict)."""
    if not headers:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    pairs: list[tuple[str, bytes]] = []
    for name, value in items:
        name = name.decode("utf-8", "replace") if isinstance(name, bytes | bytearray) else str(name)
        if value is None:
            value = b""
        elif isinstance(value, str):
            value = value.encode()
        pairs.append((name, bytes(value)))
    return pairs


def dead_letter(
    record: Any, *, stage: str, reason: str, detail: str, topic: str, keep_value: bool = True, now_ms: int | None = None
) -> DeadLetter:
    """The dead letter of ``record`` (anything with topic, partition, offset, key, value, headers).

    Args:
        stage: the refusing stage (``worker``, ``aggregator``...).
        reason: short machine-readable reason.
        detail: one line for a person; cut to 500 characters, secrets masked.
        topic: where the dead letter goes.
        keep_value: False leaves the value out (``value_kept: false``); size and hash stay.
    """
    value = record.value if isinstance(record.value, bytes | bytearray) else (record.value or b"")
    if isinstance(value, str):
        value = value.encode()
    value = bytes(value)
    line = mask_secrets(" ".join(str(detail).split()))[:DETAIL_MAX_CHARS]
    added = {
        "reason": reason,
        "stage": stage,
        "detail": line,
        "source_topic": str(getattr(record, "topic", "") or ""),
        "source_partition": str(getattr(record, "partition", -1)),
        "source_offset": str(getattr(record, "offset", -1)),
        "refused_ms": str(int(time.time() * 1000) if now_ms is None else now_ms),
        "value_bytes": str(len(value)),
        "value_sha256": hashlib.sha256(value).hexdigest(),
        "value_kept": "true" if keep_value else "false",
    }
    headers = [(n, v) for n, v in _header_pairs(record.headers) if n not in DLQ_HEADERS]
    headers += [(name, text.encode()) for name, text in added.items()]
    key = record.key.encode() if isinstance(record.key, str) else record.key
    return DeadLetter(topic=topic, key=key, value=value if keep_value else b"", headers=headers)


def frame_dead_letter(record: Any, topics: TopicSettings, *, stage: str, reason: str, detail: str) -> DeadLetter:
    """A refused frame: to the DLQ without its image (default), or to the frames DLQ with it.

    ``topics.dlq_keep_frame_images`` chooses; both ways no image outlives the frames' retention.
    """
    if topics.dlq_keep_frame_images:
        return dead_letter(record, stage=stage, reason=reason, detail=detail, topic=topics.frames_dlq, keep_value=True)
    return dead_letter(record, stage=stage, reason=reason, detail=detail, topic=topics.dlq, keep_value=False)


def event_dead_letter(record: Any, topics: TopicSettings, *, stage: str, reason: str, detail: str) -> DeadLetter:
    """A refused event or message without images: to the DLQ, unchanged, with the DLQ's retention."""
    return dead_letter(record, stage=stage, reason=reason, detail=detail, topic=topics.dlq, keep_value=True)


def bounded_dead_letter(record: Any, topics: TopicSettings, max_request_bytes: int, *, stage: str, reason: str, detail: str) -> DeadLetter:
    """:func:`event_dead_letter`, without the value if it would not fit the DLQ topic or the producer.

    A DLQ write never fails for size: a value too large goes without it (``value_kept: false``,
    its size and SHA-256 kept).
    """
    letter = event_dead_letter(record, topics, stage=stage, reason=reason, detail=detail)
    room = min(max_request_bytes, topics.max_message_bytes) - 64 * 1024
    if len(letter.value or b"") > room:
        letter = dead_letter(record, stage=stage, reason=reason, detail=detail, topic=topics.dlq, keep_value=False)
    return letter

"""A camera's checkpoint: its counter snapshot and its session gate, as one checked, compressed record.

Written to the ``camera-state`` table once per commit interval (not per event) by the camera
stage; read back after a restart or a rebalance. The record is::

    b"TCP1" | crc32 (4 bytes, big endian) of the rest | zlib( pickle( (camera, counter snapshot, gate state, geometry) ) )

``geometry`` is the JSON of what the counter was configured with from the site file (the
camera's fps, lines, approaches, movements: :func:`camera_geometry`; never its source, which may
hold a password): a counter restored under a site file whose geometry for the camera differs
(the file changed while the service was down, or before the hot reload reached this worker)
first ends its tracks with the geometry they began with (see ``CameraStage.camera``). Records
of before that field (three items) read as geometry ``""``.

Reading is defensive, because the changelog topic is input like any other (a corrupted or
foreign record must not crash-loop the service, let alone run code): the magic, the CRC and the
camera are checked, the envelope is unpickled with no classes at all, and the counter snapshot
is unpickled once with an allow-list of the classes the counting core is made of (its own
modules, Ultralytics' trackers, numpy arrays) before :meth:`CameraCounter.restore` loads it.
Anything else raises :class:`CheckpointError`; the caller starts the camera afresh and says so.
"""

from __future__ import annotations

import io
import pickle
import struct
import zlib
import json
from dataclasses import dataclass
from typing import Any

from aggregator.sessions import Held, SessionGate
from traffic.site import Camera
from traffic.errors import ContractError
from traffic.wire import DetectionEvent

MAGIC = b"TCP1"
ZLIB_LEVEL = 1
"""Fast compression: a 300-track snapshot of 330 KB packs to about 30 KB in about 1 ms."""


class CheckpointError(ValueError):
    """A checkpoint record that cannot be trusted (not ours, corrupted, another camera's, unsafe)."""


GEOMETRY_FIELDS = frozenset({"fps", "lines", "approaches", "movements", "right_hand_traffic"})
"""What of a camera's site entry the counter is built from (the rest is the ingester's)."""


def camera_geometry(camera: Camera) -> str:
    """The camera's counting geometry as canonical JSON (compared, and kept in the checkpoint)."""
    return json.dumps(camera.model_dump(mode="json", include=set(GEOMETRY_FIELDS), by_alias=True), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Checkpoint:
    """A decoded record: the counter snapshot, the session gate, the geometry the counter had ("" = unknown)."""

    snapshot: bytes
    gate: SessionGate
    geometry: str


def encode(camera: str, counter_snapshot: bytes, gate: SessionGate, geometry: str = "") -> bytes:
    """One checkpoint record (``geometry``: :func:`camera_geometry` of the counter's camera)."""
    gate_state = (gate.confirm_events, gate.foreign_after, gate.candidate, [(h.value, h.key, list(h.headers), tuple(h.source)) for h in gate.held], gate.strikes, list(gate.past))
    body = zlib.compress(pickle.dumps((camera, counter_snapshot, gate_state, geometry), protocol=pickle.HIGHEST_PROTOCOL), ZLIB_LEVEL)
    return MAGIC + struct.pack(">I", zlib.crc32(body)) + body


def decode(camera: str, data: bytes) -> tuple[bytes, SessionGate]:
    """(counter snapshot, session gate) of a checkpoint record; CheckpointError if it cannot be trusted."""
    record = read(camera, data)
    return record.snapshot, record.gate


def read(camera: str, data: bytes) -> Checkpoint:
    """The whole checkpoint record; CheckpointError if it cannot be trusted."""
    if not isinstance(data, bytes | bytearray) or len(data) < 8 or data[:4] != MAGIC:
        raise CheckpointError("not a checkpoint record")
    body = bytes(data[8:])
    if struct.unpack(">I", data[4:8])[0] != zlib.crc32(body):
        raise CheckpointError("checkpoint CRC mismatch")
    try:
        envelope = _NoClasses(io.BytesIO(zlib.decompress(body))).load()
        owner, snapshot, gate_state = envelope[:3]
        geometry = envelope[3] if len(envelope) > 3 else ""
        if len(envelope) > 4 or not isinstance(geometry, str):
            raise CheckpointError("checkpoint envelope of another shape")
        confirm, foreign, candidate, held, strikes, past = gate_state
        gate = SessionGate(int(confirm), int(foreign), candidate, [_held(*h) for h in held], int(strikes), [str(s) for s in past])
    except CheckpointError:
        raise
    except Exception as exc:  # any shape error of a foreign record
        raise CheckpointError(f"checkpoint does not decode: {exc.__class__.__name__}") from None
    if owner != camera or not isinstance(snapshot, bytes):
        raise CheckpointError(f"checkpoint of camera {owner!r}, not {camera!r}")
    check_snapshot(snapshot)
    return Checkpoint(snapshot, gate, geometry)


def _held(value: bytes, key: bytes | None, headers: list[tuple[str, bytes]], source: tuple[str, int, int]) -> Held:
    try:
        event = DetectionEvent.decode(value)
    except ContractError as exc:
        raise CheckpointError(f"held event does not decode: {exc}") from None
    topic, partition, offset = source
    return Held(event, value, key, tuple((str(n), bytes(v)) for n, v in headers), (str(topic), int(partition), int(offset)))


def check_snapshot(snapshot: bytes) -> None:
    """Unpickle a counter snapshot with the allow-list; CheckpointError when it needs anything else."""
    try:
        _CountingClasses(io.BytesIO(snapshot)).load()
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"counter snapshot does not load: {exc.__class__.__name__}: {str(exc)[:100]}") from None


class _NoClasses(pickle.Unpickler):
    """Builtin containers and scalars only."""

    def find_class(self, module: str, name: str) -> Any:
        raise CheckpointError(f"checkpoint envelope refers to {module}.{name}")


def _range_next(obj: object, name: str) -> Any:
    """``getattr`` as Ultralytics' track id counter needs it (``iter(range(...)).__next__``), and nothing else."""
    if name == "__next__" and type(obj).__name__ == "range_iterator":
        return obj.__next__  # type: ignore[attr-defined]
    raise CheckpointError(f"counter snapshot asks for attribute {name!r} of {type(obj).__name__}")


_EXACT: dict[tuple[str, str], Any] = {
    ("builtins", "getattr"): _range_next,
    **{("builtins", n): getattr(__import__("builtins"), n) for n in ("iter", "range", "set", "frozenset", "slice", "complex", "bytearray")},
    **{("collections", n): getattr(__import__("collections"), n) for n in ("Counter", "OrderedDict", "deque", "defaultdict")},
    **{("copyreg", n): getattr(__import__("copyreg"), n) for n in ("_reconstructor", "__newobj__", "__newobj_ex__")},
    ("types", "SimpleNamespace"): __import__("types").SimpleNamespace,
    ("functools", "partial"): __import__("functools").partial,
}
_FUNCTIONS = {("aggregator.tracking", "_buffered_dists")}
"""Module-level functions a counter binds into its tracker (buffered IoU association, with
functools.partial); any other function in a snapshot is refused."""
_NUMPY = {
    "numpy": ("dtype", "ndarray"),
    "numpy._core.multiarray": ("scalar", "_reconstruct"),
    "numpy.core.multiarray": ("scalar", "_reconstruct"),
    "numpy._core.numeric": ("_frombuffer",),
    "numpy.core.numeric": ("_frombuffer",),
}
_CLASS_MODULES = ("aggregator.", "traffic.", "ultralytics.trackers.")
"""Modules whose own classes a snapshot may contain: the counting core, the wire types, the trackers."""


class _CountingClasses(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _EXACT:
            return _EXACT[(module, name)]
        if name in _NUMPY.get(module, ()):
            return super().find_class(module, name)
        if (module, name) in _FUNCTIONS:
            return super().find_class(module, name)
        if module.startswith(_CLASS_MODULES):
            obj = super().find_class(module, name)
            if isinstance(obj, type) and obj.__module__ == module:
                return obj
        raise CheckpointError(f"counter snapshot refers to {module}.{name}, which a counter is not made of")

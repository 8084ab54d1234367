"""Where the cameras' counting runs: in counting processes beside the event loop, or in it.

Why processes: the counting (ByteTrack, lines, zones) is pure Python and numpy, so in the event
loop it and faust's own work per record (fetch, stream, acks, sends, commits) take turns on one
core. With ``counting_processes >= 1`` the camera stage only forwards each record's bytes to a
counting process (:mod:`aggregator.counting_process`, which runs a
:class:`~aggregator.camera_shard.CameraShard`) and applies the effects it returns, while the
process counts the next record: the two overlap, and with more processes, cameras of different
partitions count on different cores. ``counting_processes = 0`` runs the same shard in the loop.

Ordering and delivery (the same as in the loop):

* Records are sharded by partition (``partition % processes``), and a camera's records are all
  on its partition: one process sees all of a camera's records, in partition order. Replies come
  back in request order, so effects are applied in record order.
* At most ``counting_in_flight`` records (and ``counting_in_flight_bytes`` of them) per process
  are handed over and not yet answered: enough that the process does not wait for the loop, few
  enough that a commit (which waits for them) is not held up long by a dense scene.
* When faust commits, :meth:`CountingPool.checkpoint` asks every process for its checkpoints and
  waits (blocking: faust's commit hook is synchronous) until every reply before it is applied:
  the checkpoints then cover every record faust acked, as in the loop.
* A counting process that dies takes the aggregator down at once (``os._exit``), without a
  commit: the records it had are redelivered after the restart, nothing acked is lost.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import fcntl
import logging
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from aggregator.settings import AggregatorSettings
from traffic.settings import TopicSettings
from traffic.site import Site

if TYPE_CHECKING:
    from aggregator.camera_shard import CameraShard, Effect, Record
    from aggregator.records import FinishMessage

log = logging.getLogger(__name__)

PIPE_BYTES = 1024 * 1024
"""Pipe buffer asked for (Linux F_SETPIPE_SZ): records in flight fit without blocking the loop."""
EXIT_CHILD_DIED = 70

Apply = Callable[[list["Effect"]], bool]
"""Applies effects in order; True if they asked for a commit."""


@dataclass(frozen=True)
class ShardConfig:
    """What a shard is built from (sent to each counting process as its first message)."""

    settings: AggregatorSettings
    topics: TopicSettings
    site: Site
    partitions: int
    control_topic: str

    def build(self) -> CameraShard:
        from aggregator.camera_shard import CameraShard

        return CameraShard(self.settings, self.topics, self.site, self.partitions, self.control_topic)


class _Child:
    """One counting process and its two pipes."""

    def __init__(self, index: int, config: ShardConfig, in_flight: int, in_flight_bytes: int) -> None:
        self.index = index
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        for fd in (to_child_w, from_child_w):
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, 1031, PIPE_BYTES)  # F_SETPIPE_SZ
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aggregator.counting_process", str(to_child_r), str(from_child_w), str(index)],
            pass_fds=(to_child_r, from_child_w), close_fds=True,
        )  # fmt: skip
        os.close(to_child_r)
        os.close(from_child_w)
        self.out = Connection(to_child_w, readable=False)
        self.inp = Connection(from_child_r, writable=False)
        self.pending: collections.deque[tuple[str, asyncio.Future[Any] | None, int]] = collections.deque()  # (kind, future, record bytes)
        self.slots = asyncio.Semaphore(in_flight)
        self.budget = in_flight_bytes
        self.bytes = 0  # of the records in flight
        self.room = asyncio.Event()  # set when a record's reply came
        self.out.send_bytes(pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL))


class CountingPool:
    """The camera shards of one aggregator worker (see the module docstring)."""

    def __init__(self, config: ShardConfig, processes: int, in_flight: int, apply: Apply, in_flight_bytes: int = 256 * 1024) -> None:
        self.config = config
        self.processes = processes
        self.in_flight = in_flight
        self.in_flight_bytes = in_flight_bytes
        self.apply = apply
        self._children: list[_Child] = []
        self._inline: CameraShard | None = None
        self._attached = False
        self._closed = False

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the counting processes and wait until each has imported the counting core (before faust starts)."""
        if self.processes == 0:
            self._inline = self.config.build()
            return
        for index in range(self.processes):
            self._children.append(_Child(index, self.config, self.in_flight, self.in_flight_bytes))
        atexit.register(self.close)  # after faust's last commit (and its checkpoints): the processes go with us
        # Wait until they have imported the counting core, before faust starts: a worker that joins
        # its group and recovers while its stage cannot take records yet stalled after some abrupt
        # restarts (docs/aggregator.md, "Fast recovery"), as starting faust before the tracker
        # import did when the counting ran in the loop.
        for child in self._children:
            try:
                pickle.loads(child.inp.recv_bytes())  # noqa: S301 - ("ready",)
            except (EOFError, OSError) as exc:
                self._died(child, exc)
        log.info("counting processes started", extra={"processes": self.processes, "pids": [c.proc.pid for c in self._children], "in_flight": self.in_flight, "in_flight_bytes": self.in_flight_bytes})

    def _attach(self) -> None:
        """Read the replies from inside the event loop (once, from the first request made in it)."""
        if self._attached or not self._children:
            return
        self._attached = True
        loop = asyncio.get_running_loop()
        for child in self._children:
            loop.add_reader(child.inp.fileno(), self._readable, child)

    async def ready(self) -> None:
        """Attach the replies to the event loop (the processes were ready before faust started)."""
        self._attach()

    # -- requests ------------------------------------------------------------------------------
    async def submit(self, record: Record) -> None:
        """Hand a record over; its effects are applied when its reply comes (in record order).

        For detection events only: they never ask for a commit (a finish does, and goes through :meth:`call`).
        """
        if self._inline is not None:
            self.apply(self._inline.process(record))
            return
        child = self._child_of(record.partition)
        await child.slots.acquire()
        size = len(record.value or b"")
        while child.bytes and child.bytes + size > child.budget:
            child.room.clear()
            await child.room.wait()
        child.bytes += size
        self._send(child, ("rec", record), "rec", None, size)

    async def call(self, record: Record) -> bool:
        """Process one record and wait until its effects are applied; True if they ask for a commit."""
        if self._inline is not None:
            return self.apply(self._inline.process(record))
        child = self._child_of(record.partition)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._send(child, ("rec", record), "call", fut)
        return bool(await fut)

    def restore(self, partition: int, camera: str, data: bytes) -> None:
        """A camera's checkpoint, before any of its records (requests are answered in order)."""
        if self._inline is not None:
            self.apply(self._inline.restore(camera, data))
            return
        self._send(self._child_of(partition), ("restore", camera, data), "effects", None)

    def reset(self) -> None:
        """Every shard forgets its cameras (after a rebalance the table is the truth)."""
        if self._inline is not None:
            self._inline.reset()
            return
        for child in self._children:
            self._send(child, ("reset",), "none", None)

    def apply_site(self, site: Site, cameras: list[str]) -> None:
        """A site hot reload: ``cameras`` count with ``site``'s geometry from the next record on."""
        if self._inline is not None:
            self._inline.apply_site(site, cameras)
            return
        for child in self._children:
            self._send(child, ("site", site, cameras), "none", None)

    async def idle_cameras(self, now: float) -> list[tuple[int, FinishMessage]]:
        """(partition, finish message) of the idle cameras of every shard."""
        if self._inline is not None:
            return self._inline.idle_cameras(now)
        loop = asyncio.get_running_loop()
        futures = []
        self._attach()
        for child in self._children:
            fut: asyncio.Future[Any] = loop.create_future()
            self._send(child, ("idle", now), "value", fut)
            futures.append(fut)
        out: list[tuple[int, FinishMessage]] = []
        for fut in futures:
            out += await fut
        return out

    def checkpoint(self) -> None:
        """Every shard's checkpoints applied, after every reply before them (blocking; see the module docstring)."""
        if self._closed:  # never let faust commit offsets no checkpoint covers
            self._died(self._children[0], RuntimeError("checkpoint after the counting processes were closed"))
        if self._inline is not None:
            self.apply(self._inline.checkpoint())
            return
        for child in self._children:
            self._send(child, ("ckpt",), "effects", None)
        for child in self._children:
            while child.pending:
                self._receive(child, block=True)

    # -- plumbing ------------------------------------------------------------------------------
    def _child_of(self, partition: int) -> _Child:
        return self._children[partition % len(self._children)]

    def _send(self, child: _Child, request: tuple[Any, ...], kind: str, fut: asyncio.Future[Any] | None, size: int = 0) -> None:
        self._attach()
        child.pending.append((kind, fut, size))
        try:
            child.out.send_bytes(pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError as exc:
            self._died(child, exc)

    def _readable(self, child: _Child) -> None:
        try:
            while child.pending and child.inp.poll():
                self._receive(child, block=False)
        except (EOFError, OSError) as exc:
            self._died(child, exc)

    def _receive(self, child: _Child, block: bool) -> None:
        try:
            reply = pickle.loads(child.inp.recv_bytes())  # noqa: S301 - our own child process
        except (EOFError, OSError) as exc:
            self._died(child, exc)
        kind, fut, size = child.pending.popleft()
        if kind == "rec":
            child.slots.release()
            child.bytes -= size
            child.room.set()
            self.apply(reply)
        elif kind == "call":
            assert fut is not None
            asked = self.apply(reply)
            if not fut.done():
                fut.set_result(asked)
        elif kind == "effects":
            self.apply(reply)
        elif fut is not None and not fut.done():
            fut.set_result(reply)

    def _died(self, child: _Child, exc: BaseException) -> None:
        """A counting process is gone: so is its state; stop at once, without a commit (the records come again)."""
        try:
            code = child.proc.poll()
            log.critical("counting process died: the aggregator stops without committing", extra={"counting_process": child.index, "exit": code, "error": repr(exc)})
            logging.shutdown()
        finally:
            os._exit(EXIT_CHILD_DIED)

    def close(self) -> None:
        """Stop the counting processes (end of their input: they exit) and wait for them; at exit, or by a test."""
        if self._closed or not self._children:
            return
        self._closed = True
        for child in self._children:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(child.inp.fileno())
            with contextlib.suppress(OSError):
                child.out.close()  # end of its input: it exits
        for child in self._children:
            try:
                child.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.proc.kill()

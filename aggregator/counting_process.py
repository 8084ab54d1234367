"""A counting process: one :class:`~aggregator.camera_shard.CameraShard` behind two pipes.

Started by :mod:`aggregator.counting_pool` as ``python -m aggregator.counting_process <in fd>
<out fd> <index>``. Its first message is the :class:`~aggregator.counting_pool.ShardConfig`; it
answers ``("ready",)`` once the counting core is imported, then one reply per request, in
order::

    ("rec", Record)            -> effects of the record
    ("restore", camera, data)  -> effects (a metric if the checkpoint is refused)
    ("ckpt",)                  -> checkpoint effects
    ("idle", monotonic now)    -> [(partition, FinishMessage)]
    ("site", site, cameras)    -> None (a site hot reload)
    ("reset",)                 -> None

It ignores SIGINT and SIGTERM (a Ctrl-C or a pod stop goes to the aggregator, which checkpoints
through it on the way out) and exits when its input closes: the aggregator stopped or died.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import signal
import sys
from multiprocessing.connection import Connection

from traffic.logs import configure_logging


def serve(inp: Connection, out: Connection) -> int:
    """Answer requests until the input closes."""
    config = pickle.loads(inp.recv_bytes())  # noqa: S301 - our parent
    shard = config.build()
    import ultralytics.trackers.byte_tracker  # noqa: F401 - the tracker (and torch) now, not at the first record

    gc.freeze()  # what lives as long as the process, out of the cyclic collector's sight (see aggregator.app)

    out.send_bytes(pickle.dumps(("ready",)))
    send, recv, loads, dumps = out.send_bytes, inp.recv_bytes, pickle.loads, pickle.dumps
    while True:
        try:
            request = loads(recv())  # noqa: S301
        except EOFError:
            return 0
        op = request[0]
        if op == "rec":
            reply: object = shard.process(request[1])
        elif op == "restore":
            reply = shard.restore(request[1], request[2])
        elif op == "ckpt":
            reply = shard.checkpoint()
        elif op == "idle":
            reply = shard.idle_cameras(request[1])
        elif op == "site":
            shard.apply_site(request[1], request[2])
            reply = None
        elif op == "reset":
            shard.reset()
            reply = None
        else:
            raise ValueError(f"unknown request {op!r}")
        send(dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging()
    in_fd, out_fd, index = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    logging.getLogger(__name__).debug("counting process up", extra={"counting_process": index, "pid": os.getpid()})
    try:
        return serve(Connection(in_fd, writable=False), Connection(out_fd, readable=False))
    except BrokenPipeError:
        return 0  # the aggregator is gone


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""Simulated RTSP camera(s): serves an H.264 MP4 file over RTSP, looping forever, on one or more mounts.

Why this exists: tests, the demo and docker-compose need a camera that behaves like a real one
(an ``rtsp://`` URL that keeps delivering frames for as long as a client stays connected, and that
a new client can join at any time) without real hardware and without internet access.

How: Debian's GStreamer RTSP server (``GstRtspServer``) with a pipeline that does no decoding and
no re-encoding (``filesrc ! qtdemux ! h264parse ! rtph264pay``), so one client costs about 1 % of a
core. Every client gets its own media pipeline (not shared), so it starts at the file's first
keyframe and sees a picture at once.

Looping: once a client's pipeline has prerolled, it is given a *segment seek* to 0
(``GST_SEEK_FLAG_SEGMENT``). At the end of the file the pipeline then posts SEGMENT_DONE instead of
EOS; the media answers with another, non-flushing segment seek to 0. Non-flushing segment seeks
keep the running time increasing, so RTP timestamps and sequence numbers stay continuous and the
client never notices the wrap (no RTCP BYE, no timestamp jump, no stall). The seek goes to the
demuxer itself: a pipeline-level seek at preroll time would reach no sink and do nothing. The
file's duration is hidden from the server, so it advertises ``Range: npt=0-`` like a live camera;
otherwise GStreamer clients would stop at the advertised end (30 s) on their own.

Limit: a client that PLAYs with a Range other than the current position (``npt=0-`` on a fresh
session is a no-op, which is what FFmpeg/OpenCV, GStreamer and VLC send) makes the server seek
itself without the SEGMENT flag; that client then gets a normal end of stream after one pass.

Runs under Debian's ``/usr/bin/python3`` (the ``gi`` bindings and GstRtspServer typelib come from
apt, see ``install-deps.sh``), not inside the project's venv.

Several cameras: give ``--mount`` more than once, or ``--cameras N`` for ``/cam1`` .. ``/camN``;
every mount serves the same file, each client from its own pipeline (own position in the file).

Usage::

    /usr/bin/python3 deploy/rtsp/simulated_camera.py --video /path/intersection.mp4 \\
        --port 8554 --mount /cam1 [--mount /cam2 ...] [--cameras N] [--host 127.0.0.1] [--no-loop] [--user U --password P]

Prints exactly one line ``READY rtsp://HOST:PORT/MOUNT [rtsp://HOST:PORT/MOUNT2 ...]`` (never with
credentials) to stdout once it accepts connections; ``--port 0`` lets the kernel pick a free port,
reported in that line.
Exits 0 on SIGTERM/SIGINT, 2 on bad arguments or an unusable video, 3 when gi/GStreamer is missing.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

try:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer
except (ImportError, ValueError) as exc:  # ValueError: typelib/namespace version not available
    print(
        f"simulated_camera: GStreamer RTSP server bindings unavailable ({exc}); "
        "run deploy/rtsp/install-deps.sh as root",
        file=sys.stderr,
    )
    sys.exit(3)

# Before any GStreamer class is subclassed: GstMessage etc. get their GTypes here.
Gst.init(None)


def log(msg: str) -> None:
    """Write a diagnostic line to stderr (stdout is reserved for the READY line)."""
    print(f"simulated_camera: {msg}", file=sys.stderr, flush=True)


class LoopingMedia(GstRtspServer.RTSPMedia):
    """An RTSP media whose pipeline plays its file over and over, seamlessly.

    Why a subclass: the RTSP server owns the pipeline's bus, so overriding ``handle_message`` is
    the supported way to see SEGMENT_DONE/EOS and answer them with a seek.
    """

    def __init__(self) -> None:
        super().__init__()
        self._loops = 0

    def _segment_seek(self, flush: bool) -> bool:
        """Seek the demuxer to 0 in segment mode, so the end of the file gives SEGMENT_DONE, not EOS.

        Why the demuxer and not the pipeline: a pipeline-level seek is sent to the sinks, and the
        RTSP server only adds those when a client sets up its transport, so at preroll time it
        would go nowhere.
        """
        element = self.get_element()
        demux = element.get_by_name("demux") if element is not None else None
        if demux is None:
            log("no demuxer named 'demux' in the media; cannot loop")
            return False
        flags = Gst.SeekFlags.SEGMENT | (Gst.SeekFlags.FLUSH if flush else Gst.SeekFlags.NONE)
        event = Gst.Event.new_seek(1.0, Gst.Format.TIME, flags, Gst.SeekType.SET, 0, Gst.SeekType.NONE, -1)
        ok = demux.send_event(event)
        if not ok:
            log(f"segment seek (flush={flush}) refused by the demuxer")
        return ok

    def hide_duration(self) -> None:
        """Make the media look live-like: no duration, so the SDP/PLAY Range is ``npt=0-``.

        Why: with the file's duration the server advertises ``npt=0-30.3``, and GStreamer clients
        (rtspsrc's jitterbuffer ``npt-stop``) then end the stream at 30 s although we keep sending.
        The server takes the end from a SEGMENT query (segment stop), then a DURATION query, both
        sent to the payloader; failing both where they leave it upstream hides the file's end.
        """
        element = self.get_element()
        pay = element.get_by_name("pay0") if element is not None else None
        pad = pay.get_static_pad("sink") if pay is not None else None
        if pad is None:
            log("no payloader sink pad; duration stays visible")
            return

        def drop_duration(_pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
            query = info.get_query()
            if query is not None and query.type in (Gst.QueryType.DURATION, Gst.QueryType.SEGMENT):
                return Gst.PadProbeReturn.DROP  # the query fails: end of stream unknown
            return Gst.PadProbeReturn.OK

        pad.add_probe(Gst.PadProbeType.QUERY_UPSTREAM, drop_duration)

    def do_prepared(self) -> None:
        """Arm looping once the pipeline has prerolled (before the client's PLAY)."""
        if self._segment_seek(flush=True):
            log("client media prepared, looping armed")

    def do_handle_message(self, message: Gst.Message) -> bool:
        """Restart from 0 at the end of the file; everything else goes to the default handler."""
        if message.type == Gst.MessageType.SEGMENT_DONE:
            self._loops += 1
            log(f"end of file, looping (loop {self._loops})")
            self._segment_seek(flush=False)
            return True
        if message.type == Gst.MessageType.EOS:
            log("EOS: looping stopped (a client seek replaced the segment seek); client gets end of stream")
        return GstRtspServer.RTSPMedia.do_handle_message(self, message)


def gst_quote(value: str) -> str:
    """Quote a string for a gst-launch description, so paths with spaces or quotes work."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_video(video: Path) -> None:
    """Fail early and clearly if the file is not an MP4/MOV with an H.264 track we can payload.

    Why: otherwise the error would only show up when the first client connects, as a vague
    "503 Service Unavailable" on the client side.
    """
    if not video.is_file():
        log(f"video not found: {video}")
        sys.exit(2)
    desc = f"filesrc location={gst_quote(str(video))} ! qtdemux ! h264parse ! fakesink"
    try:
        pipeline = Gst.parse_launch(desc)
    except GLib.Error as exc:
        log(f"cannot build probe pipeline: {exc.message}")
        sys.exit(2)
    pipeline.set_state(Gst.State.PAUSED)
    bus = pipeline.get_bus()
    msg = bus.timed_pop_filtered(10 * Gst.SECOND, Gst.MessageType.ASYNC_DONE | Gst.MessageType.ERROR)
    pipeline.set_state(Gst.State.NULL)
    if msg is None:
        log(f"timed out probing {video}")
        sys.exit(2)
    if msg.type == Gst.MessageType.ERROR:
        err, _debug = msg.parse_error()
        log(f"{video} is not a playable H.264 MP4: {err.message}")
        sys.exit(2)


def build_server(args: argparse.Namespace) -> GstRtspServer.RTSPServer:
    """Create the server, its mounts (one factory each) and (optionally) basic authentication."""
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))

    if args.user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
        server.set_auth(auth)
    for mount in args.mount:
        server.get_mount_points().add_factory(mount, build_factory(args))
    return server


def build_factory(args: argparse.Namespace) -> GstRtspServer.RTSPMediaFactory:
    """One mount: the file, looping unless --no-loop, readable by the viewer role when auth is on."""
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( filesrc location={gst_quote(str(args.video))} ! qtdemux name=demux ! h264parse ! "
        "rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.set_shared(False)
    if args.loop:
        factory.set_media_gtype(LoopingMedia)
        factory.connect("media-configure", lambda _f, media: media.hide_duration())

    if args.user is not None:
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_role_from_structure(
            Gst.Structure.new_from_string("viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true")
        )
        factory.set_permissions(permissions)
    return factory


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line interface (see the module docstring)."""
    p = argparse.ArgumentParser(description="Serve an H.264 MP4 as a looping RTSP camera.")
    p.add_argument("--video", required=True, type=Path, help="H.264 MP4 file to serve")
    p.add_argument("--port", type=int, default=8554, help="TCP port; 0 = any free port (default 8554)")
    p.add_argument("--mount", action="append", default=None, help="mount point, e.g. /cam1; repeat for more cameras (default /cam1)")
    p.add_argument("--cameras", type=int, default=None, help="serve N mounts /cam1 .. /camN (instead of --mount)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 in containers)")
    p.add_argument("--loop", action=argparse.BooleanOptionalAction, default=True, help="loop the video forever (default: loop)")
    p.add_argument("--user", default=None, help="require RTSP basic auth with this user name")
    p.add_argument("--password", default=None, help="password for --user")
    args = p.parse_args(argv)
    if args.cameras is not None:
        if args.mount:
            p.error("give --mount or --cameras, not both")
        if not 1 <= args.cameras <= 1000:
            p.error("--cameras must be 1..1000")
        args.mount = [f"/cam{i}" for i in range(1, args.cameras + 1)]
    args.mount = [m if m.startswith("/") else "/" + m for m in (args.mount or ["/cam1"])]
    if len(set(args.mount)) != len(args.mount):
        p.error("mount points must differ")
    if (args.user is None) != (args.password is None):
        p.error("--user and --password go together")
    if not 0 <= args.port <= 65535:
        p.error("--port must be 0..65535")
    args.video = args.video.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    """Start serving, print READY, run until SIGTERM/SIGINT."""
    args = parse_args(argv)
    check_video(args.video)

    server = build_server(args)
    loop = GLib.MainLoop()
    try:
        source_id = server.attach(None)
    except GLib.Error as exc:
        log(f"cannot listen on {args.host}:{args.port}: {exc.message}")
        return 2
    if source_id == 0:
        log(f"cannot listen on {args.host}:{args.port} (address in use?)")
        return 2

    def on_client(_server: GstRtspServer.RTSPServer, client: GstRtspServer.RTSPClient) -> None:
        conn = client.get_connection()
        peer = conn.get_ip() if conn is not None else "?"
        log(f"client connected from {peer}")
        client.connect("closed", lambda _c: log(f"client {peer} closed"))

    server.connect("client-connected", on_client)

    def on_signal(signum: int) -> bool:
        log(f"signal {signum}, shutting down")
        # Drop the clients so their pipelines go to NULL before the process exits.
        server.client_filter(lambda _s, _c: GstRtspServer.RTSPFilterResult.REMOVE)
        loop.quit()
        return GLib.SOURCE_REMOVE

    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, on_signal, signal.SIGTERM)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, on_signal, signal.SIGINT)

    port = server.get_bound_port()
    host = args.host if args.host not in ("0.0.0.0", "::") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    print("READY " + " ".join(f"rtsp://{host}:{port}{mount}" for mount in args.mount), flush=True)
    log(f"serving {args.video} on {len(args.mount)} mount(s) (loop={args.loop}, auth={'on' if args.user else 'off'}, pid={os.getpid()})")
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A real RTSP server for the tests: GStreamer's (gst-rtsp-server), serving a live H.264
test pattern at rtsp://127.0.0.1:PORT/cam, optionally behind Basic or Digest auth.

Run with the system Python, which has GStreamer's bindings (python3-gi and
gir1.2-gst-rtsp-server-1.0, installed by .ci/setup), not the venv:

    /usr/bin/python3 tests/rtsp_server.py --port 0 [--user U --password P [--auth digest]]
        [--width 640 --height 360 --fps 5]

It prints one line, ``ready rtsp://127.0.0.1:PORT/cam``, once it listens (``--port 0``: a free
port, the one bound) and serves until it is killed. One media shared by every client (as a
camera's), a moving ball, a key frame every second (``key-int-max`` = fps).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import gi  # type: ignore[import-not-found]

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # type: ignore[import-not-found]  # noqa: E402

ROLE = "viewer"


def pipeline(width: int, height: int, fps: int) -> str:
    return (
        "( videotestsrc is-live=true pattern=ball"
        f" ! video/x-raw,width={width},height={height},framerate={fps}/1"
        " ! videoconvert"
        f" ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} threads=1"
        " ! video/x-h264,profile=baseline"
        " ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


def add_auth(server: Any, factory: Any, user: str, password: str, method: str) -> None:
    """Only ``user`` with ``password`` may see and play the media; others get 401."""
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, ROLE)
    if method == "digest":
        auth.add_digest(user, password, token)
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
    else:
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
    server.set_auth(auth)
    permissions = GstRtspServer.RTSPPermissions()
    allowed = (
        f"{ROLE}, {GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS}=(boolean)true,"
        f" {GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT}=(boolean)true"
    )
    permissions.add_role_from_structure(Gst.Structure.from_string(allowed)[0])
    factory.set_permissions(permissions)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="A live H.264 test pattern over RTSP.")
    ap.add_argument("--port", type=int, default=0, help="0: a free port (default)")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--auth", choices=("basic", "digest"), default="basic")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--fps", type=int, default=5)
    args = ap.parse_args(argv)
    if (args.user is None) != (args.password is None):
        ap.error("--user and --password go together")

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(pipeline(args.width, args.height, args.fps))
    factory.set_shared(True)
    if args.user is not None:
        add_auth(server, factory, args.user, args.password, args.auth)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1
    print(f"ready rtsp://127.0.0.1:{server.get_bound_port()}/cam", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

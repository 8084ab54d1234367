#!/usr/bin/env bash
# Install the Debian packages that deploy/rtsp/simulated_camera.py needs.
#
# The simulated RTSP camera runs under Debian's /usr/bin/python3 because the
# GObject-introspection bindings (gi) and the GstRtspServer typelib come from
# apt, not from PyPI. This script is idempotent: when every package is already
# installed it returns at once without touching the network; otherwise it runs
# `apt-get update` once and installs only what is missing.
#
# Usage: deploy/rtsp/install-deps.sh        (must run as root, or via sudo)
# Exit status: 0 when everything is installed and importable, non-zero otherwise.
set -euo pipefail

PACKAGES=(
  python3-gi                    # gi bindings for /usr/bin/python3
  gir1.2-gstreamer-1.0          # Gst typelib
  gir1.2-gst-rtsp-server-1.0    # GstRtspServer typelib + libgstrtspserver
  gstreamer1.0-plugins-base     # core playback plumbing
  gstreamer1.0-plugins-good     # qtdemux (mp4), rtph264pay
  gstreamer1.0-plugins-bad      # h264parse (videoparsersbad)
  gstreamer1.0-tools            # gst-inspect-1.0 / gst-launch-1.0 for debugging
)

die() { echo "install-deps.sh: ERROR: $*" >&2; exit 1; }

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

if (( ${#missing[@]} > 0 )); then
  echo "install-deps.sh: installing missing packages: ${missing[*]}"
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "not root and sudo not found; install as root: apt-get install ${missing[*]}"
    SUDO="sudo"
  fi
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found (not a Debian/Ubuntu system?); need: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || die "apt-get update failed"
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    || die "apt-get install failed for: ${missing[*]}"
else
  echo "install-deps.sh: all packages already installed"
fi

# Check that the bindings actually load, so a broken install fails here rather
# than later inside a test with a less obvious message.
/usr/bin/python3 - <<'PY' || die "/usr/bin/python3 cannot load gi + Gst + GstRtspServer after install"
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer  # noqa: F401
Gst.init(None)
for name in ("filesrc", "qtdemux", "h264parse", "rtph264pay"):
    if Gst.ElementFactory.find(name) is None:
        raise SystemExit(f"GStreamer element {name!r} not found")
PY
echo "install-deps.sh: OK (gi, GstRtspServer and required GStreamer elements available)"

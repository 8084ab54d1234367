#!/usr/bin/env bash
# Set up everything the demo and the tests need on a fresh Debian 12 machine, idempotently:
#   1. Debian packages: GStreamer RTSP server (simulated camera), Prometheus (scrape tests),
#      openssl (the CA of the local SASL_SSL broker)
#   2. a Python 3.11 virtual environment in .venv with the pinned versions of requirements/lock.txt
#   3. the Apache Kafka broker jars from Maven Central (cached in ~/.cache/traffic-pipeline)
#   4. the manifest validation tools (kustomize, CRD schemas) for tests/deploy
#   5. the local Kubernetes control plane, KEDA and Helm for tests/k8s, built from the Go module
#      proxy into ~/.cache/traffic-pipeline/k8s (about 10-15 minutes on 2 cores the first time)
# A second run only checks and returns in seconds. Set TRAFFIC_SKIP_APT=1 to skip step 1.
set -euo pipefail
cd "$(dirname "$0")/../.."
say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# -- 1. Debian packages -------------------------------------------------------------------------
if [ "${TRAFFIC_SKIP_APT:-0}" != "1" ]; then
  if [ -x deploy/rtsp/install-deps.sh ] || [ -f deploy/rtsp/install-deps.sh ]; then
    bash deploy/rtsp/install-deps.sh
  fi
  missing=()
  for pkg in prometheus openssl; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts the packaged Prometheus as a service; the tests start their own.
    (command -v systemctl >/dev/null && $SUDO systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1) || true
    pkill -x prometheus 2>/dev/null || true
    pkill -f prometheus-node-exporter 2>/dev/null || true
  fi
fi

# -- 2. Python ----------------------------------------------------------------------------------
PY="${TRAFFIC_PYTHON:-}"
if [ -z "$PY" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY="$candidate"; break
    fi
  done
fi
[ -n "$PY" ] || { say "Python 3.11 is required (set TRAFFIC_PYTHON to its path)"; exit 1; }
if [ ! -x .venv/bin/python ]; then
  say "creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.lock-installed
if [ ! -f "$stamp" ] || ! cmp -s requirements/lock.txt "$stamp"; then
  say "installing pinned Python packages (torch is large: several minutes on a fresh machine)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements/lock.txt
  cp requirements/lock.txt "$stamp"
fi
if ! .venv/bin/python -c 'import traffic, ingest' >/dev/null 2>&1 || [ pyproject.toml -nt .venv/.editable-installed ]; then
  .venv/bin/python -m pip install -q --no-deps -e .
  touch .venv/.editable-installed
fi

# -- 3. Kafka jars ------------------------------------------------------------------------------
.venv/bin/traffic broker fetch >/dev/null

# -- 4. Manifest validation tools ---------------------------------------------------------------
if [ -f deploy/tools/install.sh ]; then
  # Strimzi's CRD generator needs Java >= 21; without one, Strimzi objects get structural checks only.
  java21=""
  for j in ${JAVA_HOME:+"$JAVA_HOME/bin/java"} "$(command -v java || true)" /usr/lib/jvm/*/bin/java; do
    if [ -x "$j" ] && "$j" -version 2>&1 | grep -Eq 'version "(2[1-9]|[3-9][0-9])'; then java21="$j"; break; fi
  done
  if [ -z "$java21" ] && [ -z "${TRAFFIC_TOOLS_SKIP_STRIMZI:-}" ]; then
    say "no Java >= 21 found: Strimzi CRD schemas are skipped (TRAFFIC_TOOLS_SKIP_STRIMZI=1)"
    export TRAFFIC_TOOLS_SKIP_STRIMZI=1
  fi
  bash deploy/tools/install.sh
fi

# -- 5. Kubernetes control plane, KEDA, Helm (tests/k8s) -----------------------------------------
if [ -f deploy/tools/k8s_stack.py ] && [ "${TRAFFIC_SKIP_K8S_STACK:-0}" != "1" ]; then
  .venv/bin/python deploy/tools/k8s_stack.py build
fi
say "ready"

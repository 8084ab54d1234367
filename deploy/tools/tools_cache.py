"""Where deploy/tools/install.sh put the offline validation tools, and whether
they match the versions pinned in deploy/tools/versions.env.

The cache lives outside the repository (default
``${XDG_CACHE_HOME:-~/.cache}/traffic-pipeline/tools``, or ``TRAFFIC_TOOLS_DIR``)
so that a fresh clone, CI included, reuses what an earlier run built.
install.sh writes ``versions.env`` into the cache last; until it is there and
equal to the repository's pins, the cache counts as not installed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
PINS_FILE = REPO_ROOT / "deploy" / "tools" / "versions.env"
INSTALL_HINT = "run deploy/tools/install.sh"


def read_env_file(path: Path) -> dict[str, str]:
    """Parses NAME=value lines, ignoring blanks and # comments."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: not NAME=value: {raw!r}")
        values[name.strip()] = value.strip()
    return values


def cache_dir(env: str, leaf: str) -> Path:
    """``$<env>`` when set, else ``$XDG_CACHE_HOME`` (default ``~/.cache``) ``/traffic-pipeline/<leaf>``."""
    if os.environ.get(env):
        return Path(os.environ[env])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "traffic-pipeline" / leaf


def default_tools_dir() -> Path:
    return cache_dir("TRAFFIC_TOOLS_DIR", "tools")


@dataclass(frozen=True)
class ToolsCache:
    """Paths into an installed tools cache."""

    root: Path
    pins: dict[str, str]
    stamp: dict[str, str]

    @property
    def kustomize(self) -> Path:
        return self.root / "bin" / "kustomize"

    @property
    def promcheck(self) -> Path:
        return self.root / "bin" / "promcheck"

    @property
    def kubernetes_schema_dirs(self) -> dict[str, Path]:
        """Kubernetes version -> directory of strict JSON schemas."""
        versions = self.pins["KUBERNETES_SCHEMA_VERSIONS"].split(",")
        return {v: self.root / "kubernetes-json-schema" / f"v{v}-local-strict" for v in versions}

    @property
    def compose_schema(self) -> Path:
        return self.root / "compose-spec" / "compose-spec.json"

    def crd_dir(self, project: str) -> Path:
        return self.root / "crds" / project

    @property
    def strimzi_unavailable_reason(self) -> str | None:
        """Why install.sh did not generate the Strimzi CRDs, or None if it did."""
        state = self.stamp.get("STRIMZI_CRDS", "")
        return None if state == "available" else state or "not recorded"


def locate(tools_dir: Path | None = None) -> tuple[ToolsCache | None, str]:
    """Returns (cache, "") when installed and current, else (None, reason)."""
    root = tools_dir or default_tools_dir()
    pins = read_env_file(PINS_FILE)
    stamp_file = root / "versions.env"
    if not stamp_file.is_file():
        return None, f"validation tools not installed in {root} ({INSTALL_HINT})"
    stamp = read_env_file(stamp_file)
    stale = sorted(k for k, v in pins.items() if stamp.get(k) != v)
    if stale:
        return None, (f"validation tools in {root} were installed for other versions "
                      f"({', '.join(stale)}); {INSTALL_HINT} again")
    return ToolsCache(root=root, pins=pins, stamp=stamp), ""

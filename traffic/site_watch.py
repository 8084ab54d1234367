"""Hot reload of the site configuration: watch the file, apply what changed, keep the rest.

On Kubernetes the site file is a ConfigMap mounted as a directory. The kubelet updates it with
an atomic symlink swap, never an in-place write::

    /etc/traffic/site/site.yaml -> ..data/site.yaml
    /etc/traffic/site/..data    -> ..2026_12_01_09_30_00.123    (swapped to a new directory)

(a ``subPath`` mount is never updated: the manifests mount the directory). So the watcher polls
the *resolved* path and the content's hash every ``interval_s``: a swap, an editor's rename and
an in-place write all change one of them. A new text is validated with :func:`load_site`; an
invalid one is logged once (file, field, reason) and the running configuration stays. A valid one
is compared camera by camera, and the service's callback gets the new site with the ids of the
cameras that were added, removed or changed; cameras not named there keep their state.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traffic.errors import ConfigError
from traffic.site import Site, load_site

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteChange:
    """What a new site file changes, by camera id.

    ``changed`` cameras exist in both but differ in anything (source, sampling, lines, zones,
    movements) or moved to another intersection; ``counting`` is True when the ``counting``
    section differs (applies to every camera).
    """

    site: Site
    added: frozenset[str]
    removed: frozenset[str]
    changed: frozenset[str]
    counting: bool

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.counting)


def diff_sites(old: Site, new: Site) -> SiteChange:
    """Camera-by-camera difference between two valid sites."""
    before = {cam_id: (inter.id, cam) for cam_id, (inter, cam) in old.cameras().items()}
    after = {cam_id: (inter.id, cam) for cam_id, (inter, cam) in new.cameras().items()}
    changed = {c for c in before.keys() & after.keys() if before[c] != after[c]}
    return SiteChange(site=new, added=frozenset(after.keys() - before.keys()),
                      removed=frozenset(before.keys() - after.keys()), changed=frozenset(changed),
                      counting=old.counting != new.counting)


def _fingerprint(path: Path) -> tuple[str, str] | None:
    """(resolved path, sha256 of the content), or None while the file cannot be read."""
    try:
        real = os.path.realpath(path)
        with open(real, "rb") as f:
            return real, hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


class SiteWatcher:
    """Polls one site file; calls ``on_change(SiteChange)`` from its own thread for each valid change.

    Args:
        path: the site file as the service was given it (a symlink is fine).
        site: the configuration the service runs now (loaded from ``path``).
        on_change: applies a change; an exception there is logged and the change is retried at
            the next poll (the service still runs the old configuration).
        interval_s: seconds between polls (the kubelet itself syncs ConfigMap volumes about
            once a minute, so 2 s adds nothing noticeable).
        results: the service's ``traffic_<service>_site_reloads_total{result}`` counter, or None;
            counts ``applied``, ``refused`` (an invalid file) and ``failed`` (the callback raised).
    """

    def __init__(self, path: str | os.PathLike[str], site: Site, on_change: Callable[[SiteChange], None],
                 interval_s: float = 2.0, results: Any = None) -> None:
        self.path = Path(path)
        self.site = site
        self.on_change = on_change
        self.interval_s = interval_s
        self.results = results
        self.reloads = 0  # applied changes
        self.rejected = 0  # invalid texts seen (each logged once)
        self._seen = _fingerprint(self.path)
        self._bad: tuple[str, str] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="site-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)
            self._thread = None

    def __enter__(self) -> SiteWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def _count(self, result: str) -> None:
        if self.results is not None:
            self.results.labels(result).inc()

    def poll(self) -> SiteChange | None:
        """One check; returns the change applied, if any (also usable without the thread)."""
        seen = _fingerprint(self.path)
        if seen is None or seen == self._seen or seen == self._bad:
            return None
        try:
            new = load_site(self.path)
        except ConfigError as exc:
            self._bad = seen
            self.rejected += 1
            self._count("refused")
            log.error("site configuration change refused; keeping the running one", extra={"path": str(self.path), "error": str(exc)})
            return None
        change = diff_sites(self.site, new)
        if not change.empty:
            try:
                self.on_change(change)
            except Exception:  # noqa: BLE001 - the service keeps running; the next poll retries
                log.exception("applying the site configuration change failed; retrying", extra={"path": str(self.path)})
                self._count("failed")
                return None
            self.reloads += 1
            self._count("applied")
            log.info("site configuration reloaded", extra={
                "path": str(self.path), "added": sorted(change.added), "removed": sorted(change.removed),
                "changed": sorted(change.changed), "counting": change.counting})
        self.site = new
        self._seen = seen
        self._bad = None
        return change

"""A directory updated the way the kubelet updates a ConfigMap volume (for the site hot reload tests)."""

from __future__ import annotations

import os
from pathlib import Path


class ConfigMapVolume:
    """Writes files the way the kubelet's AtomicWriter updates a ConfigMap volume.

    Each write puts the file into a new timestamped directory, points ``..data_tmp`` at it and
    renames that over ``..data`` (the atomic swap); ``site.yaml`` is a symlink to
    ``..data/site.yaml``, created once, as in a pod.
    """

    def __init__(self, root: Path, name: str = "site.yaml") -> None:
        self.root = root
        self.name = name
        self.generation = 0
        root.mkdir(parents=True, exist_ok=True)

    def write(self, text: str) -> Path:
        """Publish ``text`` as the file's new content; returns the path a service is given."""
        self.generation += 1
        ts = self.root / f"..2026_12_01_00_00_{self.generation:02d}.000"
        ts.mkdir()
        (ts / self.name).write_text(text)
        tmp = self.root / "..data_tmp"
        os.symlink(ts.name, tmp)
        os.replace(tmp, self.root / "..data")  # the atomic swap
        link = self.root / self.name
        if not link.is_symlink():
            os.symlink(f"..data/{self.name}", link)
        return link

"""What the benchmarks share: the machine line, sample frames, their output options and their section of docs/benchmarks.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent


def machine() -> str:
    """One line naming the machine the figures come from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}"


def sampled_frames(video: Path, count: int, every: int = 3) -> list[np.ndarray]:
    """``count`` BGR frames of ``video``, one in ``every`` (10 fps from the 30 fps sample)."""
    cap = cv2.VideoCapture(str(video))
    out: list[np.ndarray] = []
    index = 0
    while len(out) < count:
        ok, frame = cap.read()
        if not ok:
            break
        if index % every == 0:
            out.append(frame)
        index += 1
    cap.release()
    return out


def write_section(title: str, markdown: str, doc: str = "benchmarks.md") -> Path:
    """Replace (or add) the ``## <title>`` section of docs/<doc> (default benchmarks.md), leaving the others alone."""
    path = REPO / "docs" / doc
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"## {title}\n\n" + markdown.strip() + "\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n" if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text)
    return path


def add_output_arguments(parser: argparse.ArgumentParser, doc: str = "benchmarks.md") -> None:
    """``--no-write`` (print only) and ``--json`` (the raw figures too), read by :func:`publish`."""
    parser.add_argument("--no-write", action="store_true", help=f"print only; leave docs/{doc} alone")
    parser.add_argument("--json", default="", help="also write the raw figures to this JSON file (e.g. for the cost table)")


def publish(title: str, markdown: str, args: argparse.Namespace | None = None, raw: object = None, doc: str = "benchmarks.md") -> None:
    """Print a benchmark's section, write ``raw`` to ``--json`` when given, and put the section into docs/<doc>
    unless ``--no-write`` (options of :func:`add_output_arguments`; without ``args`` the section is always written)."""
    print(markdown)
    if args is not None and getattr(args, "json", "") and raw is not None:
        Path(args.json).write_text(json.dumps(raw, indent=2))
    if args is None or not getattr(args, "no_write", False):
        print(f"written to {write_section(title, markdown, doc)}")

"""`traffic count` with activity gating: the same counts as without, far fewer model calls on an empty road.

The synthetic recording of test_count_synthetic.py (real pixels, known ground truth): a car
eastbound in frames 0-39, the empty road for 12 s, a car westbound in frames 160-199.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from offline.count import count_video
from ingest.settings import IngestSettings
from traffic.site import load_site
from workers.detector import DetectorSettings

from .test_count_synthetic import eastbound, make_video, site_file, westbound



def test_gated_count_equals_the_full_count_and_saves_the_empty_road(shared: Path, model: Path, tmp_path: Path) -> None:
    video = make_video(shared / "videos" / "intersection.mp4", tmp_path / "synthetic.mp4",
                       [eastbound(0, 40), westbound(160, 40)], total_frames=200, fps=10)  # fmt: skip
    site = load_site(site_file(tmp_path / "site.yaml", video, fps=10, track_timeout_s=2.0))
    detector = DetectorSettings(model=str(model), classes=tuple(site.counting.classes))
    full = count_video(video, site, "cam-synth", detector)
    gated = count_video(video, site, "cam-synth", detector, activity=IngestSettings().activity_rule())
    key = [(c.event_id, c.kind, c.time_ms, c.vehicle_class, c.direction, c.movement) for c in full.crossings]
    assert [(c.event_id, c.kind, c.time_ms, c.vehicle_class, c.direction, c.movement) for c in gated.crossings] == key
    assert sorted((c.kind, c.direction if c.kind == "line" else c.movement) for c in full.crossings) == [
        ("line", "eastbound"), ("line", "westbound"), ("movement", "through"), ("movement", "through")]  # the ground truth
    assert full.reused == 0 and gated.frames == full.frames == 200
    assert gated.reused >= 100, f"only {gated.reused} of the 120 empty-road frames skipped the model"
